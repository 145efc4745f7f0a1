import ArtifactStore
import Engine
import FSR
import SingleStage
import TestSupport
import XCTest

/// One SingleStageTrainer step with FSR against PyTorch (Fixtures/fsr_step.h5, written by
/// Tests/Fixtures/make_fsr_step_fixtures.py from the FSR paper and its released code): a 2-layer
/// ViT with a mask token and a one-block FSR head, uncertainty-guided masking whose quota equals
/// the number of uncertain patches (so the mask is deterministic), segmentation off.
final class FSRStepParityTests: XCTestCase {
    func testTrainStepMatchesReference() throws {
        let root = try openFixture("fsr_step.h5")
        let cfg = try root.group("config")
        func int(_ key: String) throws -> Int { Int(try cfg.int64Attribute(key)) }
        func attr(_ key: String) throws -> Double { try root.doubleAttribute(key) }
        let config = ViTConfig(imageSize: try int("image_size"), patchSize: try int("patch_size"), depth: try int("depth"), dim: try int("dim"),
                               heads: try int("heads"), mlpRatio: try int("mlp_ratio"), numClasses: try int("num_classes"),
                               layerNormEps: try cfg.doubleAttribute("layernorm_eps"), maskToken: true)
        let backbone = try ViT(config: config, seed: 1)
        let head = try FSRHead(config: FSRHeadConfig(dim: config.dim, heads: try int("fsr_heads"), blocks: try int("fsr_blocks"),
                                                     mlpRatio: try int("fsr_mlp_ratio"), projectorHidden: try int("projector_hidden"),
                                                     bottleneck: try int("bottleneck"), outDim: try int("out_dim"),
                                                     layerNormEps: try cfg.doubleAttribute("layernorm_eps")), seed: 1)
        let weights = try root.group("weights")
        var state: [String: (shape: [Int], values: [Float])] = [:]
        for q in backbone.parameterList {
            let array = try weights.read(q.name, as: Float.self)
            state[q.name] = (array.shape, array.values)
        }
        try backbone.load(state)
        for p in head.parameters {
            let values = try weights.read(p.name, as: Float.self).values
            XCTAssertEqual(values.count, p.value.count, p.name)
            for i in 0..<values.count { p.value.data[i] = values[i] }
        }
        let decoder = try SegDecoder(config: SegDecoderConfig(inChannels: config.dim, channels: 4, numClasses: config.numClasses + 1), seed: 1)
        var settings = SingleStageSettings()
        settings.fsr = true
        settings.segWeight = 0
        settings.optimizer.lr = try attr("lr")
        settings.optimizer.backboneLRMultiplier = try attr("backbone_lr_multiplier")
        settings.optimizer.weightDecay = try attr("weight_decay")
        settings.optimizer.beta1 = try attr("beta1")
        settings.optimizer.beta2 = try attr("beta2")
        settings.optimizer.eps = try attr("eps")
        settings.optimizer.clipGradNorm = 1e9  // the reference does not clip
        settings.optimizer.totalSteps = 10
        settings.maskRatio = try attr("mask_ratio")
        settings.uncertainLow = try attr("uncertain_low")
        settings.uncertainHigh = try attr("uncertain_high")
        settings.randomMaskFraction = 0
        settings.fsrClassWeight = try attr("class_weight")
        settings.fsrPatchWeight = try attr("patch_weight")
        settings.teacherTemp = try attr("teacher_temp")
        settings.teacherTempWarmupFraction = 0
        settings.studentTemp = try attr("student_temp")
        settings.centreMomentum = try attr("centre_momentum")
        settings.teacherMomentum = try attr("teacher_momentum")
        let trainer = try SingleStageTrainer(network: try SegNetwork(backbone: backbone, decoder: decoder), head: head, settings: settings, seed: 5)

        func images(_ name: String) throws -> Tensor {
            let a = try root.read(name, as: Float.self)
            return Tensor(shape: a.shape, values: a.values)
        }
        let labels = try root.read("input/labels", as: Float.self).values
        let result = try labels.withUnsafeBufferPointer {
            try trainer.trainStep(view: try images("input/view"), secondView: try images("input/second_view"), labels: $0.baseAddress!,
                                  pseudoLabels: { _ in XCTFail("segmentation is off"); return [] })
        }
        func scalar(_ name: String) throws -> Double { try root.read("output/\(name)", as: Double.self).values[0] }
        let mask = try root.read("output/mask", as: UInt8.self).values
        XCTAssertEqual(result.maskedFraction, Double(mask.filter { $0 != 0 }.count) / Double(mask.count))
        // Losses: 1e-5 relative (float32).
        for (ours, name) in [(result.loss, "loss"), (result.clsLoss, "cls_loss"), (result.fsrClassLoss, "class_loss"), (result.fsrPatchLoss, "patch_loss")] {
            let expected = try scalar(name)
            XCTAssertEqual(ours, expected, accuracy: 1e-5 * abs(expected), name)
        }
        // Gradients (left in place by the step; no clipping here): 1e-3 relative to each tensor's
        // largest entry (two student forwards, the head and the teacher targets in float32).
        // Updated student and teacher weights: 1e-6 absolute. AdamW's first step moves each weight
        // by about lr * sign(g) (1e-3 for heads, 1e-4 for the backbone), so a wrong group, learning
        // rate or decay moves a weight by far more than that, and so does a flipped gradient sign.
        let grads = try root.group("grads"), updated = try root.group("updated"), teacher = try root.group("teacher")
        let teacherParameters = trainer.teacher!.parameterList.map { ($0.name, $0.value) } + trainer.teacherHead!.parameters.map { ($0.name, $0.value) }
        let teacherByName = Dictionary(uniqueKeysWithValues: teacherParameters)
        let student = backbone.parameterList.map { ($0.name, $0.value, $0.grad) } + head.parameters.map { ($0.name, $0.value, $0.grad) }
        for (name, value, grad) in student {
            let expectedGrad = try grads.read(name, as: Double.self).values
            if expectedGrad.allSatisfy({ $0 == 0 }) { XCTAssertEqual(maxAbs(grad), 0, name) } else { assertRelativelyClose(grad.data, expectedGrad, 1e-3, "gradient of \(name)") }
            let expectedValue = try updated.read(name, as: Double.self).values
            for i in 0..<expectedValue.count {
                // Where |g| < 100 eps, the first step's g / (|g| + eps) is ill-conditioned in g.
                let tolerance = abs(expectedGrad[i]) < 1e-6 ? 2 * settings.optimizer.lr : 1e-6
                XCTAssertEqual(Double(value.data[i]), expectedValue[i], accuracy: tolerance, "updated \(name)[\(i)]")
            }
            let expectedTeacher = try teacher.read(name, as: Double.self).values
            let t = teacherByName[name]!
            for i in 0..<expectedTeacher.count { XCTAssertEqual(Double(t.data[i]), expectedTeacher[i], accuracy: 1e-6, "teacher \(name)[\(i)]") }
        }
        assertRelativelyClose(trainer.classCentre!.data, try root.read("output/class_centre", as: Double.self).values, 1e-4, "class centre")
        assertRelativelyClose(trainer.patchCentre!.data, try root.read("output/patch_centre", as: Double.self).values, 1e-4, "patch centre")
    }
}
