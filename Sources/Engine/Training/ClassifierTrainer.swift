import Foundation

/// Everything that defines how a classifier is optimised (recorded in checkpoints).
public struct OptimizerSettings: Codable, Equatable, Sendable {
    public var lr: Double = 1e-3
    public var headLRMultiplier: Double = 10
    public var weightDecay: Double = 0.05
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    /// Maximum global gradient norm; 0 disables clipping.
    public var clipGradNorm: Double = 1
    /// Steps of linear warm-up, then cosine decay to lr * minLRFactor at the last step.
    public var warmupSteps: Int = 0
    public var totalSteps: Int = 1
    public var minLRFactor: Double = 0.01
    /// EMA of the weights (0 disables): shadow <- d shadow + (1 - d) weights after each step.
    public var emaDecay: Double = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case lr, headLRMultiplier = "head_lr_mult", weightDecay = "weight_decay", beta1, beta2, eps
        case clipGradNorm = "clip_grad_norm", warmupSteps = "warmup_steps", totalSteps = "total_steps"
        case minLRFactor = "min_lr_factor", emaDecay = "ema_decay"
    }
}

/// One training step of the ViT classifier (both heads, multi-label soft margin on each):
/// forward, loss, backward, gradient clipping, AdamW with parameter groups and the warm-up +
/// cosine schedule, EMA; an optional `TrainingObjective` adds its terms (ACR, ...). Shared by `classify-train` and the benchmark so that the benchmark
/// times exactly what training runs.
public final class ClassifierTrainer {
    public struct StepResult: Sendable {
        public var loss: Double
        public var camLoss: Double
        public var clsLoss: Double
        public var gradNorm: Double
        public var lr: Double
        /// The objective's terms (empty without one).
        public var terms: [String: Double] = [:]
    }

    public let model: ViT
    public let settings: OptimizerSettings
    public let optimizer: AdamW
    public let schedule: WarmupCosineSchedule
    public private(set) var ema: ParameterEMA?
    /// An extra training term (ACR, AReAM, ...); nil trains the classification losses only.
    public let objective: TrainingObjective?
    /// Optimiser steps taken (continues across resumes).
    public var step: Int { optimizer.stepCount }
    private var activations: ViTActivations?
    private var evalActivations: ViTActivations?
    private var gradCam: Tensor?
    private var gradCls: Tensor?

    public init(model: ViT, settings: OptimizerSettings, objective: TrainingObjective? = nil) {
        self.model = model
        self.settings = settings
        self.objective = objective
        let params = model.trainableParameters
        optimizer = AdamW(
            settings: .init(lr: settings.lr, beta1: settings.beta1, beta2: settings.beta2, eps: settings.eps),
            groups: ParameterGrouping.groups(weightDecay: settings.weightDecay, headLRMultiplier: settings.headLRMultiplier),
            parameters: params.map { OptimizedParameter(name: $0.name, count: $0.value.count,
                                                        group: ParameterGrouping.group(name: $0.name, shape: $0.value.shape)) })
        schedule = WarmupCosineSchedule(peakLR: settings.lr, warmupSteps: settings.warmupSteps,
                                        totalSteps: max(settings.totalSteps, 1), minFactor: settings.minLRFactor)
        if settings.emaDecay > 0 {
            ema = ParameterEMA(names: params.map(\.name), values: params.map { (UnsafePointer($0.value.data), $0.value.count) })
        }
    }

    /// One optimisation step on images [B, S, S, 3] (normalised) and multi-hot labels [B, C].
    /// Throws, naming the step, when the loss or the gradient is NaN or infinite; the weights
    /// are then left as they were before the step.
    @discardableResult
    public func trainStep(images: Tensor, labels: UnsafePointer<Float>, scores: UnsafeMutablePointer<Float>? = nil) throws -> StepResult {
        let batch = images.shape[0], classes = model.config.numClasses
        model.zeroGrad()
        let acts = model.forward(images: images, training: true, reuse: activations)
        activations = acts
        if gradCam?.shape[0] != batch {
            gradCam = Tensor(shape: [batch, classes])
            gradCls = Tensor(shape: [batch, classes])
        }
        let gCam = gradCam!, gCls = gradCls!
        gCam.zero()
        gCls.zero()
        let camLoss = ClassificationLoss.multilabelSoftMargin(
            logits: acts.camLogits.data, labels: labels, batch: batch, classes: classes, gradient: gCam.data)
        let clsLoss = ClassificationLoss.multilabelSoftMargin(
            logits: acts.clsLogits.data, labels: labels, batch: batch, classes: classes, gradient: gCls.data)
        var loss = camLoss + clsLoss
        var grads = ViTOutputGrads(camLogits: gCam, clsLogits: gCls)
        var terms: [String: Double] = [:]
        if let objective {
            let extra = try objective.contribute(model: model, images: images, labels: labels, activations: acts, grads: &grads, step: step)
            loss += extra.loss
            terms = extra.terms
        }
        if let scores { Self.scores(cam: acts.camLogits.data, cls: acts.clsLogits.data, count: batch * classes, into: scores) }
        guard loss.isFinite else {
            throw TrainingError("loss became \(loss.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1) (cam \(camLoss), cls \(clsLoss)\(terms.sorted { $0.key < $1.key }.map { ", \($0.key) \($0.value)" }.joined()))")
        }
        model.backward(acts, grads)
        let params = model.trainableParameters
        let norm = GradientTools.clipByGlobalNorm(params.map { ($0.grad.data, $0.grad.count) }, maxNorm: settings.clipGradNorm)
        guard norm.isFinite else {
            throw TrainingError("gradient norm became \(norm.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1) (loss \(loss))")
        }
        let lr = schedule.lr(atStep: step)
        optimizer.step(values: params.map(\.value.data), gradients: params.map { UnsafePointer($0.grad.data) }, lr: lr)
        ema?.update(from: params.map { UnsafePointer($0.value.data) }, decay: settings.emaDecay)
        return StepResult(loss: loss, camLoss: camLoss, clsLoss: clsLoss, gradNorm: norm, lr: lr, terms: terms)
    }

    /// Class probabilities used for metrics: the mean of the two heads' sigmoids.
    public static func scores(cam: UnsafePointer<Float>, cls: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>) {
        for i in 0..<count { out[i] = 0.5 * (ClassificationLoss.sigmoid(cam[i]) + ClassificationLoss.sigmoid(cls[i])) }
    }

    /// Probabilities [B, C] for a batch, without touching gradients or training state.
    public func predict(images: Tensor, into out: UnsafeMutablePointer<Float>) {
        let acts = model.forward(images: images, training: false, reuse: evalActivations)
        evalActivations = acts
        Self.scores(cam: acts.camLogits.data, cls: acts.clsLogits.data, count: acts.camLogits.count, into: out)
    }

    /// Runs `body` with the EMA weights loaded into the model, then restores the live weights.
    public func withEMAWeights<R>(_ body: () throws -> R) rethrows -> R {
        guard let ema else { return try body() }
        let params = model.trainableParameters
        let saved = params.map { Array(UnsafeBufferPointer(start: $0.value.data, count: $0.value.count)) }
        for (index, p) in params.enumerated() {
            p.value.data.update(from: ema.average(of: index).baseAddress!, count: p.value.count)
        }
        defer {
            for (index, p) in params.enumerated() {
                saved[index].withUnsafeBufferPointer { p.value.data.update(from: $0.baseAddress!, count: p.value.count) }
            }
        }
        return try body()
    }
}
