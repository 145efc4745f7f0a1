import ACR
import AReAM
import ArtifactStore
import Engine
import Localization
import TestSupport
import XCTest

/// Training with a method's objective must move the attention the way the paper says, on a tiny
/// fixed problem (the parity fixtures' models and images): a sign or wiring error in the objective
/// fails here even where each piece matches its reference. Plain gradient descent on the
/// objective's own gradient only, so nothing else can produce the effect.
final class TrainingDirectionTests: XCTestCase {
    /// `steps` of w -= lr * dL/dw with L what `objective` contributes (its own backward included).
    func descend(_ model: ViT, _ objective: TrainingObjective, images: Tensor, labels: [Float], steps: Int, lr: Float) throws {
        for step in 0..<steps {
            model.zeroGrad()
            let acts = model.forward(images: images, training: true)
            var grads = ViTOutputGrads()
            _ = try labels.withUnsafeBufferPointer {
                try objective.contribute(model: model, images: images, labels: $0.baseAddress!, activations: acts, grads: &grads, step: step)
            }
            model.backward(acts, grads)
            for q in model.parameterList { for i in 0..<q.value.count { q.value.data[i] -= lr * q.grad.data[i] } }
        }
    }

    /// AReAM (eq. 15): after training on the term, the supervised layers' attention affinity
    /// sigmoid(head-mean logit) rises on the positive pairs of the fixture's labels and pulls away
    /// from the negative pairs'. Measured (30 steps, lr 0.1): positives 0.42 -> 0.76, negatives
    /// 0.43 -> 0.53, so the gap goes from -0.02 to +0.23; the test asks for +0.03 and +0.05.
    func testAReAMRaisesPositiveAndLowersNegativeAffinity() throws {
        let root = try openFixture("aream_parity.h5")
        let model = try fixtureViT(root)
        let images = try root.read("input/images", as: Float.self)
        let input = Tensor(shape: images.shape, values: images.values)
        let labels = try root.read("input/labels", as: Float.self).values
        let layers = AReAMObjective.defaultLayers(depth: model.config.depth)
        let pairs = try root.read("output/token_labels", as: UInt8.self).values
        let n = pairs.count / input.shape[0]

        /// Mean sigmoid affinity over the fixture's positive and negative pairs, supervised layers.
        func affinities() -> (positive: Double, negative: Double) {
            let acts = model.forward(images: input)
            let T = n + 1, H = model.config.heads
            var sums = [0.0, 0.0], counts = [0, 0]
            for l in layers {
                let logits = acts.attnLogits[l].data
                for b in 0..<input.shape[0] {
                    for i in 0..<n {
                        for j in 0..<n {
                            let (a, c) = (pairs[b * n + i], pairs[b * n + j])
                            guard a != 255, c != 255 else { continue }
                            var mean = 0.0
                            for h in 0..<H { mean += Double(logits[((b * H + h) * T + 1 + i) * T + 1 + j]) }
                            let kind = a == c ? 0 : 1
                            sums[kind] += 1 / (1 + exp(-mean / Double(H)))
                            counts[kind] += 1
                        }
                    }
                }
            }
            return (sums[0] / Double(counts[0]), sums[1] / Double(counts[1]))
        }
        let before = affinities()
        let objective = AReAMObjective(labels: AReAMTrainingLabels(), layers: layers, lossWeight: 1, warmupSteps: 0)
        try descend(model, objective, images: input, labels: labels, steps: 30, lr: 0.1)
        let after = affinities()
        print("AReAM affinity: positives \(before.positive) -> \(after.positive), negatives \(before.negative) -> \(after.negative)")
        XCTAssertGreaterThan(after.positive - before.positive, 0.03, "positive-pair affinity must rise")
        // Negatives are few and their tokens share the positives' rows, so the term mostly separates
        // them relatively: the gap between the two must widen.
        XCTAssertGreaterThan((after.positive - after.negative) - (before.positive - before.negative), 0.05,
                             "positive pairs must pull away from negative pairs")
    }

    /// ACR (eq. 1-2, 6): training on the objective makes the attention of an image and of its view
    /// agree: L_act + L_aff falls, for both views. Measured (20 steps): flip 0.073 -> 0.026, rot90
    /// 0.069 -> 0.030; the test asks for a 20 % drop.
    func testACRMakesTheViewsAttentionAgree() throws {
        let root = try openFixture("acr_parity.h5")
        let images = try root.read("input/images", as: Float.self)
        let input = Tensor(shape: images.shape, values: images.values)
        let labels = try root.read("input/labels", as: Float.self).values
        for view in [ConsistencyView.flip, .rot90] {
            let model = try fixtureViT(root)
            let order = try view.tokenOrder(gridH: model.config.grid, gridW: model.config.grid)
            func disagreement() throws -> Double {
                let first = model.forward(images: input).attnProbs
                let second = model.forward(images: try view.transform(input)).attnProbs
                let terms = AttentionConsistency.evaluate(probs1: first, probs2: second, order: order, alpha: 1, beta: 1)
                return terms.activation + terms.affinity
            }
            let before = try disagreement()
            // The view's classification loss rides along in the objective; weight the consistency
            // heavily so that it dominates the direction.
            try descend(model, ACRObjective(view: view, alpha: 20, beta: 20), images: input, labels: labels, steps: 20, lr: 0.05)
            let after = try disagreement()
            print("ACR \(view): L_act + L_aff \(before) -> \(after)")
            XCTAssertLessThan(after, 0.8 * before, "\(view): the views' attention must come to agree")
        }
    }
}
