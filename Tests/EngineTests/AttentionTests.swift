import TestSupport
import XCTest
import Foundation
import Primitives
@testable import Engine

final class AttentionTests: XCTestCase {
    let B = 2, T = 5, D = 6, H = 2

    /// Naive attention straight from the definition, for the forward check.
    func naive(_ qkv: DTensor) -> (out: DTensor, probs: DTensor, logits: DTensor) {
        let dh = D / H
        let out = DTensor(shape: [B * T, D]), probs = DTensor(shape: [B, H, T, T]), logits = DTensor(shape: [B, H, T, T])
        for b in 0..<B {
            for h in 0..<H {
                for i in 0..<T {
                    var row = [Double](repeating: 0, count: T)
                    for j in 0..<T {
                        var s = 0.0
                        for d in 0..<dh { s += qkv[b * T + i, h * dh + d] * qkv[b * T + j, D + h * dh + d] }
                        row[j] = s / sqrt(Double(dh))
                        logits[b, h, i, j] = row[j]
                    }
                    let m = row.max()!
                    let e = row.map { exp($0 - m) }, z = e.reduce(0, +)
                    for j in 0..<T { probs[b, h, i, j] = e[j] / z }
                    for d in 0..<dh {
                        var s = 0.0
                        for j in 0..<T { s += probs[b, h, i, j] * qkv[b * T + j, 2 * D + h * dh + d] }
                        out[b * T + i, h * dh + d] = s
                    }
                }
            }
        }
        return (out, probs, logits)
    }

    func runForward(_ qkv: DTensor) -> (out: DTensor, probs: DTensor, logits: DTensor) {
        let out = DTensor(shape: [B * T, D]), probs = DTensor(shape: [B, H, T, T]), logits = DTensor(shape: [B, H, T, T])
        Kernels.attentionForward(out: out.data, probs: probs.data, logits: logits.data, qkv: qkv.data,
                                 batch: B, tokens: T, dim: D, heads: H)
        return (out, probs, logits)
    }

    func testForwardMatchesDefinition() {
        var rng = SplitMix64(seed: 10)
        let qkv = randomTensor([B * T, 3 * D], &rng)
        let got = runForward(qkv), ref = naive(qkv)
        XCTAssertLessThan(maxAbsDiff(got.out, ref.out), 1e-12)
        XCTAssertLessThan(maxAbsDiff(got.probs, ref.probs), 1e-12)
        XCTAssertLessThan(maxAbsDiff(got.logits, ref.logits), 1e-12)
    }

    /// Loss = <out, Ro> + <probs, Rp> + <logits, Rl>: the extra gradients on probs and logits
    /// enter through the backward's extra inputs, so all three paths are checked at once.
    func testGradientsIncludingExtraProbAndLogitGradients() {
        for mode in [AttentionThreading.perHead, .blas] {
            Kernels.attentionThreading = mode
            defer { Kernels.attentionThreading = .perHead }
            var rng = SplitMix64(seed: 11)
            let qkv = randomTensor([B * T, 3 * D], &rng)
            let ro = randomTensor([B * T, D], &rng), rp = randomTensor([B, H, T, T], &rng), rl = randomTensor([B, H, T, T], &rng)
            let dqkv = DTensor(shape: qkv.shape), dProbs = DTensor(shape: [B, H, T, T])
            dqkv.fill(0.125)  // the += contract
            let kept = runForward(qkv).probs
            Kernels.attentionBackward(dQKV: dqkv.data, dProbs: dProbs.data, dOut: ro.data, qkv: qkv.data,
                                      probs: kept.data, extraDProbs: rp.data, extraDLogits: rl.data,
                                      batch: B, tokens: T, dim: D, heads: H)
            for i in 0..<dqkv.count { dqkv.data[i] -= 0.125 }
            checkGradient("attention dqkv \(mode)", input: qkv, analytic: dqkv) {
                let f = runForward(qkv)
                return dot(f.out, ro) + dot(f.probs, rp) + dot(f.logits, rl)
            }
            // The reported dProbs is the total gradient on the probabilities: dO v^T + Rp.
            let dh = D / H
            for b in 0..<B { for h in 0..<H { for i in 0..<T { for j in 0..<T {
                var s = rp[b, h, i, j]
                for d in 0..<dh { s += ro[b * T + i, h * dh + d] * qkv[b * T + j, 2 * D + h * dh + d] }
                XCTAssertEqual(dProbs[b, h, i, j], s, accuracy: 1e-12)
            } } } }
        }
    }

    func testWithoutKeptProbGradientsAndFloatAgreement() {
        var rng = SplitMix64(seed: 12)
        let qkv = randomTensor([B * T, 3 * D], &rng), ro = randomTensor([B * T, D], &rng)
        let f = runForward(qkv)
        let a = DTensor(shape: qkv.shape), b = DTensor(shape: qkv.shape), dp = DTensor(shape: [B, H, T, T])
        Kernels.attentionBackward(dQKV: a.data, dProbs: nil, dOut: ro.data, qkv: qkv.data, probs: f.probs.data,
                                  extraDProbs: nil, extraDLogits: nil, batch: B, tokens: T, dim: D, heads: H)
        Kernels.attentionBackward(dQKV: b.data, dProbs: dp.data, dOut: ro.data, qkv: qkv.data, probs: f.probs.data,
                                  extraDProbs: nil, extraDLogits: nil, batch: B, tokens: T, dim: D, heads: H)
        XCTAssertEqual(maxAbsDiff(a, b), 0)
        // Float path.
        let qf: Tensor = qkv.converted(), rof: Tensor = ro.converted()
        let out = Tensor(shape: [B * T, D]), probs = Tensor(shape: [B, H, T, T]), logits = Tensor(shape: [B, H, T, T])
        Kernels.attentionForward(out: out.data, probs: probs.data, logits: logits.data, qkv: qf.data, batch: B, tokens: T, dim: D, heads: H)
        XCTAssertLessThan(maxAbsDiff(out, f.out), 1e-5)
        XCTAssertLessThan(maxAbsDiff(probs, f.probs), 1e-6)
        let af = Tensor(shape: qkv.shape)
        Kernels.attentionBackward(dQKV: af.data, dProbs: nil, dOut: rof.data, qkv: qf.data, probs: probs.data,
                                  extraDProbs: nil, extraDLogits: nil, batch: B, tokens: T, dim: D, heads: H)
        XCTAssertLessThan(maxAbsDiff(af, a), 1e-5)
    }
}
