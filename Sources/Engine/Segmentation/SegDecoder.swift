import Foundation
import Primitives

public typealias SegDecoder = SegDecoderOf<Float>

/// Configuration of the light DeepLab-style decoder (recorded in segmentation checkpoints).
///
/// ASPP-lite on the patch grid: a 1x1 branch plus one 3x3 branch per dilation, each
/// `channels` wide with ReLU; their concatenation goes through a 1x1 fuse convolution + ReLU
/// and a 1x1 classifier to `numClasses` (background + foreground classes). No batch norm: the
/// batches are small and the backbone's features are already layer-normalised.
public struct SegDecoderConfig: Codable, Equatable, Sendable {
    public var inChannels: Int
    public var channels: Int
    public var dilations: [Int]
    public var numClasses: Int

    /// Dilations 1, 2, 3 on an 8x8 grid (64 px, patch 8) reach the whole grid (3x3 at d=3 spans 7).
    public init(inChannels: Int, channels: Int = 64, dilations: [Int] = [1, 2, 3], numClasses: Int) {
        self.inChannels = inChannels
        self.channels = channels
        self.dilations = dilations
        self.numClasses = numClasses
    }

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", channels, dilations, numClasses = "num_classes"
    }

    public func validate() throws {
        guard inChannels > 0, channels > 0, numClasses > 1, dilations.allSatisfy({ $0 >= 1 }) else {
            throw EngineError("decoder needs positive channels, at least 2 classes and dilations >= 1 (got \(self))")
        }
    }

    /// Branches: the 1x1 one, then one per dilation.
    public var branchCount: Int { 1 + dilations.count }
}

/// Activations of one decoder forward, kept for backward.
public final class SegDecoderActivationsOf<S: EngineScalar> {
    public let batch: Int, height: Int, width: Int
    let input: TensorOf<S>            // [B, h, w, D] (not owned: the backbone's features)
    let branches: [TensorOf<S>]       // per branch [B, h, w, Cd] after ReLU
    let concat: TensorOf<S>           // [B, h, w, nb * Cd]
    let fused: TensorOf<S>            // [B, h, w, Cd] after ReLU
    public let logits: TensorOf<S>    // [B, h, w, K]

    init(input: TensorOf<S>, batch: Int, height: Int, width: Int, config c: SegDecoderConfig) {
        self.input = input
        self.batch = batch; self.height = height; self.width = width
        branches = (0..<c.branchCount).map { _ in TensorOf(shape: [batch, height, width, c.channels]) }
        concat = TensorOf(shape: [batch, height, width, c.branchCount * c.channels])
        fused = TensorOf(shape: [batch, height, width, c.channels])
        logits = TensorOf(shape: [batch, height, width, c.numClasses])
    }
}

/// The decoder: forward over channels-last feature grids, hand-written backward.
public final class SegDecoderOf<S: EngineScalar> {
    public let config: SegDecoderConfig
    /// (name, value, grad) in a fixed order; names start with `decoder.`.
    public let parameters: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)]

    public init(config: SegDecoderConfig, seed: UInt64) throws {
        try config.validate()
        self.config = config
        var rng = SplitMix64(seed: seed)
        var list: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)] = []
        func add(_ name: String, _ shape: [Int], std: Double) {
            let v = TensorOf<S>(shape: shape)
            if std > 0 { v.fillNormal(std: std, rng: &rng) }
            list.append((name, v, TensorOf<S>(shape: shape)))
        }
        let D = config.inChannels, Cd = config.channels
        // He initialisation for the ReLU layers; a small classifier so training starts near uniform.
        for b in 0..<config.branchCount {
            let k = b == 0 ? 1 : 3
            add("decoder.aspp.\(b).weight", [Cd, D, k, k], std: (2.0 / Double(D * k * k)).squareRoot())
            add("decoder.aspp.\(b).bias", [Cd], std: 0)
        }
        add("decoder.fuse.weight", [Cd, config.branchCount * Cd, 1, 1], std: (2.0 / Double(config.branchCount * Cd)).squareRoot())
        add("decoder.fuse.bias", [Cd], std: 0)
        add("decoder.classifier.weight", [config.numClasses, Cd, 1, 1], std: 0.01)
        add("decoder.classifier.bias", [config.numClasses], std: 0)
        parameters = list
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }
    public func zeroGrad() { for p in parameters { p.grad.zero() } }
    func weight(_ i: Int) -> TensorOf<S> { parameters[i].value }

    func geometry(branch b: Int, batch: Int, height: Int, width: Int) -> Conv2dGeometry {
        let d = b == 0 ? 1 : config.dilations[b - 1]
        return Conv2dGeometry(batch: batch, height: height, width: width, inChannels: config.inChannels,
                              outChannels: config.channels, kernel: b == 0 ? 1 : 3, padding: b == 0 ? 0 : d, dilation: d)
    }

    /// Logits [B, h, w, K] of features [B, h, w, D] (kept referenced by the activations).
    @_specialize(where S == Float)
    public func forward(features: TensorOf<S>, batch: Int, height: Int, width: Int) -> SegDecoderActivationsOf<S> {
        precondition(features.count == batch * height * width * config.inChannels, "decoder input has the wrong size")
        let a = SegDecoderActivationsOf(input: features, batch: batch, height: height, width: width, config: config)
        let rows = batch * height * width, Cd = config.channels, nb = config.branchCount
        for b in 0..<nb {
            Kernels.conv2dForward(out: a.branches[b].data, inp: features.data, weight: weight(2 * b).data,
                                  bias: weight(2 * b + 1).data, geometry(branch: b, batch: batch, height: height, width: width))
            Self.relu(a.branches[b].data, a.branches[b].count)
            let src = a.branches[b].data, dst = a.concat.data + b * Cd
            for r in 0..<rows { (dst + r * nb * Cd).update(from: src + r * Cd, count: Cd) }
        }
        let f = 2 * nb
        Kernels.linearForward(out: a.fused.data, inp: a.concat.data, weight: weight(f).data, bias: weight(f + 1).data,
                              rows: rows, inFeatures: nb * Cd, outFeatures: Cd)
        Self.relu(a.fused.data, a.fused.count)
        Kernels.linearForward(out: a.logits.data, inp: a.fused.data, weight: weight(f + 2).data, bias: weight(f + 3).data,
                              rows: rows, inFeatures: Cd, outFeatures: config.numClasses)
        return a
    }

    /// Adds parameter gradients and, when `dFeatures` is given, the gradient on the input features.
    @_specialize(where S == Float)
    public func backward(_ a: SegDecoderActivationsOf<S>, dLogits: TensorOf<S>, dFeatures: TensorOf<S>?) {
        let rows = a.batch * a.height * a.width, Cd = config.channels, nb = config.branchCount, f = 2 * nb
        let dFused = TensorOf<S>(shape: a.fused.shape)
        Kernels.linearBackward(dInp: dFused.data, dWeight: parameters[f + 2].grad.data, dBias: parameters[f + 3].grad.data,
                               dOut: dLogits.data, inp: a.fused.data, weight: weight(f + 2).data,
                               rows: rows, inFeatures: Cd, outFeatures: config.numClasses)
        Self.reluBackward(dFused.data, a.fused.data, dFused.count)
        let dConcat = TensorOf<S>(shape: a.concat.shape)
        Kernels.linearBackward(dInp: dConcat.data, dWeight: parameters[f].grad.data, dBias: parameters[f + 1].grad.data,
                               dOut: dFused.data, inp: a.concat.data, weight: weight(f).data,
                               rows: rows, inFeatures: nb * Cd, outFeatures: Cd)
        let dBranch = TensorOf<S>(shape: [a.batch, a.height, a.width, Cd])
        for b in 0..<nb {
            let src = dConcat.data + b * Cd
            for r in 0..<rows { (dBranch.data + r * Cd).update(from: src + r * nb * Cd, count: Cd) }
            Self.reluBackward(dBranch.data, a.branches[b].data, dBranch.count)
            Kernels.conv2dBackward(dInp: dFeatures?.data, dWeight: parameters[2 * b].grad.data, dBias: parameters[2 * b + 1].grad.data,
                                   dOut: dBranch.data, inp: a.input.data, weight: weight(2 * b).data,
                                   geometry(branch: b, batch: a.batch, height: a.height, width: a.width))
        }
    }

    @inline(__always)
    static func relu(_ p: UnsafeMutablePointer<S>, _ n: Int) {
        for i in 0..<n { p[i] = max(p[i], 0) }
    }

    /// Zeroes the gradient where the ReLU output is 0 (gradient 0 at the kink, as PyTorch).
    @inline(__always)
    static func reluBackward(_ g: UnsafeMutablePointer<S>, _ out: UnsafePointer<S>, _ n: Int) {
        for i in 0..<n where out[i] <= 0 { g[i] = 0 }
    }

    public func stateDict() -> [String: (shape: [Int], values: [Float])] {
        var d: [String: (shape: [Int], values: [Float])] = [:]
        for p in parameters { d[p.name] = (p.value.shape, p.value.toArray().map { Float($0) }) }
        return d
    }

    /// Loads every decoder parameter by name, checking shapes.
    public func load(_ arrays: [String: (shape: [Int], values: [Float])]) throws {
        for p in parameters {
            guard let t = arrays[p.name] else { throw EngineError("missing decoder weight '\(p.name)'") }
            guard t.shape == p.value.shape else {
                throw EngineError("decoder weight '\(p.name)' has shape \(t.shape), the decoder expects \(p.value.shape)")
            }
            for i in 0..<p.value.count { p.value.data[i] = S(t.values[i]) }
        }
    }
}
