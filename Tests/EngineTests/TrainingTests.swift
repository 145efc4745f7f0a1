import TestSupport
import XCTest
@testable import Engine

final class AdamWTests: XCTestCase {
    /// Two steps worked by hand: p = 1, g = 0.5 then -0.25, lr 0.1, betas (0.9, 0.999), wd 0.01.
    /// Step 1: p <- 1 (1 - 0.001) = 0.999; m = 0.05, v = 0.00025; m^ = 0.5, v^ = 0.25, so the
    ///   update is 0.1 * 0.5 / (0.5 + 1e-8) = 0.1 (minus 2e-9): p = 0.899000002.
    /// Step 2: p <- 0.899000002 * 0.999; m = 0.045 - 0.025 = 0.02; v = 0.00024975 + 0.0000625 =
    ///   0.00031225; m^ = 0.02 / 0.19, v^ = 0.00031225 / 0.001999; update = 0.1 m^ / sqrt(v^)
    ///   = 0.0266334; p = 0.898101 - 0.0266334 = 0.8714673.
    func testTwoStepsByHand() {
        let adam = AdamW(settings: .init(lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8),
                         groups: [ParameterGroup(name: "all", weightDecay: 0.01)],
                         parameters: [OptimizedParameter(name: "w", count: 1, group: 0)])
        var p: [Float] = [1]
        var g: [Float] = [0.5]
        step(adam, &p, g)
        XCTAssertEqual(p[0], 0.899000002, accuracy: 1e-6)
        let (m, v) = adam.moments(of: 0)
        XCTAssertEqual(m[0], 0.05, accuracy: 1e-8)
        XCTAssertEqual(v[0], 0.00025, accuracy: 1e-10)
        g = [-0.25]
        step(adam, &p, g)
        XCTAssertEqual(p[0], 0.8714673, accuracy: 2e-6)
        XCTAssertEqual(adam.stepCount, 2)
    }

    /// With a zero gradient the moments stay zero and only the decoupled decay acts: p (1 - lr wd).
    /// Weight decay passed as momentum (the reference bug) or added to the gradient would not give this.
    func testDecoupledDecayAloneAndGroupMultiplier() {
        let adam = AdamW(settings: .init(lr: 0.1),
                         groups: [ParameterGroup(name: "a", weightDecay: 0.5),
                                  ParameterGroup(name: "b", lrMultiplier: 10, weightDecay: 0.5),
                                  ParameterGroup(name: "c", lrMultiplier: 10, weightDecay: 0)],
                         parameters: [OptimizedParameter(name: "a", count: 2, group: 0),
                                      OptimizedParameter(name: "b", count: 1, group: 1),
                                      OptimizedParameter(name: "c", count: 1, group: 2)])
        var a: [Float] = [2, -4], b: [Float] = [1], c: [Float] = [3]
        let zero2: [Float] = [0, 0], zero1: [Float] = [0]
        a.withUnsafeMutableBufferPointer { ap in
            b.withUnsafeMutableBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    zero2.withUnsafeBufferPointer { z2 in
                        zero1.withUnsafeBufferPointer { z1 in
                            adam.step(values: [ap.baseAddress!, bp.baseAddress!, cp.baseAddress!],
                                      gradients: [z2.baseAddress!, z1.baseAddress!, z1.baseAddress!])
                        }
                    }
                }
            }
        }
        XCTAssertEqual(a[0], 2 * (1 - 0.05), accuracy: 1e-6)
        XCTAssertEqual(a[1], -4 * (1 - 0.05), accuracy: 1e-6)
        XCTAssertEqual(b[0], 1 * (1 - 0.5), accuracy: 1e-6)  // lr 1.0 in group b
        XCTAssertEqual(c[0], 3, accuracy: 0)                   // no decay, no gradient
    }

    /// Each parameter's group lr applies to the gradient step too: a first step moves by lr*sign(g).
    func testFirstStepIsSignStepAtGroupLR() {
        let adam = AdamW(settings: .init(lr: 0.01),
                         groups: ParameterGrouping.groups(weightDecay: 0, headLRMultiplier: 10),
                         parameters: [OptimizedParameter(name: "x", count: 3, group: ParameterGrouping.backboneDecay),
                                      OptimizedParameter(name: "h", count: 1, group: ParameterGrouping.headNoDecay)])
        var x: [Float] = [0, 0, 0], h: [Float] = [0]
        let gx: [Float] = [3, -0.001, 7], gh: [Float] = [-2]
        x.withUnsafeMutableBufferPointer { xp in
            h.withUnsafeMutableBufferPointer { hp in
                gx.withUnsafeBufferPointer { gxp in
                    gh.withUnsafeBufferPointer { ghp in
                        adam.step(values: [xp.baseAddress!, hp.baseAddress!], gradients: [gxp.baseAddress!, ghp.baseAddress!])
                    }
                }
            }
        }
        XCTAssertEqual(x[0], -0.01, accuracy: 1e-7)
        XCTAssertEqual(x[1], 0.01, accuracy: 1e-6)
        XCTAssertEqual(x[2], -0.01, accuracy: 1e-7)
        XCTAssertEqual(h[0], 0.1, accuracy: 1e-6)
    }

    func testGroupingRule() {
        XCTAssertEqual(ParameterGrouping.group(name: "blocks.3.attn.qkv.weight", shape: [96, 32]), ParameterGrouping.backboneDecay)
        XCTAssertEqual(ParameterGrouping.group(name: "blocks.3.attn.qkv.bias", shape: [96]), ParameterGrouping.backboneNoDecay)
        XCTAssertEqual(ParameterGrouping.group(name: "pos_embed", shape: [1, 17, 32]), ParameterGrouping.backboneNoDecay)
        XCTAssertEqual(ParameterGrouping.group(name: "cls_token", shape: [1, 1, 32]), ParameterGrouping.backboneNoDecay)
        XCTAssertEqual(ParameterGrouping.group(name: "patch_embed.proj.weight", shape: [32, 3, 4, 4]), ParameterGrouping.backboneDecay)
        XCTAssertEqual(ParameterGrouping.group(name: "cam_head.weight", shape: [5, 32]), ParameterGrouping.headDecay)
        XCTAssertEqual(ParameterGrouping.group(name: "cls_head.bias", shape: [5]), ParameterGrouping.headNoDecay)
    }

    private func step(_ adam: AdamW, _ p: inout [Float], _ g: [Float]) {
        p.withUnsafeMutableBufferPointer { pp in
            g.withUnsafeBufferPointer { gp in adam.step(values: [pp.baseAddress!], gradients: [gp.baseAddress!]) }
        }
    }
}

final class ScheduleTests: XCTestCase {
    func testWarmupThenCosine() {
        let s = WarmupCosineSchedule(peakLR: 2, warmupSteps: 4, totalSteps: 14, minFactor: 0.1)
        XCTAssertEqual(s.lr(atStep: 0), 0.5, accuracy: 1e-12)
        XCTAssertEqual(s.lr(atStep: 1), 1.0, accuracy: 1e-12)
        XCTAssertEqual(s.lr(atStep: 3), 2.0, accuracy: 1e-12)
        XCTAssertEqual(s.lr(atStep: 4), 2.0, accuracy: 1e-12)
        // 10 decay steps, progress (7-4)/9 = 1/3: cosine factor 0.5 (1 + cos(pi/3)) = 0.75,
        // scaled into [0.1, 1]: 0.1 + 0.9 * 0.75 = 0.775.
        XCTAssertEqual(s.lr(atStep: 7), 2 * 0.775, accuracy: 1e-12)
        XCTAssertEqual(s.lr(atStep: 13), 0.2, accuracy: 1e-12)
        for step in 4..<13 { XCTAssertGreaterThan(s.lr(atStep: step), s.lr(atStep: step + 1)) }
    }

    func testNoWarmup() {
        let s = WarmupCosineSchedule(peakLR: 1, warmupSteps: 0, totalSteps: 3)
        XCTAssertEqual(s.lr(atStep: 0), 1, accuracy: 1e-12)
        XCTAssertEqual(s.lr(atStep: 1), 0.5, accuracy: 1e-12)
        XCTAssertEqual(s.lr(atStep: 2), 0, accuracy: 1e-12)
    }
}

final class GradientToolsTests: XCTestCase {
    func testClipByGlobalNorm() {
        var a: [Float] = [3, 0], b: [Float] = [4]
        let norm = a.withUnsafeMutableBufferPointer { ap in
            b.withUnsafeMutableBufferPointer { bp in
                GradientTools.clipByGlobalNorm([(ap.baseAddress!, 2), (bp.baseAddress!, 1)], maxNorm: 1)
            }
        }
        XCTAssertEqual(norm, 5, accuracy: 1e-9)
        XCTAssertEqual(a[0], 0.6, accuracy: 1e-6)
        XCTAssertEqual(b[0], 0.8, accuracy: 1e-6)
        // Below the limit nothing changes.
        let again = a.withUnsafeMutableBufferPointer { ap in
            b.withUnsafeMutableBufferPointer { bp in
                GradientTools.clipByGlobalNorm([(ap.baseAddress!, 2), (bp.baseAddress!, 1)], maxNorm: 10)
            }
        }
        XCTAssertEqual(again, 1, accuracy: 1e-6)
        XCTAssertEqual(a[0], 0.6, accuracy: 1e-6)
    }

    func testAllFinite() {
        var values = [Float](repeating: 1.5, count: 1000)
        XCTAssertTrue(GradientTools.allFinite(values, count: values.count))
        values[777] = .nan
        XCTAssertFalse(GradientTools.allFinite(values, count: values.count))
        values[777] = -.infinity
        XCTAssertFalse(GradientTools.allFinite(values, count: values.count))
        values[777] = .greatestFiniteMagnitude
        XCTAssertTrue(GradientTools.allFinite(values, count: values.count))
    }

    func testEMA() {
        let start: [Float] = [1, -2]
        let ema = start.withUnsafeBufferPointer { ParameterEMA(names: ["w"], values: [($0.baseAddress!, 2)]) }
        let target: [Float] = [3, 2]
        target.withUnsafeBufferPointer { ema.update(from: [$0.baseAddress!], decay: 0.9) }
        XCTAssertEqual(ema.average(of: 0)[0], 1.2, accuracy: 1e-6)   // 0.9 * 1 + 0.1 * 3
        XCTAssertEqual(ema.average(of: 0)[1], -1.6, accuracy: 1e-6)  // 0.9 * -2 + 0.1 * 2
        target.withUnsafeBufferPointer { ema.update(from: [$0.baseAddress!], decay: 0.9) }
        XCTAssertEqual(ema.average(of: 0)[0], 1.38, accuracy: 1e-6)
    }
}

final class BLASCorePolicyTests: XCTestCase {
    func testDecision() {
        typealias P = BLASCorePolicy
        // A Haswell pin (one machine kind sets it) on an AVX-512 CPU: the AVX-512 kernels.
        XCTAssertEqual(P.decision(policy: "auto", loaded: "Haswell", cpu: .avx512), .run(coreType: "SkylakeX"))
        // OpenBLAS not knowing the CPU (0.3.21 on an Emerald Rapids Xeon loads Prescott).
        XCTAssertEqual(P.decision(policy: "auto", loaded: "Prescott", cpu: .avx512), .run(coreType: "SkylakeX"))
        XCTAssertEqual(P.decision(policy: "", loaded: "Sandybridge", cpu: .avx2), .run(coreType: "Haswell"))
        // A core wider than the CPU runs (an inherited pin): the CPU's own width, or OpenBLAS's
        // detection where the CPU has no AVX2.
        XCTAssertEqual(P.decision(policy: "auto", loaded: "SkylakeX", cpu: .avx2), .run(coreType: "Haswell"))
        XCTAssertEqual(P.decision(policy: "auto", loaded: "Haswell", cpu: .baseline), .run(coreType: nil))
        // Already as wide as the CPU: nothing to do, whichever core of that width OpenBLAS chose.
        XCTAssertEqual(P.decision(policy: "auto", loaded: "Cooperlake", cpu: .avx512), .keep)
        XCTAssertEqual(P.decision(policy: "auto", loaded: "Zen", cpu: .avx2), .keep)
        XCTAssertEqual(P.decision(policy: "auto", loaded: "NEOVERSEN1", cpu: .baseline), .keep)
        XCTAssertEqual(P.decision(policy: "keep", loaded: "Prescott", cpu: .avx512), .keep)
        // An explicit core is pinned unless already loaded, and refused when the CPU cannot run it.
        XCTAssertEqual(P.decision(policy: "Haswell", loaded: "Cooperlake", cpu: .avx512), .run(coreType: "Haswell"))
        XCTAssertEqual(P.decision(policy: "haswell", loaded: "Haswell", cpu: .avx512), .keep)
        guard case .refuse(let message) = P.decision(policy: "SkylakeX", loaded: "Haswell", cpu: .avx2) else {
            return XCTFail("SkylakeX on an AVX2 CPU must be refused")
        }
        XCTAssertTrue(message.contains("WSSS_BLAS_CORE=SkylakeX") && message.contains("AVX-512"), message)
    }

    /// The C shim's CPUID/XGETBV reading agrees with the kernel's view in /proc/cpuinfo (which
    /// lists AVX-512 flags only where the OS saves the registers).
    func testCPUTierMatchesCPUInfo() throws {
        #if arch(x86_64) && os(Linux)
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let flagLine = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(flagLine.split(separator: " ").map(String.init))
        let expected: BLASCorePolicy.VectorTier =
            ["avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"].allSatisfy(flags.contains) ? .avx512
            : ["avx2", "fma"].allSatisfy(flags.contains) ? .avx2 : .baseline
        XCTAssertEqual(BLASCorePolicy.cpuTier, expected, flagLine.description)
        #else
        XCTAssertEqual(BLASCorePolicy.cpuTier, .baseline)
        #endif
    }
}

final class ClassificationLossTests: XCTestCase {
    /// z = 0 gives log 2 for either label; z = 2, y = 1 gives log(1 + e^-2); z = -3, y = 1 gives
    /// log(1 + e^3); z = 40, y = 0 gives 40 (no overflow).
    func testValuesAndGradient() {
        let z: [Float] = [0, 2, -3, 40]
        let y: [Float] = [1, 1, 1, 0]
        var grad = [Float](repeating: 0, count: 4)
        let loss = ClassificationLoss.multilabelSoftMargin(logits: z, labels: y, batch: 2, classes: 2, gradient: &grad)
        let expected = (log(2.0) + log(1 + exp(-2.0)) + log(1 + exp(3.0)) + 40) / 4
        XCTAssertEqual(loss, expected, accuracy: 1e-9)
        // d/dz = (sigmoid(z) - y) / (B C), checked by central differences in Double.
        for i in 0..<4 {
            var plus = z.map(Double.init), minus = plus
            plus[i] += 1e-3
            minus[i] -= 1e-3
            func f(_ v: [Double]) -> Double {
                var sum = 0.0
                for k in 0..<4 {
                    let zk = v[k], yk = Double(y[k])
                    sum += max(zk, 0) + log1p(exp(-abs(zk))) - yk * zk
                }
                return sum / 4
            }
            XCTAssertEqual(Double(grad[i]), (f(plus) - f(minus)) / 2e-3, accuracy: 1e-6)
        }
    }
}
