import TestSupport
import XCTest
import Foundation
import Primitives
@testable import Engine

final class FastMathTests: XCTestCase {
    /// Relative error of the polynomial exp against libm in Double over the whole clamped range.
    func testFastExpRelativeErrorBound() {
        var worst = 0.0, at: Float = 0
        var x: Float = -87
        while x <= 88 {
            let e = Double(FastMath.exp(x)), r = Foundation.exp(Double(x))
            let rel = abs(e - r) / r
            if rel > worst { worst = rel; at = x }
            x += 1.0e-4 * 7.3  // ~240k points, not aligned with the reduction grid
        }
        // A few ulp of float (2^-23 = 1.19e-7): the result is assembled from a rounded product.
        XCTAssertLessThan(worst, 2e-7, "max relative error \(worst) at \(at)")
        XCTAssertEqual(FastMath.exp(0), 1)
        // Below the clamp the result stays at exp(-87.33) (a normal float) instead of underflowing.
        let floor = Foundation.exp(Double(Float(-87.33)))
        XCTAssertEqual(Double(FastMath.exp(-1000)), floor, accuracy: floor * 4e-7)
        print("fast exp: max relative error \(worst) at x = \(at)")
        XCTAssertTrue(FastMath.exp(1000).isFinite)
    }

    /// Absolute error of the rational tanh against libm in Double over [-20, 20].
    func testFastTanhAbsoluteErrorBound() {
        var worst = 0.0, at: Float = 0
        var x: Float = -20
        while x <= 20 {
            let err = abs(Double(FastMath.tanh(x)) - Foundation.tanh(Double(x)))
            if err > worst { worst = err; at = x }
            x += 1.0e-4 * 1.37
        }
        XCTAssertLessThan(worst, 5e-7, "max absolute error \(worst) at \(at)")
        print("fast tanh: max absolute error \(worst) at x = \(at)")
        for v: Float in [0.1, 0.5, 1, 3, 7.9, 8, 50, 1e6] {
            XCTAssertEqual(FastMath.tanh(-v), -FastMath.tanh(v))
            XCTAssertLessThanOrEqual(abs(FastMath.tanh(v)), 1)
        }
        XCTAssertEqual(FastMath.tanh(0), 0)
    }

    /// Absolute error of the polynomial erf (A&S 7.1.26 with the fast exp) against libm over [-10, 10],
    /// and of the Float exact GELU built on it against x Phi(x) in Double.
    func testFastErfAndExactGeluErrorBounds() {
        var worst = 0.0, at: Float = 0
        var x: Float = -10
        while x <= 10 {
            let err = abs(Double(FastMath.erf(x)) - Foundation.erf(Double(x)))
            if err > worst { worst = err; at = x }
            x += 1.0e-4 * 1.37
        }
        // A&S 7.1.26 is within 1.5e-7 in exact arithmetic; in float, 1 - y t e^(-x^2) cancels near
        // 0 (measured 5.0e-7 at x = 0.03).
        XCTAssertLessThan(worst, 6e-7, "max absolute error \(worst) at \(at)")
        print("fast erf: max absolute error \(worst) at x = \(at)")
        XCTAssertEqual(FastMath.erf(0), 0, accuracy: 1e-9)
        XCTAssertEqual(FastMath.erf(-2), -FastMath.erf(2))
        let n = 20001
        let xs = Tensor(shape: [n]), ys = Tensor(shape: [n])
        for i in 0..<n { xs.data[i] = Float(-10 + 20 * Double(i) / Double(n - 1)) }
        Kernels.geluErfForward(out: ys.data, inp: xs.data, count: n)
        var gelu = 0.0
        for i in 0..<n {
            let v = Double(xs.data[i])
            gelu = max(gelu, abs(Double(ys.data[i]) - 0.5 * v * (1 + Foundation.erf(v / 2.0.squareRoot()))))
        }
        // |x| * 0.5 * erf error (<= 10 * 0.5 * 3e-7) plus float rounding.
        XCTAssertLessThan(gelu, 2e-6)
        print("float exact GELU: max absolute error \(gelu) on [-10, 10]")
    }

    /// The Float GELU (fast tanh) against the tanh-GELU formula evaluated in Double.
    func testFloatGeluMatchesFormula() {
        let n = 20001
        let x = Tensor(shape: [n]), y = Tensor(shape: [n])
        for i in 0..<n { x.data[i] = Float(-10 + 20 * Double(i) / Double(n - 1)) }
        Kernels.geluForward(out: y.data, inp: x.data, count: n)
        var worst = 0.0
        for i in 0..<n {
            let v = Double(x.data[i])
            let ref = 0.5 * v * (1 + Foundation.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
            worst = max(worst, abs(Double(y.data[i]) - ref))
        }
        // |x| * 0.5 * tanh error (<= 10 * 0.5 * 5e-7) plus float rounding.
        XCTAssertLessThan(worst, 2e-6)
        print("float GELU: max absolute error \(worst) on [-10, 10]")
    }
}

final class LayerGradientTests: XCTestCase {
    func testLinearForwardMatchesLoopsAndGradients() {
        var rng = SplitMix64(seed: 1)
        let rows = 5, inF = 7, outF = 4
        let x = randomTensor([rows, inF], &rng), w = randomTensor([outF, inF], &rng), b = randomTensor([outF], &rng)
        let out = DTensor(shape: [rows, outF])
        let probe = randomTensor([rows, outF], &rng)
        func fwd() { Kernels.linearForward(out: out.data, inp: x.data, weight: w.data, bias: b.data, rows: rows, inFeatures: inF, outFeatures: outF) }
        fwd()
        for r in 0..<rows {
            for o in 0..<outF {
                var s = b[o]
                for i in 0..<inF { s += x[r, i] * w[o, i] }
                XCTAssertEqual(out[r, o], s, accuracy: 1e-12)
            }
        }
        let dx = DTensor(shape: x.shape), dw = DTensor(shape: w.shape), db = DTensor(shape: b.shape)
        // Pre-filled gradients check the += contract.
        dx.fill(0.5); dw.fill(-0.25); db.fill(2)
        Kernels.linearBackward(dInp: dx.data, dWeight: dw.data, dBias: db.data, dOut: probe.data, inp: x.data, weight: w.data, rows: rows, inFeatures: inF, outFeatures: outF)
        for i in 0..<dx.count { dx.data[i] -= 0.5 }
        for i in 0..<dw.count { dw.data[i] += 0.25 }
        for i in 0..<db.count { db.data[i] -= 2 }
        let loss = { fwd(); return dot(out, probe) }
        checkGradient("linear dx", input: x, analytic: dx, loss: loss)
        checkGradient("linear dw", input: w, analytic: dw, loss: loss)
        checkGradient("linear db", input: b, analytic: db, loss: loss)
    }

    func testLayerNormNormalisesAndGradients() {
        var rng = SplitMix64(seed: 2)
        let rows = 4, dim = 19  // 19: SIMD body plus a scalar tail
        let x = randomTensor([rows, dim], &rng, std: 3)
        for i in 0..<x.count { x.data[i] += 1.5 }
        let w = randomTensor([dim], &rng), b = randomTensor([dim], &rng)
        let out = DTensor(shape: [rows, dim]), stats = DTensor(shape: [2, rows])
        let probe = randomTensor([rows, dim], &rng)
        func fwd() {
            Kernels.layerNormForward(out: out.data, mean: stats.data, rstd: stats.data + rows, inp: x.data,
                                     weight: w.data, bias: b.data, rows: rows, dim: dim, eps: 1e-6)
        }
        fwd()
        // (out - b) / w must have zero mean and unit (biased) variance per row.
        for r in 0..<rows {
            var m = 0.0, v = 0.0
            for j in 0..<dim { m += (out[r, j] - b[j]) / w[j] }
            m /= Double(dim)
            for j in 0..<dim { let z = (out[r, j] - b[j]) / w[j] - m; v += z * z }
            XCTAssertEqual(m, 0, accuracy: 1e-10)
            XCTAssertEqual(v / Double(dim), 1, accuracy: 1e-5)  // eps 1e-6 against variance ~9
        }
        let dx = DTensor(shape: x.shape), dw = DTensor(shape: [dim]), db = DTensor(shape: [dim])
        Kernels.layerNormBackward(dInp: dx.data, dWeight: dw.data, dBias: db.data, dOut: probe.data, inp: x.data,
                                  weight: w.data, mean: stats.data, rstd: stats.data + rows, rows: rows, dim: dim)
        let loss = { fwd(); return dot(out, probe) }
        checkGradient("layernorm dx", input: x, analytic: dx, loss: loss)
        checkGradient("layernorm dw", input: w, analytic: dw, loss: loss)
        checkGradient("layernorm db", input: b, analytic: db, loss: loss)
    }

    func testGeluGradients() {
        var rng = SplitMix64(seed: 3)
        let n = 37
        let x = randomTensor([n], &rng, std: 2), out = DTensor(shape: [n]), probe = randomTensor([n], &rng)
        let fwd = { Kernels.geluForward(out: out.data, inp: x.data, count: n) }
        fwd()
        for i in 0..<n {
            let v = x.data[i]
            XCTAssertEqual(out.data[i], 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))), accuracy: 1e-14)
        }
        let dx = DTensor(shape: [n])
        Kernels.geluBackward(dInp: dx.data, dOut: probe.data, inp: x.data, count: n)
        checkGradient("gelu", input: x, analytic: dx) { fwd(); return dot(out, probe) }
    }

    func testExactGeluGradients() {
        var rng = SplitMix64(seed: 13)
        let n = 37
        let x = randomTensor([n], &rng, std: 2), out = DTensor(shape: [n]), probe = randomTensor([n], &rng)
        let fwd = { Kernels.geluErfForward(out: out.data, inp: x.data, count: n) }
        fwd()
        for i in 0..<n {
            let v = x.data[i]
            XCTAssertEqual(out.data[i], 0.5 * v * (1 + erf(v / 2.0.squareRoot())), accuracy: 1e-14)
        }
        let dx = DTensor(shape: [n])
        Kernels.geluErfBackward(dInp: dx.data, dOut: probe.data, inp: x.data, count: n)
        checkGradient("exact gelu", input: x, analytic: dx) { fwd(); return dot(out, probe) }
    }

    func testLayerScaleGradients() {
        var rng = SplitMix64(seed: 14)
        let rows = 5, dim = 7
        let x = randomTensor([rows, dim], &rng), gamma = randomTensor([dim], &rng), out = DTensor(shape: [rows, dim])
        let probe = randomTensor([rows, dim], &rng)
        let fwd = { Kernels.scaleColumnsForward(out: out.data, inp: x.data, gamma: gamma.data, rows: rows, dim: dim) }
        fwd()
        XCTAssertEqual(out.data[2 * dim + 3], gamma.data[3] * x.data[2 * dim + 3], accuracy: 1e-15)
        let dx = DTensor(shape: [rows, dim]), dGamma = DTensor(shape: [dim])
        Kernels.scaleColumnsBackward(dInp: dx.data, dGamma: dGamma.data, dOut: probe.data, inp: x.data, gamma: gamma.data, rows: rows, dim: dim)
        let loss = { fwd(); return dot(out, probe) }
        checkGradient("layer scale dx", input: x, analytic: dx, loss: loss)
        checkGradient("layer scale dgamma", input: gamma, analytic: dGamma, loss: loss)
    }

    func testSoftmaxRowsSumToOneAndGradients() {
        var rng = SplitMix64(seed: 4)
        let rows = 3, cols = 21
        let x = randomTensor([rows, cols], &rng, std: 2), out = DTensor(shape: [rows, cols])
        x.data[5] = 40  // large logits must not overflow (max subtraction)
        let probe = randomTensor([rows, cols], &rng)
        let fwd = { Kernels.softmaxForward(out: out.data, inp: x.data, rows: rows, cols: cols) }
        fwd()
        for r in 0..<rows {
            var s = 0.0
            for j in 0..<cols { s += out[r, j]; XCTAssertGreaterThan(out[r, j], 0) }
            XCTAssertEqual(s, 1, accuracy: 1e-12)
        }
        XCTAssertEqual(out[0, 3] / out[0, 4], exp(x[0, 3] - x[0, 4]), accuracy: 1e-9)
        let dx = DTensor(shape: x.shape)
        Kernels.softmaxBackward(dInp: dx.data, dOut: probe.data, out: out.data, rows: rows, cols: cols)
        checkGradient("softmax", input: x, analytic: dx) { fwd(); return dot(out, probe) }
    }

    func testDropoutMaskStatisticsAndGradient() {
        var rng = SplitMix64(seed: 5)
        let n = 20000
        let x = DTensor(shape: [n], repeating: 1), out = DTensor(shape: [n]), mask = DTensor(shape: [n])
        var r = SplitMix64(seed: 9)
        Kernels.dropoutForward(out: out.data, mask: mask.data, inp: x.data, count: n, p: 0.25, rng: &r)
        var zeros = 0, sum = 0.0
        for i in 0..<n {
            if mask.data[i] == 0 { zeros += 1 } else { XCTAssertEqual(mask.data[i], 1 / 0.75, accuracy: 1e-12) }
            sum += out.data[i]
        }
        // Binomial(20000, 0.25): sd ~61; 5 sd bounds.
        XCTAssertEqual(Double(zeros), 5000, accuracy: 310)
        XCTAssertEqual(sum / Double(n), 1, accuracy: 0.03)
        // Gradient with the mask held fixed (same seed each forward).
        let m = 50
        let y = randomTensor([m], &rng), o = DTensor(shape: [m]), mk = DTensor(shape: [m]), probe = randomTensor([m], &rng)
        let fwd = { var s = SplitMix64(seed: 11); Kernels.dropoutForward(out: o.data, mask: mk.data, inp: y.data, count: m, p: 0.3, rng: &s) }
        fwd()
        let dy = DTensor(shape: [m])
        Kernels.dropoutBackward(dInp: dy.data, dOut: probe.data, mask: mk.data, count: m)
        checkGradient("dropout", input: y, analytic: dy) { fwd(); return dot(o, probe) }
        XCTAssertTrue((0..<m).contains { mk.data[$0] == 0 } && (0..<m).contains { mk.data[$0] != 0 })
    }

    func testDropPathResidualAddGradients() {
        var rng = SplitMix64(seed: 6)
        let batch = 4, per = 6
        let scales = DTensor(shape: [batch], values: [0, 1.25, 1.25, 0])
        let x0 = randomTensor([batch, per], &rng), br = randomTensor([batch, per], &rng)
        let x = DTensor(shape: [batch, per]), probe = randomTensor([batch, per], &rng)
        let fwd = { x.copy(from: x0); Kernels.residualAdd(x: x.data, branch: br.data, scales: scales.data, batch: batch, perSample: per) }
        fwd()
        for b in 0..<batch { for j in 0..<per { XCTAssertEqual(x[b, j], x0[b, j] + scales.data[b] * br[b, j], accuracy: 1e-12) } }
        // d/d branch = probe * scale (the backward is the same kernel on zeroed buffers).
        let dbr = DTensor(shape: br.shape)
        Kernels.residualAdd(x: dbr.data, branch: probe.data, scales: scales.data, batch: batch, perSample: per)
        checkGradient("drop-path branch", input: br, analytic: dbr) { fwd(); return dot(x, probe) }
        var r = SplitMix64(seed: 3)
        let s = DTensor(shape: [1000])
        Kernels.dropPathScales(into: s.data, batch: 1000, p: 0.2, rng: &r)
        let dropped = (0..<1000).filter { s.data[$0] == 0 }.count
        XCTAssertEqual(Double(dropped), 200, accuracy: 65)  // 5 sd of Binomial(1000, 0.2)
        XCTAssertTrue((0..<1000).allSatisfy { s.data[$0] == 0 || abs(s.data[$0] - 1.25) < 1e-12 })
    }

    /// The Float instantiation (sgemm, fast exp/tanh) agrees with the checked Double one.
    func testFloatKernelsMatchDouble() {
        var rng = SplitMix64(seed: 7)
        let rows = 33, inF = 40, outF = 24
        let x = randomTensor([rows, inF], &rng), w = randomTensor([outF, inF], &rng, std: 0.2), b = randomTensor([outF], &rng)
        let xf: Tensor = x.converted(), wf: Tensor = w.converted(), bf: Tensor = b.converted()
        let yd = DTensor(shape: [rows, outF]), yf = Tensor(shape: [rows, outF])
        Kernels.linearForward(out: yd.data, inp: x.data, weight: w.data, bias: b.data, rows: rows, inFeatures: inF, outFeatures: outF)
        Kernels.linearForward(out: yf.data, inp: xf.data, weight: wf.data, bias: bf.data, rows: rows, inFeatures: inF, outFeatures: outF)
        XCTAssertLessThan(maxAbsDiff(yd, yf), 1e-5)
        let gd = DTensor(shape: yd.shape), gf = Tensor(shape: yf.shape)
        Kernels.geluForward(out: gd.data, inp: yd.data, count: yd.count)
        Kernels.geluForward(out: gf.data, inp: yf.data, count: yf.count)
        XCTAssertLessThan(maxAbsDiff(gd, gf), 1e-5)
        let sd = DTensor(shape: yd.shape), sf = Tensor(shape: yf.shape)
        Kernels.softmaxForward(out: sd.data, inp: yd.data, rows: rows, cols: outF)
        Kernels.softmaxForward(out: sf.data, inp: yf.data, rows: rows, cols: outF)
        XCTAssertLessThan(maxAbsDiff(sd, sf), 1e-6)
        let dd = DTensor(shape: yd.shape), df = Tensor(shape: yf.shape)
        Kernels.geluBackward(dInp: dd.data, dOut: sd.data, inp: yd.data, count: yd.count)
        Kernels.geluBackward(dInp: df.data, dOut: sf.data, inp: yf.data, count: yf.count)
        XCTAssertLessThan(maxAbsDiff(dd, df), 1e-6)
    }
}
