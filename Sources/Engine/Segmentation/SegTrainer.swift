import Foundation

/// How the segmentation network is optimised (recorded in its checkpoint).
public struct SegOptimizerSettings: Codable, Equatable, Sendable {
    /// Decoder learning rate; the backbone gets lr * backboneLRMultiplier.
    public var lr: Double = 1e-3
    public var backboneLRMultiplier: Double = 0.1
    public var weightDecay: Double = 0.01
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    /// Maximum global gradient norm; 0 disables clipping.
    public var clipGradNorm: Double = 1
    public var totalSteps: Int = 1
    public var polyPower: Double = 0.9
    /// Linear warm-up from warmupRatio x lr over the first warmupSteps, then `decay`.
    public var warmupSteps: Int = 0
    public var warmupRatio: Double = 0.1
    public var decay = SegLRSchedule.Decay.poly

    public init() {}

    enum CodingKeys: String, CodingKey {
        case lr, backboneLRMultiplier = "backbone_lr_mult", weightDecay = "weight_decay", beta1, beta2, eps
        case clipGradNorm = "clip_grad_norm", totalSteps = "total_steps", polyPower = "poly_power"
        case warmupSteps = "warmup_steps", warmupRatio = "warmup_ratio", decay
    }

    /// Older checkpoints recorded no warm-up or decay: they trained without warm-up, on poly.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        lr = try c.decode(Double.self, forKey: .lr)
        backboneLRMultiplier = try c.decode(Double.self, forKey: .backboneLRMultiplier)
        weightDecay = try c.decode(Double.self, forKey: .weightDecay)
        beta1 = try c.decode(Double.self, forKey: .beta1)
        beta2 = try c.decode(Double.self, forKey: .beta2)
        eps = try c.decode(Double.self, forKey: .eps)
        clipGradNorm = try c.decode(Double.self, forKey: .clipGradNorm)
        totalSteps = try c.decode(Int.self, forKey: .totalSteps)
        polyPower = try c.decode(Double.self, forKey: .polyPower)
        warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 0
        warmupRatio = try c.decodeIfPresent(Double.self, forKey: .warmupRatio) ?? 0.1
        decay = try c.decodeIfPresent(SegLRSchedule.Decay.self, forKey: .decay) ?? .poly
    }

    /// The learning rate per step these settings give.
    public var schedule: SegLRSchedule {
        SegLRSchedule(peakLR: lr, totalSteps: max(totalSteps, 1), power: polyPower, warmupSteps: min(warmupSteps, max(totalSteps, 1)),
                      warmupRatio: warmupRatio, decay: decay)
    }
}

/// One training step of the segmentation network: forward, pixel cross-entropy (255 ignored),
/// backward, gradient clipping, AdamW (backbone / decoder x decay / no decay) on the poly schedule.
/// The ViT's classification heads are not optimised (they get no gradient here).
public final class SegTrainer {
    public struct StepResult: Sendable {
        public var loss: Double
        public var counted: Int
        public var gradNorm: Double
        public var lr: Double
    }

    public static let backboneDecay = 0, backboneNoDecay = 1, decoderDecay = 2, decoderNoDecay = 3

    public let network: SegNetwork
    public let settings: SegOptimizerSettings
    public let optimizer: AdamW
    public let schedule: SegLRSchedule
    public var step: Int { optimizer.stepCount }
    let trained: [(name: String, value: Tensor, grad: Tensor)]
    private var activations: SegNetwork.Activations?

    public init(network: SegNetwork, settings: SegOptimizerSettings) {
        self.network = network
        self.settings = settings
        // Not the classification heads (no gradient here), nor what the backbone's frozenBlocks freezes.
        trained = network.parameters.filter { p in
            !ParameterGrouping.headPrefixes.contains { p.name.hasPrefix($0) } && !network.backbone.isFrozen(p.name)
        }
        let groups = [
            ParameterGroup(name: "backbone_decay", lrMultiplier: settings.backboneLRMultiplier, weightDecay: settings.weightDecay),
            ParameterGroup(name: "backbone_no_decay", lrMultiplier: settings.backboneLRMultiplier, weightDecay: 0),
            ParameterGroup(name: "decoder_decay", lrMultiplier: 1, weightDecay: settings.weightDecay),
            ParameterGroup(name: "decoder_no_decay", lrMultiplier: 1, weightDecay: 0),
        ]
        optimizer = AdamW(
            settings: .init(lr: settings.lr, beta1: settings.beta1, beta2: settings.beta2, eps: settings.eps),
            groups: groups,
            parameters: trained.map { p in
                let decoder = p.name.hasPrefix("decoder.")
                let decay = p.value.shape.count > 1 && p.name != "cls_token" && p.name != "pos_embed"
                let group = decoder ? (decay ? Self.decoderDecay : Self.decoderNoDecay) : (decay ? Self.backboneDecay : Self.backboneNoDecay)
                return OptimizedParameter(name: p.name, count: p.value.count, group: group)
            })
        schedule = settings.schedule
    }

    /// One step on images [B, S, S, 3] and labels [B, S, S] (0...C, 255 ignored). Throws, naming
    /// the step, when the loss or gradient is not finite; the weights are then unchanged.
    @discardableResult
    public func trainStep(images: Tensor, labels: UnsafePointer<UInt8>) throws -> StepResult {
        network.zeroGrad()
        let (loss, counted, acts) = network.loss(images: images, labels: labels, training: true, backward: true, reuse: activations)
        activations = acts
        guard loss.isFinite else {
            throw TrainingError("loss became \(loss.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1)")
        }
        let norm = GradientTools.clipByGlobalNorm(trained.map { ($0.grad.data, $0.grad.count) }, maxNorm: settings.clipGradNorm)
        guard norm.isFinite else {
            throw TrainingError("gradient norm became \(norm.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1) (loss \(loss))")
        }
        let lr = schedule.lr(atStep: step)
        optimizer.step(values: trained.map(\.value.data), gradients: trained.map { UnsafePointer($0.grad.data) }, lr: lr)
        return StepResult(loss: loss, counted: counted, gradNorm: norm, lr: lr)
    }
}
