import ArtifactStore
import Engine
import FSR
import SingleStage
import TestSupport
import XCTest

/// One SingleStageTrainer step with FSR against PyTorch (Fixtures/fsr_step.h5 and fsr_seg_step.h5,
/// both written by Tests/Fixtures/make_fsr_step_fixtures.py from the FSR paper and its released
/// code): a 2-layer ViT with a mask token and a one-block FSR head, uncertainty-guided masking whose
/// quota equals the number of uncertain patches (so the mask is deterministic); segmentation off,
/// then on.
final class FSRStepParityTests: XCTestCase {
    func testTrainStepMatchesReference() throws {
        try checkStep(fixture: "fsr_step.h5", segmentation: false)
    }

    /// The whole composition: the same step with the segmentation branch on (decoder with its image
    /// detail branch on the student's patch features, logits resized bilinearly, align_corners=False,
    /// to the labels; pixel cross-entropy on fixed pseudo labels with 255 pixels, weight 0.4), its
    /// gradient added to the FSR terms' in the backbone, the decoder in the head AdamW groups.
    /// seg_warmup_steps is 0, so segmentation is active at step 0. The seg loss is the plain mean
    /// cross-entropy over labelled pixels, as the trainer documents it; the released FSR/ToCo code's
    /// get_seg_loss averages a background-only and a foreground-only cross-entropy instead (see
    /// the script's docstring).
    func testTrainStepWithSegmentationMatchesReference() throws {
        try checkStep(fixture: "fsr_seg_step.h5", segmentation: true)
    }

    private func checkStep(fixture: String, segmentation: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let root = try openFixture(fixture)
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
        let decoderConfig = segmentation
            ? SegDecoderConfig(inChannels: config.dim, channels: try int("decoder_channels"),
                               dilations: try cfg.doublesAttribute("decoder_dilations").map { Int($0) }, numClasses: config.numClasses + 1,
                               detailChannels: try int("decoder_detail_channels"))
            : SegDecoderConfig(inChannels: config.dim, channels: 4, numClasses: config.numClasses + 1)
        let decoder = try SegDecoder(config: decoderConfig, seed: 1)
        let weights = try root.group("weights")
        func state(_ names: [String]) throws -> [String: (shape: [Int], values: [Float])] {
            var state: [String: (shape: [Int], values: [Float])] = [:]
            for name in names {
                let array = try weights.read(name, as: Float.self)
                state[name] = (array.shape, array.values)
            }
            return state
        }
        try backbone.load(try state(backbone.parameterList.map(\.name)))
        if segmentation { try decoder.load(try state(decoder.parameters.map(\.name))) }
        for p in head.parameters {
            let values = try weights.read(p.name, as: Float.self).values
            XCTAssertEqual(values.count, p.value.count, p.name, file: file, line: line)
            for i in 0..<values.count { p.value.data[i] = values[i] }
        }
        var settings = SingleStageSettings()
        settings.fsr = true
        settings.segWeight = segmentation ? try attr("seg_weight") : 0
        settings.segWarmupSteps = 0
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
        XCTAssertTrue(trainer.segmentationActive, file: file, line: line)

        func images(_ name: String) throws -> Tensor {
            let a = try root.read(name, as: Float.self)
            return Tensor(shape: a.shape, values: a.values)
        }
        let labels = try root.read("input/labels", as: Float.self).values
        let pseudo = segmentation ? try root.read("input/pseudo_labels", as: UInt8.self).values : []
        var pseudoCalls = 0
        let result = try labels.withUnsafeBufferPointer {
            try trainer.trainStep(view: try images("input/view"), secondView: try images("input/second_view"), labels: $0.baseAddress!,
                                  pseudoLabels: { _ in pseudoCalls += 1; return pseudo })
        }
        XCTAssertEqual(pseudoCalls, segmentation ? 1 : 0, "pseudo labels asked for exactly while segmentation is on", file: file, line: line)
        func scalar(_ name: String) throws -> Double { try root.read("output/\(name)", as: Double.self).values[0] }
        let mask = try root.read("output/mask", as: UInt8.self).values
        XCTAssertEqual(result.maskedFraction, Double(mask.filter { $0 != 0 }.count) / Double(mask.count), file: file, line: line)
        XCTAssertEqual(result.labelledFraction, segmentation ? Double(pseudo.filter { $0 != 255 }.count) / Double(pseudo.count) : 0,
                       file: file, line: line)
        // Losses: 1e-5 relative (float32). The total includes seg_weight * seg_loss, so a wrong
        // weight or sign of the seg term in the total fails here.
        var losses = [(result.loss, "loss"), (result.clsLoss, "cls_loss"), (result.fsrClassLoss, "class_loss"), (result.fsrPatchLoss, "patch_loss")]
        if segmentation { losses.append((result.segLoss, "seg_loss")) } else { XCTAssertEqual(result.segLoss, 0, file: file, line: line) }
        for (ours, name) in losses {
            let expected = try scalar(name)
            XCTAssertEqual(ours, expected, accuracy: 1e-5 * abs(expected), name, file: file, line: line)
        }
        // Gradients (left in place by the step; no clipping here): 1e-3 relative to each tensor's
        // largest entry (two student forwards, the head, the decoder and the teacher targets in
        // float32). With segmentation the seg term is 12-54% of each backbone tensor's largest
        // gradient, so a flipped sign or a wrong weight of its gradient fails by far.
        // Updated student and teacher weights: 1e-6 absolute. AdamW's first step moves each weight
        // by about lr * sign(g) (1e-3 for heads and decoder, 1e-4 for the backbone), so a wrong
        // group, learning rate or decay moves a weight by far more than that, and so does a flipped
        // gradient sign. The teacher (EMA of backbone and FSR head) has no decoder.
        let grads = try root.group("grads"), updated = try root.group("updated"), teacher = try root.group("teacher")
        let teacherParameters = trainer.teacher!.parameterList.map { ($0.name, $0.value) } + trainer.teacherHead!.parameters.map { ($0.name, $0.value) }
        let teacherByName = Dictionary(uniqueKeysWithValues: teacherParameters)
        var student = backbone.parameterList.map { ($0.name, $0.value, $0.grad) } + head.parameters.map { ($0.name, $0.value, $0.grad) }
        if segmentation { student += decoder.parameters.map { ($0.name, $0.value, $0.grad) } }
        XCTAssertEqual(Set(try grads.childNames()), Set(student.map(\.0)), "the reference's parameters", file: file, line: line)
        for (name, value, grad) in student {
            let expectedGrad = try grads.read(name, as: Double.self).values
            if expectedGrad.allSatisfy({ $0 == 0 }) {
                XCTAssertEqual(maxAbs(grad), 0, name, file: file, line: line)
            } else {
                assertRelativelyClose(grad.data, expectedGrad, 1e-3, "gradient of \(name)", file: file, line: line)
            }
            assertUpdatedWeightsClose(value.data, try updated.read(name, as: Double.self).values, gradients: expectedGrad,
                                      lr: settings.optimizer.lr, name, file: file, line: line)
            if name.hasPrefix("decoder.") {
                XCTAssertFalse(teacher.contains(name), name, file: file, line: line)
                continue
            }
            let expectedTeacher = try teacher.read(name, as: Double.self).values
            let t = teacherByName[name]!
            for i in 0..<expectedTeacher.count {
                XCTAssertEqual(Double(t.data[i]), expectedTeacher[i], accuracy: 1e-6, "teacher \(name)[\(i)]", file: file, line: line)
            }
        }
        assertRelativelyClose(trainer.classCentre!.data, try root.read("output/class_centre", as: Double.self).values, 1e-4, "class centre",
                              file: file, line: line)
        assertRelativelyClose(trainer.patchCentre!.data, try root.read("output/patch_centre", as: Double.self).values, 1e-4, "patch centre",
                              file: file, line: line)
    }
}
