import ArtifactStore
import Foundation
import Primitives
@testable import SingleStage
import TestSupport
import XCTest
@testable import Engine

/// The ToCo/FSR frame of the single-stage trainer: max-pooled CAM head, auxiliary CAM head on an
/// earlier block, its token labels for the patch token contrast.
final class AuxiliaryCAMHeadTests: XCTestCase {
    /// `camTokenLabels` against FSR's `multi_scale_cam` (one scale) + `cam_to_label(ignore_mid=True)`
    /// in PyTorch, on the CAM of the fixture's head (EngineTests/Fixtures/max_pooled_head.h5,
    /// written by Tests/Fixtures/make_toco_head_fixtures.py).
    func testTokenLabelsMatchFSRsReference() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../EngineTests/Fixtures/max_pooled_head.h5").standardized.path
        let root = try HDF5File.open(path).root
        let hidden = try root.read("input/hidden", as: Double.self), weight = try root.read("input/weight", as: Double.self)
        let labels = try root.read("input/labels", as: Double.self).values.map { Float($0) }
        let B = hidden.shape[0], T = hidden.shape[1], D = hidden.shape[2], C = weight.shape[0], N = T - 1
        let h = Tensor(shape: hidden.shape), w = Tensor(shape: weight.shape)
        for i in 0..<h.count { h.data[i] = Float(hidden.values[i]) }
        for i in 0..<w.count { w.data[i] = Float(weight.values[i]) }
        let scores = MaxPooledClassifier.patchScores(tokens: h.data + D, batch: B, patches: N, dim: D, imageStride: T * D, weight: w.data, classes: C)
        let high = Float(try root.doubleAttribute("high")), low = Float(try root.doubleAttribute("low"))
        let got = labels.withUnsafeBufferPointer {
            PatchTokenContrast.camTokenLabels(patchScores: scores.data, classLabels: $0.baseAddress!, batch: B, patches: N, classes: C, high: high, low: low)
        }
        let expected = try root.read("output/token_labels", as: UInt8.self).values
        XCTAssertEqual(got, expected)
        XCTAssertEqual(Set(expected).count, C + 2, "every class, background and 255 occur")

        // Padding tokens are 255 whatever the CAM says.
        var valid = [Bool](repeating: true, count: B * N)
        valid[0] = false; valid[N + 3] = false
        let masked = labels.withUnsafeBufferPointer {
            PatchTokenContrast.camTokenLabels(patchScores: scores.data, classLabels: $0.baseAddress!, batch: B, patches: N, classes: C,
                                              high: high, low: low, valid: valid)
        }
        for i in 0..<(B * N) { XCTAssertEqual(masked[i], valid[i] ? expected[i] : 255) }
    }

    /// A class that is above zero on every token is min-max normalised: its weakest token goes to
    /// 0 (background), not to its ratio to the maximum; absent classes never label a token.
    func testTokenLabelsNormaliseBetweenTheImagesMinimumAndMaximum() {
        // One image, 4 tokens, 2 classes; class 0 present with scores 2, 3, 4, 6; class 1 absent but large.
        let scores: [Float] = [2, 9, 3, 9, 4, 9, 6, 9]
        let labels: [Float] = [1, 0]
        let got = scores.withUnsafeBufferPointer { s in labels.withUnsafeBufferPointer { l in
            PatchTokenContrast.camTokenLabels(patchScores: s.baseAddress!, classLabels: l.baseAddress!, batch: 1, patches: 4, classes: 2,
                                              high: 0.7, low: 0.3)
        } }
        // (r - 2) / (4 + 1e-5): 0, 0.25, 0.5, ~1.
        XCTAssertEqual(got, [0, 0, 255, 1])
    }

    func tinyTrainer(auxLayer: Int, auxWeight: Double = 1, ptcWeight: Double = 0, pooling: ClassifierPooling = .max,
                     classTokenWeight: Double = 0, clip: Double = 1e9) throws -> SingleStageTrainer {
        let vit = try ViT(config: ViTConfig(imageSize: 16, patchSize: 4, depth: 3, dim: 16, heads: 2, numClasses: 3), seed: 1)
        let decoder = try SegDecoder(config: SegDecoderConfig(inChannels: 16, channels: 8, dilations: [1], numClasses: 4), seed: 2)
        var s = SingleStageSettings()
        s.optimizer.totalSteps = 8
        s.optimizer.clipGradNorm = clip
        s.segWarmupSteps = 100
        s.ptcWeight = ptcWeight
        s.classifierPooling = pooling
        s.classTokenWeight = classTokenWeight
        s.auxLayer = auxLayer
        s.auxWeight = auxWeight
        return try SingleStageTrainer(network: try SegNetwork(backbone: vit, decoder: decoder), head: nil, settings: s, seed: 4)
    }

    func gradients(_ t: SingleStageTrainer) -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: t.trained.map { ($0.name, $0.grad.toArray()) })
    }

    /// The auxiliary head reads block depth + aux_layer's output: its loss is the max-pooled
    /// classifier's on that hidden state, and its gradient reaches that block and those below it
    /// but none above (compared with the same step at aux weight 0). The class-token head is out
    /// of the optimiser at weight 0.
    func testAuxiliaryHeadReadsItsBlockAndItsGradientStaysBelowIt() throws {
        var rng = SplitMix64(seed: 3)
        let view = Tensor(shape: [2, 16, 16, 3])
        view.fillNormal(std: 1, rng: &rng)
        let labels: [Float] = [1, 0, 1, 0, 1, 0]
        let on = try tinyTrainer(auxLayer: -2), off = try tinyTrainer(auxLayer: -2, auxWeight: 0)
        XCTAssertEqual(on.auxHiddenIndex, 2, "block 1 of 3 = hidden state 2")
        XCTAssertEqual(on.auxHead!.value.toArray(), off.auxHead!.value.toArray())
        XCTAssertFalse(on.trained.contains { $0.name.hasPrefix("cls_head.") })
        // The expected auxiliary loss, from the untrained weights on this view's forward.
        let probe = try ViT(config: on.network.backbone.config, seed: 1)
        let acts = probe.forward(images: view, training: true)
        let (T, N, D) = (acts.tokenCount, acts.patches, 16)
        let pass = MaxPooledClassifier.forward(tokens: acts.hiddenStates[2].data + D, batch: 2, patches: N, dim: D, imageStride: T * D,
                                               weight: on.auxHead!.value.data, classes: 3)
        let expectedAux = ClassificationLoss.multilabelSoftMargin(logits: pass.logits.data, labels: labels, batch: 2, classes: 3)
        let noLabels: (ViTActivations) -> [UInt8] = { _ in XCTFail("no pseudo labels while segmentation warms up and PTC is off"); return [] }
        let r = try labels.withUnsafeBufferPointer { try on.trainStep(view: view, secondView: nil, labels: $0.baseAddress!, pseudoLabels: noLabels) }
        _ = try labels.withUnsafeBufferPointer { try off.trainStep(view: view, secondView: nil, labels: $0.baseAddress!, pseudoLabels: noLabels) }
        XCTAssertEqual(r.auxLoss, expectedAux, accuracy: 1e-6)
        XCTAssertEqual(r.loss, r.clsLoss + r.auxLoss, accuracy: 1e-9)
        let gOn = gradients(on), gOff = gradients(off)
        for (name, g) in gOn where name.hasPrefix("blocks.2.") || name.hasPrefix("norm.") || name.hasPrefix("cam_head.") {
            XCTAssertEqual(g, gOff[name], "\(name) lies above the auxiliary block")
        }
        for name in ["blocks.1.mlp.fc2.weight", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"] {
            XCTAssertNotEqual(gOn[name], gOff[name], "\(name) is at or below the auxiliary block")
        }
        XCTAssertGreaterThan(gOn["aux_classifier.weight"]!.map(abs).max()!, 0)
        XCTAssertEqual(gOff["aux_classifier.weight"]!.map(abs).max()!, 0)
    }

    /// With the auxiliary head, PTC runs on the last layer's tokens under the auxiliary CAM's token
    /// labels (no online pseudo labels needed during the warm-up), and a few steps lower both the
    /// auxiliary classification loss and PTC.
    func testPatchTokenContrastTakesTheAuxiliaryLabelsAndTrainingLowersIt() throws {
        var rng = SplitMix64(seed: 8)
        let view = Tensor(shape: [2, 16, 16, 3])
        view.fillNormal(std: 1, rng: &rng)
        let labels: [Float] = [1, 0, 1, 0, 1, 0]
        let trainer = try tinyTrainer(auxLayer: -2, ptcWeight: 1, clip: 10)
        var valid = [Bool](repeating: true, count: 32)
        for i in 12..<16 { valid[i] = false }  // image 0's bottom row of tokens is padding
        let probe = try ViT(config: trainer.network.backbone.config, seed: 1)
        let acts = probe.forward(images: view, training: true)
        let scores = MaxPooledClassifier.patchScores(tokens: acts.hiddenStates[2].data + 16, batch: 2, patches: 16, dim: 16,
                                                     imageStride: 17 * 16, weight: trainer.auxHead!.value.data, classes: 3)
        let tokenLabels = labels.withUnsafeBufferPointer {
            PatchTokenContrast.camTokenLabels(patchScores: scores.data, classLabels: $0.baseAddress!, batch: 2, patches: 16, classes: 3,
                                              high: 0.7, low: 0.25, valid: valid)
        }
        let expectedPTC = tokenLabels.withUnsafeBufferPointer {
            PatchTokenContrast.loss(tokens: acts.features.data, labels: $0.baseAddress!, batch: 2, patches: 16, dim: 16)
        }
        var results: [SingleStageTrainer.StepResult] = []
        for _ in 0..<6 {
            results.append(try labels.withUnsafeBufferPointer {
                try trainer.trainStep(view: view, secondView: nil, labels: $0.baseAddress!, validTokens: valid) { _ in
                    XCTFail("PTC takes the auxiliary labels")
                    return []
                }
            })
        }
        XCTAssertEqual(results[0].ptcLoss, expectedPTC, accuracy: 1e-6)
        XCTAssertEqual(results[0].loss, results[0].clsLoss + results[0].auxLoss + results[0].ptcLoss, accuracy: 1e-9)
        XCTAssertLessThan(results.last!.auxLoss, results[0].auxLoss)
        XCTAssertLessThan(results.last!.ptcLoss, results[0].ptcLoss, "\(results.map(\.ptcLoss))")
    }

    /// With max pooling the CAM head's loss is the max-pooled classifier's on the last layer's
    /// features (not the ViT's average-pooled `camLogits`), and its weight gets that gradient.
    func testMaxPoolingTrainsTheCAMHeadOnTheLastLayersFeatures() throws {
        var rng = SplitMix64(seed: 5)
        let view = Tensor(shape: [2, 16, 16, 3])
        view.fillNormal(std: 1, rng: &rng)
        let labels: [Float] = [0, 1, 1, 1, 0, 0]
        let probe = try ViT(config: ViTConfig(imageSize: 16, patchSize: 4, depth: 3, dim: 16, heads: 2, numClasses: 3), seed: 1)
        let acts = probe.forward(images: view, training: true)
        let camWeight = probe.parameter(named: "cam_head.weight")!
        let pass = MaxPooledClassifier.forward(tokens: acts.features.data, batch: 2, patches: 16, dim: 16, weight: camWeight.value.data, classes: 3)
        let expected = ClassificationLoss.multilabelSoftMargin(logits: pass.logits.data, labels: labels, batch: 2, classes: 3)
        let average = ClassificationLoss.multilabelSoftMargin(logits: acts.camLogits.data, labels: labels, batch: 2, classes: 3)
        XCTAssertGreaterThan(abs(expected - average), 1e-4, "the two poolings must differ on this case")
        let gLogits = Tensor(shape: [2, 3])
        ClassificationLoss.multilabelSoftMargin(logits: pass.logits.data, labels: labels, batch: 2, classes: 3, gradient: gLogits.data)
        let dWeight = Tensor(shape: [3, 16]), dTokens = Tensor(shape: [2, 16, 16])
        MaxPooledClassifier.backward(pass, dLogits: gLogits.data, weight: camWeight.value.data, dWeight: dWeight.data, dTokens: dTokens.data)

        let trainer = try tinyTrainer(auxLayer: 0)
        let r = try labels.withUnsafeBufferPointer { try trainer.trainStep(view: view, secondView: nil, labels: $0.baseAddress!) { _ in [] } }
        XCTAssertEqual(r.clsLoss, expected, accuracy: 1e-6)
        XCTAssertEqual(r.auxLoss, 0)
        let got = gradients(trainer)["cam_head.weight"]!
        for (a, e) in zip(got, dWeight.toArray()) { XCTAssertEqual(a, e, accuracy: 1e-6) }
    }

    func testSettingsRefuseAnAuxiliaryBlockOutsideTheBackbone() throws {
        XCTAssertThrowsError(try tinyTrainer(auxLayer: -4)) { XCTAssertTrue("\($0)".contains("aux_layer -4"), "\($0)") }
        var s = SingleStageSettings()
        s.auxLayer = 2
        XCTAssertThrowsError(try s.validate()) { XCTAssertTrue("\($0)".contains("aux_layer 2"), "\($0)") }
        s.auxLayer = -3
        s.auxLow = 0.8
        XCTAssertThrowsError(try s.validate()) { XCTAssertTrue("\($0)".contains("aux_low"), "\($0)") }
    }
}
