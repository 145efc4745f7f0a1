import Foundation
import TestSupport
import XCTest

/// Every stage declares its parameters' kinds and ranges once (`rules`); the stage, its
/// `--describe` and the runner read the same declaration.
final class ParameterRulesStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    static let stages = ["prepare-data", "classify-train", "extract-attention", "cam-refine", "pseudo-label", "psa-refine",
                         "seg-train", "single-stage-train", "evaluate"]

    /// Each rule names a parameter the stage has, and every default lies inside its own rule.
    func testRulesNameRealParametersAndAcceptTheDefaults() throws {
        for stage in Self.stages {
            let described = try StageHarness.run(stage, ["--describe"])
            XCTAssertEqual(described.status, 0, stage)
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(described.stdout.utf8)) as? [String: Any], stage)
            let params = try XCTUnwrap(object["params"] as? [String: Any], stage)
            let rules = try XCTUnwrap(object["param_rules"] as? [String: [String: Any]], stage)
            let kinds = try XCTUnwrap(object["param_kinds"] as? [String: String], stage)
            XCTAssertFalse(rules.isEmpty, "\(stage) declares no ranges")
            XCTAssertTrue(kinds.values.contains("integer") && kinds.values.contains("number"), "\(stage): \(kinds)")
            for name in kinds.keys { XCTAssertNotNil(params[name], "\(stage): kind for '\(name)', which is no parameter") }
            for (name, rule) in rules {
                let value = try XCTUnwrap(params[name], "\(stage): rule for '\(name)', which is no parameter")
                let numbers = (value as? [Any] ?? [value]).compactMap { ($0 as? NSNumber)?.doubleValue }
                for number in numbers {
                    if let min = rule["min"] as? Double { XCTAssertTrue(rule["min_inclusive"] as? Bool == false ? number > min : number >= min, "\(stage).\(name) = \(number)") }
                    if let max = rule["max"] as? Double { XCTAssertTrue(rule["max_inclusive"] as? Bool == false ? number < max : number <= max, "\(stage).\(name) = \(number)") }
                }
            }
        }
    }

    func testFractionsAndOutOfRangeValuesAreOneLineAndWriteNothing() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let outputs = ["--out", "checkpoint=\(path("ck.h5"))", "--out", "predictions=\(path("pred.h5"))", "--out", "samples=\(path("s.png"))"]
        let tiny = ["--param", "depth=1", "--param", "dim=16", "--param", "heads=2", "--param", "decoder_channels=8",
                    "--param", "supervision=ground_truth"]
        for (param, message) in [("epochs=2.5", "parameter 'epochs' must be a whole number, got 2.5"),
                                 ("lr=0", "parameter 'lr' must be > 0, got 0"),
                                 ("eval_scales=[1,100]", "parameter 'eval_scales' must be in [0.1, 8] (each element), got [1,100]")] {
            let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--param", param] + tiny + outputs)
            XCTAssertEqual(result.status, 1, param)
            XCTAssertEqual(result.stderr, "error: seg-train: \(message)\n")
            for name in ["ck.h5", "pred.h5", "s.png"] { XCTAssertFalse(FileManager.default.fileExists(atPath: path(name)), "\(param): \(name)") }
        }
        let evaluation = try StageHarness.run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(dataset)", "--param", "threshold_step=0",
            "--out", "metrics=\(path("m.h5"))", "--out", "metrics_json=\(path("m.json"))", "--out", "panels=\(path("p.png"))", "--out", "confusion=\(path("c.svg"))"])
        XCTAssertEqual(evaluation.status, 1)
        XCTAssertEqual(evaluation.stderr, "error: evaluate: parameter 'threshold_step' must be in [0.0001, 1], got 0\n")
    }

    /// A batch no machine holds is refused before it is allocated, naming the parameter.
    func testBatchBeyondMemoryIsRefusedBeforeAllocating() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--param", "supervision=ground_truth", "--param", "depth=1",
            "--param", "dim=16", "--param", "heads=2", "--param", "batch_size=100000000",
            "--out", "checkpoint=\(path("ck.h5"))", "--out", "predictions=\(path("pred.h5"))", "--out", "samples=\(path("s.png"))"])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("error: seg-train: parameter 'batch_size' asks for training batches of 100000000 images at 32 px, about "), result.stderr)
        XCTAssertTrue(result.stderr.hasSuffix("(WSSS_MEMORY_LIMIT_MB): lower it\n"), result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("ck.h5")))
    }
}
