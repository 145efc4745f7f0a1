import Primitives
@testable import ACR
import TestSupport
import XCTest
@testable import Engine

/// ACR's second view (flip, rot90), the inverse token order, the consistency losses and their
/// gradients, alone and through a tiny ViT; and the objective as the trainer runs it.
final class AttentionConsistencyTests: XCTestCase {
    // MARK: Views and token order

    /// The image transforms against their definitions written out by hand.
    func testViewTransformsMatchTheirDefinitions() throws {
        // 2 x 2, two channels: pixel (i, j) holds 10 i + j and 100 + 10 i + j.
        let square = DTensor(shape: [1, 2, 2, 2])
        for i in 0..<2 { for j in 0..<2 { square[0, i, j, 0] = Double(10 * i + j); square[0, i, j, 1] = Double(100 + 10 * i + j) } }
        // numpy.rot90([[a, b], [c, d]]) = [[b, d], [a, c]] with a=00, b=01, c=10, d=11.
        let r = try ConsistencyView.rot90.transform(square)
        XCTAssertEqual((0..<4).map { r.data[2 * $0] }, [1, 11, 0, 10])
        XCTAssertEqual((0..<4).map { r.data[2 * $0 + 1] }, [101, 111, 100, 110])
        // A horizontal flip of a 2 x 3 image reverses each row.
        let wide = DTensor(shape: [2, 2, 3, 1], values: (0..<12).map(Double.init))
        let f = try ConsistencyView.flip.transform(wide)
        XCTAssertEqual(f.toArray(), [2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9])
        // Four rotations are the identity; two flips too.
        var rng = SplitMix64(seed: 1)
        let img = randomTensor([2, 4, 4, 3], &rng)
        var x = img
        for _ in 0..<4 { x = try ConsistencyView.rot90.transform(x) }
        XCTAssertEqual(x.toArray(), img.toArray())
        XCTAssertEqual(try ConsistencyView.flip.transform(try ConsistencyView.flip.transform(img)).toArray(), img.toArray())
    }

    /// A model whose embedding of a patch is (mean of channel 0, mean of channel 1) and whose class
    /// token and position embedding carry nothing: hidden state 0 shows the patch layout.
    func layoutModel() throws -> ViTOf<Double> {
        let m = try ViTOf<Double>(config: ViTConfig(imageSize: 32, patchSize: 8, depth: 1, dim: 4, heads: 1, mlpRatio: 1, numClasses: 2), seed: 0)
        let w = m.parameter(named: "patch_embed.proj.weight")!.value  // [4, 3, 8, 8]
        w.zero()
        for ky in 0..<8 { for kx in 0..<8 { w[0, 0, ky, kx] = 1.0 / 64; w[1, 1, ky, kx] = 1.0 / 64 } }
        m.parameter(named: "pos_embed")!.value.zero()
        m.parameter(named: "cls_token")!.value.fill(-1)
        return m
    }

    /// Images whose 8 x 8 patches carry their own index (channel 0) and image number (channel 1);
    /// the view goes through the real patch embedding, and the inverse order must bring every
    /// token back exactly.
    func checkTokenOrder(_ view: ConsistencyView, height: Int, width: Int) throws {
        let m = try layoutModel()
        let gh = height / 8, gw = width / 8, B = 2
        let images = DTensor(shape: [B, height, width, 3])
        var rng = SplitMix64(seed: 2)
        for b in 0..<B {
            for y in 0..<height {
                for x in 0..<width {
                    images[b, y, x, 0] = Double((y / 8) * gw + x / 8)
                    images[b, y, x, 1] = Double(b)
                    images[b, y, x, 2] = rng.normal()  // ignored by the embedding
                }
            }
        }
        let original = m.forward(images: images).hiddenStates[0]
        // The layout itself: token 1 + n is patch n (row-major), token 0 the class token.
        for b in 0..<B {
            XCTAssertEqual(original[b, 0, 0], -1)
            for n in 0..<(gh * gw) {
                XCTAssertEqual(original[b, 1 + n, 0], Double(n), accuracy: 1e-12)
                XCTAssertEqual(original[b, 1 + n, 1], Double(b), accuracy: 1e-12)
            }
        }
        let viewed = m.forward(images: try view.transform(images)).hiddenStates[0]
        let order = try view.tokenOrder(gridH: gh, gridW: gw)
        XCTAssertEqual(order.sorted(), Array(0...(gh * gw)), "\(view): a permutation")
        XCTAssertEqual(order[0], 0)
        var moved = 0
        for b in 0..<B {
            for t in 0...(gh * gw) {
                for d in 0..<2 {
                    XCTAssertEqual(viewed[b, order[t], d], original[b, t, d], accuracy: 1e-12, "\(view) \(height)x\(width): token \(t) of image \(b)")
                }
                if abs(viewed[b, t, 0] - original[b, t, 0]) > 0.5 { moved += 1 }
            }
        }
        XCTAssertGreaterThan(moved, 0, "\(view): the view must actually reorder tokens")
    }

    func testTokenOrderRestoresTheTokensOfEveryView() throws {
        try checkTokenOrder(.flip, height: 32, width: 32)
        try checkTokenOrder(.flip, height: 16, width: 32)  // non-square grids are fine for a flip
        try checkTokenOrder(.rot90, height: 32, width: 32)
        try checkTokenOrder(.rot90, height: 24, width: 24)
    }

    func testRotationRefusesNonSquareGrids() {
        func message(_ body: () throws -> Any) -> String {
            do { _ = try body(); return "no error" } catch { return "\(error)" }
        }
        let wide = DTensor(shape: [1, 16, 32, 3])
        XCTAssertTrue(message { try ConsistencyView.rot90.transform(wide) }.contains("square images, got 16x32"))
        XCTAssertTrue(message { try TokenOrder.rotation90(gridH: 2, gridW: 4) }.contains("square patch grid, got 2x4"))
        XCTAssertTrue(message { try ConsistencyView.rot90.tokenOrder(gridH: 3, gridW: 2) }.contains("square"))
        XCTAssertNoThrow(try ConsistencyView.flip.transform(wide))
        XCTAssertEqual(try TokenOrder.rotation90(gridH: 2, gridW: 2), [0, 3, 1, 4, 2])  // patch (y,x) -> (1-x, y)
    }

    // MARK: The losses

    /// L_act and L_aff written out with loops: head means, A'[order[i], order[j]].
    func directTerms(_ p1: [DTensor], _ p2: [DTensor], _ order: [Int]) -> (Double, Double) {
        var act = 0.0, aff = 0.0
        for (a, b) in zip(p1, p2) {
            let B = a.shape[0], H = a.shape[1], T = a.shape[2]
            var rowSum = 0.0, blockSum = 0.0
            for n in 0..<B {
                for i in 0..<T {
                    for j in 1..<T {
                        var m1 = 0.0, m2 = 0.0
                        for h in 0..<H { m1 += a[n, h, i, j]; m2 += b[n, h, order[i], order[j]] }
                        let d = abs(m1 - m2) / Double(H)
                        if i == 0 { rowSum += d } else { blockSum += d }
                    }
                }
            }
            act += rowSum / Double(B * (T - 1))
            aff += blockSum / Double(B * (T - 1) * (T - 1))
        }
        return (act / Double(p1.count), aff / Double(p1.count))
    }

    func testLossValuesAndGradientsAgainstFiniteDifferences() throws {
        for view in ConsistencyView.allCases {
            var rng = SplitMix64(seed: 3)
            let order = try view.tokenOrder(gridH: 3, gridW: 3)
            let p1 = (0..<2).map { _ -> DTensor in let t = DTensor(shape: [2, 2, 10, 10]); t.fillUniform(0, 1, rng: &rng); return t }
            let p2 = (0..<2).map { _ -> DTensor in let t = DTensor(shape: [2, 2, 10, 10]); t.fillUniform(0, 1, rng: &rng); return t }
            let (alpha, beta) = (0.7, 1.9)
            let terms = AttentionConsistency.evaluate(probs1: p1, probs2: p2, order: order, alpha: alpha, beta: beta)
            let (act, aff) = directTerms(p1, p2, order)
            XCTAssertEqual(terms.activation, act, accuracy: 1e-13)
            XCTAssertEqual(terms.affinity, aff, accuracy: 1e-13)
            XCTAssertGreaterThan(act, 0.01)
            func loss() -> Double { let (a, f) = directTerms(p1, p2, order); return alpha * a + beta * f }
            var sample = SplitMix64(seed: 30)
            for l in 0..<2 {
                checkGradient("\(view) d/dA1[\(l)]", input: p1[l], analytic: terms.gradients1[l], indices: sampleIndices(400, 40, &sample), loss: loss)
                checkGradient("\(view) d/dA2[\(l)]", input: p2[l], analytic: terms.gradients2[l], indices: sampleIndices(400, 40, &sample), loss: loss)
            }
        }
    }

    /// Attention of the view that is exactly the image's attention in the view's token order
    /// gives zero loss and zero gradient; the same holds end to end for a ViT without position
    /// embedding on images made of constant patches (tokens of the view = permuted tokens of
    /// the image, and attention is permutation-equivariant), and stops holding with one.
    func testIdenticalAfterInversionGivesZero() throws {
        var rng = SplitMix64(seed: 4)
        for view in ConsistencyView.allCases {
            let order = try view.tokenOrder(gridH: 2, gridW: 2)
            let p1 = DTensor(shape: [2, 3, 5, 5])
            p1.fillUniform(0, 1, rng: &rng)
            let p2 = DTensor(shape: p1.shape)
            for b in 0..<2 { for h in 0..<3 { for i in 0..<5 { for j in 0..<5 { p2[b, h, order[i], order[j]] = p1[b, h, i, j] } } } }
            let t = AttentionConsistency.evaluate(probs1: [p1], probs2: [p2], order: order, alpha: 1, beta: 1)
            XCTAssertEqual(t.activation, 0)
            XCTAssertEqual(t.affinity, 0)
            XCTAssertEqual(t.gradients1[0].sumOfSquares() + t.gradients2[0].sumOfSquares(), 0)
        }

        let config = ViTConfig(imageSize: 16, patchSize: 4, depth: 3, dim: 8, heads: 2, mlpRatio: 2, numClasses: 2)
        let m = randomisedModel(config, seed: 5)
        let images = DTensor(shape: [2, 16, 16, 3])
        let colours = randomTensor([2, 4, 4, 3], &rng)
        for b in 0..<2 { for y in 0..<16 { for x in 0..<16 { for c in 0..<3 { images[b, y, x, c] = colours[b, y / 4, x / 4, c] } } } }
        func terms(_ view: ConsistencyView) throws -> (Double, Double) {
            let a1 = m.forward(images: images), a2 = m.forward(images: try view.transform(images))
            let t = AttentionConsistency.evaluate(probs1: a1.attnProbs, probs2: a2.attnProbs,
                                                  order: try view.tokenOrder(gridH: 4, gridW: 4), alpha: 1, beta: 1)
            return (t.activation, t.affinity)
        }
        let pos = m.parameter(named: "pos_embed")!.value
        let saved = pos.clone()
        pos.zero()
        for view in ConsistencyView.allCases {
            let (act, aff) = try terms(view)
            XCTAssertLessThan(act, 1e-14, "\(view)")
            XCTAssertLessThan(aff, 1e-14, "\(view)")
        }
        pos.copy(from: saved)
        for view in ConsistencyView.allCases {
            let (act, aff) = try terms(view)
            XCTAssertGreaterThan(act, 1e-4, "\(view): position embeddings break the symmetry")
            XCTAssertGreaterThan(aff, 1e-4, "\(view)")
        }
    }

    // MARK: Through the model

    func randomisedModel(_ config: ViTConfig, seed: UInt64) -> ViTOf<Double> { randomisedViT(config, seed: seed, matrixScale: 1.5) }

    /// The full ACR loss L_cls(view 1) + L_cls(view 2) + alpha L_act + beta L_aff of a tiny
    /// 2-layer ViT: analytic parameter gradients (both views' backward, attention gradients
    /// entering through `ViTOutputGrads.attnProbs`) against central differences in Double; then
    /// `ACRObjective` in Float, as `ClassifierTrainer` runs it, against those gradients.
    func testEndToEndGradientThroughATinyViTAndTheObjective() throws {
        let config = ViTConfig(imageSize: 8, patchSize: 4, depth: 2, dim: 8, heads: 2, mlpRatio: 2, numClasses: 3)
        let (alpha, beta) = (3.0, 5.0)
        for view in ConsistencyView.allCases {
            let m = randomisedModel(config, seed: 6)
            var rng = SplitMix64(seed: 60)
            let images = randomTensor([2, 8, 8, 3], &rng)
            let labels = DTensor(shape: [2, 3], values: [1, 0, 1, 0, 1, 0])
            let order = try view.tokenOrder(gridH: 2, gridW: 2)

            func lossAndBackward(accumulate: Bool) throws -> (total: Double, consistency: Double) {
                let a1 = m.forward(images: images, training: true), a2 = m.forward(images: try view.transform(images), training: true)
                let (cam1, gCam1) = softMargin(a1.camLogits, labels), (cls1, gCls1) = softMargin(a1.clsLogits, labels)
                let (cam2, gCam2) = softMargin(a2.camLogits, labels), (cls2, gCls2) = softMargin(a2.clsLogits, labels)
                let t = AttentionConsistency.evaluate(probs1: a1.attnProbs, probs2: a2.attnProbs, order: order, alpha: alpha, beta: beta)
                if accumulate {
                    var g1 = ViTOutputGradsOf<Double>(camLogits: gCam1, clsLogits: gCls1)
                    var g2 = ViTOutputGradsOf<Double>(camLogits: gCam2, clsLogits: gCls2)
                    for l in 0..<config.depth { g1.attnProbs[l] = t.gradients1[l]; g2.attnProbs[l] = t.gradients2[l] }
                    m.backward(a2, g2)
                    m.backward(a1, g1)
                }
                let consistency = alpha * t.activation + beta * t.affinity
                return (cam1 + cls1 + cam2 + cls2 + consistency, cam2 + cls2 + consistency)
            }
            m.zeroGrad()
            let (_, doubleContribution) = try lossAndBackward(accumulate: true)
            var sample = SplitMix64(seed: 61)
            for p in m.parameterList {
                checkGradient("\(view) \(p.name)", input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 3, &sample),
                              rtol: 1e-5, atol: 1e-9) { (try? lossAndBackward(accumulate: false).total) ?? .nan }
            }

            // The Float objective on the same weights: forward of view 1, its classification
            // gradients, the objective (view 2 forward + backward), then view 1's backward.
            let f = try ViT(config: config, seed: 0)
            try f.load(m.stateDict())
            let fImages = images.converted(to: Float.self), fLabels = labels.converted(to: Float.self)
            let acts = f.forward(images: fImages, training: true)
            let gCam = Tensor(shape: [2, 3]), gCls = Tensor(shape: [2, 3])
            _ = ClassificationLoss.multilabelSoftMargin(logits: acts.camLogits.data, labels: fLabels.data, batch: 2, classes: 3, gradient: gCam.data)
            _ = ClassificationLoss.multilabelSoftMargin(logits: acts.clsLogits.data, labels: fLabels.data, batch: 2, classes: 3, gradient: gCls.data)
            var grads = ViTOutputGrads(camLogits: gCam, clsLogits: gCls)
            let objective = ACRObjective(view: view, alpha: alpha, beta: beta)
            f.zeroGrad()
            let contribution = try objective.contribute(model: f, images: fImages, labels: fLabels.data, activations: acts, grads: &grads, step: 0)
            XCTAssertEqual(Set(contribution.terms.keys), Set(objective.termNames))
            XCTAssertEqual(contribution.loss, doubleContribution, accuracy: 1e-4 * abs(doubleContribution))
            XCTAssertEqual(contribution.loss, contribution.terms["acr_view2_cls"]! + alpha * contribution.terms["acr_act"]! + beta * contribution.terms["acr_aff"]!,
                           accuracy: 1e-9)
            f.backward(acts, grads)
            for (p, q) in zip(m.parameterList, f.parameterList) {
                var diff = 0.0, norm = 0.0
                for i in 0..<p.grad.count {
                    let d = p.grad.data[i] - Double(q.grad.data[i])
                    diff += d * d
                    norm += p.grad.data[i] * p.grad.data[i]
                }
                XCTAssertLessThanOrEqual(diff.squareRoot(), 2e-3 * norm.squareRoot() + 1e-6, "\(view) Float objective gradient of \(p.name)")
            }
        }
    }
}
