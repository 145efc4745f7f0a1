import ArtifactStore
import Foundation
import TestSupport
import XCTest

/// A stage run twice with the same inputs, parameters and SOURCE_DATE_EPOCH (as the runner sets
/// it) writes the same bytes, every output of it: the runner's cache relies on it to keep what
/// follows a forced or rebuilt stage cached.
final class ReproducibleStageTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = try StageHarness.temporaryFolder()
    }

    override func tearDownWithError() throws {
        if let folder { try? FileManager.default.removeItem(at: folder) }
    }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Runs `stage` into run-N/ with its outputs named `outputs`, returning each output's content hash.
    func run(_ stage: String, copy: Int, inputs: [String: String] = [:], outputs: [String: String], params: [String]) throws -> [String: String] {
        var arguments: [String] = []
        for (name, file) in inputs.sorted(by: { $0.key < $1.key }) { arguments += ["--in", "\(name)=\(file)"] }
        for (name, file) in outputs.sorted(by: { $0.key < $1.key }) { arguments += ["--out", "\(name)=\(path("run-\(copy)/\(file)"))"] }
        for param in params { arguments += ["--param", param] }
        let result = try ProcessRunner.run(StageHarness.binFolder.appendingPathComponent(stage), arguments,
                                           environment: ["SOURCE_DATE_EPOCH": "1767225600"])
        XCTAssertEqual(result.status, 0, result.output)
        return try outputs.mapValues { try ContentHash.ofFile(path("run-\(copy)/\($0)")) }
    }

    /// Waits for the next wall-clock second, so that anything stamped with the time would differ.
    func waitForNextSecond() {
        let second = time(nil)
        while time(nil) == second { usleep(10_000) }
    }

    func testPrepareDataAndClassifyTrainRerunWriteIdenticalBytes() throws {
        let dataOutputs = ["dataset": "dataset.h5", "contact_sheet": "samples.png"]
        let dataParams = ["image_size=32", "train_count=32", "val_count=16", "seed=0"]
        let data = try run("prepare-data", copy: 1, outputs: dataOutputs, params: dataParams)
        waitForNextSecond()
        XCTAssertEqual(try run("prepare-data", copy: 2, outputs: dataOutputs, params: dataParams), data)
        let dataset = try ArtifactReader(path: path("run-1/dataset.h5"), kind: .dataset)
        XCTAssertEqual(dataset.provenance.createdAt, "2026-01-01T00:00:00Z")

        // classify-train as Pipelines/ci.yaml runs it, on fewer images.
        let trainParams = ["stem=patch", "image_size=32", "patch_size=8", "dim=32", "depth=2", "heads=2", "epochs=2",
                           "batch_size=16", "lr=0.002", "threads=1", "seed=0"]
        let checkpoint = try run("classify-train", copy: 1, inputs: ["dataset": path("run-1/dataset.h5")],
                                 outputs: ["checkpoint": "classifier.h5"], params: trainParams)
        waitForNextSecond()
        XCTAssertEqual(try run("classify-train", copy: 2, inputs: ["dataset": path("run-2/dataset.h5")],
                               outputs: ["checkpoint": "classifier.h5"], params: trainParams), checkpoint)
    }
}
