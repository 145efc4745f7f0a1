import ArgumentParser
import Foundation
import XCTest
@testable import StageKit

private struct Knobs: StageParameters {
    var seed = 0
    var threshold = 0.5
    var method = "mean"
    var layers = [8, 9]
    init() {}
}

final class StageContractTests: XCTestCase {
    let spec = StageSpec(name: "demo", version: "1.2.3", summary: "test", inputs: ["dataset"], optionalInputs: ["init"], outputs: ["cams"])

    fileprivate func context(_ arguments: [String]) throws -> StageContext<Knobs> {
        try StageMain.makeContext(spec, options: try StageOptions.parse(arguments), parameters: Knobs.self)
    }

    func testDefaultsThenFileThenOverrides() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("params-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data(#"{"seed": 4, "method": "areaM"}"#.utf8).write(to: file)
        let ctx = try context(["--in", "dataset=/d.h5", "--out", "cams=/c.h5", "--params", file.path,
                               "--param", "seed=9", "--param", "layers=[1,2,3]"])
        XCTAssertEqual(ctx.params.seed, 9)
        XCTAssertEqual(ctx.params.method, "areaM")
        XCTAssertEqual(ctx.params.threshold, 0.5)
        XCTAssertEqual(ctx.params.layers, [1, 2, 3])
        XCTAssertEqual(ctx.paramsJSON, #"{"layers":[1,2,3],"method":"areaM","seed":9,"threshold":0.5}"#)
        XCTAssertEqual(ctx.input("dataset"), "/d.h5")
        XCTAssertNil(ctx.optionalInput("init"))
        XCTAssertEqual(ctx.spec.producer, "demo 1.2.3")
    }

    func testStringValuesNeedNoQuotes() throws {
        let ctx = try context(["--in", "dataset=a", "--out", "cams=b", "--param", "method=acr"])
        XCTAssertEqual(ctx.params.method, "acr")
    }

    func testMisspeltParameterIsRefused() throws {
        XCTAssertThrowsError(try context(["--in", "dataset=a", "--out", "cams=b", "--param", "treshold=0.3"])) { error in
            XCTAssertEqual("\(error)", "unknown parameter 'treshold' (known: layers, method, seed, threshold)")
        }
    }

    func testWrongTypeNamesTheParameter() throws {
        XCTAssertThrowsError(try context(["--in", "dataset=a", "--out", "cams=b", "--param", "seed=many"])) { error in
            XCTAssertTrue("\(error)".hasPrefix("parameter 'seed' has the wrong type"), "\(error)")
        }
    }

    func testMissingAndUnknownInputsAndOutputs() throws {
        XCTAssertThrowsError(try context(["--out", "cams=b"])) { error in
            XCTAssertEqual("\(error)", "missing input 'dataset': pass --in dataset=PATH")
        }
        XCTAssertThrowsError(try context(["--in", "dataset=a"])) { error in
            XCTAssertEqual("\(error)", "missing output 'cams': pass --out cams=PATH")
        }
        XCTAssertThrowsError(try context(["--in", "dataset=a", "--in", "bogus=x", "--out", "cams=b"])) { error in
            XCTAssertEqual("\(error)", "unknown input 'bogus' (this stage reads: dataset, init)")
        }
        XCTAssertThrowsError(try context(["--in", "dataset", "--out", "cams=b"])) { error in
            XCTAssertEqual("\(error)", "--in expects NAME=VALUE, got 'dataset'")
        }
        XCTAssertThrowsError(try context(["--in", "dataset=a", "--in", "dataset=b", "--out", "cams=b"])) { error in
            XCTAssertEqual("\(error)", "--in dataset given twice")
        }
    }

    func testTwoOutputsAtOnePathAreRefusedUpFront() throws {
        let twoOutputs = StageSpec(name: "pair", version: "1", summary: "test", inputs: [], outputs: ["cams", "samples"])
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pair-\(UUID().uuidString)").path
        XCTAssertThrowsError(try StageMain.makeContext(twoOutputs, options: try StageOptions.parse(
            ["--out", "cams=\(folder)/x.h5", "--out", "samples=\(folder)/sub/../x.h5"]), parameters: Knobs.self)) { error in
            XCTAssertEqual("\(error)", "outputs 'cams' and 'samples' are both given the path \(folder)/sub/../x.h5: each output needs its own file")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "nothing is written")
    }

    func testOutputsAreCommittedAllOrNone() throws {
        let twoOutputs = StageSpec(name: "pair", version: "1", summary: "test", inputs: [], outputs: ["report", "samples"])
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pair-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.createDirectory(atPath: folder + "/samples.png", withIntermediateDirectories: true)
        try Data("previous report".utf8).write(to: URL(fileURLWithPath: folder + "/report.json"))
        let options = try StageOptions.parse(["--out", "report=\(folder)/report.json", "--out", "samples=\(folder)/samples.png"])
        // A folder at an output path is refused before the stage starts...
        XCTAssertThrowsError(try StageMain.makeContext(twoOutputs, options: options, parameters: Knobs.self)) { error in
            XCTAssertEqual("\(error)", "output 'samples': \(folder)/samples.png: is a folder, not a file")
        }
        // ...and one that appears while it runs is found when the outputs are placed.
        try FileManager.default.removeItem(atPath: folder + "/samples.png")
        let ctx = try StageMain.makeContext(twoOutputs, options: options, parameters: Knobs.self)
        try FileManager.default.createDirectory(atPath: folder + "/samples.png", withIntermediateDirectories: true)
        let report = ctx.pendingOutput("report")
        try Data("new report".utf8).write(to: URL(fileURLWithPath: report.temporaryPath))
        XCTAssertThrowsError(try ctx.commitOutputs()) { error in
            XCTAssertEqual("\(error)", "internal: output 'samples' was never written")
        }
        let samples = ctx.pendingOutput("samples")
        try Data("png".utf8).write(to: URL(fileURLWithPath: samples.temporaryPath))
        // The second output cannot be moved into place (a folder is in the way): the first is rolled back.
        XCTAssertThrowsError(try ctx.commitOutputs()) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(folder)/samples.png: cannot move finished output into place: "), "\(error)")
        }
        XCTAssertEqual(FileManager.default.contents(atPath: folder + "/report.json"), Data("previous report".utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder).sorted(), ["report.json", "samples.png"])
    }

    func testDescribeListsContractAndDefaults() throws {
        let text = try StageMain.describe(spec, defaults: Knobs())
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual(object["inputs"] as? [String], ["dataset"])
        XCTAssertEqual(object["optional_inputs"] as? [String], ["init"])
        XCTAssertEqual(object["outputs"] as? [String], ["cams"])
        XCTAssertEqual((object["params"] as? [String: Any])?["threshold"] as? Double, 0.5)
        // The default declaration: one thread, 2 GB, no runtime (schedulers use their own limit).
        let resources = try XCTUnwrap(object["resources"] as? [String: Any])
        XCTAssertEqual(resources["threads"] as? Int, 1)
        XCTAssertEqual(resources["mem_mb"] as? Int, 2048)
        XCTAssertNil(resources["runtime"])
        let training = StageSpec(name: "train", version: "1", summary: "test", inputs: [], outputs: ["checkpoint"],
                                 resources: StageResources(threads: 8, memoryMB: 16384, runtimeMinutes: 720))
        let declared = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try StageMain.describe(training, defaults: Knobs()).utf8)) as? [String: Any])
        XCTAssertEqual(declared["resources"] as? [String: Int], ["threads": 8, "mem_mb": 16384, "runtime": 720])
    }

    func testProgressLineHasRateAndETA() {
        let progress = ProgressReporter("extract", total: 10, unit: "img", logInterval: 1000)
        progress.advance(by: 5)
        let line = progress.status()
        XCTAssertTrue(line.hasPrefix("extract: 5/10 img (50%) "), line)
        XCTAssertTrue(line.contains("img/s ETA "), line)
        XCTAssertEqual(ProgressReporter.clock(3725), "1:02:05")
        XCTAssertEqual(ProgressReporter.clock(65), "1:05")
    }
}
