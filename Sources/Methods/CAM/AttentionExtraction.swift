import Engine
import Foundation
import Primitives

/// Which class score ACR's gradient maps back-propagate.
public enum GradientScore: String, ParameterChoice, Sendable {
    /// The class-token head's logit (ACR's y_c).
    case cls
    /// The CAM head's logit (global average of the patch scores).
    case cam
    /// No gradient maps (their rows stay 0): one backward per present class is most of the
    /// extraction's time, and only ACR's gradient localisation reads them.
    case none
}

/// How `AttentionExtractor` runs the classifier.
public struct ExtractionOptions: Equatable, Sendable {
    /// Input scales relative to the model's training size; CAMs of all scales are summed.
    public var scales: [Double] = [1]
    /// Also run the mirrored image at every scale (its maps are mirrored back before summing).
    public var flip = false
    public var gradientScore: GradientScore = .cls

    public init(scales: [Double] = [1], flip: Bool = false, gradientScore: GradientScore = .cls) {
        self.scales = scales
        self.flip = flip
        self.gradientScore = gradientScore
    }
}

/// One image to extract from: interleaved RGB8 pixels and the classes present in it.
public struct ExtractionInput {
    public var pixels: [UInt8]
    public var width: Int
    public var height: Int
    /// Indices into the model's class outputs (0..<numClasses).
    public var classes: [Int]

    public init(pixels: [UInt8], width: Int, height: Int, classes: [Int]) {
        precondition(pixels.count == width * height * 3, "an RGB image of \(width)x\(height) needs \(width * height * 3) bytes, got \(pixels.count)")
        self.pixels = pixels
        self.width = width
        self.height = height
        self.classes = classes
    }
}

/// What one image yields; every map lies on the scale-1 token grid h x w (n = h * w).
public struct ExtractionResult {
    public var classes: [Int]
    public var gridHeight: Int, gridWidth: Int, layers: Int
    /// [K, h, w]: the CAM head's patch scores of the present classes, summed over scales and flips,
    /// before ReLU and normalisation.
    public var cams: [Float]
    /// [L, n, n]: head-averaged post-softmax attention among the patch tokens (scale 1, unflipped).
    public var patchAttention: [Float]
    /// [L, n]: head-averaged class-token row to the patches (scale 1, unflipped).
    public var classAttention: [Float]
    /// [K, L, n]: ReLU(head mean of d y_c / d A_l[0, 1:]) (ACR eq. 7 before the layer mean).
    public var gradients: [Float]
    /// [C]: the logits of the gradient score at scale 1.
    public var logits: [Float]
}

/// Runs a classifier over batches of images for the localisation stages: CAMs (multi-scale,
/// flip), per-layer attention, and ACR's attention gradients. Inputs are prepared exactly as
/// classify-train evaluates (`ImageAugmenter.resize` to a square, then normalisation).
public final class AttentionExtractor {
    public let model: ViT
    public let normalization: Normalization
    public let options: ExtractionOptions
    private var buffers: [Int: ViTActivations] = [:]

    public init(model: ViT, normalization: Normalization, options: ExtractionOptions) throws {
        guard !options.scales.isEmpty, options.scales.allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw EngineError("scales must be a non-empty list of positive numbers, got \(options.scales)")
        }
        self.model = model
        self.normalization = normalization
        self.options = options
    }

    /// Square input side at `scale`: the nearest multiple of the patch size (at least one patch).
    public func inputSize(scale: Double) -> Int {
        let p = model.config.patchSize
        return max(p, Int((Double(model.config.imageSize) * scale / Double(p)).rounded()) * p)
    }

    public var grid: Int { model.config.imageSize / model.config.patchSize }

    /// Normalised channels-last input [B, size, size, 3], mirrored when `flipped`.
    public func prepare(_ inputs: [ExtractionInput], size: Int, flipped: Bool) -> Tensor {
        let t = Tensor(shape: [inputs.count, size, size, 3])
        for (b, input) in inputs.enumerated() {
            let dst = t.data + b * size * size * 3
            input.pixels.withUnsafeBufferPointer {
                ImageAugmenter.resize($0.baseAddress!, width: input.width, height: input.height, into: dst, size: size,
                                      normalization: normalization)
            }
            if flipped {
                for y in 0..<size {
                    let row = dst + y * size * 3
                    for x in 0..<(size / 2) {
                        let a = row + x * 3, c = row + (size - 1 - x) * 3
                        for ch in 0..<3 { let v = a[ch]; a[ch] = c[ch]; c[ch] = v }
                    }
                }
            }
        }
        return t
    }

    private func forward(_ images: Tensor) -> ViTActivations {
        let key = images.shape[0] << 20 | images.shape[1]
        let acts = model.forward(images: images, training: false, reuse: buffers[key])
        buffers[key] = acts
        return acts
    }

    /// Extracts everything for a batch of images; one result per input, in order.
    public func extract(_ inputs: [ExtractionInput]) throws -> [ExtractionResult] {
        if inputs.isEmpty { return [] }
        let c = model.config
        let C = c.numClasses, L = c.depth, H = c.heads
        for input in inputs {
            if let bad = input.classes.first(where: { $0 < 0 || $0 >= C }) {
                throw EngineError("class index \(bad) is outside the model's \(C) classes")
            }
        }
        let B = inputs.count, g = grid, n = g * g, T = n + 1
        // Sum of the CAM head's patch scores over all views, [B, g, g, C] on the scale-1 grid.
        let camSum = Tensor(shape: [B, g, g, C])
        var results = inputs.map {
            ExtractionResult(classes: $0.classes, gridHeight: g, gridWidth: g, layers: L, cams: [],
                             patchAttention: [], classAttention: [],
                             gradients: [Float](repeating: 0, count: $0.classes.count * L * n), logits: [])
        }

        // Scale 1, unflipped: attention, gradients, and the first CAM term.
        var views: [(scale: Double, flipped: Bool)] = []
        for s in options.scales { views.append((s, false)); if options.flip { views.append((s, true)) } }
        // The reference forward is also the first CAM view when scale 1 (unflipped) is asked for.
        let referenceView = views.firstIndex { inputSize(scale: $0.scale) == c.imageSize && !$0.flipped }
        let acts = forward(prepare(inputs, size: c.imageSize, flipped: false))
        if referenceView != nil { camSum.copy(from: acts.patchScores.reshaped([B, g, g, C])) }
        let invH = 1 / Float(H)
        for b in 0..<B {
            let logits = options.gradientScore == .cls ? acts.clsLogits : acts.camLogits
            results[b].logits = Array(UnsafeBufferPointer(start: logits.data + b * C, count: C))
            var patchAttention = [Float](repeating: 0, count: L * n * n), classAttention = [Float](repeating: 0, count: L * n)
            patchAttention.withUnsafeMutableBufferPointer { pa in
                classAttention.withUnsafeMutableBufferPointer { ca in
                    for l in 0..<L {
                        let probs = acts.attnProbs[l].data
                        let patch = pa.baseAddress! + l * n * n, cls = ca.baseAddress! + l * n
                        for h in 0..<H {
                            let head = probs + (b * H + h) * T * T
                            for j in 0..<n { cls[j] += head[1 + j] * invH }
                            for i in 0..<n {
                                let src = head + (1 + i) * T + 1, dst = patch + i * n
                                for j in 0..<n { dst[j] += src[j] * invH }
                            }
                        }
                    }
                }
            }
            results[b].patchAttention = patchAttention
            results[b].classAttention = classAttention
        }
        // One backward per class slot k: image b back-propagates the score of its k-th present
        // class. Images do not interact in an inference forward, so each image's attention
        // gradient is that of its own score alone; the forward's caches serve every backward.
        let slots = options.gradientScore == .none ? 0 : inputs.map(\.classes.count).max() ?? 0
        let seed = Tensor(shape: [B, C])
        for k in 0..<slots {
            seed.zero()
            for b in 0..<B where k < inputs[b].classes.count { seed.data[b * C + inputs[b].classes[k]] = 1 }
            var grads = ViTOutputGrads(recordAttentionGrads: true, parameterGrads: false)
            if options.gradientScore == .cls { grads.clsLogits = seed } else { grads.camLogits = seed }
            model.backward(acts, grads)
            for b in 0..<B where k < inputs[b].classes.count {
                results[b].gradients.withUnsafeMutableBufferPointer { gr in
                    for l in 0..<L {
                        let dp = acts.attnProbsGrad[l].data
                        let dst = gr.baseAddress! + (k * L + l) * n
                        for h in 0..<H {
                            let row = dp + (b * H + h) * T * T + 1
                            for j in 0..<n { dst[j] += row[j] * invH }
                        }
                        for j in 0..<n { dst[j] = max(dst[j], 0) }
                    }
                }
            }
        }

        // The other views add their CAMs, mirrored back and resized to the scale-1 grid.
        // (A view of the scale-1 size reuses, and overwrites, the reference forward's buffers.)
        for (v, (scale, flipped)) in views.enumerated() where v != referenceView {
            let size = inputSize(scale: scale)
            let view = forward(prepare(inputs, size: size, flipped: flipped))
            let gs = size / c.patchSize
            let scores = view.patchScores
            if flipped {
                for b in 0..<B {
                    for y in 0..<gs {
                        let row = scores.data + (b * gs + y) * gs * C
                        for x in 0..<(gs / 2) {
                            let a = row + x * C, o = row + (gs - 1 - x) * C
                            for ch in 0..<C { let v = a[ch]; a[ch] = o[ch]; o[ch] = v }
                        }
                    }
                }
            }
            if gs == g {
                camSum.add(scores.reshaped([B, g, g, C]))
            } else {
                let resized = Tensor(shape: [B, g, g, C])
                Kernels.bilinearResizeForward(out: resized.data, inp: scores.data, batch: B, inHeight: gs, inWidth: gs,
                                              outHeight: g, outWidth: g, channels: C)
                camSum.add(resized)
            }
        }
        for b in 0..<B {
            let K = inputs[b].classes.count
            var maps = [Float](repeating: 0, count: K * n)
            for (k, cls) in inputs[b].classes.enumerated() {
                let src = camSum.data + b * n * C + cls
                for i in 0..<n { maps[k * n + i] = src[i * C] }
            }
            results[b].cams = maps
        }
        withExtendedLifetime(acts) {}
        return results
    }
}
