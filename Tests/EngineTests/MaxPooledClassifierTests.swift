import ArtifactStore
import Engine
import Primitives
import TestSupport
import XCTest

/// ToCo's and FSR's max-pooled classification head (`MaxPooledClassifier`).
final class MaxPooledClassifierTests: XCTestCase {
    /// Against PyTorch (Fixtures/max_pooled_head.h5, written by
    /// Tests/Fixtures/make_toco_head_fixtures.py): adaptive max pooling and a 1x1 convolution
    /// without bias over the patch rows of a hidden state whose row 0 is the class token, the
    /// multi-label soft margin loss, and the gradients on the hidden state and the weight.
    func testMatchesPyTorchOnAHiddenStateWithItsClassToken() throws {
        let root = try openFixture("max_pooled_head.h5")
        let hidden = try root.read("input/hidden", as: Double.self), weight = try root.read("input/weight", as: Double.self)
        let labels = try root.read("input/labels", as: Double.self)
        let B = hidden.shape[0], T = hidden.shape[1], D = hidden.shape[2], C = weight.shape[0], N = T - 1
        let h = DTensor(shape: hidden.shape, values: hidden.values), w = DTensor(shape: weight.shape, values: weight.values)
        let pass = MaxPooledClassifier.forward(tokens: h.data + D, batch: B, patches: N, dim: D, imageStride: T * D, weight: w.data, classes: C)
        let expectedLogits = try root.read("output/logits", as: Double.self).values
        for (a, e) in zip(pass.logits.toArray(), expectedLogits) { XCTAssertEqual(a, e, accuracy: 1e-12) }

        // The loss and its gradient on the logits, in Double: mean over B x C of softplus(z) - y z.
        let n = Double(B * C)
        var loss = 0.0
        let dLogits = DTensor(shape: [B, C])
        for i in 0..<(B * C) {
            let z = pass.logits.data[i], y = labels.values[i]
            loss += max(z, 0) + log1p(exp(-abs(z))) - y * z
            dLogits.data[i] = (1 / (1 + exp(-z)) - y) / n
        }
        XCTAssertEqual(loss / n, try root.read("output/loss", as: Double.self).values[0], accuracy: 1e-12)
        let dHidden = DTensor(shape: hidden.shape), dWeight = DTensor(shape: weight.shape)
        MaxPooledClassifier.backward(pass, dLogits: dLogits.data, weight: w.data, dWeight: dWeight.data, dTokens: dHidden.data + D)
        for (name, got, reference) in [("hidden", dHidden, "output/grad_hidden"), ("weight", dWeight, "output/grad_weight")] {
            let expected = try root.read(reference, as: Double.self).values
            let scale = expected.map(abs).max()!
            XCTAssertGreaterThan(scale, 0)
            let worst = zip(got.toArray(), expected).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst / scale, 1e-12, name)
        }
        // The class-token rows get nothing.
        for b in 0..<B { for d in 0..<D { XCTAssertEqual(dHidden.data[b * T * D + d], 0) } }
    }

    /// Finite differences in Double on sum(logits * R) for the tokens (contiguous layout) and the
    /// weight; tokens with distinct values so no channel's maximum is tied.
    func testGradientMatchesFiniteDifferences() {
        var rng = SplitMix64(seed: 21)
        let B = 2, N = 5, D = 4, C = 3
        let tokens = randomTensor([B, N, D], &rng), weight = randomTensor([C, D], &rng), r = randomTensor([B, C], &rng)
        func objective() -> Double {
            let p = MaxPooledClassifier.forward(tokens: tokens.data, batch: B, patches: N, dim: D, weight: weight.data, classes: C)
            return zip(p.logits.toArray(), r.toArray()).map(*).reduce(0, +)
        }
        let pass = MaxPooledClassifier.forward(tokens: tokens.data, batch: B, patches: N, dim: D, weight: weight.data, classes: C)
        let dTokens = DTensor(shape: tokens.shape), dWeight = DTensor(shape: weight.shape)
        MaxPooledClassifier.backward(pass, dLogits: r.data, weight: weight.data, dWeight: dWeight.data, dTokens: dTokens.data)
        // Each channel's gradient lands on one token per image: B * D nonzero entries at most.
        XCTAssertLessThanOrEqual(dTokens.toArray().filter { $0 != 0 }.count, B * D)
        checkGradient("max-pooled head tokens", input: tokens, analytic: dTokens, loss: objective)
        checkGradient("max-pooled head weight", input: weight, analytic: dWeight, loss: objective)
    }

    /// The logit sees each channel's largest token only: raising a token that is not any
    /// channel's maximum changes nothing; the patch scores are the classifier on every token.
    func testLogitsReadEachChannelsMaximumAndPatchScoresEveryToken() {
        let tokens = DTensor(shape: [1, 3, 2], values: [1, -2, 0.5, 4, -1, 3])
        let weight = DTensor(shape: [2, 2], values: [1, 0, 2, -1])
        let pass = MaxPooledClassifier.forward(tokens: tokens.data, batch: 1, patches: 3, dim: 2, weight: weight.data, classes: 2)
        XCTAssertEqual(pass.pooled.toArray(), [1, 4])
        XCTAssertEqual(pass.argmax, [0, 1])
        XCTAssertEqual(pass.logits.toArray(), [1, -2])
        tokens.data[4] = 0.9  // token 2, channel 0: still below 1
        let again = MaxPooledClassifier.forward(tokens: tokens.data, batch: 1, patches: 3, dim: 2, weight: weight.data, classes: 2)
        XCTAssertEqual(again.logits.toArray(), [1, -2])
        let scores = MaxPooledClassifier.patchScores(tokens: tokens.data, batch: 1, patches: 3, dim: 2, weight: weight.data, classes: 2)
        XCTAssertEqual(scores.toArray(), [1, 4, 0.5, -3, 0.9, -1.2], accuracy: 1e-12)
    }
}

private func XCTAssertEqual(_ a: [Double], _ b: [Double], accuracy: Double, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, file: file, line: line) }
}
