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
    func testFineTunesThePretrainedBackboneWithFrozenBlocks() throws {
        let weightsPath = PretrainedViTParityTests.weights
        guard FileManager.default.fileExists(atPath: weightsPath) else {
            XCTFail("\(weightsPath) is missing: run `make pretrained` (make test does)")
            return
        }
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
        // The model is usable downstream: it rebuilds from the checkpoint with the same forward.
        XCTAssertNoThrow(try checkpoint.makeModel())

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
}
