import Foundation
import Primitives

public typealias SegDecoder = SegDecoderOf<Float>

/// Configuration of the light DeepLab-style decoder (recorded in segmentation checkpoints).
///
/// ASPP-lite on the patch grid: a 1x1 branch plus one 3x3 branch per dilation, each
/// `channels` wide with ReLU; their concatenation goes through a 1x1 fuse convolution + ReLU
/// and a 1x1 classifier to `numClasses` (background + foreground classes). No batch norm: the
/// batches are small and the backbone's features are already layer-normalised.
///
/// With `detailChannels` > 0, a detail branch in the manner of DeepLabv3+'s low-level features,
/// so that boundaries are not limited by the token grid: two 3x3 stride-2 convolutions + ReLU on
/// the input image (detailChannels / 2, then detailChannels wide) give features at 1/4 of the
/// image size; the fused grid features are upsampled bilinearly to that size, concatenated with
/// them, merged by a 3x3 convolution (`channels` wide) + ReLU, and classified there. The image
/// branch is trained from scratch: a pretrained ViT's first features are already 14 px coarse.
public struct SegDecoderConfig: Codable, Equatable, Sendable {
    public var inChannels: Int
    public var channels: Int
    public var dilations: [Int]
    public var numClasses: Int
    /// Width of the image detail branch (0: none; the logits stay on the token grid).
    public var detailChannels: Int

    /// Dilations 1, 2, 3 on an 8x8 grid (64 px, patch 8) reach the whole grid (3x3 at d=3 spans 7).
    public init(inChannels: Int, channels: Int = 64, dilations: [Int] = [1, 2, 3], numClasses: Int, detailChannels: Int = 0) {
        self.inChannels = inChannels
        self.channels = channels
        self.dilations = dilations
        self.numClasses = numClasses
        self.detailChannels = detailChannels
    }

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", channels, dilations, numClasses = "num_classes", detailChannels = "detail_channels"
    }

    /// Checkpoints written before the detail branch existed have no `detail_channels`: none.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        inChannels = try c.decode(Int.self, forKey: .inChannels)
        channels = try c.decode(Int.self, forKey: .channels)
        dilations = try c.decode([Int].self, forKey: .dilations)
        numClasses = try c.decode(Int.self, forKey: .numClasses)
        detailChannels = try c.decodeIfPresent(Int.self, forKey: .detailChannels) ?? 0
    }

    public func validate() throws {
        guard inChannels > 0, channels > 0, numClasses > 1, dilations.allSatisfy({ $0 >= 1 }) else {
            throw EngineError("decoder needs positive channels, at least 2 classes and dilations >= 1 (got \(self))")
        }
        guard detailChannels == 0 || (detailChannels >= 2 && detailChannels % 2 == 0) else {
            throw EngineError("decoder detail_channels must be 0 (no detail branch) or an even number >= 2, got \(detailChannels)")
        }
    }

    public var hasDetail: Bool { detailChannels > 0 }
    /// Widths of the detail branch's two convolutions.
    var detailWidths: (first: Int, second: Int) { (detailChannels / 2, detailChannels) }

    /// Side of the logits for a square input of `imageSize` px and a token grid of `gridSize`:
    /// the grid, or 1/4 of the image with the detail branch (two stride-2, pad-1, 3x3 convolutions).
    public func outputSize(imageSize: Int, gridSize: Int) -> Int {
        guard hasDetail else { return gridSize }
        let half = (imageSize - 1) / 2 + 1
        return (half - 1) / 2 + 1
    }

    /// Branches: the 1x1 one, then one per dilation.
    public var branchCount: Int { 1 + dilations.count }
}

/// Activations of the detail branch (see `SegDecoderConfig`).
final class SegDecoderDetailActivationsOf<S: EngineScalar> {
    let image: TensorOf<S>            // [B, H, W, 3] (not owned: the network's input)
    let imageHeight: Int, imageWidth: Int
    let first: TensorOf<S>            // [B, H/2, W/2, Cl/2] after ReLU
    let second: TensorOf<S>           // [B, H/4, W/4, Cl] after ReLU
    let upsampled: TensorOf<S>        // fused grid features at [B, H/4, W/4, Cd]
    let concat: TensorOf<S>           // [B, H/4, W/4, Cd + Cl]
    let merged: TensorOf<S>           // [B, H/4, W/4, Cd] after ReLU

    init(image: TensorOf<S>, batch B: Int, config c: SegDecoderConfig) {
        self.image = image
        imageHeight = image.shape[1]; imageWidth = image.shape[2]
        let h2 = (imageHeight - 1) / 2 + 1, w2 = (imageWidth - 1) / 2 + 1
        let h4 = (h2 - 1) / 2 + 1, w4 = (w2 - 1) / 2 + 1
        let (c1, c2) = c.detailWidths
        first = TensorOf(shape: [B, h2, w2, c1])
        second = TensorOf(shape: [B, h4, w4, c2])
        upsampled = TensorOf(shape: [B, h4, w4, c.channels])
        concat = TensorOf(shape: [B, h4, w4, c.channels + c2])
        merged = TensorOf(shape: [B, h4, w4, c.channels])
    }
}

/// Activations of one decoder forward, kept for backward.
public final class SegDecoderActivationsOf<S: EngineScalar> {
    /// Batch and token grid of the input features.
    public let batch: Int, height: Int, width: Int
    /// Size of the logits: the token grid, or 1/4 of the image with the detail branch.
    public let outHeight: Int, outWidth: Int
    let input: TensorOf<S>            // [B, h, w, D] (not owned: the backbone's features)
    let branches: [TensorOf<S>]       // per branch [B, h, w, Cd] after ReLU
    let concat: TensorOf<S>           // [B, h, w, nb * Cd]
    let fused: TensorOf<S>            // [B, h, w, Cd] after ReLU
    let detail: SegDecoderDetailActivationsOf<S>?
    public let logits: TensorOf<S>    // [B, outHeight, outWidth, K]

    init(input: TensorOf<S>, image: TensorOf<S>?, batch: Int, height: Int, width: Int, config c: SegDecoderConfig) {
        self.input = input
        self.batch = batch; self.height = height; self.width = width
        branches = (0..<c.branchCount).map { _ in TensorOf(shape: [batch, height, width, c.channels]) }
        concat = TensorOf(shape: [batch, height, width, c.branchCount * c.channels])
        fused = TensorOf(shape: [batch, height, width, c.channels])
        detail = image.map { SegDecoderDetailActivationsOf(image: $0, batch: batch, config: c) }
        outHeight = detail?.second.shape[1] ?? height
        outWidth = detail?.second.shape[2] ?? width
        logits = TensorOf(shape: [batch, outHeight, outWidth, c.numClasses])
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
        if config.hasDetail {
            let (c1, c2) = config.detailWidths
            add("decoder.detail.0.weight", [c1, 3, 3, 3], std: (2.0 / Double(3 * 9)).squareRoot())
            add("decoder.detail.0.bias", [c1], std: 0)
            add("decoder.detail.1.weight", [c2, c1, 3, 3], std: (2.0 / Double(c1 * 9)).squareRoot())
            add("decoder.detail.1.bias", [c2], std: 0)
            add("decoder.merge.weight", [Cd, Cd + c2, 3, 3], std: (2.0 / Double((Cd + c2) * 9)).squareRoot())
            add("decoder.merge.bias", [Cd], std: 0)
        }
        parameters = list
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }
    public func zeroGrad() { for p in parameters { p.grad.zero() } }
    func weight(_ i: Int) -> TensorOf<S> { parameters[i].value }

    /// Index of the first detail-branch parameter (after the ASPP branches, fuse and classifier).
    var detailIndex: Int { 2 * config.branchCount + 4 }

    /// The detail branch's convolutions: 0 and 1 on the image (stride 2), 2 the merge.
    func detailGeometry(_ layer: Int, _ d: SegDecoderDetailActivationsOf<S>, batch: Int) -> Conv2dGeometry {
        let (c1, c2) = config.detailWidths
        switch layer {
        case 0:
            return Conv2dGeometry(batch: batch, height: d.imageHeight, width: d.imageWidth, inChannels: 3, outChannels: c1,
                                  kernel: 3, stride: 2, padding: 1)
        case 1:
            return Conv2dGeometry(batch: batch, height: d.first.shape[1], width: d.first.shape[2], inChannels: c1, outChannels: c2,
                                  kernel: 3, stride: 2, padding: 1)
        default:
            return Conv2dGeometry(batch: batch, height: d.second.shape[1], width: d.second.shape[2], inChannels: config.channels + c2,
                                  outChannels: config.channels, kernel: 3, padding: 1)
        }
    }

    func geometry(branch b: Int, batch: Int, height: Int, width: Int) -> Conv2dGeometry {
        let d = b == 0 ? 1 : config.dilations[b - 1]
        return Conv2dGeometry(batch: batch, height: height, width: width, inChannels: config.inChannels,
                              outChannels: config.channels, kernel: b == 0 ? 1 : 3, padding: b == 0 ? 0 : d, dilation: d)
    }

    /// Logits of features [B, h, w, D]: [B, h, w, K], or with the detail branch [B, H/4, W/4, K]
    /// from `image` [B, H, W, 3] (the network's normalised input). Both stay referenced by the
    /// activations.
    @_specialize(where S == Float)
    public func forward(features: TensorOf<S>, image: TensorOf<S>?, batch: Int, height: Int, width: Int) -> SegDecoderActivationsOf<S> {
        precondition(features.count == batch * height * width * config.inChannels, "decoder input has the wrong size")
        precondition(config.hasDetail == (image != nil), "the decoder's detail branch needs the image, and only it does")
        if let image { precondition(image.shape.count == 4 && image.shape[0] == batch && image.shape[3] == 3, "decoder image must be [B, H, W, 3]") }
        let a = SegDecoderActivationsOf(input: features, image: image, batch: batch, height: height, width: width, config: config)
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
        var head = a.fused
        if let d = a.detail {
            let t = detailIndex, c2 = config.detailWidths.second
            Kernels.conv2dForward(out: d.first.data, inp: d.image.data, weight: weight(t).data, bias: weight(t + 1).data,
                                  detailGeometry(0, d, batch: batch))
            Self.relu(d.first.data, d.first.count)
            Kernels.conv2dForward(out: d.second.data, inp: d.first.data, weight: weight(t + 2).data, bias: weight(t + 3).data,
                                  detailGeometry(1, d, batch: batch))
            Self.relu(d.second.data, d.second.count)
            Kernels.bilinearResizeForward(out: d.upsampled.data, inp: a.fused.data, batch: batch, inHeight: height, inWidth: width,
                                          outHeight: a.outHeight, outWidth: a.outWidth, channels: Cd)
            let fine = batch * a.outHeight * a.outWidth, width2 = Cd + c2
            for r in 0..<fine {
                (d.concat.data + r * width2).update(from: d.upsampled.data + r * Cd, count: Cd)
                (d.concat.data + r * width2 + Cd).update(from: d.second.data + r * c2, count: c2)
            }
            Kernels.conv2dForward(out: d.merged.data, inp: d.concat.data, weight: weight(t + 4).data, bias: weight(t + 5).data,
                                  detailGeometry(2, d, batch: batch))
            Self.relu(d.merged.data, d.merged.count)
            head = d.merged
        }
        Kernels.linearForward(out: a.logits.data, inp: head.data, weight: weight(f + 2).data, bias: weight(f + 3).data,
                              rows: a.logits.count / config.numClasses, inFeatures: Cd, outFeatures: config.numClasses)
        return a
    }

    /// Adds parameter gradients (from `dLogits`, shaped as the activations' logits) and, when
    /// `dFeatures` is given, the gradient on the input features. The image gets none.
    @_specialize(where S == Float)
    public func backward(_ a: SegDecoderActivationsOf<S>, dLogits: TensorOf<S>, dFeatures: TensorOf<S>?) {
        let rows = a.batch * a.height * a.width, Cd = config.channels, nb = config.branchCount, f = 2 * nb
        let dFused = TensorOf<S>(shape: a.fused.shape)
        if let d = a.detail {
            let t = detailIndex, c2 = config.detailWidths.second, fine = a.batch * a.outHeight * a.outWidth
            let dMerged = TensorOf<S>(shape: d.merged.shape)
            Kernels.linearBackward(dInp: dMerged.data, dWeight: parameters[f + 2].grad.data, dBias: parameters[f + 3].grad.data,
                                   dOut: dLogits.data, inp: d.merged.data, weight: weight(f + 2).data,
                                   rows: fine, inFeatures: Cd, outFeatures: config.numClasses)
            Self.reluBackward(dMerged.data, d.merged.data, dMerged.count)
            let dConcat = TensorOf<S>(shape: d.concat.shape)
            Kernels.conv2dBackward(dInp: dConcat.data, dWeight: parameters[t + 4].grad.data, dBias: parameters[t + 5].grad.data,
                                   dOut: dMerged.data, inp: d.concat.data, weight: weight(t + 4).data, detailGeometry(2, d, batch: a.batch))
            let dUp = TensorOf<S>(shape: d.upsampled.shape), dSecond = TensorOf<S>(shape: d.second.shape)
            for r in 0..<fine {
                (dUp.data + r * Cd).update(from: dConcat.data + r * (Cd + c2), count: Cd)
                (dSecond.data + r * c2).update(from: dConcat.data + r * (Cd + c2) + Cd, count: c2)
            }
            Kernels.bilinearResizeBackward(dInp: dFused.data, dOut: dUp.data, batch: a.batch, inHeight: a.height, inWidth: a.width,
                                           outHeight: a.outHeight, outWidth: a.outWidth, channels: Cd)
            Self.reluBackward(dSecond.data, d.second.data, dSecond.count)
            let dFirst = TensorOf<S>(shape: d.first.shape)
            Kernels.conv2dBackward(dInp: dFirst.data, dWeight: parameters[t + 2].grad.data, dBias: parameters[t + 3].grad.data,
                                   dOut: dSecond.data, inp: d.first.data, weight: weight(t + 2).data, detailGeometry(1, d, batch: a.batch))
            Self.reluBackward(dFirst.data, d.first.data, dFirst.count)
            Kernels.conv2dBackward(dInp: nil, dWeight: parameters[t].grad.data, dBias: parameters[t + 1].grad.data,
                                   dOut: dFirst.data, inp: d.image.data, weight: weight(t).data, detailGeometry(0, d, batch: a.batch))
        } else {
            Kernels.linearBackward(dInp: dFused.data, dWeight: parameters[f + 2].grad.data, dBias: parameters[f + 3].grad.data,
                                   dOut: dLogits.data, inp: a.fused.data, weight: weight(f + 2).data,
                                   rows: rows, inFeatures: Cd, outFeatures: config.numClasses)
        }
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
