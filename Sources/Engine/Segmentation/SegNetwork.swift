import Foundation
import Primitives

public typealias SegNetwork = SegNetworkOf<Float>

/// The segmentation network: ViT patch features [B, h, w, D] -> decoder logits [B, h, w, K]
/// -> bilinear upsampling (align_corners=False) to the input size [B, H, W, K].
///
/// K = C + 1 (background first). The single-stage mode will reuse this network next to the
/// ViT's own classification heads.
public final class SegNetworkOf<S: EngineScalar> {
    public let backbone: ViTOf<S>
    public let decoder: SegDecoderOf<S>

    public init(backbone: ViTOf<S>, decoder: SegDecoderOf<S>) throws {
        guard decoder.config.inChannels == backbone.config.dim else {
            throw EngineError("decoder reads \(decoder.config.inChannels) channels, the backbone gives \(backbone.config.dim)")
        }
        self.backbone = backbone
        self.decoder = decoder
    }

    public var numClasses: Int { decoder.config.numClasses }

    /// Everything a forward keeps for backward.
    public final class Activations {
        public let vit: ViTActivationsOf<S>
        public let decoder: SegDecoderActivationsOf<S>
        /// [B, H, W, K] logits at the input resolution.
        public let logits: TensorOf<S>
        init(vit: ViTActivationsOf<S>, decoder: SegDecoderActivationsOf<S>, logits: TensorOf<S>) {
            self.vit = vit
            self.decoder = decoder
            self.logits = logits
        }
    }

    /// Images [B, H, W, 3] (normalised; H, W multiples of the patch size).
    @_specialize(where S == Float)
    public func forward(images: TensorOf<S>, training: Bool, reuse: Activations? = nil) -> Activations {
        let B = images.shape[0], H = images.shape[1], W = images.shape[2], K = numClasses
        let vitActs = backbone.forward(images: images, training: training, reuse: reuse?.vit)
        let h = vitActs.gridH, w = vitActs.gridW
        let dec = decoder.forward(features: vitActs.features, image: decoder.config.hasDetail ? images : nil, batch: B, height: h, width: w)
        let logits = (reuse?.logits.shape == [B, H, W, K]) ? reuse!.logits : TensorOf<S>(shape: [B, H, W, K])
        Kernels.bilinearResizeForward(out: logits.data, inp: dec.logits.data, batch: B, inHeight: dec.outHeight, inWidth: dec.outWidth,
                                      outHeight: H, outWidth: W, channels: K)
        return Activations(vit: vitActs, decoder: dec, logits: logits)
    }

    /// Backward from the gradient on the upsampled logits; adds into both models' parameter
    /// gradients (zero them first).
    @_specialize(where S == Float)
    public func backward(_ a: Activations, dLogits: TensorOf<S>) {
        let B = a.logits.shape[0], H = a.logits.shape[1], W = a.logits.shape[2], K = numClasses
        let h = a.decoder.outHeight, w = a.decoder.outWidth
        let dSmall = TensorOf<S>(shape: [B, h, w, K])
        Kernels.bilinearResizeBackward(dInp: dSmall.data, dOut: dLogits.data, batch: B, inHeight: h, inWidth: w,
                                       outHeight: H, outWidth: W, channels: K)
        let dFeatures = TensorOf<S>(shape: [B, a.decoder.height * a.decoder.width, backbone.config.dim])
        decoder.backward(a.decoder, dLogits: dSmall, dFeatures: dFeatures)
        backbone.backward(a.vit, ViTOutputGradsOf(features: dFeatures))
    }

    /// Mean pixel cross-entropy over the labelled pixels (255 ignored) of labels [B, H, W]; with
    /// `backward` the gradients are accumulated too. Returns the loss and the pixels counted
    /// (0 counted: loss 0 and no gradient at all).
    @discardableResult
    @_specialize(where S == Float)
    public func loss(images: TensorOf<S>, labels: UnsafePointer<UInt8>, training: Bool, backward: Bool,
                     reuse: Activations? = nil) -> (loss: Double, counted: Int, activations: Activations) {
        let a = forward(images: images, training: training, reuse: reuse)
        let pixels = a.logits.count / numClasses
        let dLogits: TensorOf<S>? = backward ? TensorOf<S>(shape: a.logits.shape) : nil
        let (loss, counted) = Kernels.pixelCrossEntropy(logits: a.logits.data, labels: labels, pixels: pixels,
                                                        classes: numClasses, dLogits: dLogits?.data)
        if let dLogits, counted > 0 { self.backward(a, dLogits: dLogits) }
        return (loss, counted, a)
    }

    public func zeroGrad() {
        backbone.zeroGrad()
        decoder.zeroGrad()
    }

    /// Every parameter, backbone first then decoder.
    public var parameters: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)] {
        backbone.parameters + decoder.parameters
    }
}

/// Learning rate per optimiser step of the segmentation trainers: a linear warm-up from
/// warmupRatio x peak over warmupSteps (ToCo's PolyWarmupAdamW, FSR's CosWarmupAdamW), then
/// poly decay peak (1 - s/T)^power (DeepLab, ToCo) or half a cosine over the steps after the
/// warm-up (FSR), reaching 0 at T = totalSteps.
public struct SegLRSchedule: Codable, Equatable, Sendable {
    public enum Decay: String, ParameterChoice, Sendable { case poly, cosine }
    public var peakLR: Double
    public var totalSteps: Int
    public var power: Double
    public var warmupSteps: Int
    public var warmupRatio: Double
    public var decay: Decay

    public init(peakLR: Double, totalSteps: Int, power: Double = 0.9, warmupSteps: Int = 0, warmupRatio: Double = 0.1, decay: Decay = .poly) {
        precondition(totalSteps > 0 && warmupSteps >= 0, "schedule needs totalSteps > 0 and warmupSteps >= 0")
        self.peakLR = peakLR
        self.totalSteps = totalSteps
        self.power = power
        self.warmupSteps = warmupSteps
        self.warmupRatio = warmupRatio
        self.decay = decay
    }

    public func lr(atStep step: Int) -> Double {
        if step < warmupSteps { return peakLR * (warmupRatio + (1 - warmupRatio) * Double(step) / Double(warmupSteps)) }
        switch decay {
        case .poly:
            return peakLR * pow(max(0, 1 - Double(min(step, totalSteps)) / Double(totalSteps)), power)
        case .cosine:
            let progress = min(1, Double(step - warmupSteps) / Double(max(totalSteps - warmupSteps, 1)))
            return peakLR * 0.5 * (1 + cos(Double.pi * progress))
        }
    }
}
