import Foundation
import Primitives

public typealias ViT = ViTOf<Float>

/// Model configuration, stored in checkpoints as JSON with snake_case keys.
public struct ViTConfig: Codable, Equatable, Sendable {
    public var imageSize: Int
    public var patchSize: Int
    public var inChannels: Int
    public var depth: Int
    public var dim: Int
    public var heads: Int
    public var mlpRatio: Int
    public var numClasses: Int
    /// Stochastic depth: block i drops its residual branches with rate dropPathRate * i/(depth-1).
    public var dropPathRate: Double
    public var layerNormEps: Double
    /// Adds a learned `mask_token` [1, 1, D] that replaces the patch embeddings selected by
    /// `forward(patchMask:)` (masked-token training as in FSR / iBOT).
    public var maskToken: Bool
    /// "patch": the linear patch embedding of the spec. Otherwise the name of a frozen pretrained
    /// convolutional stem (``StemArchitecture``, e.g. "efficientnet_lite0") whose features
    /// [B, H/p, W/p, Cs] the patch embedding maps with a 1x1 convolution `patch_embed.proj`
    /// [D, Cs, 1, 1] (a hybrid ViT); `patchSize` must equal the stem's stride.
    public var stem: String
    /// LayerScale (CaiT, DINOv2): each residual branch is multiplied per channel by a learned
    /// `blocks.N.ls1.gamma` / `ls2.gamma` [D] before it is added.
    public var layerScale: Bool
    /// The MLP's GELU: the tanh approximation (DeiT/timm's default here) or the exact erf form
    /// (PyTorch's nn.GELU default, which DINOv2 uses).
    public var gelu: GELUForm

    public init(imageSize: Int = 64, patchSize: Int = 8, inChannels: Int = 3, depth: Int = 6,
                dim: Int = 192, heads: Int = 3, mlpRatio: Int = 4, numClasses: Int = 10,
                dropPathRate: Double = 0, layerNormEps: Double = 1e-6, maskToken: Bool = false,
                stem: String = "patch", layerScale: Bool = false, gelu: GELUForm = .tanh) {
        self.imageSize = imageSize
        self.patchSize = patchSize
        self.inChannels = inChannels
        self.depth = depth
        self.dim = dim
        self.heads = heads
        self.mlpRatio = mlpRatio
        self.numClasses = numClasses
        self.dropPathRate = dropPathRate
        self.layerNormEps = layerNormEps
        self.maskToken = maskToken
        self.stem = stem
        self.layerScale = layerScale
        self.gelu = gelu
    }

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", patchSize = "patch_size", inChannels = "in_channels"
        case depth, dim, heads, mlpRatio = "mlp_ratio", numClasses = "num_classes"
        case dropPathRate = "drop_path_rate", layerNormEps = "layernorm_eps", maskToken = "mask_token"
        case stem, layerScale = "layer_scale", gelu
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        imageSize = try c.decode(Int.self, forKey: .imageSize)
        patchSize = try c.decode(Int.self, forKey: .patchSize)
        inChannels = try c.decodeIfPresent(Int.self, forKey: .inChannels) ?? 3
        depth = try c.decode(Int.self, forKey: .depth)
        dim = try c.decode(Int.self, forKey: .dim)
        heads = try c.decode(Int.self, forKey: .heads)
        mlpRatio = try c.decodeIfPresent(Int.self, forKey: .mlpRatio) ?? 4
        numClasses = try c.decode(Int.self, forKey: .numClasses)
        dropPathRate = try c.decodeIfPresent(Double.self, forKey: .dropPathRate) ?? 0
        layerNormEps = try c.decodeIfPresent(Double.self, forKey: .layerNormEps) ?? 1e-6
        maskToken = try c.decodeIfPresent(Bool.self, forKey: .maskToken) ?? false
        stem = try c.decodeIfPresent(String.self, forKey: .stem) ?? "patch"  // older checkpoints
        layerScale = try c.decodeIfPresent(Bool.self, forKey: .layerScale) ?? false
        gelu = try c.decodeIfPresent(GELUForm.self, forKey: .gelu) ?? .tanh
    }

    /// The pretrained stem's architecture, nil for the patch embedding.
    public var stemArchitecture: StemArchitecture? { StemArchitecture.named(stem) }
    public var hasPretrainedStem: Bool { stem != "patch" }

    /// Patch grid side at the training resolution.
    public var grid: Int { imageSize / patchSize }
    public var tokens: Int { grid * grid + 1 }
    public var hidden: Int { mlpRatio * dim }

    /// Bytes a pass over `batch` images of `imageSide` px keeps alive at once, roughly: per layer
    /// the attention logits and probabilities (kept for backward, or recorded for the methods) and
    /// the token activations (attention, MLP hidden, norms); float32. An estimate for refusing
    /// impossible parameters early (MemoryBudget), not an allocator.
    public func activationBytes(batch: Int, imageSide: Int) -> Double {
        let side = Double(imageSide) / Double(patchSize)
        let tokens = side * side + 1
        let attention = 2 * Double(heads) * tokens * tokens
        let activations = tokens * Double(8 * dim + 2 * hidden)
        return 4 * Double(batch) * Double(depth) * (attention + activations)
    }

    /// Throws a description of the first inconsistency.
    public func validate() throws {
        func fail(_ s: String) -> EngineError { EngineError("invalid ViT config: \(s)") }
        if patchSize < 1 || imageSize < patchSize { throw fail("image_size \(imageSize), patch_size \(patchSize)") }
        if imageSize % patchSize != 0 { throw fail("image_size \(imageSize) not divisible by patch_size \(patchSize)") }
        if depth < 1 || dim < 1 || heads < 1 || numClasses < 1 || mlpRatio < 1 || inChannels < 1 {
            throw fail("depth, dim, heads, mlp_ratio, num_classes, in_channels must be >= 1")
        }
        if dim % heads != 0 { throw fail("dim \(dim) not divisible by heads \(heads)") }
        if !(dropPathRate >= 0 && dropPathRate < 1) { throw fail("drop_path_rate \(dropPathRate) outside [0, 1)") }
        if !(layerNormEps > 0) { throw fail("layernorm_eps must be > 0") }
        if hasPretrainedStem {
            guard let arch = stemArchitecture else {
                throw fail("stem '\(stem)' is neither patch nor a known pretrained stem (\(StemArchitecture.all.map(\.name).joined(separator: ", ")))")
            }
            if patchSize != arch.stride { throw fail("the \(stem) stem has stride \(arch.stride), so patch_size must be \(arch.stride), got \(patchSize)") }
            if inChannels != 3 { throw fail("the \(stem) stem takes 3 input channels, in_channels is \(inChannels)") }
        }
    }

    /// Throws unless `shape` is a batch of images this model takes: [B, H, W, inChannels] with
    /// H and W positive multiples of the patch size.
    public func checkImages(shape: [Int]) throws {
        guard shape.count == 4, shape[0] >= 1, shape[3] == inChannels else {
            throw EngineError("images must be [B, H, W, \(inChannels)] with B >= 1, got \(shape)")
        }
        guard shape[1] >= patchSize, shape[2] >= patchSize, shape[1] % patchSize == 0, shape[2] % patchSize == 0 else {
            throw EngineError("image size \(shape[1])x\(shape[2]) is not a positive multiple of the patch size \(patchSize)")
        }
    }

    /// Multiply-adds x 2 of one forward pass at batch 1 for an input grid of gh x gw patches.
    /// A pretrained stem counts with its architecture's canonical channel counts (a model's own
    /// ``ViTOf/forwardFLOPs(gridH:gridW:)`` uses the loaded weights' counts).
    public func forwardFLOPs(gridH: Int? = nil, gridW: Int? = nil) -> Double {
        let gh = gridH ?? grid, gw = gridW ?? grid
        if let arch = stemArchitecture {
            return transformerFLOPs(gridH: gh, gridW: gw, patchFeatures: arch.outChannels.last!)
                + arch.canonicalFLOPs(height: gh * patchSize, width: gw * patchSize)
        }
        return transformerFLOPs(gridH: gh, gridW: gw, patchFeatures: inChannels * patchSize * patchSize)
    }

    /// Everything from the patch embedding (over `patchFeatures` inputs per patch) on.
    func transformerFLOPs(gridH: Int, gridW: Int, patchFeatures: Int) -> Double {
        let n = Double(gridH * gridW), t = n + 1, d = Double(dim)
        let perBlock = 2 * t * d * (3 * d + d + 2 * Double(hidden)) + 4 * t * t * d
        return 2 * n * d * Double(patchFeatures) + Double(depth) * perBlock
            + 2 * n * d * Double(numClasses) + 2 * d * Double(numClasses)
    }
}

/// The two GELU forms: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) or x Phi(x).
public enum GELUForm: String, Codable, Sendable, CaseIterable {
    case tanh, erf
}

public struct EngineError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
}

/// A named trainable tensor and its gradient (same shape).
public final class ParameterOf<S: EngineScalar> {
    public let name: String
    public let value: TensorOf<S>
    public let grad: TensorOf<S>
    public init(_ name: String, _ shape: [Int]) {
        self.name = name
        value = TensorOf(shape: shape)
        grad = TensorOf(shape: shape)
    }
}

/// The gradients of a forward's outputs that a loss produced; any may be nil (= zero).
public struct ViTOutputGradsOf<S: EngineScalar> {
    public var camLogits: TensorOf<S>?      // [B, C]
    public var clsLogits: TensorOf<S>?      // [B, C]
    public var patchScores: TensorOf<S>?    // [B, N, C]
    public var features: TensorOf<S>?       // [B, N, D] final normalised patch tokens
    public var classTokens: TensorOf<S>?    // [B, D] final normalised class token
    /// Layer -> gradient on the post-softmax attention probabilities [B, H, T, T].
    public var attnProbs: [Int: TensorOf<S>]
    /// Layer -> gradient on the raw (scaled, pre-softmax) attention logits [B, H, T, T].
    public var attnLogits: [Int: TensorOf<S>]
    /// Index -> gradient on `hiddenStates[index]` [B, T, D] (0 = embeddings, l + 1 = block l's output).
    public var hiddenStates: [Int: TensorOf<S>]
    /// Store the total gradient w.r.t. every layer's attention probabilities in
    /// `activations.attnProbsGrad` (ACR gradient localisation).
    public var recordAttentionGrads: Bool
    /// false: only propagate (e.g. to attention), leaving parameter gradients untouched.
    public var parameterGrads: Bool

    public init(camLogits: TensorOf<S>? = nil, clsLogits: TensorOf<S>? = nil, patchScores: TensorOf<S>? = nil,
                features: TensorOf<S>? = nil, classTokens: TensorOf<S>? = nil,
                attnProbs: [Int: TensorOf<S>] = [:], attnLogits: [Int: TensorOf<S>] = [:],
                hiddenStates: [Int: TensorOf<S>] = [:],
                recordAttentionGrads: Bool = false, parameterGrads: Bool = true) {
        self.camLogits = camLogits
        self.clsLogits = clsLogits
        self.patchScores = patchScores
        self.features = features
        self.classTokens = classTokens
        self.attnProbs = attnProbs
        self.attnLogits = attnLogits
        self.hiddenStates = hiddenStates
        self.recordAttentionGrads = recordAttentionGrads
        self.parameterGrads = parameterGrads
    }
}

public typealias ViTOutputGrads = ViTOutputGradsOf<Float>
public typealias ViTActivations = ViTActivationsOf<Float>

/// Everything one forward produced: the outputs callers read and the caches backward needs.
/// Independent of the model object, so several forwards (e.g. two views) can be kept and
/// back-propagated. Pass one back as `reuse:` to recycle its buffers for a same-shaped batch.
public final class ViTActivationsOf<S: EngineScalar> {
    public let batch: Int, gridH: Int, gridW: Int
    public var patches: Int { gridH * gridW }
    public var tokenCount: Int { patches + 1 }

    // Outputs.
    public let camLogits: TensorOf<S>          // [B, C]
    public let clsLogits: TensorOf<S>          // [B, C]
    public let patchScores: TensorOf<S>        // [B, N, C]
    public let attnLogits: [TensorOf<S>]       // per layer [B, H, T, T], scaled q k^T
    public let attnProbs: [TensorOf<S>]        // per layer [B, H, T, T]
    public let tokens: TensorOf<S>             // [B, T, D] after the final norm
    public let features: TensorOf<S>           // [B, N, D] patch tokens after the final norm
    public let classTokens: TensorOf<S>        // [B, D] class token after the final norm
    /// Filled by a backward with `recordAttentionGrads`: d(loss)/d(attnProbs[l]).
    public internal(set) var attnProbsGrad: [TensorOf<S>] = []
    /// The residual stream [B, T, D]: index 0 = embeddings + position embedding (block 0's
    /// input), index l + 1 = output of block l (the last one is the final norm's input).
    public var hiddenStates: [TensorOf<S>] { xs.map { $0.reshaped([batch, tokenCount, $0.shape[1]]) } }

    // Caches.
    let patchMatrix: TensorOf<S>               // [B*N, Cin*p*p], or [B*N, Cs] stem features
    let posUsed: TensorOf<S>?                  // [T, D] when the grid differs from training
    let xs: [TensorOf<S>]                      // block inputs (depth + 1, last = final norm input)
    let mids: [TensorOf<S>]                    // after the attention residual
    let ln1: [TensorOf<S>], ln2: [TensorOf<S>]
    let stats1: [TensorOf<S>], stats2: [TensorOf<S>]   // [2, B*T]: mean then rstd
    let qkv: [TensorOf<S>], attnOut: [TensorOf<S>]
    let fc1: [TensorOf<S>], act: [TensorOf<S>]
    let statsF: TensorOf<S>
    var dropScales: [TensorOf<S>?]             // per block [2, B] (attention, mlp), nil = keep all
    let branch: TensorOf<S>                    // scratch for a residual branch output
    /// LayerScale: each block's branch outputs before the gamma scaling [2 per block: attention,
    /// mlp] (the gammas' gradient needs them); empty without LayerScale.
    let unscaled: [TensorOf<S>]
    var patchMask: [Bool] = []                 // [B*N], true = replaced by the mask token

    init(config c: ViTConfig, batch: Int, gridH: Int, gridW: Int, patchFeatures: Int) {
        self.batch = batch
        self.gridH = gridH
        self.gridW = gridW
        let N = gridH * gridW, T = N + 1, D = c.dim, rows = batch * T, H = c.heads
        camLogits = TensorOf(shape: [batch, c.numClasses])
        clsLogits = TensorOf(shape: [batch, c.numClasses])
        patchScores = TensorOf(shape: [batch, N, c.numClasses])
        attnLogits = (0..<c.depth).map { _ in TensorOf(shape: [batch, H, T, T]) }
        attnProbs = (0..<c.depth).map { _ in TensorOf(shape: [batch, H, T, T]) }
        tokens = TensorOf(shape: [batch, T, D])
        features = TensorOf(shape: [batch, N, D])
        classTokens = TensorOf(shape: [batch, D])
        patchMatrix = TensorOf(shape: [batch * N, patchFeatures])
        posUsed = (gridH == c.grid && gridW == c.grid) ? nil : TensorOf(shape: [T, D])
        xs = (0...c.depth).map { _ in TensorOf(shape: [rows, D]) }
        mids = (0..<c.depth).map { _ in TensorOf(shape: [rows, D]) }
        ln1 = (0..<c.depth).map { _ in TensorOf(shape: [rows, D]) }
        ln2 = (0..<c.depth).map { _ in TensorOf(shape: [rows, D]) }
        stats1 = (0..<c.depth).map { _ in TensorOf(shape: [2, rows]) }
        stats2 = (0..<c.depth).map { _ in TensorOf(shape: [2, rows]) }
        qkv = (0..<c.depth).map { _ in TensorOf(shape: [rows, 3 * D]) }
        attnOut = (0..<c.depth).map { _ in TensorOf(shape: [rows, D]) }
        fc1 = (0..<c.depth).map { _ in TensorOf(shape: [rows, c.hidden]) }
        act = (0..<c.depth).map { _ in TensorOf(shape: [rows, c.hidden]) }
        statsF = TensorOf(shape: [2, rows])
        dropScales = Array(repeating: nil, count: c.depth)
        branch = TensorOf(shape: [rows, D])
        unscaled = c.layerScale ? (0..<(2 * c.depth)).map { _ in TensorOf(shape: [rows, D]) } : []
    }
}

/// DeiT-style pre-norm vision transformer with a CAM head over patch tokens and a class-token
/// head. Parameters carry PyTorch (timm) state-dict names.
public final class ViTOf<S: EngineScalar> {
    public let config: ViTConfig
    /// Every parameter in PyTorch's `named_parameters()` order.
    public let parameterList: [ParameterOf<S>]
    /// Seeded stream for drop-path masks.
    public var rng: SplitMix64
    /// Layer-wise freezing for fine-tuning: the patch embedding, class token, position embedding
    /// and the first `frozenBlocks` blocks are not trained (`trainableParameters` leaves them out)
    /// and the backward stops above them, unless attention gradients of every layer are asked for.
    public var frozenBlocks = 0 {
        didSet { precondition(frozenBlocks >= 0 && frozenBlocks <= config.depth, "frozenBlocks \(frozenBlocks) outside 0...\(config.depth)") }
    }

    struct Block {
        let norm1W, norm1B, qkvW, qkvB, projW, projB, norm2W, norm2B, fc1W, fc1B, fc2W, fc2B: ParameterOf<S>
        /// LayerScale gammas (config `layerScale`).
        let ls1, ls2: ParameterOf<S>?
    }
    let patchW, patchB, clsToken, posEmbed, normW, normB, camW, clsW, clsB: ParameterOf<S>
    let maskToken: ParameterOf<S>?
    let blocks: [Block]
    /// The frozen pretrained stem (config `stem` other than "patch"): not a parameter, so no
    /// optimiser, EMA or gradient ever touches it; its tensors are in `stateDict()` as "stem.*".
    public let stem: PretrainedStemOf<S>?
    /// Inputs of the patch embedding per patch: Cin*p*p, or the stem's output channels.
    public var patchFeatures: Int { stem?.outChannels ?? config.inChannels * config.patchSize * config.patchSize }
    private var scratch: BackwardScratch?

    /// A model initialised from `seed`: trunc-normal(0.02) for every weight matrix (patch
    /// embedding and CAM head included, both are linear maps), position embedding and class
    /// token; zero biases; LayerNorm weight 1, bias 0. A config with a pretrained stem needs
    /// `stem` (of that architecture); its patch embedding is [D, stem.outChannels, 1, 1].
    public init(config: ViTConfig, seed: UInt64, stem: PretrainedStemOf<S>? = nil) throws {
        try config.validate()
        if config.hasPretrainedStem {
            guard let stem else { throw EngineError("a ViT with the \(config.stem) stem needs the stem's weights") }
            guard stem.architecture.name == config.stem else {
                throw EngineError("the stem weights are \(stem.architecture.name), the config asks for \(config.stem)")
            }
        } else if stem != nil {
            throw EngineError("stem weights given for a ViT with stem 'patch'")
        }
        self.stem = stem
        self.config = config
        let D = config.dim, C = config.numClasses, p = config.patchSize
        var list: [ParameterOf<S>] = []
        func param(_ name: String, _ shape: [Int]) -> ParameterOf<S> {
            let q = ParameterOf<S>(name, shape)
            list.append(q)
            return q
        }
        // Order of timm/PyTorch named_parameters(): cls_token, pos_embed, patch_embed, blocks, norm, heads.
        clsToken = param("cls_token", [1, 1, D])
        posEmbed = param("pos_embed", [1, config.tokens, D])
        maskToken = config.maskToken ? param("mask_token", [1, 1, D]) : nil
        patchW = param("patch_embed.proj.weight", stem.map { [D, $0.outChannels, 1, 1] } ?? [D, config.inChannels, p, p])
        patchB = param("patch_embed.proj.bias", [D])
        var bs: [Block] = []
        for i in 0..<config.depth {
            let pre = "blocks.\(i)."
            // timm's order: norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2.
            let norm1W = param(pre + "norm1.weight", [D]), norm1B = param(pre + "norm1.bias", [D])
            let qkvW = param(pre + "attn.qkv.weight", [3 * D, D]), qkvB = param(pre + "attn.qkv.bias", [3 * D])
            let projW = param(pre + "attn.proj.weight", [D, D]), projB = param(pre + "attn.proj.bias", [D])
            let ls1 = config.layerScale ? param(pre + "ls1.gamma", [D]) : nil
            let norm2W = param(pre + "norm2.weight", [D]), norm2B = param(pre + "norm2.bias", [D])
            let fc1W = param(pre + "mlp.fc1.weight", [config.hidden, D]), fc1B = param(pre + "mlp.fc1.bias", [config.hidden])
            let fc2W = param(pre + "mlp.fc2.weight", [D, config.hidden]), fc2B = param(pre + "mlp.fc2.bias", [D])
            let ls2 = config.layerScale ? param(pre + "ls2.gamma", [D]) : nil
            bs.append(Block(norm1W: norm1W, norm1B: norm1B, qkvW: qkvW, qkvB: qkvB, projW: projW, projB: projB,
                            norm2W: norm2W, norm2B: norm2B, fc1W: fc1W, fc1B: fc1B, fc2W: fc2W, fc2B: fc2B, ls1: ls1, ls2: ls2))
        }
        blocks = bs
        normW = param("norm.weight", [D])
        normB = param("norm.bias", [D])
        camW = param("cam_head.weight", [C, D])
        clsW = param("cls_head.weight", [C, D])
        clsB = param("cls_head.bias", [C])
        parameterList = list
        rng = SplitMix64(seed: seed ^ 0x5EED_D0D0)

        var initRNG = SplitMix64(seed: seed)
        for q in list {
            if q.name.hasSuffix("norm1.weight") || q.name.hasSuffix("norm2.weight") || q.name == "norm.weight" {
                q.value.fill(1)
            } else if q.name.hasSuffix(".gamma") {
                q.value.fill(1e-5)  // timm / DINOv2 LayerScale init_values
            } else if q.value.rank == 1 {
                q.value.zero()
            } else {
                q.value.fillTruncatedNormal(std: 0.02, rng: &initRNG)
            }
        }
    }

    /// (name, value, grad) triples in PyTorch order (for the optimiser and checkpoints).
    public var parameters: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)] {
        parameterList.map { ($0.name, $0.value, $0.grad) }
    }

    public var parameterCount: Int { parameterList.reduce(0) { $0 + $1.value.count } }

    /// Whether a parameter is frozen by `frozenBlocks` (the embedding and the first blocks).
    public func isFrozen(_ name: String) -> Bool {
        guard frozenBlocks > 0 else { return false }
        if name.hasPrefix("patch_embed.") || name == "cls_token" || name == "pos_embed" { return true }
        guard name.hasPrefix("blocks."), let index = Int(name.dropFirst(7).prefix { $0 != "." }) else { return false }
        return index < frozenBlocks
    }

    /// The parameters an optimiser updates: all but the frozen ones, in PyTorch order.
    public var trainableParameters: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)] {
        parameterList.filter { !isFrozen($0.name) }.map { ($0.name, $0.value, $0.grad) }
    }

    public func parameter(named name: String) -> ParameterOf<S>? {
        parameterList.first { $0.name == name }
    }

    public func zeroGrad() { for q in parameterList { q.grad.zero() } }

    /// name -> (PyTorch shape, float32 values), e.g. for a checkpoint; the frozen stem's
    /// tensors included ("stem.*").
    public func stateDict() -> [String: (shape: [Int], values: [Float])] {
        var d: [String: (shape: [Int], values: [Float])] = stem?.stateDict() ?? [:]
        for q in parameterList { d[q.name] = (q.value.shape, q.value.toArray().map { Float($0) }) }
        return d
    }

    /// The tensors a checkpoint stores besides `parameters`: the frozen stem's ("stem.*"), empty
    /// for a patch ViT. Checkpoint writers put them into every weight group (weights, ema_weights).
    public var frozenTensors: [(name: String, value: TensorOf<S>)] { stem?.stateTensors() ?? [] }

    /// Forward FLOPs (x 2 multiply-adds, batch 1) with the loaded stem's own channel counts.
    public func forwardFLOPs(gridH: Int? = nil, gridW: Int? = nil) -> Double {
        let gh = gridH ?? config.grid, gw = gridW ?? config.grid
        guard let stem else { return config.forwardFLOPs(gridH: gh, gridW: gw) }
        return config.transformerFLOPs(gridH: gh, gridW: gw, patchFeatures: stem.outChannels)
            + stem.forwardFLOPs(height: gh * config.patchSize, width: gw * config.patchSize)
    }

    /// FLOPs of one training image: forward + backward (~3x forward) of the trainable part,
    /// the frozen stem's forward once (it has no backward).
    public func trainingFLOPs(gridH: Int? = nil, gridW: Int? = nil) -> Double {
        let gh = gridH ?? config.grid, gw = gridW ?? config.grid
        guard let stem else { return 3 * config.forwardFLOPs(gridH: gh, gridW: gw) }
        return 3 * config.transformerFLOPs(gridH: gh, gridW: gw, patchFeatures: stem.outChannels)
            + stem.forwardFLOPs(height: gh * config.patchSize, width: gw * config.patchSize)
    }

    /// Loads every parameter by name, and the stem's "stem.*" tensors for a model with a stem.
    /// Fails (changing nothing) on a missing or extra name or a shape mismatch. A CAM head stored
    /// as a [C, D, 1, 1] convolution is accepted too.
    public func load(_ arrays: [String: (shape: [Int], values: [Float])]) throws {
        let stemPrefix = PretrainedStemOf<S>.statePrefix
        var arrays = arrays
        var stemArrays: [String: (shape: [Int], values: [Float])] = [:]
        if stem != nil {
            for key in arrays.keys where key.hasPrefix(stemPrefix) { stemArrays[key] = arrays.removeValue(forKey: key) }
        }
        for q in parameterList {
            guard let a = arrays[q.name] else { throw EngineError("checkpoint has no parameter '\(q.name)'") }
            var shape = a.shape
            if q.name == "cam_head.weight" && shape.count == 4 && shape[2] == 1 && shape[3] == 1 { shape = [shape[0], shape[1]] }
            if shape != q.value.shape {
                throw EngineError("parameter '\(q.name)' has shape \(a.shape), the model expects \(q.value.shape)")
            }
            if a.values.count != q.value.count {
                throw EngineError("parameter '\(q.name)' has \(a.values.count) values for shape \(a.shape)")
            }
        }
        let known = Set(parameterList.map(\.name))
        if let extra = arrays.keys.sorted().first(where: { !known.contains($0) }) {
            if extra.hasPrefix(stemPrefix) {
                throw EngineError("checkpoint holds pretrained-stem weights ('\(extra)') but this model's stem is '\(config.stem)'")
            }
            throw EngineError("checkpoint parameter '\(extra)' is not part of this model")
        }
        try stem?.load(stemArrays)
        for q in parameterList {
            let v = arrays[q.name]!.values
            for i in 0..<q.value.count { q.value.data[i] = S(v[i]) }
        }
    }

    /// The position embedding [1, 1 + gridH*gridW, D] used for an input grid: the parameter
    /// itself at the training grid, else its patch part resized bilinearly (align_corners=False)
    /// with the class-token position kept.
    public func positionEmbedding(gridH: Int, gridW: Int) -> TensorOf<S> {
        let D = config.dim, g = config.grid
        let out = TensorOf<S>(shape: [1, 1 + gridH * gridW, D])
        if gridH == g && gridW == g {
            out.copy(from: posEmbed.value)
        } else {
            out.data.update(from: posEmbed.value.data, count: D)
            Kernels.bilinearResizeForward(out: out.data + D, inp: posEmbed.value.data + D, batch: 1, inHeight: g, inWidth: g,
                                          outHeight: gridH, outWidth: gridW, channels: D)
        }
        return out
    }

    // MARK: Forward

    /// Runs the model on images [B, H, W, Cin] (channels-last, already normalised; H and W
    /// multiples of the patch size). A grid other than the training grid interpolates the
    /// position embedding bilinearly (align_corners=False); the class-token position is kept.
    /// `training` enables drop-path (when the config's rate > 0). `patchMask` [B, N] (non-zero =
    /// masked) replaces those patch embeddings by the mask token (config `maskToken`) before the
    /// position embedding is added.
    @_specialize(where S == Float)
    public func forward(images: TensorOf<S>, training: Bool = false, patchMask: TensorOf<S>? = nil,
                        reuse: ViTActivationsOf<S>? = nil) -> ViTActivationsOf<S> {
        let c = config
        precondition(images.rank == 4 && images.shape[3] == c.inChannels,
                     "images must be [B, H, W, \(c.inChannels)], got \(images.shape)")
        let B = images.shape[0], Hi = images.shape[1], Wi = images.shape[2], p = c.patchSize
        precondition(Hi % p == 0 && Wi % p == 0 && Hi >= p && Wi >= p,
                     "image size \(Hi)x\(Wi) is not a positive multiple of the patch size \(p)")
        let gh = Hi / p, gw = Wi / p, N = gh * gw, T = N + 1, D = c.dim, rows = B * T
        let a: ViTActivationsOf<S>
        if let reuse, reuse.batch == B, reuse.gridH == gh, reuse.gridW == gw, reuse.xs.count == c.depth + 1,
           reuse.xs[0].shape[1] == D, reuse.patchMatrix.shape[1] == patchFeatures {
            a = reuse
        } else {
            a = ViTActivationsOf(config: c, batch: B, gridH: gh, gridW: gw, patchFeatures: patchFeatures)
        }
        a.attnProbsGrad = []
        if let patchMask {
            precondition(maskToken != nil, "patchMask needs a model configured with mask_token")
            precondition(patchMask.count == B * N, "patchMask must be [\(B), \(N)], got \(patchMask.shape)")
            a.patchMask = (0..<(B * N)).map { patchMask.data[$0] != 0 }
        } else {
            a.patchMask = []
        }

        // Patch embedding: gather patches in PyTorch's (c, ky, kx) order, then one product; with
        // a stem, its [B, gh, gw, Cs] features are already the rows (a 1x1 convolution).
        let K = patchFeatures, Cin = c.inChannels
        let pm = SendablePointer(a.patchMatrix.data), img = SendablePointer(images.data)
        if let stem {
            stem.forward(images: images, into: a.patchMatrix.data)
        } else {
        Parallel.forRanges(B * N, costPerItem: K) { range in
            for r in range {
                let b = r / N, n = r % N, py = n / gw, px = n % gw
                let dst = pm.p + r * K
                for ky in 0..<p {
                    let src = img.p + ((b * Hi + py * p + ky) * Wi + px * p) * Cin
                    for kx in 0..<p {
                        for ch in 0..<Cin { dst[ch * p * p + ky * p + kx] = src[kx * Cin + ch] }
                    }
                }
            }
        }
        }
        let x0 = a.xs[0]
        let embed = a.branch  // [B*N, D] fits in [B*T, D]
        Kernels.linearForward(out: embed.data, inp: a.patchMatrix.data, weight: patchW.value.data,
                              bias: patchB.value.data, rows: B * N, inFeatures: K, outFeatures: D)
        let pos: UnsafePointer<S>
        if let pu = a.posUsed {
            pu.data.update(from: posEmbed.value.data, count: D)
            Kernels.bilinearResizeForward(out: pu.data + D, inp: posEmbed.value.data + D, batch: 1,
                                          inHeight: c.grid, inWidth: c.grid, outHeight: gh, outWidth: gw, channels: D)
            pos = UnsafePointer(pu.data)
        } else {
            pos = UnsafePointer(posEmbed.value.data)
        }
        for b in 0..<B {
            let dst = x0.data + b * T * D
            for j in 0..<D { dst[j] = clsToken.value.data[j] + pos[j] }
            for n in 0..<N {
                let masked = !a.patchMask.isEmpty && a.patchMask[b * N + n]
                let e = masked ? maskToken!.value.data : embed.data + (b * N + n) * D
                let d = dst + (n + 1) * D, q = pos + (n + 1) * D
                for j in 0..<D { d[j] = e[j] + q[j] }
            }
        }

        let eps = S(c.layerNormEps)
        for (l, blk) in blocks.enumerated() {
            var scales: TensorOf<S>? = nil
            if training && c.dropPathRate > 0 {
                let rate = c.depth > 1 ? c.dropPathRate * Double(l) / Double(c.depth - 1) : c.dropPathRate
                if rate > 0 {
                    let s = a.dropScales[l] ?? TensorOf(shape: [2, B])
                    Kernels.dropPathScales(into: s.data, batch: B, p: rate, rng: &rng)
                    Kernels.dropPathScales(into: s.data + B, batch: B, p: rate, rng: &rng)
                    scales = s
                }
            }
            a.dropScales[l] = scales
            let x = a.xs[l], mid = a.mids[l], out = a.xs[l + 1]
            Kernels.layerNormForward(out: a.ln1[l].data, mean: a.stats1[l].data, rstd: a.stats1[l].data + rows,
                                     inp: x.data, weight: blk.norm1W.value.data, bias: blk.norm1B.value.data,
                                     rows: rows, dim: D, eps: eps)
            Kernels.linearForward(out: a.qkv[l].data, inp: a.ln1[l].data, weight: blk.qkvW.value.data,
                                  bias: blk.qkvB.value.data, rows: rows, inFeatures: D, outFeatures: 3 * D)
            Kernels.attentionForward(out: a.attnOut[l].data, probs: a.attnProbs[l].data, logits: a.attnLogits[l].data,
                                     qkv: a.qkv[l].data, batch: B, tokens: T, dim: D, heads: c.heads)
            if let ls1 = blk.ls1 {
                Kernels.linearForward(out: a.unscaled[2 * l].data, inp: a.attnOut[l].data, weight: blk.projW.value.data,
                                      bias: blk.projB.value.data, rows: rows, inFeatures: D, outFeatures: D)
                Kernels.scaleColumnsForward(out: a.branch.data, inp: a.unscaled[2 * l].data, gamma: ls1.value.data, rows: rows, dim: D)
            } else {
                Kernels.linearForward(out: a.branch.data, inp: a.attnOut[l].data, weight: blk.projW.value.data,
                                      bias: blk.projB.value.data, rows: rows, inFeatures: D, outFeatures: D)
            }
            Kernels.residualAdd(out: mid.data, x: x.data, branch: a.branch.data, scales: scales?.data,
                                batch: B, perSample: T * D)
            Kernels.layerNormForward(out: a.ln2[l].data, mean: a.stats2[l].data, rstd: a.stats2[l].data + rows,
                                     inp: mid.data, weight: blk.norm2W.value.data, bias: blk.norm2B.value.data,
                                     rows: rows, dim: D, eps: eps)
            Kernels.linearForward(out: a.fc1[l].data, inp: a.ln2[l].data, weight: blk.fc1W.value.data,
                                  bias: blk.fc1B.value.data, rows: rows, inFeatures: D, outFeatures: c.hidden)
            switch c.gelu {
            case .tanh: Kernels.geluForward(out: a.act[l].data, inp: a.fc1[l].data, count: rows * c.hidden)
            case .erf: Kernels.geluErfForward(out: a.act[l].data, inp: a.fc1[l].data, count: rows * c.hidden)
            }
            if let ls2 = blk.ls2 {
                Kernels.linearForward(out: a.unscaled[2 * l + 1].data, inp: a.act[l].data, weight: blk.fc2W.value.data,
                                      bias: blk.fc2B.value.data, rows: rows, inFeatures: c.hidden, outFeatures: D)
                Kernels.scaleColumnsForward(out: a.branch.data, inp: a.unscaled[2 * l + 1].data, gamma: ls2.value.data, rows: rows, dim: D)
            } else {
                Kernels.linearForward(out: a.branch.data, inp: a.act[l].data, weight: blk.fc2W.value.data,
                                      bias: blk.fc2B.value.data, rows: rows, inFeatures: c.hidden, outFeatures: D)
            }
            Kernels.residualAdd(out: out.data, x: mid.data, branch: a.branch.data, scales: scales.map { $0.data + B },
                                batch: B, perSample: T * D)
        }

        Kernels.layerNormForward(out: a.tokens.data, mean: a.statsF.data, rstd: a.statsF.data + rows,
                                 inp: a.xs[c.depth].data, weight: normW.value.data, bias: normB.value.data,
                                 rows: rows, dim: D, eps: eps)
        for b in 0..<B {
            (a.classTokens.data + b * D).update(from: a.tokens.data + b * T * D, count: D)
            (a.features.data + b * N * D).update(from: a.tokens.data + (b * T + 1) * D, count: N * D)
        }
        let C = c.numClasses
        Kernels.linearForward(out: a.patchScores.data, inp: a.features.data, weight: camW.value.data, bias: nil,
                              rows: B * N, inFeatures: D, outFeatures: C)
        let inv = 1 / S(N)
        for b in 0..<B {
            let dst = a.camLogits.data + b * C
            for k in 0..<C { dst[k] = 0 }
            for n in 0..<N {
                let s = a.patchScores.data + (b * N + n) * C
                for k in 0..<C { dst[k] += s[k] }
            }
            for k in 0..<C { dst[k] *= inv }
        }
        Kernels.linearForward(out: a.clsLogits.data, inp: a.classTokens.data, weight: clsW.value.data,
                              bias: clsB.value.data, rows: B, inFeatures: D, outFeatures: C)
        return a
    }

    // MARK: Backward

    /// Gradient buffers of one backward, kept by the model between calls of the same shape.
    final class BackwardScratch {
        let batch, tokens, rows: Int
        let dx, dBranch, dScaled, dLn, dAttn: TensorOf<S>
        let dQKV, dHidden, dAct: TensorOf<S>
        let dScores, dFeat, dCls: TensorOf<S>
        init(batch: Int, tokens: Int, dim: Int, hidden: Int, classes: Int) {
            let rows = batch * tokens
            self.batch = batch
            self.tokens = tokens
            self.rows = rows
            dScores = TensorOf(shape: [batch * (tokens - 1), classes])
            dFeat = TensorOf(shape: [batch * (tokens - 1), dim])
            dCls = TensorOf(shape: [batch, dim])
            dx = TensorOf(shape: [rows, dim])
            dBranch = TensorOf(shape: [rows, dim])
            dScaled = TensorOf(shape: [rows, dim])
            dLn = TensorOf(shape: [rows, dim])
            dAttn = TensorOf(shape: [rows, dim])
            dQKV = TensorOf(shape: [rows, 3 * dim])
            dHidden = TensorOf(shape: [rows, hidden])
            dAct = TensorOf(shape: [rows, hidden])
        }
    }

    /// Back-propagates the given output gradients through the forward that produced `a`,
    /// adding into every parameter's `grad` (unless `grads.parameterGrads` is false).
    @_specialize(where S == Float)
    public func backward(_ a: ViTActivationsOf<S>, _ grads: ViTOutputGradsOf<S>) {
        let c = config
        let B = a.batch, N = a.patches, T = a.tokenCount, D = c.dim, C = c.numClasses, rows = B * T
        let pg = grads.parameterGrads
        func g(_ q: ParameterOf<S>) -> UnsafeMutablePointer<S>? { pg ? q.grad.data : nil }
        func check(_ t: TensorOf<S>?, _ shape: [Int], _ what: String) {
            if let t { precondition(t.shape == shape, "gradient of \(what) has shape \(t.shape), expected \(shape)") }
        }
        check(grads.camLogits, [B, C], "cam logits")
        check(grads.clsLogits, [B, C], "cls logits")
        check(grads.patchScores, [B, N, C], "patch scores")
        check(grads.features, [B, N, D], "features")
        check(grads.classTokens, [B, D], "class tokens")
        for (l, t) in grads.attnProbs { precondition(l >= 0 && l < c.depth); check(t, [B, c.heads, T, T], "attention probs \(l)") }
        for (l, t) in grads.attnLogits { precondition(l >= 0 && l < c.depth); check(t, [B, c.heads, T, T], "attention logits \(l)") }
        for (i, t) in grads.hiddenStates { precondition(i >= 0 && i <= c.depth); check(t, [B, T, D], "hidden state \(i)") }

        if scratch == nil || scratch!.batch != B || scratch!.tokens != T {
            scratch = BackwardScratch(batch: B, tokens: T, dim: D, hidden: c.hidden, classes: C)
        }
        let s = scratch!

        // Heads. dS = dPatchScores + dCam / N (global average pooling).
        let dS = s.dScores
        if let gs = grads.patchScores { dS.copy(from: gs) } else { dS.zero() }
        if let gc = grads.camLogits {
            let inv = 1 / S(N)
            for b in 0..<B {
                for n in 0..<N {
                    let d = dS.data + (b * N + n) * C, src = gc.data + b * C
                    for k in 0..<C { d[k] += src[k] * inv }
                }
            }
        }
        let dFeat = s.dFeat
        if let gf = grads.features { dFeat.copy(from: gf) } else { dFeat.zero() }
        Kernels.linearBackward(dInp: dFeat.data, dWeight: g(camW), dBias: nil, dOut: dS.data,
                               inp: a.features.data, weight: camW.value.data, rows: B * N, inFeatures: D, outFeatures: C)
        let dCls = s.dCls
        if let gt = grads.classTokens { dCls.copy(from: gt) } else { dCls.zero() }
        if let gl = grads.clsLogits {
            Kernels.linearBackward(dInp: dCls.data, dWeight: g(clsW), dBias: g(clsB), dOut: gl.data,
                                   inp: a.classTokens.data, weight: clsW.value.data, rows: B, inFeatures: D, outFeatures: C)
        }
        // Scatter into token order, then the final norm.
        let dTok = s.dLn
        for b in 0..<B {
            (dTok.data + b * T * D).update(from: dCls.data + b * D, count: D)
            (dTok.data + (b * T + 1) * D).update(from: dFeat.data + b * N * D, count: N * D)
        }
        let dx = s.dx
        dx.zero()
        Kernels.layerNormBackward(dInp: dx.data, dWeight: g(normW), dBias: g(normB), dOut: dTok.data,
                                  inp: a.xs[c.depth].data, weight: normW.value.data,
                                  mean: a.statsF.data, rstd: a.statsF.data + rows, rows: rows, dim: D)

        if let gh = grads.hiddenStates[c.depth] { dx.add(gh) }
        var probGrads: [TensorOf<S>] = []
        if grads.recordAttentionGrads { probGrads = (0..<c.depth).map { _ in TensorOf(shape: [B, c.heads, T, T]) } }

        // Blocks in reverse; dx holds d(loss)/d(residual stream) and is updated in place. Frozen
        // blocks are skipped (nothing below them trains), unless every layer's attention gradient
        // is asked for.
        let lowest = grads.recordAttentionGrads ? 0 : frozenBlocks
        for l in stride(from: c.depth - 1, through: lowest, by: -1) {
            let blk = blocks[l]
            let scales = a.dropScales[l]
            // MLP branch: out = mid + s2 * fc2(gelu(fc1(ln2(mid)))).
            var dBranch = UnsafePointer(dx.data)
            if let scales {
                s.dBranch.zero()
                Kernels.residualAdd(x: s.dBranch.data, branch: dx.data, scales: scales.data + B, batch: B, perSample: T * D)
                dBranch = UnsafePointer(s.dBranch.data)
            }
            if let ls2 = blk.ls2 {
                Kernels.scaleColumnsBackward(dInp: s.dScaled.data, dGamma: g(ls2), dOut: dBranch, inp: a.unscaled[2 * l + 1].data,
                                             gamma: ls2.value.data, rows: rows, dim: D)
                dBranch = UnsafePointer(s.dScaled.data)
            }
            Kernels.linearBackward(dInp: s.dAct.data, dWeight: g(blk.fc2W), dBias: g(blk.fc2B), dOut: dBranch,
                                   inp: a.act[l].data, weight: blk.fc2W.value.data,
                                   rows: rows, inFeatures: c.hidden, outFeatures: D, accumulateInput: false)
            s.dHidden.zero()
            switch c.gelu {
            case .tanh: Kernels.geluBackward(dInp: s.dHidden.data, dOut: s.dAct.data, inp: a.fc1[l].data, count: rows * c.hidden)
            case .erf: Kernels.geluErfBackward(dInp: s.dHidden.data, dOut: s.dAct.data, inp: a.fc1[l].data, count: rows * c.hidden)
            }
            Kernels.linearBackward(dInp: s.dLn.data, dWeight: g(blk.fc1W), dBias: g(blk.fc1B), dOut: s.dHidden.data,
                                   inp: a.ln2[l].data, weight: blk.fc1W.value.data,
                                   rows: rows, inFeatures: D, outFeatures: c.hidden, accumulateInput: false)
            Kernels.layerNormBackward(dInp: dx.data, dWeight: g(blk.norm2W), dBias: g(blk.norm2B), dOut: s.dLn.data,
                                      inp: a.mids[l].data, weight: blk.norm2W.value.data,
                                      mean: a.stats2[l].data, rstd: a.stats2[l].data + rows, rows: rows, dim: D)
            // Attention branch: mid = x + s1 * proj(attn(ln1(x))).
            dBranch = UnsafePointer(dx.data)
            if let scales {
                s.dBranch.zero()
                Kernels.residualAdd(x: s.dBranch.data, branch: dx.data, scales: scales.data, batch: B, perSample: T * D)
                dBranch = UnsafePointer(s.dBranch.data)
            }
            if let ls1 = blk.ls1 {
                Kernels.scaleColumnsBackward(dInp: s.dScaled.data, dGamma: g(ls1), dOut: dBranch, inp: a.unscaled[2 * l].data,
                                             gamma: ls1.value.data, rows: rows, dim: D)
                dBranch = UnsafePointer(s.dScaled.data)
            }
            Kernels.linearBackward(dInp: s.dAttn.data, dWeight: g(blk.projW), dBias: g(blk.projB), dOut: dBranch,
                                   inp: a.attnOut[l].data, weight: blk.projW.value.data,
                                   rows: rows, inFeatures: D, outFeatures: D, accumulateInput: false)
            s.dQKV.zero()
            Kernels.attentionBackward(dQKV: s.dQKV.data, dProbs: grads.recordAttentionGrads ? probGrads[l].data : nil,
                                      dOut: s.dAttn.data, qkv: a.qkv[l].data, probs: a.attnProbs[l].data,
                                      extraDProbs: grads.attnProbs[l].map { UnsafePointer($0.data) },
                                      extraDLogits: grads.attnLogits[l].map { UnsafePointer($0.data) },
                                      batch: B, tokens: T, dim: D, heads: c.heads)
            Kernels.linearBackward(dInp: s.dLn.data, dWeight: g(blk.qkvW), dBias: g(blk.qkvB), dOut: s.dQKV.data,
                                   inp: a.ln1[l].data, weight: blk.qkvW.value.data,
                                   rows: rows, inFeatures: D, outFeatures: 3 * D, accumulateInput: false)
            Kernels.layerNormBackward(dInp: dx.data, dWeight: g(blk.norm1W), dBias: g(blk.norm1B), dOut: s.dLn.data,
                                      inp: a.xs[l].data, weight: blk.norm1W.value.data,
                                      mean: a.stats1[l].data, rstd: a.stats1[l].data + rows, rows: rows, dim: D)
            if let gh = grads.hiddenStates[l] { dx.add(gh) }
        }
        a.attnProbsGrad = probGrads
        guard pg, lowest == 0 else { return }

        // Embedding: x0 = [cls; patches W^T + b] + pos.
        let dPos = a.posUsed == nil ? posEmbed.grad : TensorOf<S>(shape: [T, D])
        for b in 0..<B {
            let src = dx.data + b * T * D
            for j in 0..<D { clsToken.grad.data[j] += src[j] }
            for i in 0..<(T * D) { dPos.data[i] += src[i] }
        }
        if a.posUsed != nil {
            for j in 0..<D { posEmbed.grad.data[j] += dPos.data[j] }
            Kernels.bilinearResizeBackward(dInp: posEmbed.grad.data + D, dOut: dPos.data + D, batch: 1,
                                           inHeight: c.grid, inWidth: c.grid, outHeight: a.gridH, outWidth: a.gridW,
                                           channels: D)
        }
        let dEmb = s.dBranch  // [B*N, D] fits
        for b in 0..<B { (dEmb.data + b * N * D).update(from: dx.data + (b * T + 1) * D, count: N * D) }
        if !a.patchMask.isEmpty, let mt = maskToken {
            // Masked rows came from the mask token, not from the patch embedding.
            for r in 0..<(B * N) where a.patchMask[r] {
                let src = dEmb.data + r * D
                for j in 0..<D { mt.grad.data[j] += src[j]; src[j] = 0 }
            }
        }
        // Stops here: the stem is frozen.
        let K = patchFeatures
        Kernels.linearBackward(dInp: nil, dWeight: patchW.grad.data, dBias: patchB.grad.data, dOut: dEmb.data,
                               inp: a.patchMatrix.data, weight: patchW.value.data, rows: B * N, inFeatures: K, outFeatures: D)
        // Raw pointers do not keep their tensors alive; the locals must outlive the last kernel.
        withExtendedLifetime(dPos) {}
    }
}
