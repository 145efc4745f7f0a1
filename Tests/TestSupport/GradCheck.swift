import Primitives
import XCTest
import Engine

public typealias DTensor = TensorOf<Double>

/// Random tensors for the checks.
public func randomTensor(_ shape: [Int], _ rng: inout SplitMix64, std: Double = 1) -> DTensor {
    let t = DTensor(shape: shape)
    t.fillNormal(std: std, rng: &rng)
    return t
}

/// sum(a * b) in Double: the probe loss that turns an output into a scalar with gradient b.
public func dot(_ a: DTensor, _ b: DTensor) -> Double {
    precondition(a.count == b.count)
    var s = 0.0
    for i in 0..<a.count { s += a.data[i] * b.data[i] }
    return s
}

/// Central finite differences in Double against an analytic gradient.
///
/// `loss` recomputes the scalar from the current contents of `input`; `analytic` is the gradient
/// the backward produced at the unperturbed point. Checks `indices` (all when nil) with
/// |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|). With eps 1e-5 in Double the
/// truncation error is ~1e-10 and the rounding error ~1e-11 for O(1) losses, so the default
/// tolerances catch any real mistake (a wrong term is off by O(1e-2) or more).
public func checkGradient(
    _ label: String, input: DTensor, analytic: DTensor, indices: [Int]? = nil,
    eps: Double = 1e-5, rtol: Double = 1e-6, atol: Double = 1e-8,
    file: StaticString = #filePath, line: UInt = #line, loss: () -> Double
) {
    XCTAssertEqual(input.count, analytic.count, "\(label): gradient size", file: file, line: line)
    var worst = 0.0
    var checked = 0
    for i in indices ?? Array(0..<input.count) {
        let saved = input.data[i]
        input.data[i] = saved + eps
        let lp = loss()
        input.data[i] = saved - eps
        let lm = loss()
        input.data[i] = saved
        let numeric = (lp - lm) / (2 * eps)
        let a = analytic.data[i]
        let err = abs(a - numeric)
        let bound = atol + rtol * max(abs(a), abs(numeric))
        worst = max(worst, err / bound)
        checked += 1
        if err > bound {
            XCTFail("\(label)[\(i)]: analytic \(a) vs numeric \(numeric) (error \(err))", file: file, line: line)
            return
        }
    }
    XCTAssertGreaterThan(checked, 0, "\(label): nothing checked", file: file, line: line)
}

/// A few spread-out flat indices of a tensor with `count` elements (always the first and last).
public func sampleIndices(_ count: Int, _ k: Int, _ rng: inout SplitMix64) -> [Int] {
    if count <= k { return Array(0..<count) }
    var s = Set([0, count - 1])
    while s.count < k { s.insert(Int(rng.next() % UInt64(count))) }
    return s.sorted()
}

public func maxAbsDiff<A: EngineScalar, B: EngineScalar>(_ a: TensorOf<A>, _ b: TensorOf<B>) -> Double {
    precondition(a.count == b.count)
    var m = 0.0
    for i in 0..<a.count { m = max(m, abs(Double(a.data[i]) - Double(b.data[i]))) }
    return m
}

public func maxAbs<A: EngineScalar>(_ a: TensorOf<A>) -> Double {
    var m = 0.0
    for i in 0..<a.count { m = max(m, abs(Double(a.data[i]))) }
    return m
}

/// A Double ViT with every parameter moved away from the init (non-zero biases, LayerNorm affine
/// != identity), so that a missing or misplaced term changes the outputs. Weight matrices get
/// std `matrixScale` / sqrt(fan-in).
public func randomisedViT(_ config: ViTConfig, seed: UInt64, matrixScale: Double = 1) -> ViTOf<Double> {
    let m = try! ViTOf<Double>(config: config, seed: seed)
    var rng = SplitMix64(seed: seed + 100)
    for p in m.parameterList {
        if p.name.hasSuffix("norm1.weight") || p.name.hasSuffix("norm2.weight") || p.name == "norm.weight" {
            for i in 0..<p.value.count { p.value.data[i] = 1 + 0.2 * rng.normal() }
        } else if p.value.rank == 1 {
            p.value.fillNormal(std: 0.1, rng: &rng)
        } else if p.name == "cls_token" || p.name == "pos_embed" || p.name == "mask_token" {
            p.value.fillNormal(std: 0.5, rng: &rng)
        } else {
            p.value.fillNormal(std: matrixScale / Double(p.value.count / p.value.shape[0]).squareRoot(), rng: &rng)
        }
    }
    return m
}

/// multilabel_soft_margin(z, y) = mean over batch and classes of softplus terms, and its gradient.
public func softMargin(_ z: DTensor, _ y: DTensor) -> (Double, DTensor) {
    let g = DTensor(shape: z.shape)
    var s = 0.0
    for i in 0..<z.count {
        let v = z.data[i]
        s += y.data[i] * log(1 + exp(-v)) + (1 - y.data[i]) * log(1 + exp(v))
        g.data[i] = (1 / (1 + exp(-v)) - y.data[i]) / Double(z.count)
    }
    return (s / Double(z.count), g)
}
