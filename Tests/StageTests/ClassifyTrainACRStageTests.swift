import ArtifactStore
import Engine
import Foundation
import TestSupport
import Training
import XCTest

/// classify-train with method=acr at toy size: the ACR terms reach the log, the parameters the
/// provenance; bad objective parameters and a resume with another objective are refused.
final class ClassifyTrainACRStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    let tiny = ["image_size=16", "patch_size=4", "dim=16", "depth=2", "heads=2", "batch_size=4", "epochs=1", "threads=1"]

    func train(_ dataset: String, _ out: String, _ extra: [String], initFrom: String? = nil) throws -> ProcessRunner.Result {
        var args = ["--in", "dataset=\(dataset)", "--out", "checkpoint=\(path(out))"]
        if let initFrom { args += ["--in", "init=\(path(initFrom))"] }
        let overridden = Set(extra.map { $0.split(separator: "=")[0] })
        for p in tiny.filter({ !overridden.contains($0.split(separator: "=")[0]) }) + extra { args += ["--param", p] }
        return try StageHarness.run("classify-train", args)
    }

    func testACRTermsAreLoggedAndParametersRecorded() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        for view in ["flip", "rot90"] {
            let out = "acr-\(view).h5"
            let result = try train(dataset, out, ["method=acr", "acr_view=\(view)", "acr_alpha=50", "acr_beta=20"])
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertTrue(result.stderr.contains("acr_act") || result.stdout.contains("acr_act"), result.stderr)
            let checkpoint = try Checkpoint(path: path(out))
            let params = try JSONSerialization.jsonObject(with: Data(checkpoint.reader.provenance.paramsJSON.utf8)) as! [String: Any]
            XCTAssertEqual(params["method"] as? String, "acr")
            XCTAssertEqual(params["acr_view"] as? String, view)
            XCTAssertEqual((params["acr_alpha"] as? NSNumber)?.doubleValue, 50)
            XCTAssertEqual((params["acr_beta"] as? NSNumber)?.doubleValue, 20)
            let log = try checkpoint.reader.root.group("log")
            func value(_ name: String) throws -> Double {
                let values = try log.read(name, as: Double.self).values
                XCTAssertEqual(values.count, 1, name)  // one epoch
                return values[0]
            }
            let act = try value("epoch_acr_act"), aff = try value("epoch_acr_aff"), view2 = try value("epoch_acr_view2_cls")
            // Attention entries of 17 tokens are ~1/17: the mean L1 terms lie well inside (0, 2/17).
            XCTAssertGreaterThan(act, 0, view)
            XCTAssertLessThan(act, 2.0 / 17, view)
            XCTAssertGreaterThan(aff, 0, view)
            XCTAssertLessThan(aff, 2.0 / 17, view)
            // View 2's two soft-margin losses start near 2 log 2.
            XCTAssertEqual(view2, 2 * Foundation.log(2.0), accuracy: 0.5, view)
            // The step loss is the sum of its terms (epoch means are linear in the steps).
            let total = try value("epoch_loss"), cam = try value("epoch_cam_loss"), cls = try value("epoch_cls_loss")
            XCTAssertEqual(total, cam + cls + view2 + 50 * act + 20 * aff, accuracy: 1e-6 * abs(total), view)
        }
        // The baseline logs no ACR terms and records method=baseline.
        let base = try train(dataset, "base.h5", [])
        XCTAssertEqual(base.status, 0, base.stderr)
        let checkpoint = try Checkpoint(path: path("base.h5"))
        XCTAssertFalse(try checkpoint.reader.root.group("log").contains("epoch_acr_act"))
        XCTAssertTrue(checkpoint.reader.provenance.paramsJSON.contains("\"method\":\"baseline\""), checkpoint.reader.provenance.paramsJSON)
    }

    func testBadObjectiveParametersAndObjectiveChangeOnResumeAreRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        for (params, needle) in [(["method=seam"], "'seam' is not one of baseline, acr, areaM"), (["method=acr", "acr_view=rot45"], "parameter 'acr_view' is invalid: 'rot45' is not one of"),
                                 (["method=acr", "acr_alpha=-1"], "parameter 'acr_alpha' must be >= 0, got -1")] {
            let result = try train(dataset, "bad.h5", params)
            XCTAssertNotEqual(result.status, 0)
            XCTAssertTrue(result.stderr.contains(needle), result.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("bad.h5")))
        }
        XCTAssertEqual(try train(dataset, "first.h5", ["method=acr"]).status, 0)
        let resumed = try train(dataset, "second.h5", ["epochs=2", "resume=true"], initFrom: "first.h5")
        XCTAssertNotEqual(resumed.status, 0)
        XCTAssertTrue(resumed.stderr.contains("same training objective"), resumed.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("second.h5")))
        let continued = try train(dataset, "second.h5", ["epochs=2", "resume=true", "method=acr"], initFrom: "first.h5")
        XCTAssertEqual(continued.status, 0, continued.stderr)
        let log = try Checkpoint(path: path("second.h5")).reader.root.group("log")
        XCTAssertEqual(try log.shape(of: "epoch_acr_aff"), [2])
    }
}
