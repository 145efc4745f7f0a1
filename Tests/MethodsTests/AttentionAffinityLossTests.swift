import Primitives
@testable import AReAM
import TestSupport
import XCTest
@testable import Engine

/// AReAM eq. 15 on raw attention logits: gradients, known answers, and the path through the ViT.
final class AttentionAffinityLossTests: XCTestCase {
    /// Random {1, 0, 255} labels over [B, n, n].
    func randomLabels(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
        (0..<count).map { _ in [UInt8(1), 0, 255][Int(rng.next() % 3)] }
    }

    func loss(_ logits: DTensor, _ labels: [UInt8], gradient: DTensor? = nil, weight: Double = 1) -> AttentionAffinityLoss.Result {
        let (B, H, T) = (logits.shape[0], logits.shape[1], logits.shape[2])
        return labels.withUnsafeBufferPointer {
            AttentionAffinityLoss.compute(logits: logits.data, labels: $0.baseAddress!, batch: B, heads: H, tokens: T,
                                          gradient: gradient?.data, weight: weight)
        }
    }

    func testGradientMatchesFiniteDifferences() {
        var rng = SplitMix64(seed: 11)
        let (B, H, T) = (2, 3, 5), n = T - 1
        let logits = randomTensor([B, H, T, T], &rng, std: 1.5)
        let labels = randomLabels(B * n * n, &rng)
        let grad = DTensor(shape: logits.shape)
        let weight = 0.7
        let result = loss(logits, labels, gradient: grad, weight: weight)
        XCTAssertGreaterThan(result.positives, 0)
        XCTAssertGreaterThan(result.negatives, 0)
        checkGradient("affinity loss", input: logits, analytic: grad) { weight * loss(logits, labels).loss }
        // The class token's row and column are not supervised.
        for b in 0..<B { for h in 0..<H { for t in 0..<T {
            XCTAssertEqual(grad[b, h, 0, t], 0)
            XCTAssertEqual(grad[b, h, t, 0], 0)
        } } }
    }

    func testGradientAddsIntoExistingBuffer() {
        var rng = SplitMix64(seed: 12)
        let logits = randomTensor([1, 2, 4, 4], &rng)
        let labels = randomLabels(9, &rng)
        let fresh = DTensor(shape: logits.shape), preset = DTensor(shape: logits.shape)
        preset.fill(0.25)
        _ = loss(logits, labels, gradient: fresh)
        _ = loss(logits, labels, gradient: preset)
        for i in 0..<fresh.count { XCTAssertEqual(preset.data[i], fresh.data[i] + 0.25, accuracy: 1e-15) }
    }

    /// Independent numbers: at zero logits every sigmoid is 1/2, so each non-empty mean is 1/2;
    /// a head mean of +-x gives sigmoid(x) for both kinds of pairs.
    func testKnownValues() {
        let (B, H, T) = (1, 2, 3), n = 2
        let zero = DTensor(shape: [B, H, T, T])
        XCTAssertEqual(loss(zero, [1, 0, 0, 1]).loss, 1, accuracy: 1e-12)
        XCTAssertEqual(loss(zero, [1, 255, 255, 1]).loss, 0.5, accuracy: 1e-12)
        let result = loss(zero, [1, 0, 0, 255])
        XCTAssertEqual(result.positives, 1)
        XCTAssertEqual(result.negatives, 2)
        // Head 0 holds 3 and head 1 holds 1 on every patch pair: their mean is 2.
        let logits = DTensor(shape: [B, H, T, T])
        for i in 1..<T { for j in 1..<T { logits[0, 0, i, j] = 3; logits[0, 1, i, j] = 1 } }
        let s = 1 / (1 + exp(-2.0))
        XCTAssertEqual(loss(logits, [1, 1, 0, 0]).loss, (1 - s) + s, accuracy: 1e-12)
        XCTAssertEqual(loss(logits, [UInt8](repeating: 1, count: n * n)).loss, 1 - s, accuracy: 1e-12)
    }

    func testAllPositiveLabelsPushSigmoidUp() {
        var rng = SplitMix64(seed: 13)
        let (B, H, T) = (2, 2, 5), n = T - 1
        let logits = randomTensor([B, H, T, T], &rng)
        let labels = [UInt8](repeating: 1, count: B * n * n)
        let grad = DTensor(shape: logits.shape)
        let before = loss(logits, labels, gradient: grad)
        XCTAssertEqual(before.positives, B * n * n)
        XCTAssertEqual(before.negatives, 0)
        func meanSigmoid() -> Double {
            var s = 0.0
            for b in 0..<B { for i in 1..<T { for j in 1..<T {
                var a = 0.0
                for h in 0..<H { a += logits[b, h, i, j] }
                s += 1 / (1 + exp(-a / Double(H)))
            } } }
            return s / Double(B * n * n)
        }
        let sigmoidBefore = meanSigmoid()
        for b in 0..<B { for h in 0..<H { for i in 1..<T { for j in 1..<T { XCTAssertLessThan(grad[b, h, i, j], 0) } } } }
        for i in 0..<logits.count { logits.data[i] -= 10 * grad.data[i] }  // one gradient step
        XCTAssertLessThan(loss(logits, labels).loss, before.loss)
        XCTAssertGreaterThan(meanSigmoid(), sigmoidBefore)
    }

    func testAllIgnoredGivesZeroLossAndGradient() {
        var rng = SplitMix64(seed: 14)
        let logits = randomTensor([2, 2, 5, 5], &rng)
        let grad = DTensor(shape: logits.shape)
        let result = loss(logits, [UInt8](repeating: 255, count: 2 * 16), gradient: grad)
        XCTAssertEqual(result, .init(loss: 0, positives: 0, negatives: 0))
        XCTAssertEqual(maxAbs(grad), 0)
    }

    func testFloatAgreesWithDouble() {
        var rng = SplitMix64(seed: 15)
        let (B, H, T) = (2, 3, 10), n = T - 1
        let logits = randomTensor([B, H, T, T], &rng, std: 2)
        let labels = randomLabels(B * n * n, &rng)
        let grad = DTensor(shape: logits.shape)
        let expected = loss(logits, labels, gradient: grad, weight: 0.3)
        let floatLogits = Tensor(shape: logits.shape, values: (0..<logits.count).map { Float(logits.data[$0]) })
        let floatGrad = Tensor(shape: logits.shape)
        let got = labels.withUnsafeBufferPointer {
            AttentionAffinityLoss.compute(logits: floatLogits.data, labels: $0.baseAddress!, batch: B, heads: H, tokens: T,
                                          gradient: floatGrad.data, weight: 0.3)
        }
        XCTAssertEqual(got.loss, expected.loss, accuracy: 1e-5)
        XCTAssertLessThan(maxAbsDiff(floatGrad, grad), 1e-6)
    }

    /// The loss on a layer's logits, fed to the ViT's backward as `attnLogits`, gives the
    /// parameters the gradient central differences measure.
    func testThroughTheModel() {
        let config = ViTConfig(imageSize: 8, patchSize: 4, depth: 2, dim: 8, heads: 2, mlpRatio: 2, numClasses: 2)
        let m = try! ViTOf<Double>(config: config, seed: 3)
        var rng = SplitMix64(seed: 16)
        for p in m.parameterList where p.value.rank > 1 { p.value.fillNormal(std: 0.5, rng: &rng) }
        let images = randomTensor([2, 8, 8, 3], &rng)
        let T = 5, labels = randomLabels(2 * 16, &rng)
        func run() -> (ViTActivationsOf<Double>, Double) {
            let a = m.forward(images: images, training: false)
            return (a, loss(a.attnLogits[1], labels).loss)
        }
        let (a, _) = run()
        let grad = DTensor(shape: [2, config.heads, T, T])
        _ = loss(a.attnLogits[1], labels, gradient: grad)
        m.zeroGrad()
        m.backward(a, ViTOutputGradsOf(attnLogits: [1: grad]))
        var sample = SplitMix64(seed: 17)
        for p in m.parameterList where p.name.hasPrefix("blocks.1.attn.qkv") || p.name.hasPrefix("blocks.0.mlp") || p.name == "pos_embed" {
            checkGradient(p.name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 6, &sample), rtol: 1e-5) { run().1 }
        }
    }
}
