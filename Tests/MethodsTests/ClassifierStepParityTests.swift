import ACR
import AReAM
import ArtifactStore
import Engine
import Localization
import TestSupport
import XCTest

/// One ClassifierTrainer step -- what classify-train runs for every batch -- with AReAM's and with
/// ACR's objective hooked in, against PyTorch (Fixtures/aream_step.h5 and acr_step.h5, written by
/// Tests/Fixtures/make_classifier_step_fixtures.py from the models, inputs and method terms of
/// make_aream_fixtures.py and make_acr_fixtures.py): multi-label soft margin on both heads plus the
/// method's share of the loss, backward, global-norm clipping (active: the bound is half the step's
/// gradient norm), AdamW with the trainer's four parameter groups (heads at 10x the learning rate;
/// no decay on vectors, cls_token and pos_embed) at the schedule's step-0 learning rate (linear
/// warm-up over 2 steps: half the peak).
final class ClassifierStepParityTests: XCTestCase {
    /// AReAM with its term on from step 0 (aream_warmup_epochs = 0): online labels from the step's
    /// own forward, eq. 15-16 on the deep layers' raw attention logits, term weight 0.1.
    func testAReAMTrainStepMatchesReference() throws {
        let root = try openFixture("aream_step.h5")
        let labels = AReAMTrainingLabels(lowThreshold: Float(try root.doubleAttribute("low_background")),
                                         highThreshold: Float(try root.doubleAttribute("high_background")), weighting: .code)
        let layers = try root.doublesAttribute("layers").map { Int($0) }
        XCTAssertEqual(layers, AReAMObjective.defaultLayers(depth: Int(try root.group("config").int64Attribute("depth"))))
        let objective = AReAMObjective(labels: labels, layers: layers, lossWeight: try root.doubleAttribute("term_weight"), warmupSteps: 0)
        try checkStep(root, objective: objective, terms: ["aff_loss"])
    }

    /// ACR with the flip view (classify-train's default): a second forward and backward of the
    /// flipped batch, its classification losses, alpha L_act + beta L_aff (alpha 0.7, beta 1.3).
    func testACRTrainStepMatchesReference() throws {
        let root = try openFixture("acr_step.h5")
        let objective = ACRObjective(view: .flip, alpha: try root.doubleAttribute("alpha"), beta: try root.doubleAttribute("beta"))
        try checkStep(root, objective: objective, terms: ["acr_act", "acr_aff", "acr_view2_cls"])
    }

    private func checkStep(_ root: HDF5Group, objective: TrainingObjective, terms: [String],
                           file: StaticString = #filePath, line: UInt = #line) throws {
        let model = try fixtureViT(root)
        func attr(_ key: String) throws -> Double { try root.doubleAttribute(key) }
        var settings = OptimizerSettings()
        settings.lr = try attr("lr")
        settings.headLRMultiplier = try attr("head_lr_mult")
        settings.weightDecay = try attr("weight_decay")
        settings.beta1 = try attr("beta1")
        settings.beta2 = try attr("beta2")
        settings.eps = try attr("eps")
        settings.clipGradNorm = try attr("clip_grad_norm")
        settings.warmupSteps = Int(try root.int64Attribute("warmup_steps"))
        settings.totalSteps = Int(try root.int64Attribute("total_steps"))
        settings.minLRFactor = try attr("min_lr_factor")
        let trainer = ClassifierTrainer(model: model, settings: settings, objective: objective)
        let images = try root.read("input/images", as: Float.self)
        let labels = try root.read("input/labels", as: Float.self).values
        let result = try labels.withUnsafeBufferPointer {
            try trainer.trainStep(images: Tensor(shape: images.shape, values: images.values), labels: $0.baseAddress!)
        }
        func scalar(_ name: String) throws -> Double { try root.read("output/\(name)", as: Double.self).values[0] }
        XCTAssertEqual(result.lr, try scalar("lr"), accuracy: 1e-15, "learning rate", file: file, line: line)
        // Losses: 1e-5 relative (float32). The total holds the method's weighted share, so a wrong
        // weight or sign of the term fails here as well as in the gradients.
        var losses = [(result.loss, "loss"), (result.camLoss, "cam_loss"), (result.clsLoss, "cls_loss")]
        for name in terms { losses.append((result.terms[name] ?? .nan, name)) }
        for (ours, name) in losses {
            let expected = try scalar(name)
            XCTAssertEqual(ours, expected, accuracy: 1e-5 * abs(expected), name, file: file, line: line)
        }
        // The norm before clipping, summed in float32 over every gradient: 1e-4 relative.
        let norm = try scalar("grad_norm")
        XCTAssertEqual(result.gradNorm, norm, accuracy: 1e-4 * norm, "gradient norm", file: file, line: line)
        XCTAssertLessThan(settings.clipGradNorm, 0.6 * norm, "the clipping is active")
        // Gradients after clipping (left in place by the step): 1e-3 relative to each tensor's
        // largest entry (float32 through one or two forwards and backwards of the ViT). Updated
        // weights: 1e-6 absolute (assertUpdatedWeightsClose); AdamW's first step moves a weight by
        // about lr * sign(g) (5e-4 for the backbone, 5e-3 for the heads here), so a wrong group,
        // learning rate, decay or gradient sign fails by far. The looser bound (2 lr of the
        // tensor's group) applies where |g| < 1e-6: here only the key biases of qkv, whose gradient
        // is zero (softmax ignores a shift of its row; the reference's is ~1e-18, ours float32
        // noise), and a few weights of the last block's MLP.
        let grads = try root.group("grads"), updated = try root.group("updated")
        let parameters = model.trainableParameters
        XCTAssertEqual(Set(try grads.childNames()), Set(parameters.map(\.name)), "the reference's parameters", file: file, line: line)
        for p in parameters {
            let expectedGrad = try grads.read(p.name, as: Double.self).values
            assertRelativelyClose(p.grad.data, expectedGrad, 1e-3, "gradient of \(p.name)", file: file, line: line)
            assertUpdatedWeightsClose(p.value.data, try updated.read(p.name, as: Double.self).values, gradients: expectedGrad,
                                      lr: result.lr * (ParameterGrouping.headPrefixes.contains { p.name.hasPrefix($0) } ? settings.headLRMultiplier : 1),
                                      p.name, file: file, line: line)
        }
    }
}
