import Primitives
import Engine

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The trainable part of the affinity network: on frozen backbone patch features x [rows, D],
/// f = W2 relu(W1 x + b1) + b2 [rows, F]. Affinity of tokens i, j: a_ij = exp(-mean_c |f_ic - f_jc|).
public final class AffinityHeadOf<S: EngineScalar> {
    public let inFeatures: Int, hidden: Int, outFeatures: Int
    public let w1: TensorOf<S>, b1: TensorOf<S>, w2: TensorOf<S>, b2: TensorOf<S>
    public let gw1: TensorOf<S>, gb1: TensorOf<S>, gw2: TensorOf<S>, gb2: TensorOf<S>

    public init(inFeatures: Int, hidden: Int, outFeatures: Int, seed: UInt64) {
        self.inFeatures = inFeatures
        self.hidden = hidden
        self.outFeatures = outFeatures
        w1 = TensorOf<S>(shape: [hidden, inFeatures]); b1 = TensorOf<S>(shape: [hidden])
        w2 = TensorOf<S>(shape: [outFeatures, hidden]); b2 = TensorOf<S>(shape: [outFeatures])
        gw1 = TensorOf<S>(shape: w1.shape); gb1 = TensorOf<S>(shape: b1.shape)
        gw2 = TensorOf<S>(shape: w2.shape); gb2 = TensorOf<S>(shape: b2.shape)
        // PyTorch's Linear default (uniform +-1/sqrt(fan_in)); biases start at zero.
        var rng = SplitMix64(seed: seed)
        w1.fillUniform(-1 / Double(inFeatures).squareRoot(), 1 / Double(inFeatures).squareRoot(), rng: &rng)
        w2.fillUniform(-1 / Double(hidden).squareRoot(), 1 / Double(hidden).squareRoot(), rng: &rng)
    }

    /// (name, value, gradient) in a fixed order.
    public var parameters: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)] {
        [("w1", w1, gw1), ("b1", b1, gb1), ("w2", w2, gw2), ("b2", b2, gb2)]
    }

    public func zeroGrad() { for p in parameters { p.grad.zero() } }

    /// Activations kept for backward.
    public struct Activations {
        public let input: TensorOf<S>
        public let hiddenPre: TensorOf<S>
        public let hiddenPost: TensorOf<S>
        public let output: TensorOf<S>
    }

    public func forward(_ input: TensorOf<S>) -> Activations {
        precondition(input.rank == 2 && input.shape[1] == inFeatures)
        let rows = input.shape[0]
        let pre = TensorOf<S>(shape: [rows, hidden]), post = TensorOf<S>(shape: [rows, hidden])
        let out = TensorOf<S>(shape: [rows, outFeatures])
        Kernels.linearForward(out: pre.data, inp: input.data, weight: w1.data, bias: b1.data, rows: rows, inFeatures: inFeatures, outFeatures: hidden)
        let p = pre.data, q = post.data
        for i in 0..<(rows * hidden) { q[i] = p[i] > 0 ? p[i] : 0 }
        Kernels.linearForward(out: out.data, inp: post.data, weight: w2.data, bias: b2.data, rows: rows, inFeatures: hidden, outFeatures: outFeatures)
        return Activations(input: input, hiddenPre: pre, hiddenPost: post, output: out)
    }

    /// Adds the parameter gradients of a loss whose gradient on the output is `dOut`; returns d(loss)/d(input) when asked.
    @discardableResult
    public func backward(_ acts: Activations, dOut: TensorOf<S>, inputGradient: Bool = false) -> TensorOf<S>? {
        let rows = acts.input.shape[0]
        let dPost = TensorOf<S>(shape: [rows, hidden])
        Kernels.linearBackward(dInp: dPost.data, dWeight: gw2.data, dBias: gb2.data, dOut: dOut.data, inp: acts.hiddenPost.data,
                               weight: w2.data, rows: rows, inFeatures: hidden, outFeatures: outFeatures)
        let d = dPost.data, p = acts.hiddenPre.data
        for i in 0..<(rows * hidden) where p[i] <= 0 { d[i] = 0 }
        let dIn = inputGradient ? TensorOf<S>(shape: acts.input.shape) : nil
        Kernels.linearBackward(dInp: dIn?.data, dWeight: gw1.data, dBias: gb1.data, dOut: dPost.data, inp: acts.input.data,
                               weight: w1.data, rows: rows, inFeatures: inFeatures, outFeatures: hidden)
        return dIn
    }
}

public typealias AffinityHead = AffinityHeadOf<Float>

/// PSA's affinity loss and the affinities themselves.
public enum AffinityLoss {
    /// Guards log(0) as PSA's code does.
    public static let epsilon = 1e-5

    /// a = exp(-mean_c |f_i - f_j|) for rows i, j of f [rows, F].
    @inline(__always) @_specialize(where S == Float)
    public static func affinity<S: EngineScalar>(_ f: UnsafePointer<S>, _ i: Int, _ j: Int, features: Int) -> S {
        let a = f + i * features, b = f + j * features
        var s: S = 0
        for c in 0..<features { s += abs(a[c] - b[c]) }
        return S.engineExp(-s / S(features))
    }

    public struct Parts: Equatable {
        public var backgroundPositive: Double
        public var foregroundPositive: Double
        public var negative: Double
        public var total: Double { backgroundPositive / 4 + foregroundPositive / 4 + negative / 2 }
    }

    /// Loss = mean_bgpos(-log a)/4 + mean_fgpos(-log a)/4 + mean_neg(-log(1 - a))/2 (each mean over its own
    /// count; an empty set contributes 0). Adds d(loss)/d(f) into `gradient` when given.
    @_specialize(where S == Float)
    public static func compute<S: EngineScalar>(features f: TensorOf<S>, pairs: AffinityPairs, gradient: TensorOf<S>?) -> Parts {
        let dim = f.shape[1]
        let eps = S(epsilon)
        func term(_ list: [(Int32, Int32)], weight: S, negative: Bool) -> Double {
            guard !list.isEmpty else { return 0 }
            let scale = weight / S(list.count)
            var total: S = 0
            let fp = f.data
            for (ii, jj) in list {
                let i = Int(ii), j = Int(jj)
                let a = affinity(fp, i, j, features: dim)
                let dA: S
                if negative {
                    total -= S.engineLog(1 + eps - a)
                    dA = 1 / (1 + eps - a)
                } else {
                    total -= S.engineLog(a + eps)
                    dA = -1 / (a + eps)
                }
                guard let g = gradient?.data else { continue }
                // da/d(f_ic) = -a * sign(f_ic - f_jc) / F.
                let k = scale * dA * (-a) / S(dim)
                let fi = fp + i * dim, fj = fp + j * dim, gi = g + i * dim, gj = g + j * dim
                for c in 0..<dim {
                    let diff = fi[c] - fj[c]
                    let s: S = diff > 0 ? k : (diff < 0 ? -k : 0)
                    gi[c] += s
                    gj[c] -= s
                }
            }
            return Double(total) / Double(list.count)
        }
        return Parts(backgroundPositive: term(pairs.backgroundPositive, weight: S(0.25), negative: false),
                     foregroundPositive: term(pairs.foregroundPositive, weight: S(0.25), negative: false),
                     negative: term(pairs.negative, weight: S(0.5), negative: true))
    }
}

extension AffinityHeadOf where S == Float {
    /// The project's AdamW over the head: weight decay on the matrices, none on the biases.
    public func makeOptimizer(lr: Double, weightDecay: Double) -> AdamW {
        AdamW(settings: .init(lr: lr),
              groups: [ParameterGroup(name: "weights", weightDecay: weightDecay), ParameterGroup(name: "biases", weightDecay: 0)],
              parameters: parameters.map { OptimizedParameter(name: $0.name, count: $0.value.count, group: $0.value.rank > 1 ? 0 : 1) })
    }

    public func step(_ optimizer: AdamW, lr: Double? = nil) {
        let list = parameters
        optimizer.step(values: list.map(\.value.data), gradients: list.map { UnsafePointer($0.grad.data) }, lr: lr)
    }

    /// One training step of psa-refine: forward of a batch's frozen features [rows, D], the affinity
    /// loss on `pairs` (row indices into the batch), backward, one `optimizer` step. Throws when the
    /// loss is NaN or infinite, before any update (the gradients are then partial, the weights as
    /// they were). The gradients stay in place.
    @discardableResult
    public func trainStep(features: Tensor, pairs: AffinityPairs, optimizer: AdamW) throws -> AffinityLoss.Parts {
        zeroGrad()
        let acts = forward(features)
        let gradient = Tensor(shape: acts.output.shape)
        let parts = AffinityLoss.compute(features: acts.output, pairs: pairs, gradient: gradient)
        guard parts.total.isFinite else {
            throw TrainingError("affinity loss is \(parts.total) (bg+ \(parts.backgroundPositive), fg+ \(parts.foregroundPositive), neg \(parts.negative))")
        }
        backward(acts, dOut: gradient)
        step(optimizer)
        return parts
    }
}
