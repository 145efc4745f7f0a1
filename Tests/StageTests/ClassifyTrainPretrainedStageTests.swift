import ArtifactStore
import Engine
import Foundation
import TestSupport
import Training
import XCTest

/// classify-train fine-tuning the imported DINOv2 ViT-S/14 (`make pretrained`) with layer-wise
/// freezing: the checkpoint carries the backbone's configuration, the frozen weights stay exactly
/// the pretrained ones, the trained ones move, and a missing weights file is refused.
final class ClassifyTrainPretrainedStageTests: XCTestCase {
    /// The imported DINOv2 file; a missing one fails the test (make test makes it).
    func pretrainedWeights() throws -> String {
        let path = PretrainedViTParityTests.weights
        struct Missing: Error, CustomStringConvertible { let description: String }
        guard FileManager.default.fileExists(atPath: path) else {
            throw Missing(description: "\(path) is missing: run `make pretrained` (make test does)")
        }
        return path
    }

    func testFineTunesThePretrainedBackboneWithFrozenBlocks() throws {
        let weightsPath = try pretrainedWeights()
        let folder = try StageHarness.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let dataset = try StageHarness.tinyDataset(in: folder)
        let out = folder.appendingPathComponent("ck.h5").path
        let params = ["backbone=pretrained", "image_size=28", "frozen_blocks=11", "epochs=1", "batch_size=4", "threads=1",
                      "lr=0.01", "warmup_epochs=0", "ema_decay=0.5"]
        let run = try StageHarness.run("classify-train", ["--in", "dataset=\(dataset)", "--in", "vit_weights=\(weightsPath)",
                                                          "--out", "checkpoint=\(out)"] + params.flatMap { ["--param", $0] })
        XCTAssertEqual(run.status, 0, run.output)
        let checkpoint = try Checkpoint(path: out)
        XCTAssertEqual(checkpoint.config.patchSize, 14)
        XCTAssertEqual(checkpoint.config.depth, 12)
        XCTAssertTrue(checkpoint.config.layerScale)
        XCTAssertEqual(checkpoint.config.gelu, .erf)
        let pretrained = try PretrainedViTWeights(path: weightsPath).stateDict(for: checkpoint.config)
        for group in ["weights", "ema_weights"] {
            let stored = try checkpoint.tensors(group)
            for name in ["patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.qkv.weight", "blocks.10.ls2.gamma"] {
                XCTAssertEqual(stored[name]?.values, pretrained[name]?.values, "\(group) \(name) must stay the pretrained weights")
            }
            XCTAssertNotEqual(stored["blocks.11.mlp.fc2.weight"]?.values, pretrained["blocks.11.mlp.fc2.weight"]?.values,
                              "\(group): the last block trains")
        }
        // The optimiser state covers the trained parameters only.
        let moments = try checkpoint.reader.root.group("optimizer/m").childNames()
        XCTAssertTrue(moments.contains("blocks.11.attn.qkv.weight") && moments.contains("cls_head.weight"))
        XCTAssertFalse(moments.contains("blocks.10.attn.qkv.weight") || moments.contains("pos_embed"))
        // The model is usable downstream: it rebuilds from the checkpoint, and seg-train fine-tunes
        // it with the same freezing (frozen weights bit-identical to the classifier's).
        XCTAssertNoThrow(try checkpoint.makeModel())
        let seg = folder.appendingPathComponent("seg.h5").path
        let segRun = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "init=\(out)", "--out", "checkpoint=\(seg)",
                                                        "--out", "predictions=\(folder.appendingPathComponent("pred.h5").path)",
                                                        "--out", "samples=\(folder.appendingPathComponent("seg.png").path)"]
                                                        + ["supervision=ground_truth", "frozen_blocks=11", "epochs=1", "batch_size=4",
                                                           "decoder_channels=8", "val_every=0", "backbone_lr_mult=1"].flatMap { ["--param", $0] })
        XCTAssertEqual(segRun.status, 0, segRun.output)
        let segWeights = try Checkpoint(path: seg).tensors()
        let classifierWeights = try checkpoint.tensors()
        XCTAssertEqual(segWeights["blocks.10.mlp.fc1.weight"]?.values, classifierWeights["blocks.10.mlp.fc1.weight"]?.values)
        XCTAssertEqual(segWeights["pos_embed"]?.values, classifierWeights["pos_embed"]?.values)
        XCTAssertNotEqual(segWeights["blocks.11.mlp.fc1.weight"]?.values, classifierWeights["blocks.11.mlp.fc1.weight"]?.values)

        let missing = try StageHarness.run("classify-train", ["--in", "dataset=\(dataset)", "--out", "checkpoint=\(folder.appendingPathComponent("m.h5").path)"]
                                                              + params.flatMap { ["--param", $0] })
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("backbone=pretrained needs the weights: pass --in vit_weights=PATH"), missing.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder.appendingPathComponent("m.h5").path))
        let tooMany = try StageHarness.run("classify-train", ["--in", "dataset=\(dataset)", "--in", "vit_weights=\(weightsPath)",
                                                              "--out", "checkpoint=\(folder.appendingPathComponent("t.h5").path)", "--param", "frozen_blocks=13"]
                                                              + params.filter { !$0.hasPrefix("frozen") }.flatMap { ["--param", $0] })
        XCTAssertEqual(tooMany.status, 1)
        XCTAssertTrue(tooMany.stderr.contains("frozen_blocks 13 exceeds the model's 12 blocks"), tooMany.stderr)
    }

    /// seg-train and single-stage-train start from the pretrained ViT directly (no classifier):
    /// frozen weights stay the pretrained ones, the decoder's detail branch is stored, and a
    /// size the patch does not divide is refused with one line.
    func testSegmentationTrainersStartFromThePretrainedViT() throws {
        let weightsPath = try pretrainedWeights()
        let folder = try StageHarness.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        func path(_ name: String) -> String { folder.appendingPathComponent(name).path }
        let dataset = try StageHarness.tinyDataset(in: folder)
        let common = ["backbone=pretrained", "image_size=28", "frozen_blocks=11", "epochs=1", "batch_size=4",
                      "decoder_channels=8", "detail_channels=4", "val_every=0"]
        for stage in ["seg-train", "single-stage-train"] {
            let extra = stage == "seg-train" ? ["supervision=ground_truth"] : []
            let run = try StageHarness.run(stage, ["--in", "dataset=\(dataset)", "--in", "vit_weights=\(weightsPath)",
                                                   "--out", "checkpoint=\(path(stage + ".h5"))", "--out", "predictions=\(path(stage + "-pred.h5"))",
                                                   "--out", "samples=\(path(stage + ".png"))"] + (common + extra).flatMap { ["--param", $0] })
            XCTAssertEqual(run.status, 0, run.output)
            XCTAssertFalse(run.stderr.contains("starts from random weights"), "\(stage): a pretrained backbone is not random: \(run.stderr)")
            let checkpoint = try Checkpoint(path: path(stage + ".h5"))
            XCTAssertEqual(checkpoint.config.patchSize, 14, stage)
            XCTAssertEqual(checkpoint.config.imageSize, 28, stage)
            let stored = try checkpoint.tensors()
            let pretrained = try PretrainedViTWeights(path: weightsPath).stateDict(for: checkpoint.config)
            for name in ["pos_embed", "blocks.3.attn.qkv.weight", "blocks.10.ls1.gamma"] {
                XCTAssertEqual(stored[name]?.values, pretrained[name]?.values, "\(stage): \(name) is frozen")
            }
            XCTAssertNotEqual(stored["blocks.11.attn.qkv.weight"]?.values, pretrained["blocks.11.attn.qkv.weight"]?.values, stage)
            XCTAssertNotNil(stored["decoder.detail.0.weight"], stage)
            XCTAssertNotNil(stored["decoder.merge.weight"], stage)
        }
        let odd = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "vit_weights=\(weightsPath)",
                                                     "--out", "checkpoint=\(path("odd.h5"))", "--out", "predictions=\(path("odd-pred.h5"))",
                                                     "--out", "samples=\(path("odd.png"))", "--param", "backbone=pretrained",
                                                     "--param", "image_size=30", "--param", "supervision=ground_truth"])
        XCTAssertEqual(odd.status, 1)
        XCTAssertTrue(odd.stderr.contains("backbone=pretrained needs image_size, a positive multiple of the patch size 14"), odd.stderr)
        XCTAssertEqual(odd.stderr.split(separator: "\n").count, 1, odd.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("odd.h5")))
    }
}
