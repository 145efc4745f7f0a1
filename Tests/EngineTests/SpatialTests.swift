import TestSupport
import XCTest
import Foundation
import Primitives
@testable import Engine

final class SpatialTests: XCTestCase {
    /// Direct convolution from the definition (PyTorch weight layout, channels-last maps).
    func naiveConv(_ x: DTensor, _ w: DTensor, _ b: DTensor?, _ g: Conv2dGeometry) -> DTensor {
        let out = DTensor(shape: [g.batch, g.outHeight, g.outWidth, g.outChannels])
        for n in 0..<g.batch { for oy in 0..<g.outHeight { for ox in 0..<g.outWidth { for o in 0..<g.outChannels {
            var s = b?.data[o] ?? 0
            for c in 0..<g.inChannels { for ky in 0..<g.kernelH { for kx in 0..<g.kernelW {
                let iy = oy * g.stride - g.padding + ky * g.dilation, ix = ox * g.stride - g.padding + kx * g.dilation
                if iy >= 0 && iy < g.height && ix >= 0 && ix < g.width { s += x[n, iy, ix, c] * w[o, c, ky, kx] }
            } } }
            out[n, oy, ox, o] = s
        } } } }
        return out
    }

    func checkConv(_ g: Conv2dGeometry, bias: Bool, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let x = randomTensor([g.batch, g.height, g.width, g.inChannels], &rng)
        let w = randomTensor([g.outChannels, g.inChannels, g.kernelH, g.kernelW], &rng)
        let b: DTensor? = bias ? randomTensor([g.outChannels], &rng) : nil
        let out = DTensor(shape: [g.batch, g.outHeight, g.outWidth, g.outChannels])
        let fwd = { Kernels.conv2dForward(out: out.data, inp: x.data, weight: w.data, bias: b?.data, g) }
        fwd()
        XCTAssertLessThan(maxAbsDiff(out, naiveConv(x, w, b, g)), 1e-12, "\(g)")
        let probe = randomTensor(out.shape, &rng)
        let dx = DTensor(shape: x.shape), dw = DTensor(shape: w.shape), db = DTensor(shape: [g.outChannels])
        Kernels.conv2dBackward(dInp: dx.data, dWeight: dw.data, dBias: bias ? db.data : nil, dOut: probe.data,
                               inp: x.data, weight: w.data, g)
        let loss = { fwd(); return dot(out, probe) }
        checkGradient("conv dx \(g)", input: x, analytic: dx, loss: loss)
        checkGradient("conv dw \(g)", input: w, analytic: dw, loss: loss)
        if let b { checkGradient("conv db", input: b, analytic: db, loss: loss) }
    }

    func testConvolutionForwardAndGradients() {
        checkConv(Conv2dGeometry(batch: 2, height: 7, width: 6, inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1), bias: true, seed: 1)
        checkConv(Conv2dGeometry(batch: 1, height: 9, width: 8, inChannels: 2, outChannels: 3, kernel: 3, stride: 2, padding: 2, dilation: 2), bias: false, seed: 2)
        checkConv(Conv2dGeometry(batch: 2, height: 5, width: 4, inChannels: 3, outChannels: 2, kernelH: 1, kernelW: 3, stride: 1, padding: 0), bias: true, seed: 3)
        checkConv(Conv2dGeometry(batch: 2, height: 3, width: 4, inChannels: 5, outChannels: 3, kernel: 1), bias: true, seed: 4)
        // Dilation 12 on a small map: most taps fall in the padding.
        checkConv(Conv2dGeometry(batch: 1, height: 6, width: 6, inChannels: 2, outChannels: 2, kernel: 3, padding: 12, dilation: 12), bias: true, seed: 5)
        let g = Conv2dGeometry(batch: 1, height: 64, width: 64, inChannels: 3, outChannels: 8, kernel: 3, stride: 2, padding: 1)
        XCTAssertEqual([g.outHeight, g.outWidth], [32, 32])
    }

    func testAveragePooling() {
        var rng = SplitMix64(seed: 6)
        let g = Conv2dGeometry.pool(batch: 2, height: 6, width: 5, channels: 3, kernel: 3, stride: 2, padding: 1)
        let x = randomTensor([2, 6, 5, 3], &rng), out = DTensor(shape: [2, g.outHeight, g.outWidth, 3])
        let fwd = { Kernels.avgPool2dForward(out: out.data, inp: x.data, g) }
        fwd()
        // count_include_pad: the corner window (oy 0, ox 0) covers rows/cols -1..1 -> 4 real pixels / 9.
        var s = 0.0
        for y in 0...1 { for xx in 0...1 { s += x[1, y, xx, 2] } }
        XCTAssertEqual(out[1, 0, 0, 2], s / 9, accuracy: 1e-12)
        let probe = randomTensor(out.shape, &rng), dx = DTensor(shape: x.shape)
        Kernels.avgPool2dBackward(dInp: dx.data, dOut: probe.data, g)
        checkGradient("avg pool", input: x, analytic: dx) { fwd(); return dot(out, probe) }
    }

    func testMaxPooling() {
        var rng = SplitMix64(seed: 7)
        let g = Conv2dGeometry.pool(batch: 2, height: 5, width: 6, channels: 2, kernel: 3, stride: 2, padding: 1)
        let x = randomTensor([2, 5, 6, 2], &rng), out = DTensor(shape: [2, g.outHeight, g.outWidth, 2])
        let idx = UnsafeMutablePointer<Int32>.allocate(capacity: out.count)
        defer { idx.deallocate() }
        let fwd = { Kernels.maxPool2dForward(out: out.data, argmax: idx, inp: x.data, g) }
        fwd()
        for b in 0..<2 { for oy in 0..<g.outHeight { for ox in 0..<g.outWidth { for c in 0..<2 {
            var m = -Double.infinity
            for y in (oy * 2 - 1)...(oy * 2 + 1) where y >= 0 && y < 5 {
                for xx in (ox * 2 - 1)...(ox * 2 + 1) where xx >= 0 && xx < 6 { m = max(m, x[b, y, xx, c]) }
            }
            XCTAssertEqual(out[b, oy, ox, c], m)
        } } } }
        let probe = randomTensor(out.shape, &rng), dx = DTensor(shape: x.shape)
        Kernels.maxPool2dBackward(dInp: dx.data, dOut: probe.data, argmax: idx, outCount: out.count)
        // Random inputs have no ties, so the max is differentiable at this point.
        checkGradient("max pool", input: x, analytic: dx) { fwd(); return dot(out, probe) }
    }

    func testBilinearResizeMatchesAlignCornersFalse() {
        // 1-d [0, 1] -> 4: src = (o + 0.5)/2 - 0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25 (upper clamped).
        let a = DTensor(shape: [1, 1, 2, 1], values: [0, 1]), up = DTensor(shape: [1, 1, 4, 1])
        Kernels.bilinearResizeForward(out: up.data, inp: a.data, batch: 1, inHeight: 1, inWidth: 2, outHeight: 1, outWidth: 4, channels: 1)
        XCTAssertEqual(up.toArray(), [0, 0.25, 0.75, 1])
        // 4 -> 2 halves: src = 0.5 and 2.5, the means of pairs.
        let b = DTensor(shape: [1, 4, 1, 2], values: [1, 10, 3, 30, 5, 50, 9, 90]), down = DTensor(shape: [1, 2, 1, 2])
        Kernels.bilinearResizeForward(out: down.data, inp: b.data, batch: 1, inHeight: 4, inWidth: 1, outHeight: 2, outWidth: 1, channels: 2)
        XCTAssertEqual(down.toArray(), [2, 20, 7, 70])
        // Same size is the identity.
        var rng = SplitMix64(seed: 8)
        let x = randomTensor([2, 3, 5, 2], &rng), same = DTensor(shape: x.shape)
        Kernels.bilinearResizeForward(out: same.data, inp: x.data, batch: 2, inHeight: 3, inWidth: 5, outHeight: 3, outWidth: 5, channels: 2)
        XCTAssertEqual(maxAbsDiff(same, x), 0)
        // Gradients, up and down.
        for (ho, wo) in [(7, 4), (2, 3)] {
            let out = DTensor(shape: [2, ho, wo, 2]), probe = randomTensor(out.shape, &rng), dx = DTensor(shape: x.shape)
            let fwd = { Kernels.bilinearResizeForward(out: out.data, inp: x.data, batch: 2, inHeight: 3, inWidth: 5, outHeight: ho, outWidth: wo, channels: 2) }
            Kernels.bilinearResizeBackward(dInp: dx.data, dOut: probe.data, batch: 2, inHeight: 3, inWidth: 5, outHeight: ho, outWidth: wo, channels: 2)
            checkGradient("resize to \(ho)x\(wo)", input: x, analytic: dx) { fwd(); return dot(out, probe) }
        }
    }

    func testFloatConvolutionMatchesDouble() {
        var rng = SplitMix64(seed: 9)
        let g = Conv2dGeometry(batch: 2, height: 8, width: 8, inChannels: 6, outChannels: 5, kernel: 3, padding: 2, dilation: 2)
        let x = randomTensor([2, 8, 8, 6], &rng), w = randomTensor([5, 6, 3, 3], &rng, std: 0.2)
        let od = DTensor(shape: [2, 8, 8, 5]), of = Tensor(shape: [2, 8, 8, 5])
        let xf: Tensor = x.converted(), wf: Tensor = w.converted()
        Kernels.conv2dForward(out: od.data, inp: x.data, weight: w.data, bias: nil, g)
        Kernels.conv2dForward(out: of.data, inp: xf.data, weight: wf.data, bias: nil, g)
        XCTAssertLessThan(maxAbsDiff(od, of), 1e-5)
    }
}

final class LossTests: XCTestCase {
    func testSoftMarginValuesStabilityAndGradient() {
        let z = DTensor(shape: [2, 3], values: [0, 2, -1, 100, -100, 0.5])
        let y = DTensor(shape: [2, 3], values: [1, 0, 1, 1, 1, 0])
        // Per element: log(1 + e^-z) for y = 1, log(1 + e^z) for y = 0.
        let expected = [log(2), log(1 + exp(2)), log(1 + exp(1)), 0, 100, log(1 + exp(0.5))].reduce(0, +) / 6
        XCTAssertEqual(Kernels.multilabelSoftMargin(logits: z.data, targets: y.data, batch: 2, classes: 3), expected, accuracy: 1e-12)
        var rng = SplitMix64(seed: 1)
        let zz = randomTensor([3, 4], &rng, std: 2), yy = DTensor(shape: [3, 4])
        for i in 0..<12 { yy.data[i] = Double(i % 3 == 0 ? 1 : 0) }
        let g = DTensor(shape: [3, 4])
        _ = Kernels.bceWithLogits(logits: zz.data, targets: yy.data, count: 12, dLogits: g.data, weight: 0.7)
        checkGradient("soft margin", input: zz, analytic: g) { 0.7 * Kernels.bceWithLogits(logits: zz.data, targets: yy.data, count: 12) }
    }

    func testBCEOnProbabilities() {
        let p = DTensor(shape: [4], values: [0.2, 0.9, 0, 1]), y = DTensor(shape: [4], values: [1, 0, 1, 1])
        // The log of 0 is clamped to -100, log(1) = 0.
        let expected = (-log(0.2) - log(0.1) + 100 + 0) / 4
        XCTAssertEqual(Kernels.bceLoss(probs: p.data, targets: y.data, count: 4), expected, accuracy: 1e-12)
        var rng = SplitMix64(seed: 2)
        let q = DTensor(shape: [6]), t = DTensor(shape: [6])
        q.fillUniform(0.05, 0.95, rng: &rng)
        t.fillUniform(0, 1, rng: &rng)  // soft targets
        let g = DTensor(shape: [6])
        _ = Kernels.bceLoss(probs: q.data, targets: t.data, count: 6, dProbs: g.data)
        checkGradient("bce", input: q, analytic: g) { Kernels.bceLoss(probs: q.data, targets: t.data, count: 6) }
    }

    func testL1() {
        var rng = SplitMix64(seed: 3)
        let a = randomTensor([10], &rng), b = randomTensor([10], &rng)
        var expected = 0.0
        for i in 0..<10 { expected += abs(a.data[i] - b.data[i]) / 10 }
        let ga = DTensor(shape: [10]), gb = DTensor(shape: [10])
        XCTAssertEqual(Kernels.l1Loss(a.data, b.data, count: 10, dA: ga.data, dB: gb.data), expected, accuracy: 1e-12)
        let loss = { Kernels.l1Loss(a.data, b.data, count: 10) }
        checkGradient("l1 a", input: a, analytic: ga, loss: loss)
        checkGradient("l1 b", input: b, analytic: gb, loss: loss)
    }

    func testPixelCrossEntropyWithIgnoreIndex() {
        var rng = SplitMix64(seed: 4)
        let P = 6, C = 4
        let z = randomTensor([P, C], &rng, std: 2)
        let labels: [UInt8] = [0, 3, 255, 1, 255, 2]
        var expected = 0.0
        for i in 0..<P where labels[i] != 255 {
            var s = 0.0
            for k in 0..<C { s += exp(z[i, k]) }
            expected += log(s) - z[i, Int(labels[i])]
        }
        expected /= 4
        let g = DTensor(shape: [P, C])
        labels.withUnsafeBufferPointer { lp in
            let r = Kernels.pixelCrossEntropy(logits: z.data, labels: lp.baseAddress!, pixels: P, classes: C, dLogits: g.data)
            XCTAssertEqual(r.counted, 4)
            XCTAssertEqual(r.loss, expected, accuracy: 1e-12)
            checkGradient("pixel CE", input: z, analytic: g) {
                Kernels.pixelCrossEntropy(logits: z.data, labels: lp.baseAddress!, pixels: P, classes: C).loss
            }
        }
        // Ignored pixels get no gradient; all ignored -> loss 0, counted 0.
        for k in 0..<C { XCTAssertEqual(g[2, k], 0); XCTAssertEqual(g[4, k], 0) }
        let none: [Int32] = [255, 255]
        none.withUnsafeBufferPointer { lp in
            let r = Kernels.pixelCrossEntropy(logits: z.data, labels: lp.baseAddress!, pixels: 2, classes: C)
            XCTAssertEqual(r.counted, 0)
            XCTAssertEqual(r.loss, 0)
        }
    }
}
