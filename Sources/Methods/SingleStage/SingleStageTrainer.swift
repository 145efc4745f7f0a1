import Engine
import FSR
import Foundation
import Primitives

/// Everything that defines single-stage training (recorded in its checkpoint). Defaults follow
/// the FSR paper and its reference code (ToCo-based, Jessie459/feature-self-reinforcement).
public struct SingleStageSettings: Codable, Equatable, Sendable {
    /// Learning rate, backbone multiplier, weight decay, clipping and poly schedule; heads,
    /// decoder and FSR head get lr, the backbone lr * backboneLRMultiplier.
    public var optimizer = SegOptimizerSettings()
    /// Weight of the pseudo-label segmentation loss, and the optimiser steps before it starts.
    public var segWeight = 0.1
    public var segWarmupSteps = 0
    /// Weight of ToCo's patch token contrast on the last layer's patch tokens (`PatchTokenContrast`;
    /// ToCo and FSR's code 0.2), on from the first step with the online pseudo labels brought to
    /// the token grid; 0 = off.
    public var ptcWeight = 0.0
    /// Feature self-reinforcement on top of the baseline.
    public var fsr = false
    public var fsrClassWeight = 0.1
    public var fsrPatchWeight = 0.1
    public var maskRatio = 0.4
    /// Patches whose normalised CAM lies strictly between these are uncertain.
    public var uncertainLow = 0.2
    public var uncertainHigh = 0.7
    /// Masking decisions per block x block patches (the reference masks 64 px blocks = 4x4
    /// patches of 16 px; 1 = per token as the paper describes).
    public var maskBlock = 1
    /// Random masking for this fraction of the training steps, uncertainty-guided afterwards.
    public var randomMaskFraction = 0.2
    /// Teacher EMA momentum, raised to 1 along a cosine over training.
    public var teacherMomentum = 0.9995
    /// Teacher temperature warms up linearly from teacherTempWarmup to teacherTemp over this
    /// fraction of the steps (reference: max_iters / 8).
    public var teacherTempWarmup = 0.04
    public var teacherTemp = 0.07
    public var teacherTempWarmupFraction = 0.125
    public var studentTemp = 0.1
    public var centreMomentum = 0.9

    public init() {}

    enum CodingKeys: String, CodingKey {
        case optimizer, segWeight = "seg_weight", segWarmupSteps = "seg_warmup_steps", ptcWeight = "ptc_weight", fsr
        case fsrClassWeight = "fsr_class_weight", fsrPatchWeight = "fsr_patch_weight", maskRatio = "mask_ratio"
        case uncertainLow = "uncertain_low", uncertainHigh = "uncertain_high", maskBlock = "mask_block"
        case randomMaskFraction = "random_mask_fraction", teacherMomentum = "teacher_momentum"
        case teacherTempWarmup = "teacher_temp_warmup", teacherTemp = "teacher_temp"
        case teacherTempWarmupFraction = "teacher_temp_warmup_fraction", studentTemp = "student_temp", centreMomentum = "centre_momentum"
    }

    public func validate() throws {
        func fail(_ s: String) -> EngineError { EngineError("invalid single-stage settings: \(s)") }
        if !(segWeight >= 0) || segWarmupSteps < 0 { throw fail("seg_weight >= 0 and seg_warmup_steps >= 0 needed") }
        if !(ptcWeight >= 0) { throw fail("ptc_weight must be >= 0") }
        if !(maskRatio >= 0 && maskRatio < 1) { throw fail("mask_ratio \(maskRatio) outside [0, 1)") }
        if !(uncertainLow < uncertainHigh) { throw fail("uncertain_low \(uncertainLow) must be below uncertain_high \(uncertainHigh)") }
        if maskBlock < 1 { throw fail("mask_block must be >= 1") }
        if !(randomMaskFraction >= 0 && randomMaskFraction <= 1) { throw fail("random_mask_fraction outside [0, 1]") }
        if !(teacherMomentum >= 0 && teacherMomentum <= 1) { throw fail("teacher_momentum outside [0, 1]") }
        if !(teacherTempWarmup > 0 && teacherTemp > 0 && studentTemp > 0) { throw fail("temperatures must be > 0") }
        if !(teacherTempWarmupFraction >= 0 && teacherTempWarmupFraction <= 1) { throw fail("teacher_temp_warmup_fraction outside [0, 1]") }
        if !(centreMomentum >= 0 && centreMomentum < 1) { throw fail("centre_momentum outside [0, 1)") }
        if !(fsrClassWeight >= 0 && fsrPatchWeight >= 0) { throw fail("FSR weights must be >= 0") }
    }

    /// Teacher temperature at optimiser step `step` (0-based) of `total`.
    public func teacherTemperature(atStep step: Int, total: Int) -> Double {
        let warm = Int((Double(total) * teacherTempWarmupFraction).rounded(.down))
        guard warm > 1, step < warm else { return step < warm ? teacherTempWarmup : teacherTemp }
        return teacherTempWarmup + (teacherTemp - teacherTempWarmup) * Double(step) / Double(warm - 1)
    }

    /// Teacher EMA momentum at step `step`: cosine from teacherMomentum to 1 (DINO's schedule).
    public func momentum(atStep step: Int, total: Int) -> Double {
        guard total > 1 else { return teacherMomentum }
        let progress = Double(min(step, total - 1)) / Double(total - 1)
        return 1 - (1 - teacherMomentum) * (cos(Double.pi * progress) + 1) / 2
    }
}

/// Single-stage WSSS training (the ToCo/FSR frame without ToCo's auxiliary CAM head): one ViT with
/// its classification heads and the segmentation decoder, trained jointly with
/// - classification: multi-label soft margin on both heads (every step);
/// - segmentation: pixel cross-entropy (255 ignored) on online pseudo labels that the caller
///   makes from the current CAMs (no gradient through them), weight `segWeight`, after
///   `segWarmupSteps`;
/// - with `ptcWeight` > 0: ToCo's patch token contrast on the last layer's patch tokens under the
///   same labels on the token grid, from the first step;
/// - with `fsr`: the view's uncertain patch tokens (by its CAM) are masked and passed through
///   the student again; an EMA teacher sees the unmasked view and a second augmented view; the
///   FSR head projects tokens to softmax distributions; cross-entropy between teacher and
///   student on the masked patch tokens (L_u) and between the student's aggregated class token
///   of the masked view and the teacher's of the second view (L_c).
public final class SingleStageTrainer {
    public struct StepResult: Sendable {
        public var loss: Double
        public var clsLoss: Double
        public var segLoss: Double
        /// Patch token contrast (0 while off).
        public var ptcLoss: Double
        public var fsrClassLoss: Double
        public var fsrPatchLoss: Double
        /// Fraction of pseudo-label pixels that are not 255 (0 while segmentation is off).
        public var labelledFraction: Double
        public var maskedFraction: Double
        public var gradNorm: Double
        public var lr: Double
    }

    public static let backboneDecay = 0, backboneNoDecay = 1, headDecay = 2, headNoDecay = 3

    public let network: SegNetwork
    public let settings: SingleStageSettings
    public let head: FSRHead?
    public let teacher: ViT?
    public let teacherHead: FSRHead?
    public let optimizer: AdamW
    public let schedule: SegLRSchedule
    public let ema: ParameterEMA?
    /// Running centres of the teacher's class-token and patch-token logits.
    public let classCentre: Tensor?, patchCentre: Tensor?
    public var step: Int { optimizer.stepCount }
    public var rng: SplitMix64
    let trained: [(name: String, value: Tensor, grad: Tensor)]
    let distilled: [(name: String, value: Tensor, grad: Tensor)]
    let teacherParams: [(name: String, value: Tensor, grad: Tensor)]
    private var acts: ViTActivations?, maskedActs: ViTActivations?, teacherActs1: ViTActivations?, teacherActs2: ViTActivations?

    /// `head` is required exactly when `settings.fsr` (and then the backbone needs a mask token).
    public init(network: SegNetwork, head: FSRHead?, settings: SingleStageSettings, seed: UInt64) throws {
        try settings.validate()
        self.network = network
        self.settings = settings
        self.head = head
        rng = SplitMix64(seed: seed ^ 0xF5F5_0001)
        if settings.fsr {
            guard let head else { throw EngineError("FSR needs its head") }
            guard network.backbone.config.maskToken else { throw EngineError("FSR needs a backbone configured with mask_token") }
            guard head.config.dim == network.backbone.config.dim else {
                throw EngineError("FSR head dim \(head.config.dim) differs from the backbone's \(network.backbone.config.dim)")
            }
        }
        let fsrParams = settings.fsr ? head!.parameters : []
        trained = network.parameters.filter { !network.backbone.isFrozen($0.name) } + fsrParams
        let groups = [
            ParameterGroup(name: "backbone_decay", lrMultiplier: settings.optimizer.backboneLRMultiplier, weightDecay: settings.optimizer.weightDecay),
            ParameterGroup(name: "backbone_no_decay", lrMultiplier: settings.optimizer.backboneLRMultiplier, weightDecay: 0),
            ParameterGroup(name: "head_decay", lrMultiplier: 1, weightDecay: settings.optimizer.weightDecay),
            ParameterGroup(name: "head_no_decay", lrMultiplier: 1, weightDecay: 0),
        ]
        // FSR's aggregation blocks live inside the reference's encoder and train at its rate; the
        // projector trains with the heads.
        let headPrefixes = ParameterGrouping.headPrefixes + ["decoder.", "fsr.projector."]
        optimizer = AdamW(
            settings: .init(lr: settings.optimizer.lr, beta1: settings.optimizer.beta1, beta2: settings.optimizer.beta2, eps: settings.optimizer.eps),
            groups: groups,
            parameters: trained.map { p in
                let isHead = headPrefixes.contains { p.name.hasPrefix($0) }
                let decay = p.value.shape.count > 1 && !["cls_token", "pos_embed", "mask_token", "fsr.aggregate.cls_token"].contains(p.name)
                return OptimizedParameter(name: p.name, count: p.value.count,
                                          group: isHead ? (decay ? Self.headDecay : Self.headNoDecay) : (decay ? Self.backboneDecay : Self.backboneNoDecay))
            })
        schedule = settings.optimizer.schedule
        if settings.fsr, let head {
            // The teacher gets its own copy of a frozen stem: the stem keeps scratch buffers, and the
            // student's backward still needs its stem output while the teacher runs.
            let stem = try network.backbone.stem.map {
                try PretrainedStemOf<Float>(architecture: network.backbone.config.stem, stateDict: network.backbone.stateDict(),
                                            inputNormalization: $0.inputNormalization)
            }
            let t = try ViT(config: network.backbone.config, seed: 0, stem: stem)
            let th = try FSRHead(config: head.config, seed: 0)
            distilled = network.backbone.parameters + head.parameters
            teacherParams = t.parameters + th.parameters
            for (s, d) in zip(distilled, teacherParams) { d.value.copy(from: s.value) }
            ema = ParameterEMA(names: distilled.map(\.name), values: distilled.map { (UnsafePointer($0.value.data), $0.value.count) })
            teacher = t
            teacherHead = th
            classCentre = Tensor(shape: [head.config.outDim])
            patchCentre = Tensor(shape: [head.config.outDim])
        } else {
            distilled = []
            teacherParams = []
            ema = nil
            teacher = nil
            teacherHead = nil
            classCentre = nil
            patchCentre = nil
        }
    }

    /// Whether the segmentation loss is on at the next step.
    public var segmentationActive: Bool { step >= settings.segWarmupSteps }

    /// One step on `view` [B, S, S, 3] with multi-hot labels [B, C]; `secondView` (same shape,
    /// another augmentation of the same images) is required with FSR. `pseudoLabels` gets the
    /// view's forward (CAMs in `patchScores`) and returns labels [B, S, S] in {0...C, 255}; it is
    /// only called while segmentation is on. Throws, naming the step, on a non-finite loss or
    /// gradient; the weights are then unchanged.
    @discardableResult
    public func trainStep(view: Tensor, secondView: Tensor?, labels: UnsafePointer<Float>,
                          pseudoLabels: (ViTActivations) throws -> [UInt8]) throws -> StepResult {
        let backbone = network.backbone
        let B = view.shape[0], Hs = view.shape[1], Ws = view.shape[2], C = backbone.config.numClasses
        let K = network.numClasses
        if settings.fsr { precondition(secondView?.shape == view.shape, "FSR needs a second view of the same shape") }
        for p in trained { p.grad.zero() }

        // Classification (+ segmentation) on the unmasked view.
        let a = backbone.forward(images: view, training: true, reuse: acts)
        acts = a
        let gCam = Tensor(shape: [B, C]), gCls = Tensor(shape: [B, C])
        let camLoss = ClassificationLoss.multilabelSoftMargin(logits: a.camLogits.data, labels: labels, batch: B, classes: C, gradient: gCam.data)
        let clsLoss = ClassificationLoss.multilabelSoftMargin(logits: a.clsLogits.data, labels: labels, batch: B, classes: C, gradient: gCls.data)
        var segLoss = 0.0, labelled = 0.0, ptcLoss = 0.0
        var dFeatures: Tensor? = nil
        let segmenting = segmentationActive && settings.segWeight > 0
        var pseudo: [UInt8] = []
        if segmenting || settings.ptcWeight > 0 {
            pseudo = try pseudoLabels(a)
            precondition(pseudo.count == B * Hs * Ws, "pseudo labels must be [\(B), \(Hs), \(Ws)]")
        }
        if segmenting {
            let h = a.gridH, w = a.gridW
            let dec = network.decoder.forward(features: a.features, image: network.decoder.config.hasDetail ? view : nil,
                                              batch: B, height: h, width: w)
            let (ho, wo) = (dec.outHeight, dec.outWidth)
            let logits = Tensor(shape: [B, Hs, Ws, K])
            Kernels.bilinearResizeForward(out: logits.data, inp: dec.logits.data, batch: B, inHeight: ho, inWidth: wo,
                                          outHeight: Hs, outWidth: Ws, channels: K)
            let dLogits = Tensor(shape: logits.shape)
            let (loss, counted) = pseudo.withUnsafeBufferPointer {
                Kernels.pixelCrossEntropy(logits: logits.data, labels: $0.baseAddress!, pixels: B * Hs * Ws, classes: K,
                                          dLogits: dLogits.data, weight: Float(settings.segWeight))
            }
            labelled = Double(counted) / Double(B * Hs * Ws)
            if counted > 0 {
                segLoss = loss
                let dSmall = Tensor(shape: [B, ho, wo, K])
                Kernels.bilinearResizeBackward(dInp: dSmall.data, dOut: dLogits.data, batch: B, inHeight: ho, inWidth: wo,
                                               outHeight: Hs, outWidth: Ws, channels: K)
                let dF = Tensor(shape: [B, h * w, backbone.config.dim])
                network.decoder.backward(dec, dLogits: dSmall, dFeatures: dF)
                dFeatures = dF
            }
        }
        if settings.ptcWeight > 0 {
            // ToCo takes these labels from an auxiliary CAM of an earlier layer; ours come from the
            // last layer's CAMs, the ones the segmentation loss uses.
            let tokenLabels = PatchTokenContrast.tokenLabels(pseudo, batch: B, height: Hs, width: Ws, gridH: a.gridH, gridW: a.gridW)
            let dF = dFeatures ?? Tensor(shape: [B, a.patches, backbone.config.dim])
            ptcLoss = tokenLabels.withUnsafeBufferPointer {
                PatchTokenContrast.loss(tokens: a.features.data, labels: $0.baseAddress!, batch: B, patches: a.patches, dim: backbone.config.dim,
                                        dTokens: dF.data, weight: Float(settings.ptcWeight))
            }
            dFeatures = dF
        }
        backbone.backward(a, ViTOutputGrads(camLogits: gCam, clsLogits: gCls, features: dFeatures))

        var fsrClass = 0.0, fsrPatch = 0.0, maskedFraction = 0.0
        var centreUpdates: (() -> Void)? = nil
        if settings.fsr, let head, let teacher, let teacherHead, let secondView, let classCentre, let patchCentre {
            let N = a.patches, D = backbone.config.dim, O = head.config.outDim
            let total = max(settings.optimizer.totalSteps, 1)
            let strategy: UncertaintyMasking.Strategy = Double(step) < Double(total) * settings.randomMaskFraction ? .random : .uncertain
            let cam = UncertaintyMasking.normalisedCAM(patchScores: a.patchScores.data, labels: labels, batch: B, patches: N, classes: C)
            let mask = UncertaintyMasking.select(cam: cam, batch: B, gridH: a.gridH, gridW: a.gridW, low: Float(settings.uncertainLow),
                                                 high: Float(settings.uncertainHigh), ratio: settings.maskRatio, block: settings.maskBlock,
                                                 strategy: strategy, rng: &rng)
            let maskedRows = mask.indices.filter { mask[$0] }
            maskedFraction = Double(maskedRows.count) / Double(B * N)
            let maskTensor = Tensor(shape: [B, N])
            for r in maskedRows { maskTensor.data[r] = 1 }

            // Teacher: unmasked view (patch targets) and second view (class-token target).
            let t1 = teacher.forward(images: view, training: false, reuse: teacherActs1)
            let t2 = teacher.forward(images: secondView, training: false, reuse: teacherActs2)
            teacherActs1 = t1
            teacherActs2 = t2
            let tPatch = teacherHead.project(t1.features)                               // [B*N, O]
            let tClass = teacherHead.project(teacherHead.aggregate(patches: t2.features).output)  // [B, O]
            let temperature = Float(settings.teacherTemperature(atStep: step, total: total))

            // Student: masked view; aggregate the unmasked tokens, project it and the masked tokens.
            let m = backbone.forward(images: view, training: true, patchMask: maskTensor, reuse: maskedActs)
            maskedActs = m
            let agg = head.aggregate(patches: m.features, keep: mask.map { !$0 })
            let rows = Tensor(shape: [B + maskedRows.count, D])
            rows.data.update(from: agg.output.data, count: B * D)
            for (i, r) in maskedRows.enumerated() { (rows.data + (B + i) * D).update(from: m.features.data + r * D, count: D) }
            let sProj = head.project(rows)

            let targets = Tensor(shape: [B + maskedRows.count, O])
            SelfDistillation.teacherProbabilities(logits: tClass.output.data, centre: classCentre.data, rows: B, cols: O,
                                                  temperature: temperature, into: targets.data)
            for (i, r) in maskedRows.enumerated() {
                SelfDistillation.teacherProbabilities(logits: tPatch.output.data + r * O, centre: patchCentre.data, rows: 1, cols: O,
                                                      temperature: temperature, into: targets.data + (B + i) * O)
            }
            // L_c: mean over images; L_u: per image mean over its masked tokens, then mean over images.
            var weights = [Float](repeating: 0, count: B + maskedRows.count)
            for b in 0..<B { weights[b] = Float(settings.fsrClassWeight) / Float(B) }
            var perImage = [Int](repeating: 0, count: B)
            for r in maskedRows { perImage[r / N] += 1 }
            for (i, r) in maskedRows.enumerated() { weights[B + i] = Float(settings.fsrPatchWeight) / Float(B * perImage[r / N]) }
            let dProj = Tensor(shape: [B + maskedRows.count, O])
            let studentT = Float(settings.studentTemp)
            weights.withUnsafeBufferPointer { w in
                SelfDistillation.crossEntropy(student: sProj.output.data, teacher: targets.data, rowWeights: w.baseAddress!,
                                              rows: B + maskedRows.count, cols: O, studentTemperature: studentT, dStudent: dProj.data)
            }
            fsrClass = SelfDistillation.crossEntropy(student: sProj.output.data, teacher: targets.data, rowWeights: nil, rows: B, cols: O,
                                                     studentTemperature: studentT) / Double(B)
            if !maskedRows.isEmpty {
                var unit = [Float](repeating: 0, count: maskedRows.count)
                for (i, r) in maskedRows.enumerated() { unit[i] = 1 / Float(B * perImage[r / N]) }
                fsrPatch = unit.withUnsafeBufferPointer {
                    SelfDistillation.crossEntropy(student: sProj.output.data + B * O, teacher: targets.data + B * O, rowWeights: $0.baseAddress!,
                                                  rows: maskedRows.count, cols: O, studentTemperature: studentT)
                }
            }
            let dRows = Tensor(shape: [B + maskedRows.count, D])
            head.projectBackward(sProj, dOut: dProj, dInput: dRows)
            let dMaskedFeatures = Tensor(shape: [B, N, D])
            for (i, r) in maskedRows.enumerated() { (dMaskedFeatures.data + r * D).update(from: dRows.data + (B + i) * D, count: D) }
            head.aggregateBackward(agg, dOut: Tensor(viewOf: dRows, offset: 0, shape: [B, D]), dPatches: dMaskedFeatures)
            backbone.backward(m, ViTOutputGrads(features: dMaskedFeatures))
            let centreM = Float(settings.centreMomentum)
            centreUpdates = {
                SelfDistillation.updateCentre(classCentre.data, rows: tClass.output.data, count: B, cols: O, momentum: centreM)
                SelfDistillation.updateCentre(patchCentre.data, rows: tPatch.output.data, count: B * N, cols: O, momentum: centreM)
            }
        }

        let loss = camLoss + clsLoss + settings.segWeight * segLoss + settings.ptcWeight * ptcLoss
            + settings.fsrClassWeight * fsrClass + settings.fsrPatchWeight * fsrPatch
        guard loss.isFinite else {
            throw TrainingError("loss became \(loss.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1) "
                                + "(cls \(camLoss + clsLoss), seg \(segLoss), ptc \(ptcLoss), fsr class \(fsrClass), fsr patch \(fsrPatch))")
        }
        let norm = GradientTools.clipByGlobalNorm(trained.map { ($0.grad.data, $0.grad.count) }, maxNorm: settings.optimizer.clipGradNorm)
        guard norm.isFinite else {
            throw TrainingError("gradient norm became \(norm.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1) (loss \(loss))")
        }
        let lr = schedule.lr(atStep: step)
        let momentum = settings.momentum(atStep: step, total: max(settings.optimizer.totalSteps, 1))
        optimizer.step(values: trained.map(\.value.data), gradients: trained.map { UnsafePointer($0.grad.data) }, lr: lr)
        centreUpdates?()
        if let ema {
            ema.update(from: distilled.map { UnsafePointer($0.value.data) }, decay: momentum)
            for (index, t) in teacherParams.enumerated() { t.value.data.update(from: ema.average(of: index).baseAddress!, count: t.value.count) }
        }
        return StepResult(loss: loss, clsLoss: camLoss + clsLoss, segLoss: segLoss, ptcLoss: ptcLoss, fsrClassLoss: fsrClass, fsrPatchLoss: fsrPatch,
                          labelledFraction: labelled, maskedFraction: maskedFraction, gradNorm: norm, lr: lr)
    }
}
