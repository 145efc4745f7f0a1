import ArtifactStore
import Foundation
import Localization
import TestSupport
import XCTest

final class PseudoLabelStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Maps equal to the true masks give labels that agree with the truth where they are confident.
    func testLabelsFromGoodMapsAgreeWithTruth() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"), factor: 2)
        let result = try StageHarness.run("pseudo-label", ["--in", "dataset=\(dataset)", "--in", "cams=\(path("cams.h5"))",
                                                           "--out", "labels=\(path("labels.h5"))", "--out", "samples=\(path("samples.png"))"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let labels = try LabelMapsReader(path: path("labels.h5"), kind: .labels)
        XCTAssertEqual(labels.count, 6)
        XCTAssertEqual(labels.artifact.provenance.inputs["dataset"], try ContentHash.ofFile(dataset))
        XCTAssertTrue(labels.artifact.provenance.paramsJSON.contains(#""high_background":0.55"#))
        let evaluation = try StageHarness.run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(path("labels.h5"))",
            "--out", "metrics=\(path("m.h5"))", "--out", "metrics_json=\(path("m.json"))", "--out", "panels=\(path("p.png"))", "--out", "confusion=\(path("confusion.svg"))"])
        XCTAssertEqual(evaluation.status, 0, evaluation.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("m.json")))) as? [String: Any])
        XCTAssertGreaterThan(try XCTUnwrap(json["miou"] as? Double), 0.8)
        XCTAssertGreaterThan(try XCTUnwrap(json["coverage"] as? Double), 0.5)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("samples.png")))
    }

    func testThresholdsInTheWrongOrderAreRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"))
        let result = try StageHarness.run("pseudo-label", ["--in", "dataset=\(dataset)", "--in", "cams=\(path("cams.h5"))",
            "--out", "labels=\(path("labels.h5"))", "--out", "samples=\(path("samples.png"))", "--param", "low_background=0.6"])
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: pseudo-label: low_background (0.6) must be below high_background (0.55)\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("labels.h5")))
    }
}
