import ArtifactStore
import Datasets
import Foundation
import Localization
import TestSupport
import XCTest

final class SegTrainStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// A tiny network so that a run takes well under a second in a debug build.
    let tiny = ["--param", "depth=1", "--param", "dim=16", "--param", "heads=2", "--param", "decoder_channels=8",
                "--param", "epochs=2", "--param", "batch_size=4"]

    func outputs(_ prefix: String = "") -> [String] {
        ["--out", "checkpoint=\(path(prefix + "ck.h5"))", "--out", "predictions=\(path(prefix + "pred.h5"))",
         "--out", "samples=\(path(prefix + "s.png"))"]
    }

    func assertNoOutputs(_ prefix: String = "", file: StaticString = #filePath, line: UInt = #line) {
        for name in ["ck.h5", "pred.h5", "s.png"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: path(prefix + name)), "\(name) left behind", file: file, line: line)
        }
    }

    /// Writes a labels artifact of the train split: the true masks, or 255 everywhere.
    func writeTrainLabels(dataset: String, to destination: String, allIgnored: Bool) throws {
        let reader = try DatasetReader(path: dataset)
        let split = try reader.split("train")
        let artifact = try ArtifactWriter(path: destination, provenance: Provenance(kind: .labels, formatVersion: 1, producer: "test"))
        let writer = try LabelMapsWriter(artifact, context: MapContext(split: "train", classNames: reader.classNames,
                                                                        datasetHash: try ContentHash.ofFile(dataset)))
        for i in 0..<split.count {
            let mask = try split.mask(i)
            try writer.append(imageIndex: i, height: mask.height, width: mask.width,
                              labels: allIgnored ? [UInt8](repeating: 255, count: mask.labels.count) : mask.labels)
        }
        try writer.finish()
    }

    /// A fresh backbone with the frozen pretrained stem (EngineTests' random-weight fixture): the
    /// checkpoint carries the stem unchanged and initialises another run without the stem file.
    func testPretrainedStemBackbone() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let stemPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../EngineTests/Fixtures/stem.h5").standardized.path
        let hybrid = ["--param", "supervision=ground_truth", "--param", "stem=efficientnet_lite0", "--param", "patch_size=8"]
        let missing = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)"] + hybrid + tiny + outputs("m-"))
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("stem_weights"), missing.stderr)
        assertNoOutputs("m-")

        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "stem_weights=\(stemPath)"] + hybrid + tiny + outputs())
        XCTAssertEqual(result.status, 0, result.stderr)
        let weights = try ArtifactReader(path: path("ck.h5"), kind: .checkpoint).root.group("weights")
        XCTAssertEqual(try weights.shape(of: "patch_embed.proj.weight"), [16, 10, 1, 1])
        let stemFile = try HDF5File.open(stemPath).root
        for name in ["stem/conv.weight", "blocks/0/depthwise.weight", "blocks/4/project.bias"] {
            XCTAssertEqual(try weights.read("stem." + name.replacingOccurrences(of: "/", with: "."), as: Float.self).values,
                           try stemFile.read(name, as: Float.self).values, name)
        }
        let again = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "init=\(path("ck.h5"))",
                                                       "--param", "supervision=ground_truth"] + tiny + outputs("i-"))
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.contains("backbone from init"), again.stdout)
    }

    func testGroundTruthRunWritesCheckpointAndPredictionsThatEvaluateScores() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--param", "supervision=ground_truth",
                                                        "--param", "eval_scales=[1.0,1.5]", "--param", "eval_flip=true"] + tiny + outputs())
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("val mIoU"), result.stdout)

        let reader = try DatasetReader(path: dataset)
        let val = try reader.split("val")
        let predictions = try LabelMapsReader(path: path("pred.h5"), kind: .predictions)
        XCTAssertEqual(predictions.count, val.count)
        XCTAssertEqual(predictions.context.split, "val")
        XCTAssertEqual(predictions.context.datasetHash, try ContentHash.ofFile(dataset))
        XCTAssertEqual(predictions.imageIndices, Array(0..<val.count))
        for n in 0..<predictions.count {
            let map = try predictions.labels(n)
            let size = try val.size(n)
            XCTAssertEqual([map.height, map.width], [size.height, size.width])
            XCTAssertTrue(map.values.allSatisfy { Int($0) <= reader.numClasses }, "prediction \(n) holds a class outside 0...C")
        }

        let checkpoint = try ArtifactReader(path: path("ck.h5"), kind: .checkpoint)
        XCTAssertEqual(try checkpoint.root.stringAttribute("supervision"), "ground_truth")
        XCTAssertTrue(checkpoint.provenance.paramsJSON.contains(#""seed":0"#))
        let weights = try checkpoint.root.group("weights")
        XCTAssertEqual(try weights.shape(of: "decoder.classifier.weight"), [reader.numClasses + 1, 8, 1, 1])
        XCTAssertEqual(try weights.shape(of: "decoder.aspp.3.weight"), [8, 16, 3, 3])
        XCTAssertEqual(try weights.shape(of: "pos_embed"), [1, 17, 16])
        let log = try checkpoint.root.group("log")
        XCTAssertEqual(try log.read("epoch_loss", as: Double.self).values.count, 2)
        XCTAssertEqual(try log.read("step_loss", as: Double.self).values.count, 4)  // 8 images / batch 4 x 2 epochs
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("s.png")))

        // Its backbone initialises another run (the classifier checkpoint layout; the decoder is skipped).
        let again = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "init=\(path("ck.h5"))",
                                                       "--param", "supervision=ground_truth", "--param", "seed=1"] + tiny + outputs("i-"))
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.contains("backbone from init"), again.stdout)
        let first = try weights.read("pos_embed", as: Float.self).values
        let initialised = try ArtifactReader(path: path("i-ck.h5"), kind: .checkpoint).root.group("weights").read("pos_embed", as: Float.self).values
        XCTAssertEqual(first.count, initialised.count)
        // Another seed: a random start would differ by O(0.02) (trunc-normal 0.02); 4 AdamW steps at
        // the backbone's lr 1e-4 move each weight by about 4e-4 at most.
        XCTAssertLessThan(zip(first, initialised).map { abs($0 - $1) }.max()!, 0.002)

        let evaluation = try StageHarness.run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(path("pred.h5"))",
            "--out", "metrics=\(path("m.h5"))", "--out", "metrics_json=\(path("m.json"))", "--out", "panels=\(path("p.png"))", "--out", "confusion=\(path("confusion.svg"))"])
        XCTAssertEqual(evaluation.status, 0, evaluation.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("m.json")))) as? [String: Any])
        let miou = try XCTUnwrap(json["miou"] as? Double)
        XCTAssertTrue((0...1).contains(miou))
    }

    /// Labels that are 255 everywhere give every step a loss of exactly 0 (and no gradient).
    func testIgnoredLabelsContributeNothing() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        try writeTrainLabels(dataset: dataset, to: path("labels.h5"), allIgnored: true)
        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "labels=\(path("labels.h5"))"] + tiny + outputs())
        XCTAssertEqual(result.status, 0, result.stderr)
        let checkpoint = try ArtifactReader(path: path("ck.h5"), kind: .checkpoint)
        let steps = try checkpoint.root.group("log").read("step_loss", as: Double.self).values
        XCTAssertEqual(steps, [0, 0, 0, 0])
        XCTAssertEqual(checkpoint.provenance.inputs["labels"], try ContentHash.ofFile(path("labels.h5")))

        // The same run on the true masks as labels does learn something: non-zero losses.
        try writeTrainLabels(dataset: dataset, to: path("truth-labels.h5"), allIgnored: false)
        let truth = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "labels=\(path("truth-labels.h5"))"] + tiny + outputs("t-"))
        XCTAssertEqual(truth.status, 0, truth.stderr)
        let truthSteps = try ArtifactReader(path: path("t-ck.h5"), kind: .checkpoint).root.group("log").read("step_loss", as: Double.self).values
        XCTAssertTrue(truthSteps.allSatisfy { $0 > 0.1 }, "\(truthSteps)")
    }

    func testLabelsOfAnotherDatasetAreRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let other = try StageHarness.tinyDataset(in: folder, seed: 1, name: "other.h5")
        try writeTrainLabels(dataset: other, to: path("labels.h5"), allIgnored: false)
        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "labels=\(path("labels.h5"))"] + tiny + outputs())
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("error: seg-train: "), result.stderr)
        XCTAssertTrue(result.stderr.contains("labels.h5") && result.stderr.contains("another dataset"), result.stderr)
        assertNoOutputs()
    }

    func testLabelsSupervisionWithoutLabelsIsRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)"] + tiny + outputs())
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("supervision 'labels' needs the input 'labels'"), result.stderr)
        assertNoOutputs()
    }

    /// seg-train must learn, not only run: trained on the true masks of an easy two-class problem,
    /// its val mIoU beats predicting background everywhere by a clear margin (measured: 0.52
    /// against 0.26).
    func testLearnsToBeatTheTrivialPredictor() throws {
        let dataset = try StageHarness.rectanglesDataset(in: folder)
        let result = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--param", "supervision=ground_truth",
                                                        "--param", "depth=1", "--param", "dim=16", "--param", "heads=2", "--param", "patch_size=4",
                                                        "--param", "decoder_channels=8", "--param", "batch_size=8", "--param", "epochs=6",
                                                        "--param", "lr=0.01", "--param", "backbone_lr_mult=1"] + outputs())
        XCTAssertEqual(result.status, 0, result.stderr)
        let miou = try StageHarness.valMIoU(dataset: dataset, subject: path("pred.h5"), in: folder)
        let trivial = try StageHarness.allBackgroundMIoU(dataset: dataset)
        print("seg-train: val mIoU \(miou) against \(trivial) for background everywhere")
        XCTAssertGreaterThan(miou - trivial, 0.1, "seg-train val mIoU \(miou), background everywhere \(trivial)")
    }
}
