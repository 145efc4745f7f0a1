import ArtifactStore
import Engine
import Foundation
import TestSupport
import Training
import XCTest

/// classify-train with method=areaM at toy size: the affinity term stays off during the warm-up
/// and contributes afterwards, weight 0 reproduces the baseline exactly, bad settings fail cleanly.
final class ClassifyTrainAReAMStageTests: XCTestCase {
    var folder: URL!
    var dataset: String!
    override func setUpWithError() throws {
        folder = try StageHarness.temporaryFolder()
        dataset = try StageHarness.tinyDataset(in: folder)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    let tiny = ["image_size=16", "patch_size=4", "dim=16", "depth=2", "heads=2", "batch_size=4", "epochs=2", "threads=1", "seed=1"]

    func train(_ out: String, _ extra: [String]) throws -> ProcessRunner.Result {
        var arguments = ["--in", "dataset=\(dataset!)", "--out", "checkpoint=\(path(out))"]
        for p in tiny + extra { arguments += ["--param", p] }
        return try StageHarness.run("classify-train", arguments)
    }

    func testAffinityTermIsOffDuringWarmUpAndOnAfter() throws {
        // Both layers supervised: with the code weighting (min-max over layers) one of them weighs 1.
        let result = try train("a.h5", ["method=areaM", "aream_warmup_epochs=1", "aream_layers=[0,1]"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let checkpoint = try Checkpoint(path: path("a.h5"))
        XCTAssertEqual(try checkpoint.reader.root.stringAttribute("method"), "areaM")
        let log = try checkpoint.reader.root.group("log")
        let affinity = try log.read("epoch_aff_loss", as: Double.self).values
        XCTAssertEqual(affinity.count, 2)
        XCTAssertEqual(affinity[0], 0)
        XCTAssertGreaterThan(affinity[1], 0)
        // Eq. 15 is at most 2 per layer; the layer weights are at most 1 and averaged.
        XCTAssertLessThanOrEqual(affinity[1], 2)
        let positive = try log.read("epoch_aff_positive_fraction", as: Double.self).values
        let ignored = try log.read("epoch_aff_ignored_fraction", as: Double.self).values
        XCTAssertEqual(positive[0], 0)
        XCTAssertGreaterThan(positive[1], 0)
        XCTAssertLessThanOrEqual(positive[1] + ignored[1], 1)
        XCTAssertTrue(result.stderr.contains("areaM: affinity term on layers [0, 1]"), result.stderr)
    }

    func testZeroWeightMatchesBaselineAndTheTermChangesTraining() throws {
        XCTAssertEqual(try train("base.h5", []).status, 0)
        XCTAssertEqual(try train("zero.h5", ["method=areaM", "aream_warmup_epochs=0", "aream_loss_weight=0"]).status, 0)
        XCTAssertEqual(try train("on.h5", ["method=areaM", "aream_warmup_epochs=0", "aream_loss_weight=1", "aream_weighting=paper"]).status, 0)
        let base = try Checkpoint(path: path("base.h5")).tensors()
        let zero = try Checkpoint(path: path("zero.h5")).tensors()
        let on = try Checkpoint(path: path("on.h5")).tensors()
        let name = "blocks.1.attn.qkv.weight"
        XCTAssertEqual(zero[name]!.values, base[name]!.values)
        XCTAssertNotEqual(on[name]!.values, base[name]!.values)
        let baseLog = try Checkpoint(path: path("base.h5")).reader.root.group("log")
        XCTAssertFalse(baseLog.contains("epoch_aff_loss"))
    }

    func testBadSettingsFailWithoutOutput() throws {
        for (extra, message) in [(["method=psa"], "'psa' is not one of baseline, acr, areaM"),
                                 (["method=areaM", "low_background=0.6"], "areaM needs 0 < low_background < high_background < 1"),
                                 (["method=areaM", "aream_warmup_epochs=2"], "leaves none of the 2 epochs"),
                                 (["method=areaM", "aream_layers=[5]"], "aream_layers: layer 5"),
                                 (["method=areaM", "aream_weighting=mean"], "parameter 'aream_weighting' is invalid: 'mean' is not one of paper, code")] {
            let result = try train("bad.h5", extra)
            XCTAssertNotEqual(result.status, 0, "\(extra)")
            XCTAssertTrue(result.stderr.contains(message), "\(extra): \(result.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("bad.h5")))
        }
    }
}
