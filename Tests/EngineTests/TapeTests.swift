import TestSupport
import XCTest
import Foundation
import Primitives
@testable import Engine

typealias DVar = VarOf<Double>

final class TapeTests: XCTestCase {
    /// Gradient check of a tape op: loss = sum(op(inputs) * R) for a random probe R.
    func checkOp(_ label: String, _ inputs: [DTensor], file: StaticString = #filePath, line: UInt = #line,
                 _ f: @escaping ([DVar]) -> DVar) {
        let tape = TapeOf<Double>()
        let vars = inputs.map { tape.leaf($0) }
        let out = f(vars)
        var rng = SplitMix64(seed: 99)
        let probe = randomTensor(out.shape, &rng)
        let loss = (out * tape.constant(probe)).sum()
        XCTAssertEqual(loss.shape, [], file: file, line: line)
        tape.backward(loss)
        for (k, x) in inputs.enumerated() {
            checkGradient("\(label) input \(k)", input: x, analytic: tape.grad(of: vars[k]), file: file, line: line) {
                let t = TapeOf<Double>()
                return dot(f(inputs.map { t.leaf($0) }).value, probe)
            }
        }
    }

    func positive(_ shape: [Int], _ rng: inout SplitMix64) -> DTensor {
        let t = DTensor(shape: shape)
        t.fillUniform(0.5, 2, rng: &rng)
        return t
    }

    /// Values away from 0 so |x|, relu and sign have no kink within the finite-difference step.
    func awayFromZero(_ shape: [Int], _ rng: inout SplitMix64) -> DTensor {
        let t = randomTensor(shape, &rng)
        for i in 0..<t.count where Swift.abs(t.data[i]) < 0.05 { t.data[i] += t.data[i] < 0 ? -0.1 : 0.1 }
        return t
    }

    func testBroadcastingArithmetic() {
        var rng = SplitMix64(seed: 1)
        let a = randomTensor([2, 3, 4], &rng), b = randomTensor([3, 1], &rng), c = positive([2, 1, 4], &rng)
        checkOp("add", [a, b]) { $0[0] + $0[1] }
        checkOp("sub", [b, a]) { $0[0] - $0[1] }
        checkOp("mul", [a, c]) { $0[0] * $0[1] }
        checkOp("div", [a, c]) { $0[0] / $0[1] }
        checkOp("scalars", [a]) { -((($0[0] * 3) + 1) - 2) / 4 }
        // Forward values of broadcasting: (a + b)[i, j, k] = a[i, j, k] + b[j, 0].
        let t = TapeOf<Double>()
        let s = (t.leaf(a) + t.leaf(b)).value
        XCTAssertEqual(s.shape, [2, 3, 4])
        XCTAssertEqual(s[1, 2, 3], a[1, 2, 3] + b[2, 0])
        let q = (t.leaf(a) / t.leaf(c)).value
        XCTAssertEqual(q[1, 0, 2], a[1, 0, 2] / c[1, 0, 2], accuracy: 1e-15)
    }

    func testUnaryOps() {
        var rng = SplitMix64(seed: 2)
        let x = awayFromZero([3, 5], &rng), p = positive([3, 5], &rng)
        checkOp("sigmoid", [x]) { $0[0].sigmoid() }
        checkOp("relu", [x]) { $0[0].relu() }
        checkOp("exp", [x]) { $0[0].exp() }
        checkOp("log", [p]) { $0[0].log() }
        checkOp("abs", [x]) { $0[0].abs() }
        checkOp("sqrt", [p]) { $0[0].sqrt() }
        checkOp("square", [x]) { $0[0].square() }
        checkOp("clamp", [x]) { $0[0].clamped(min: 0.02) }
        let t = TapeOf<Double>()
        let v = t.leaf(DTensor(shape: [3], values: [-2, 0, 3]))
        XCTAssertEqual(v.relu().value.toArray(), [0, 0, 3])
        XCTAssertEqual(v.sigmoid().value[0], 1 / (1 + Foundation.exp(2)), accuracy: 1e-15)
        XCTAssertEqual(v.abs().value.toArray(), [2, 0, 3])
    }

    func testReductions() {
        var rng = SplitMix64(seed: 3)
        let x = randomTensor([2, 3, 4, 5], &rng)
        checkOp("sum all", [x]) { $0[0].sum() }
        checkOp("sum axis 1", [x]) { $0[0].sum(axes: [1]) }
        checkOp("sum axes 0,2 keep", [x]) { $0[0].sum(axes: [0, 2], keepDims: true) }
        checkOp("mean last", [x]) { $0[0].mean(axes: [-1]) }
        checkOp("mean 1,3", [x]) { $0[0].mean(axes: [1, 3]) }
        let t = TapeOf<Double>()
        let m = t.leaf(x).mean(axes: [1, 3]).value
        XCTAssertEqual(m.shape, [2, 4])
        var s = 0.0
        for j in 0..<3 { for l in 0..<5 { s += x[1, j, 2, l] } }
        XCTAssertEqual(m[1, 2], s / 15, accuracy: 1e-14)
    }

    func testMinMaxNormalisation() {
        var rng = SplitMix64(seed: 4)
        let x = randomTensor([2, 6, 3], &rng)  // [B, N, C]: normalise over patches N
        checkOp("min-max over axis 1", [x]) { $0[0].minMaxNormalised(axes: [1]) }
        checkOp("relu then min-max", [awayFromZero([2, 6, 3], &rng)]) { $0[0].relu().minMaxNormalised(axes: [1], eps: 1e-3) }
        let t = TapeOf<Double>()
        let y = t.leaf(x).minMaxNormalised(axes: [1], eps: 0).value
        for b in 0..<2 {
            for c in 0..<3 {
                let col = (0..<6).map { y[b, $0, c] }
                XCTAssertEqual(col.min()!, 0, accuracy: 1e-15)
                XCTAssertEqual(col.max()!, 1, accuracy: 1e-15)
                let raw = (0..<6).map { x[b, $0, c] }
                XCTAssertEqual(y[b, 2, c], (raw[2] - raw.min()!) / (raw.max()! - raw.min()!), accuracy: 1e-14)
            }
        }
    }

    func testSoftmaxAndLogSoftmax() {
        var rng = SplitMix64(seed: 5)
        let x = randomTensor([2, 3, 7], &rng, std: 2)
        checkOp("softmax", [x]) { $0[0].softmax() }
        checkOp("log softmax", [x]) { $0[0].logSoftmax() }
        let t = TapeOf<Double>()
        let v = t.leaf(x)
        let a = v.logSoftmax().value, b = v.softmax().value
        for i in 0..<a.count { XCTAssertEqual(a.data[i], Foundation.log(b.data[i]), accuracy: 1e-13) }
    }

    func testMatmulAllTranspositionsAndBatching() {
        var rng = SplitMix64(seed: 6)
        for (tA, tB) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = randomTensor(tA ? [2, 4, 3] : [2, 3, 4], &rng), b = randomTensor(tB ? [2, 5, 4] : [2, 4, 5], &rng)
            checkOp("matmul \(tA) \(tB)", [a, b]) { $0[0].matmul($0[1], transposeSelf: tA, transposeOther: tB) }
            let t = TapeOf<Double>()
            let c = t.leaf(a).matmul(t.leaf(b), transposeSelf: tA, transposeOther: tB).value
            XCTAssertEqual(c.shape, [2, 3, 5])
            var s = 0.0
            for k in 0..<4 { s += (tA ? a[1, k, 2] : a[1, 2, k]) * (tB ? b[1, 4, k] : b[1, k, 4]) }
            XCTAssertEqual(c[1, 2, 4], s, accuracy: 1e-13)
        }
        // A plain matrix shared over the batch (e.g. CAM [B, N, C] x affinity [N, N] style products).
        let a = randomTensor([3, 2, 4], &rng), w = randomTensor([4, 6], &rng)
        checkOp("matmul broadcast right", [a, w]) { $0[0].matmul($0[1]) }
        checkOp("matmul broadcast left", [randomTensor([5, 2], &rng), randomTensor([3, 2, 4], &rng)]) { $0[0].matmul($0[1]) }
    }

    func testLayoutOps() {
        var rng = SplitMix64(seed: 7)
        let x = randomTensor([2, 3, 4], &rng)
        checkOp("reshape", [x]) { $0[0].reshaped([6, 4]) }
        checkOp("permute", [x]) { $0[0].permuted([2, 0, 1]) }
        checkOp("gather with repeats", [x]) { $0[0].gather(axis: 1, [2, 0, 2, 1]) }
        checkOp("slice", [x]) { $0[0].slice(axis: 2, 1..<3) }
        checkOp("flip", [x]) { $0[0].flipped(axis: -1) }
        checkOp("concat", [x, randomTensor([2, 1, 4], &rng)]) { DVar.concat([$0[0], $0[1]], axis: 1) }
        let t = TapeOf<Double>()
        let v = t.leaf(x)
        XCTAssertEqual(v.permuted([2, 0, 1]).value[3, 1, 2], x[1, 2, 3])
        XCTAssertEqual(v.gather(axis: 1, [2, 0]).value[1, 0, 3], x[1, 2, 3])
        XCTAssertEqual(v.flipped(axis: 2).value[0, 1, 0], x[0, 1, 3])
        let cat = DVar.concat([v, v.slice(axis: 1, 0..<1)], axis: 1).value
        XCTAssertEqual(cat.shape, [2, 4, 4])
        XCTAssertEqual(cat[1, 3, 2], x[1, 0, 2])
    }

    func testTokenFlipPermutation() {
        // 2 x 3 grid: row 0 = tokens 1 2 3, row 1 = 4 5 6; a horizontal flip reverses each row.
        XCTAssertEqual(TokenOrder.horizontalFlip(gridH: 2, gridW: 3), [0, 3, 2, 1, 6, 5, 4])
        XCTAssertEqual(TokenOrder.verticalFlip(gridH: 2, gridW: 3), [0, 4, 5, 6, 1, 2, 3])
        XCTAssertEqual(TokenOrder.horizontalFlip(gridH: 1, gridW: 2, classToken: false), [1, 0])
        let p = TokenOrder.horizontalFlip(gridH: 3, gridW: 4)
        XCTAssertEqual(p.map { p[$0] }, Array(0..<13))  // an involution
    }

    func testLossOps() {
        var rng = SplitMix64(seed: 8)
        let a = randomTensor([3, 4], &rng), b = randomTensor([3, 4], &rng)
        checkOp("l1", [a, b]) { $0[0].l1Loss($0[1]) }
        let y = DTensor(shape: [3, 4])
        y.fillUniform(0, 1, rng: &rng)
        checkOp("bce with logits", [a, y]) { $0[0].bceWithLogits(targets: $0[1]) }
        let t = TapeOf<Double>()
        let v = t.leaf(a).bceWithLogits(targets: t.constant(y)).value.data[0]
        XCTAssertEqual(v, Kernels.bceWithLogits(logits: a.data, targets: y.data, count: 12), accuracy: 1e-15)
    }

    func testGradientAccumulatesOverUsesAndConstantsGetNone() {
        let t = TapeOf<Double>()
        let x = t.leaf(DTensor(shape: [2], values: [1, 2])), c = t.constant(DTensor(shape: [2], values: [3, 4]))
        let loss = (x * x + x * c).sum()  // d/dx = 2x + c
        t.backward(loss)
        XCTAssertEqual(t.grad(of: x).toArray(), [5, 8])
        XCTAssertEqual(t.grad(of: c).toArray(), [0, 0])
        let unused = t.leaf(DTensor(shape: [3]))
        XCTAssertEqual(t.grad(of: unused).toArray(), [0, 0, 0])
    }

    /// A two-view ACR-style loss on attention composed on the tape, flowing into the ViT's
    /// attention-gradient inputs, checked end to end against finite differences on parameters.
    func testTapeLossThroughViTAttentionEndToEnd() {
        let c = ViTConfig(imageSize: 8, patchSize: 4, depth: 2, dim: 8, heads: 2, mlpRatio: 2, numClasses: 2)
        let m = try! ViTOf<Double>(config: c, seed: 4)
        var rng = SplitMix64(seed: 40)
        for p in m.parameterList where p.value.rank > 1 { p.value.fillNormal(std: 0.4, rng: &rng) }
        let img = randomTensor([1, 8, 8, 3], &rng)
        // View 2 is the horizontally flipped image.
        let flippedImg = DTensor(shape: img.shape)
        for y in 0..<8 { for x in 0..<8 { for ch in 0..<3 { flippedImg[0, y, x, ch] = img[0, y, 7 - x, ch] } } }
        let perm = TokenOrder.horizontalFlip(gridH: 2, gridW: 2)
        let labels = DTensor(shape: [1, 2], values: [1, 0])

        func lossAndGrads() -> (Double, ViTActivationsOf<Double>, ViTActivationsOf<Double>, [TensorOf<Double>], [TensorOf<Double>], TensorOf<Double>) {
            let a1 = m.forward(images: img), a2 = m.forward(images: flippedImg)
            let t = TapeOf<Double>()
            var total: DVar? = nil
            var l1s: [DVar] = [], l2s: [DVar] = []
            for l in 0..<c.depth {
                let p1 = t.leaf(a1.attnProbs[l]), p2 = t.leaf(a2.attnProbs[l])
                l1s.append(p1); l2s.append(p2)
                let m1 = p1.mean(axes: [1]), m2 = p2.mean(axes: [1]).gather(axis: 1, perm).gather(axis: 2, perm)
                let term = m1.l1Loss(m2)
                total = total.map { $0 + term } ?? term
            }
            let cam = t.leaf(a1.camLogits)
            let loss = total! * 0.5 + cam.relu().bceWithLogits(targets: t.constant(labels))
            t.backward(loss)
            return (loss.value.data[0], a1, a2, l1s.map { t.grad(of: $0) }, l2s.map { t.grad(of: $0) }, t.grad(of: cam))
        }
        let (_, a1, a2, g1, g2, gCam) = lossAndGrads()
        m.zeroGrad()
        m.backward(a1, ViTOutputGradsOf(camLogits: gCam, attnProbs: [0: g1[0], 1: g1[1]]))
        m.backward(a2, ViTOutputGradsOf(attnProbs: [0: g2[0], 1: g2[1]]))
        var sample = SplitMix64(seed: 41)
        for p in m.parameterList {
            checkGradient(p.name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 4, &sample),
                          rtol: 1e-5, atol: 1e-8) { lossAndGrads().0 }
        }
    }
}
