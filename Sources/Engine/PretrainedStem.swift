import ArtifactStore
import Foundation

// Pretrained convolutional stem files (written by Scripts/import_pretrained.py; random-weight
// fixtures by Tests/Fixtures/make_stem_fixture.py). BatchNorm is folded, so every conv is conv + bias:
//
//     /                      kind "pretrained_stem", architecture (e.g. "efficientnet_lite0"),
//                            blocks, stride, out_channels (int), input_mean [3], input_std [3]
//                            (the network's input is (rgb_0_255 - input_mean) / input_std;
//                            absent: the architecture's, 127 / 128 for EfficientNet-Lite0)
//     /stem/conv.weight      [C0, 3, 3, 3], /stem/conv.bias [C0]       3x3, stride 2, pad 1, ReLU6
//     /blocks/<i>/expand.weight [Cexp, Cin, 1, 1] + expand.bias        (optional; ReLU6)
//     /blocks/<i>/depthwise.weight [Cexp, 1, k, k] + depthwise.bias    (stride s, pad k/2; ReLU6)
//     /blocks/<i>/project.weight [Cout, Cexp, 1, 1] + project.bias     (linear; + input when
//                                                                       stride 1 and Cin == Cout)
//
// Channel counts come from the shapes; kernel sizes are checked against the architecture.

/// A known stem architecture: strides per block, its input normalisation, and its canonical
/// channel counts (used only to estimate FLOPs from a `ViTConfig` alone).
public struct StemArchitecture: Equatable, Sendable {
    public let name: String
    public let stemStride: Int
    public let kernels: [Int]
    public let strides: [Int]
    public let stemChannels: Int
    public let outChannels: [Int]
    public let expandRatios: [Int]
    public let inputMean: [Float]
    public let inputStd: [Float]

    /// Total downsampling: stem stride times every block's.
    public var stride: Int { strides.reduce(stemStride, *) }
    public var blockCount: Int { kernels.count }

    /// EfficientNet-Lite0's stem and first five MBConv blocks (stride 8, 40 channels).
    public static let efficientNetLite0 = StemArchitecture(
        name: "efficientnet_lite0", stemStride: 2, kernels: [3, 3, 3, 5, 5], strides: [1, 2, 1, 2, 1],
        stemChannels: 32, outChannels: [16, 24, 24, 40, 40], expandRatios: [1, 6, 6, 6, 6],
        inputMean: [127, 127, 127], inputStd: [128, 128, 128])

    public static let all = [efficientNetLite0]
    public static func named(_ name: String) -> StemArchitecture? { all.first { $0.name == name } }

    /// Multiply-adds x 2 of the canonical network on an H x W image.
    public func canonicalFLOPs(height: Int, width: Int) -> Double {
        var layers: [(cin: Int, cout: Int, kernel: Int, stride: Int, depthwise: Bool)] = [(3, stemChannels, 3, stemStride, false)]
        var cin = stemChannels
        for i in 0..<blockCount {
            let cexp = cin * expandRatios[i]
            if expandRatios[i] != 1 { layers.append((cin, cexp, 1, 1, false)) }
            layers.append((cexp, cexp, kernels[i], strides[i], true))
            layers.append((cexp, outChannels[i], 1, 1, false))
            cin = outChannels[i]
        }
        return StemFLOPs.count(layers, height: height, width: width)
    }
}

enum StemFLOPs {
    /// Convolutions with padding kernel/2 (so the output side is ceil(side / stride)).
    static func count(_ layers: [(cin: Int, cout: Int, kernel: Int, stride: Int, depthwise: Bool)], height: Int, width: Int) -> Double {
        var h = height, w = width, total = 0.0
        for l in layers {
            h = (h + l.stride - 1) / l.stride
            w = (w + l.stride - 1) / l.stride
            let perPixel = l.depthwise ? l.cout * l.kernel * l.kernel : l.cout * l.cin * l.kernel * l.kernel
            total += 2 * Double(h * w) * Double(perPixel)
        }
        return total
    }
}

public typealias PretrainedStem = PretrainedStemOf<Float>

/// A frozen pretrained convolutional stem (forward only): channels-last images [B, H, W, 3] ->
/// features [B, H/stride, W/stride, outChannels].
///
/// Input: the ViT's normalised input `(rgb/255 - mean) / std` with `inputNormalization` (the
/// checkpoint's), which the forward maps back per channel to the stem's own `(rgb - M) / S`
/// before the first convolution. Why this and not raw RGB: every caller (training, ACR views,
/// attention extraction, PSA, segmentation) already feeds the ViT normalised images, so a model
/// with a stem takes exactly what a patch ViT takes. (Folding the map into the first convolution
/// instead would be wrong at the borders: its zero padding lives in the stem's domain.)
public final class PretrainedStemOf<S: EngineScalar> {
    public let architecture: StemArchitecture
    /// The stem's own input statistics on the 0..255 scale (the file's input_mean / input_std).
    public let stemMean: [Float], stemStd: [Float]
    /// The normalisation of the images `forward` receives.
    public let inputNormalization: Normalization
    public let stemChannels: Int
    public let outChannels: Int

    struct Conv {
        let weight: TensorOf<S>, bias: TensorOf<S>
        let cin: Int, cout: Int, kernel: Int, stride: Int
    }
    struct Block {
        let expand: Conv?
        let depthwise: Conv
        let project: Conv
        var residual: Bool { depthwise.stride == 1 && (expand?.cin ?? depthwise.cin) == project.cout }
    }
    let conv: Conv
    let blocks: [Block]
    let inputScale: [S], inputShift: [S]
    /// Weights under their file names with '/' -> '.' (e.g. "stem.conv.weight", "blocks.0.project.bias").
    let named: [(name: String, tensor: TensorOf<S>)]
    private var scratch: [TensorOf<S>] = []

    /// Builds the stem from tensors named as the file's datasets with '/' replaced by '.'
    /// ("stem.conv.weight", "blocks.3.depthwise.bias", ...). Throws on a missing, extra or
    /// misshapen tensor.
    public init(architecture name: String, tensors: [String: (shape: [Int], values: [Float])],
                inputMean: [Float], inputStd: [Float], inputNormalization: Normalization) throws {
        guard let arch = StemArchitecture.named(name) else {
            throw EngineError("unknown stem architecture '\(name)' (known: \(StemArchitecture.all.map(\.name).joined(separator: ", ")))")
        }
        guard inputMean.count == 3, inputStd.count == 3, inputStd.allSatisfy({ $0 > 0 }) else {
            throw EngineError("stem input_mean and input_std need 3 values each, std > 0")
        }
        architecture = arch
        stemMean = inputMean
        stemStd = inputStd
        self.inputNormalization = inputNormalization
        var used: Set<String> = []
        var list: [(String, TensorOf<S>)] = []
        func tensor(_ key: String, _ check: ([Int]) -> Bool, _ expected: String) throws -> TensorOf<S> {
            guard let t = tensors[key] else { throw EngineError("stem weights lack '\(key)'") }
            guard check(t.shape), t.values.count == t.shape.reduce(1, *) else {
                throw EngineError("stem weight '\(key)' has shape \(t.shape), expected \(expected)")
            }
            used.insert(key)
            let value = TensorOf<S>(shape: t.shape, values: t.values.map { S($0) })
            list.append((key, value))
            return value
        }
        func makeConv(_ prefix: String, cin: Int?, kernel: Int, stride: Int, depthwise: Bool) throws -> Conv {
            let w = try tensor(prefix + ".weight", { s in
                s.count == 4 && s[0] >= 1 && s[2] == kernel && s[3] == kernel && (depthwise ? s[1] == 1 : (cin == nil || s[1] == cin!))
            }, depthwise ? "[C, 1, \(kernel), \(kernel)]" : "[Cout, \(cin.map(String.init) ?? "Cin"), \(kernel), \(kernel)]")
            let cout = w.shape[0]
            if depthwise, let cin, cout != cin {
                throw EngineError("stem weight '\(prefix).weight' has \(cout) channels, its input has \(cin)")
            }
            let b = try tensor(prefix + ".bias", { $0 == [cout] }, "[\(cout)]")
            return Conv(weight: w, bias: b, cin: depthwise ? cout : w.shape[1], cout: cout, kernel: kernel, stride: stride)
        }
        conv = try makeConv("stem.conv", cin: 3, kernel: 3, stride: arch.stemStride, depthwise: false)
        var cin = conv.cout
        var bs: [Block] = []
        for i in 0..<arch.blockCount {
            let pre = "blocks.\(i)."
            let expand = tensors[pre + "expand.weight"] == nil ? nil
                : try makeConv(pre + "expand", cin: cin, kernel: 1, stride: 1, depthwise: false)
            let cexp = expand?.cout ?? cin
            let dw = try makeConv(pre + "depthwise", cin: cexp, kernel: arch.kernels[i], stride: arch.strides[i], depthwise: true)
            let project = try makeConv(pre + "project", cin: cexp, kernel: 1, stride: 1, depthwise: false)
            bs.append(Block(expand: expand, depthwise: dw, project: project))
            cin = project.cout
        }
        blocks = bs
        if let extra = tensors.keys.sorted().first(where: { !used.contains($0) }) {
            throw EngineError("stem weight '\(extra)' is not part of the \(arch.name) stem")
        }
        stemChannels = conv.cout
        outChannels = cin
        named = list
        // x_stem = ((x * s + m) * 255 - M) / S = x * (255 s / S) + (255 m - M) / S.
        inputScale = (0..<3).map { S(255 * inputNormalization.std[$0] / inputStd[$0]) }
        inputShift = (0..<3).map { S((255 * inputNormalization.mean[$0] - inputMean[$0]) / inputStd[$0]) }
    }

    /// Reads a stem file (layout above). Errors name the file.
    public static func load(path: String, inputNormalization: Normalization) throws -> PretrainedStemOf<S> {
        let root = try HDF5File.open(path).root
        func fail(_ message: String) -> StoreError { StoreError(path: path, message) }
        guard root.hasAttribute("kind"), let kind = try? root.stringAttribute("kind"), kind == "pretrained_stem" else {
            throw fail("is not a pretrained stem file (root attribute kind must be 'pretrained_stem')")
        }
        let name = try root.stringAttribute("architecture")
        guard let arch = StemArchitecture.named(name) else {
            throw fail("unknown stem architecture '\(name)' (known: \(StemArchitecture.all.map(\.name).joined(separator: ", ")))")
        }
        let blocks = Int(try root.int64Attribute("blocks")), stride = Int(try root.int64Attribute("stride"))
        guard blocks == arch.blockCount, stride == arch.stride else {
            throw fail("declares \(blocks) blocks and stride \(stride); the \(arch.name) stem has \(arch.blockCount) blocks and stride \(arch.stride)")
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        var paths = ["stem/conv.weight", "stem/conv.bias"]
        for i in 0..<blocks {
            for part in ["expand", "depthwise", "project"] { paths += ["blocks/\(i)/\(part).weight", "blocks/\(i)/\(part).bias"] }
        }
        for p in paths where root.contains(p) {
            let a = try root.read(p, as: Float.self)
            tensors[p.replacingOccurrences(of: "/", with: ".")] = (a.shape, a.values)
        }
        // The file's input statistics; absent, the architecture's own.
        func stats(_ key: String, _ fallback: [Float]) throws -> [Float] {
            root.hasAttribute(key) ? try root.doublesAttribute(key).map { Float($0) } : fallback
        }
        let stem: PretrainedStemOf<S>
        do {
            stem = try PretrainedStemOf(architecture: name, tensors: tensors,
                                        inputMean: try stats("input_mean", arch.inputMean),
                                        inputStd: try stats("input_std", arch.inputStd),
                                        inputNormalization: inputNormalization)
        } catch let error as EngineError {
            // Name tensors as the file does ("blocks/3/depthwise.weight", not "blocks.3.depthwise.weight").
            let text = error.description
                .replacingOccurrences(of: #"'blocks\.(\d+)\."#, with: "'blocks/$1/", options: .regularExpression)
                .replacingOccurrences(of: "'stem.conv", with: "'stem/conv")
            throw fail(text)
        }
        let declared = Int(try root.int64Attribute("out_channels"))
        guard declared == stem.outChannels else {
            throw fail("declares out_channels \(declared) but its last block gives \(stem.outChannels)")
        }
        return stem
    }

    // MARK: State dict

    /// Prefix of the stem's tensors in a model's state dict and checkpoints.
    public static var statePrefix: String { "stem." }

    /// "stem." + file names ('/' -> '.'), plus "stem.input_mean" / "stem.input_std" [3].
    public func stateDict() -> [String: (shape: [Int], values: [Float])] {
        var d: [String: (shape: [Int], values: [Float])] = [:]
        for (name, t) in stateTensors() { d[name] = (t.shape, t.toArray().map { Float($0) }) }
        return d
    }

    /// The stem's tensors under their state-dict names, in a fixed order.
    public func stateTensors() -> [(name: String, value: TensorOf<S>)] {
        let p = Self.statePrefix
        return named.map { (p + $0.name, $0.tensor) } + [
            (p + "input_mean", TensorOf<S>(shape: [3], values: stemMean.map { S($0) })),
            (p + "input_std", TensorOf<S>(shape: [3], values: stemStd.map { S($0) })),
        ]
    }

    /// A stem from a state dict's "stem.*" entries (other names are ignored).
    public convenience init(architecture: String, stateDict: [String: (shape: [Int], values: [Float])],
                            inputNormalization: Normalization) throws {
        let p = Self.statePrefix
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for (name, value) in stateDict where name.hasPrefix(p) { tensors[String(name.dropFirst(p.count))] = value }
        guard let mean = tensors.removeValue(forKey: "input_mean"), let std = tensors.removeValue(forKey: "input_std") else {
            throw EngineError("the weights have no stem.input_mean / stem.input_std (a model with the \(architecture) stem needs its stem.* tensors)")
        }
        try self.init(architecture: architecture, tensors: tensors, inputMean: mean.values, inputStd: std.values,
                      inputNormalization: inputNormalization)
    }

    /// Overwrites the weights from a state dict's "stem.*" entries; shapes must match, and the
    /// stem's input statistics must be the same.
    func load(_ arrays: [String: (shape: [Int], values: [Float])]) throws {
        for (name, t) in stateTensors() {
            guard let a = arrays[name] else { throw EngineError("checkpoint has no stem tensor '\(name)'") }
            guard a.shape == t.shape, a.values.count == t.count else {
                throw EngineError("stem tensor '\(name)' has shape \(a.shape), the model expects \(t.shape)")
            }
        }
        let p = Self.statePrefix
        guard arrays[p + "input_mean"]!.values == stemMean, arrays[p + "input_std"]!.values == stemStd else {
            throw EngineError("stem input_mean/input_std differ from the model's")
        }
        for (name, t) in named {
            let v = arrays[p + name]!.values
            for i in 0..<t.count { t.data[i] = S(v[i]) }
        }
    }

    // MARK: Forward

    /// Output side for an input side (padding k/2 at every stride: ceil division).
    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        let s = architecture.stride
        return ((height + s - 1) / s, (width + s - 1) / s)
    }

    /// Multiply-adds x 2 on one H x W image, from the actual channel counts.
    public func forwardFLOPs(height: Int, width: Int) -> Double {
        var layers: [(cin: Int, cout: Int, kernel: Int, stride: Int, depthwise: Bool)] = [(3, conv.cout, 3, conv.stride, false)]
        for b in blocks {
            if let e = b.expand { layers.append((e.cin, e.cout, 1, 1, false)) }
            layers.append((b.depthwise.cin, b.depthwise.cout, b.depthwise.kernel, b.depthwise.stride, true))
            layers.append((b.project.cin, b.project.cout, 1, 1, false))
        }
        return StemFLOPs.count(layers, height: height, width: width)
    }

    /// images [B, H, W, 3] (normalised with `inputNormalization`) -> [B, Ho, Wo, outChannels].
    public func forward(images: TensorOf<S>) -> TensorOf<S> {
        let (ho, wo) = outputSize(height: images.shape[1], width: images.shape[2])
        let out = TensorOf<S>(shape: [images.shape[0], ho, wo, outChannels])
        forward(images: images, into: out.data)
        return out
    }

    /// Writes the features of `images` into `out` ([B, Ho, Wo, outChannels] elements).
    @_specialize(where S == Float)
    public func forward(images: TensorOf<S>, into out: UnsafeMutablePointer<S>) {
        precondition(images.rank == 4 && images.shape[3] == 3, "stem input must be [B, H, W, 3], got \(images.shape)")
        let B = images.shape[0], H = images.shape[1], W = images.shape[2]
        // Buffers: the mapped input; block inputs/outputs ping-pong between two maps; the
        // expansion and the depthwise output have their own (no kernel writes over its input).
        var h = (H + conv.stride - 1) / conv.stride, w = (W + conv.stride - 1) / conv.stride
        var maxMap = B * h * w * conv.cout, maxExp = 1, maxDW = 1
        for b in blocks {
            maxExp = max(maxExp, B * h * w * (b.expand?.cout ?? 0))
            h = (h + b.depthwise.stride - 1) / b.depthwise.stride
            w = (w + b.depthwise.stride - 1) / b.depthwise.stride
            maxDW = max(maxDW, B * h * w * b.depthwise.cout)
            maxMap = max(maxMap, B * h * w * b.project.cout)
        }
        let input = buffer(0, B * H * W * 3), exp = buffer(3, maxExp), dw = buffer(4, maxDW)
        var cur = buffer(1, maxMap), next = buffer(2, maxMap)

        let x = images.data
        let sc = inputScale, sh = inputShift
        for i in 0..<(B * H * W) {
            for c in 0..<3 { input[i * 3 + c] = x[i * 3 + c] * sc[c] + sh[c] }
        }
        let g0 = Conv2dGeometry(batch: B, height: H, width: W, inChannels: 3, outChannels: conv.cout,
                                kernel: 3, stride: conv.stride, padding: 1)
        Kernels.conv2dForward(out: cur, inp: input, weight: conv.weight.data, bias: conv.bias.data, g0)
        h = g0.outHeight; w = g0.outWidth
        Kernels.relu6(cur, count: B * h * w * conv.cout)

        for (i, b) in blocks.enumerated() {
            var dwInput = UnsafePointer(cur)
            if let e = b.expand {
                Kernels.linearForward(out: exp, inp: cur, weight: e.weight.data, bias: e.bias.data,
                                      rows: B * h * w, inFeatures: e.cin, outFeatures: e.cout)
                Kernels.relu6(exp, count: B * h * w * e.cout)
                dwInput = UnsafePointer(exp)
            }
            let d = b.depthwise
            let g = Conv2dGeometry(batch: B, height: h, width: w, inChannels: d.cin, outChannels: d.cout,
                                   kernel: d.kernel, stride: d.stride, padding: d.kernel / 2)
            Kernels.depthwiseConv2dForward(out: dw, inp: dwInput, weight: d.weight.data, bias: d.bias.data, g)
            let ho = g.outHeight, wo = g.outWidth
            Kernels.relu6(dw, count: B * ho * wo * d.cout)
            let target = i == blocks.count - 1 ? out : next
            Kernels.linearForward(out: target, inp: dw, weight: b.project.weight.data, bias: b.project.bias.data,
                                  rows: B * ho * wo, inFeatures: b.project.cin, outFeatures: b.project.cout)
            if b.residual {
                Kernels.residualAdd(x: target, branch: cur, scales: nil, batch: 1, perSample: B * ho * wo * b.project.cout)
            }
            swap(&cur, &next)
            h = ho; w = wo
        }
        withExtendedLifetime(scratch) {}
    }

    private func buffer(_ slot: Int, _ count: Int) -> UnsafeMutablePointer<S> {
        while scratch.count <= slot { scratch.append(TensorOf<S>(shape: [1])) }
        if scratch[slot].count < count { scratch[slot] = TensorOf<S>(shape: [count]) }
        return scratch[slot].data
    }
}

extension Kernels {
    /// x = min(max(x, 0), 6) in place.
    @_specialize(where S == Float)
    public static func relu6<S: EngineScalar>(_ x: UnsafeMutablePointer<S>, count: Int) {
        let p = SendablePointer(x)
        Parallel.forRanges(count, costPerItem: 1) { range in
            for i in range { p.p[i] = Swift.min(Swift.max(p.p[i], 0), 6) }
        }
    }

    /// Depthwise convolution (groups = channels) over channels-last maps: out [B, Ho, Wo, C] =
    /// conv(inp [B, H, W, C], weight [C, 1, kh, kw]) + bias; `g.inChannels == g.outChannels == C`.
    /// Rows of the output are split over the threads; the inner loop runs over channels.
    @_specialize(where S == Float)
    public static func depthwiseConv2dForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, weight: UnsafePointer<S>, bias: UnsafePointer<S>?,
        _ g: Conv2dGeometry
    ) {
        precondition(g.inChannels == g.outChannels, "depthwise convolution needs inChannels == outChannels, got \(g)")
        let C = g.inChannels, Ho = g.outHeight, Wo = g.outWidth, taps = g.kernelH * g.kernelW
        // Tap-major weights [kh*kw, C] so the channel loop reads them contiguously.
        let wt = UnsafeMutablePointer<S>.allocate(capacity: taps * C)
        defer { wt.deallocate() }
        for c in 0..<C { for t in 0..<taps { wt[t * C + c] = weight[c * taps + t] } }
        let o = SendablePointer(out), x = SendablePointer(inp), wp = SendablePointer(UnsafePointer(wt))
        let bp = bias.map { SendablePointer($0) }
        Parallel.forRanges(g.batch * Ho, costPerItem: Wo * taps * C) { range in
            for row in range {
                let b = row / Ho, oy = row % Ho
                for ox in 0..<Wo {
                    let dst = o.p + (row * Wo + ox) * C
                    if let bp { dst.update(from: bp.p, count: C) } else { dst.update(repeating: 0, count: C) }
                    for ky in 0..<g.kernelH {
                        let iy = oy * g.stride - g.padding + ky * g.dilation
                        if iy < 0 || iy >= g.height { continue }
                        for kx in 0..<g.kernelW {
                            let ix = ox * g.stride - g.padding + kx * g.dilation
                            if ix < 0 || ix >= g.width { continue }
                            let src = x.p + ((b * g.height + iy) * g.width + ix) * C
                            let w = wp.p + (ky * g.kernelW + kx) * C
                            for c in 0..<C { dst[c] += src[c] * w[c] }
                        }
                    }
                }
            }
        }
    }
}
