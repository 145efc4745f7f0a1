import ArtifactStore
import TestSupport
import XCTest
@testable import Engine

/// The whole Swift ViT against PyTorch: Fixtures/vit_parity.h5 and vit_parity_dinov2.h5, written
/// by Tests/Fixtures/make_parity_fixtures.py from a float64 PyTorch evaluation of the same 2-layer
/// model (16x16 images, patch 4, dim 24, 3 heads, 5 classes, batch 2); the second with DINOv2's
/// block (LayerScale, exact GELU). Every test runs on both.
final class ViTParityTests: XCTestCase {
    var root: HDF5Group!
    var model: ViT!

    static let fixtures = [AdamWParityTests.fixturePath,
                           URL(fileURLWithPath: AdamWParityTests.fixturePath).deletingLastPathComponent().appendingPathComponent("vit_parity_dinov2.h5").path]

    /// Runs `body` once per fixture with `root` and `model` set up from it.
    func forEachFixture(_ body: () throws -> Void) throws {
        for path in Self.fixtures {
            try load(path)
            try body()
        }
    }

    func load(_ path: String) throws {
        root = try HDF5File.open(path).root
        let cfg = try root.group("config")
        func int(_ key: String) throws -> Int { Int(try cfg.int64Attribute(key)) }
        let layerScale = cfg.hasAttribute("layer_scale") ? try int("layer_scale") != 0 : false
        let gelu = cfg.hasAttribute("gelu") ? GELUForm(rawValue: try cfg.stringAttribute("gelu"))! : .tanh
        let config = ViTConfig(imageSize: try int("image_size"), patchSize: try int("patch_size"), depth: try int("depth"),
                               dim: try int("dim"), heads: try int("heads"), mlpRatio: try int("mlp_ratio"),
                               numClasses: try int("num_classes"), layerNormEps: try cfg.doubleAttribute("layernorm_eps"),
                               layerScale: layerScale, gelu: gelu)
        model = try ViT(config: config, seed: 99)
        let weights = try root.group("weights")
        var state: [String: (shape: [Int], values: [Float])] = [:]
        for name in try weights.childNames() {
            let array = try weights.read(name, as: Float.self)
            state[name] = (array.shape, array.values)
        }
        try model.load(state)
    }

    func tensor(_ path: String) throws -> Tensor {
        let array = try root.read(path, as: Float.self)
        return Tensor(shape: array.shape, values: array.values)
    }

    /// max |ours - reference| / max |reference|: one number per tensor, insensitive to entries
    /// that happen to be near zero.
    func relativeError(_ ours: UnsafePointer<Float>, _ reference: [Float], file: StaticString = #filePath, line: UInt = #line) -> Double {
        var worst = 0.0, scale = 0.0
        for i in 0..<reference.count {
            worst = max(worst, abs(Double(ours[i]) - Double(reference[i])))
            scale = max(scale, abs(Double(reference[i])))
        }
        XCTAssertGreaterThan(scale, 0, "reference is all zeros", file: file, line: line)
        return worst / scale
    }

    func assertClose(_ ours: Tensor, _ path: String, _ tolerance: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        let reference = try root.read(path, as: Float.self)
        XCTAssertEqual(ours.count, reference.count, path, file: file, line: line)
        guard ours.count == reference.count else { return }
        let error = relativeError(ours.data, reference.values, file: file, line: line)
        XCTAssertLessThan(error, tolerance, "\(path): relative error \(error)", file: file, line: line)
    }

    func testForwardMatchesPyTorch() throws {
        try forEachFixture {
            let acts = model.forward(images: try tensor("input/images"))
            for l in 0..<model.config.depth {
                try assertClose(acts.attnLogits[l], "forward/attn_logits.\(l)", 1e-4)
                try assertClose(acts.attnProbs[l], "forward/attn_probs.\(l)", 1e-4)
            }
            try assertClose(acts.tokens, "forward/norm", 1e-4)
            try assertClose(acts.patchScores, "forward/patch_scores", 1e-4)
            try assertClose(acts.camLogits, "forward/cam_logits", 1e-4)
            try assertClose(acts.clsLogits, "forward/cls_logits", 1e-4)

            let labels = try root.read("input/labels", as: Float.self).values
            let batch = acts.camLogits.shape[0], classes = acts.camLogits.shape[1]
            let loss = ClassificationLoss.multilabelSoftMargin(logits: acts.camLogits.data, labels: labels, batch: batch, classes: classes)
                + ClassificationLoss.multilabelSoftMargin(logits: acts.clsLogits.data, labels: labels, batch: batch, classes: classes)
            let reference = try root.read("forward/loss", as: Double.self).values[0]
            XCTAssertEqual(loss, reference, accuracy: 1e-5 * reference)
        }
    }

    func testGradientsMatchPyTorch() throws {
        try forEachFixture {
            let acts = model.forward(images: try tensor("input/images"))
            let labels = try root.read("input/labels", as: Float.self).values
            let batch = acts.camLogits.shape[0], classes = acts.camLogits.shape[1]
            let gCam = Tensor(shape: [batch, classes]), gCls = Tensor(shape: [batch, classes])
            ClassificationLoss.multilabelSoftMargin(logits: acts.camLogits.data, labels: labels, batch: batch, classes: classes, gradient: gCam.data)
            ClassificationLoss.multilabelSoftMargin(logits: acts.clsLogits.data, labels: labels, batch: batch, classes: classes, gradient: gCls.data)
            model.zeroGrad()
            model.backward(acts, ViTOutputGrads(camLogits: gCam, clsLogits: gCls, recordAttentionGrads: true))
            let names = try root.group("grads").childNames()
            XCTAssertEqual(Set(names), Set(model.parameters.map(\.name)))
            for p in model.parameters {
                try assertClose(p.grad, "grads/\(p.name)", 1e-3)
            }
            XCTAssertEqual(acts.attnProbsGrad.count, model.config.depth)
            for (l, grad) in acts.attnProbsGrad.enumerated() {
                try assertClose(grad, "grads_attn_probs/\(l)", 1e-3)
            }
        }
    }

    /// A 24x24 input (6x6 grid against the trained 4x4) interpolates the position embedding.
    func testInterpolatedInputMatchesPyTorch() throws {
        try forEachFixture {
            let acts = model.forward(images: try tensor("interp/images"))
            try assertClose(acts.camLogits, "interp/cam_logits", 1e-4)
            try assertClose(acts.clsLogits, "interp/cls_logits", 1e-4)
        }
    }

    /// The trainer's whole step (our gradients, our AdamW with the fixture's settings, no
    /// clipping, constant lr) lands where torch.optim.AdamW did. Adam's first step is about
    /// lr * sign(g), so entries whose true gradient is zero move by +-lr on rounding noise alone in
    /// either framework: the key part of the qkv bias is exactly such a case (a constant added to
    /// every key shifts each softmax row uniformly). Entries whose reference gradient is below
    /// 1e-6 of the parameter's largest are left out; AdamWParityTests covers them with torch's
    /// own gradients.
    func testTrainerStepMatchesPyTorch() throws {
        try forEachFixture {
            let adam = try root.group("adamw")
            var settings = OptimizerSettings()
            settings.lr = try adam.doubleAttribute("lr")
            settings.headLRMultiplier = try adam.doubleAttribute("head_lr_mult")
            settings.weightDecay = try adam.doubleAttribute("weight_decay")
            settings.beta1 = try adam.doubleAttribute("beta1")
            settings.beta2 = try adam.doubleAttribute("beta2")
            settings.eps = try adam.doubleAttribute("eps")
            settings.clipGradNorm = 0
            settings.warmupSteps = 0
            settings.totalSteps = 1
            settings.minLRFactor = 1
            let trainer = ClassifierTrainer(model: model, settings: settings)
            let before = model.parameters.map { Array(UnsafeBufferPointer(start: $0.value.data, count: $0.value.count)) }
            let labels = try root.read("input/labels", as: Float.self).values
            let result = try trainer.trainStep(images: try tensor("input/images"), labels: labels)
            XCTAssertEqual(result.loss, try root.read("forward/loss", as: Double.self).values[0], accuracy: 1e-5)
            XCTAssertEqual(result.gradNorm, try root.group("grads").doubleAttribute("global_norm"), accuracy: 1e-4 * result.gradNorm)
            for (index, p) in model.parameters.enumerated() {
                let expected = try adam.read("step1/\(p.name)", as: Float.self).values
                let grad = try root.read("grads/\(p.name)", as: Float.self).values
                let largest = grad.map(abs).max() ?? 0
                let kept = (0..<p.value.count).filter { abs(grad[$0]) > 1e-6 * largest }
                XCTAssertGreaterThan(kept.count, p.value.count / 2, p.name)
                let ours = kept.map { p.value.data[$0] - before[index][$0] }
                let theirs = kept.map { expected[$0] - before[index][$0] }
                let error = ours.withUnsafeBufferPointer { relativeError($0.baseAddress!, theirs) }
                XCTAssertLessThan(error, 1e-3, "\(p.name): update relative error \(error)")
            }
        }
    }
}
