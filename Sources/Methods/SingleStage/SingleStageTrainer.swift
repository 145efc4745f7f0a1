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
    /// How the CAM head's patch scores become image logits: `average` (global average of the
    /// patch scores, the AReAM/MCTformer head the multi-stage classifier uses) or `max` (ToCo's and
    /// FSR's `top_classifier`: global max pooling of the tokens per channel, then the 1x1
    /// classifier; `MaxPooledClassifier`).
    public var classifierPooling = ClassifierPooling.average
    /// Weight of the class-token head's classification loss (ToCo and FSR have none: 0).
    public var classTokenWeight = 1.0
    /// ToCo's and FSR's auxiliary CAM head: a max-pooled classifier of its own on the un-normed
    /// output of block `auxLayer` counted from the end (their -3; 0 = off), trained with weight
    /// `auxWeight`. Its CAM gives the PTC labels (`PatchTokenContrast.camTokenLabels` with
    /// `auxHigh` / `auxLow`, the thresholds of the online pseudo labels as in FSR's code) and,
    /// with FSR, the uncertainty that picks the masked tokens (FSR's `mask_generator(aux_cam)`).
    public var auxLayer = 0
    public var auxWeight = 1.0
    public var auxHigh = 0.7
    public var auxLow = 0.25
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
        case classifierPooling = "classifier_pooling", classTokenWeight = "class_token_weight"
        case auxLayer = "aux_layer", auxWeight = "aux_weight", auxHigh = "aux_high", auxLow = "aux_low"
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
        if !(classTokenWeight >= 0) { throw fail("class_token_weight must be >= 0") }
        if auxLayer > 0 { throw fail("aux_layer \(auxLayer) must count blocks from the end (-1 = the last block) or be 0 (off)") }
        if !(auxWeight >= 0) { throw fail("aux_weight must be >= 0") }
        if !(auxLow < auxHigh && auxLow >= 0 && auxHigh <= 1) { throw fail("aux_low \(auxLow) must be below aux_high \(auxHigh), both in [0, 1]") }
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

/// The pooling of `SingleStageSettings.classifierPooling`.
public enum ClassifierPooling: String, ParameterChoice, Sendable {
    case average, max
}

/// Single-stage WSSS training (the ToCo/FSR frame): one ViT with its classification heads and the
/// segmentation decoder, trained jointly with
/// - classification: multi-label soft margin on the CAM head (average- or max-pooled) and, with
///   weight `classTokenWeight`, the class-token head (every step);
/// - with `auxLayer`: the auxiliary max-pooled CAM head on an earlier block (weight `auxWeight`);
/// - segmentation: pixel cross-entropy (255 ignored) on online pseudo labels that the caller
///   makes from the current CAMs (no gradient through them), weight `segWeight`, after
///   `segWarmupSteps`;
/// - with `ptcWeight` > 0: ToCo's patch token contrast on the last layer's patch tokens, from the
///   first step, under the auxiliary CAM's token labels (without it, the online pseudo labels
///   brought to the token grid);
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
        /// The auxiliary head's classification loss (0 while off).
        public var auxLoss: Double
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
    /// The auxiliary CAM head's weight [C, D] ("aux_classifier.weight"; nil while off) and the
    /// index of the hidden state it reads (block depth + auxLayer's output).
    public let auxHead: ParameterOf<Float>?
    public let auxHiddenIndex: Int?
    let camHead: (name: String, value: Tensor, grad: Tensor)
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
        let depth = network.backbone.config.depth, C = network.backbone.config.numClasses, D = network.backbone.config.dim
        if settings.auxLayer != 0 {
            guard settings.auxLayer >= -depth else {
                throw EngineError("aux_layer \(settings.auxLayer) reaches before the first of the backbone's \(depth) blocks")
            }
            let aux = ParameterOf<Float>("aux_classifier.weight", [C, D])
            var initRNG = SplitMix64(seed: seed ^ 0xA0C5_0003)
            aux.value.fillTruncatedNormal(std: 0.02, rng: &initRNG)  // as the ViT's CAM head
            auxHead = aux
            auxHiddenIndex = depth + settings.auxLayer + 1
        } else {
            auxHead = nil
            auxHiddenIndex = nil
        }
        guard let cam = network.backbone.parameters.first(where: { $0.name == "cam_head.weight" }) else {
            throw EngineError("the backbone has no CAM head")
        }
        camHead = cam
        // Without its loss the class-token head would only decay: it stays out of the optimiser.
        trained = network.parameters.filter {
            !network.backbone.isFrozen($0.name) && !(settings.classTokenWeight == 0 && $0.name.hasPrefix("cls_head."))
        } + fsrParams
            + (auxHead.map { [($0.name, $0.value, $0.grad)] } ?? [])
        let groups = [
            ParameterGroup(name: "backbone_decay", lrMultiplier: settings.optimizer.backboneLRMultiplier, weightDecay: settings.optimizer.weightDecay),
            ParameterGroup(name: "backbone_no_decay", lrMultiplier: settings.optimizer.backboneLRMultiplier, weightDecay: 0),
            ParameterGroup(name: "head_decay", lrMultiplier: 1, weightDecay: settings.optimizer.weightDecay),
            ParameterGroup(name: "head_no_decay", lrMultiplier: 1, weightDecay: 0),
        ]
        // FSR's aggregation blocks live inside the reference's encoder and train at its rate; the
        // projector trains with the heads.
        let headPrefixes = ParameterGrouping.headPrefixes + ["decoder.", "fsr.projector.", "aux_classifier."]
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
    /// only called while segmentation is on (or PTC without the auxiliary head). `validTokens`
    /// [B, gridH * gridW] marks the tokens that show the image rather than padding (nil: all);
    /// the auxiliary CAM's token labels are 255 elsewhere. Throws, naming the step, on a
    /// non-finite loss or gradient; the weights are then unchanged.
    @discardableResult
    public func trainStep(view: Tensor, secondView: Tensor?, labels: UnsafePointer<Float>, validTokens: [Bool]? = nil,
                          pseudoLabels: (ViTActivations) throws -> [UInt8]) throws -> StepResult {
        let backbone = network.backbone
        let B = view.shape[0], Hs = view.shape[1], Ws = view.shape[2], C = backbone.config.numClasses
        let K = network.numClasses
        if settings.fsr { precondition(secondView?.shape == view.shape, "FSR needs a second view of the same shape") }
        for p in trained { p.grad.zero() }

        // Classification (+ segmentation) on the unmasked view.
        let a = backbone.forward(images: view, training: true, reuse: acts)
        acts = a
        let D = backbone.config.dim, N = a.patches
        let gCam = Tensor(shape: [B, C]), gCls = Tensor(shape: [B, C])
        var dFeatures: Tensor? = nil
        let camLoss: Double
        switch settings.classifierPooling {
        case .average:
            camLoss = ClassificationLoss.multilabelSoftMargin(logits: a.camLogits.data, labels: labels, batch: B, classes: C, gradient: gCam.data)
        case .max:
            let pooled = MaxPooledClassifier.forward(tokens: a.features.data, batch: B, patches: N, dim: D, weight: camHead.value.data, classes: C)
            camLoss = ClassificationLoss.multilabelSoftMargin(logits: pooled.logits.data, labels: labels, batch: B, classes: C, gradient: gCam.data)
            let dF = Tensor(shape: [B, N, D])
            MaxPooledClassifier.backward(pooled, dLogits: gCam.data, weight: camHead.value.data, dWeight: camHead.grad.data, dTokens: dF.data)
            dFeatures = dF
        }
        let clsLoss = settings.classTokenWeight > 0
            ? ClassificationLoss.multilabelSoftMargin(logits: a.clsLogits.data, labels: labels, batch: B, classes: C, gradient: gCls.data,
                                                      scale: settings.classTokenWeight)
            : 0
        // The auxiliary head on block depth + auxLayer's output (its patch rows; row 0 is the class token).
        var auxLoss = 0.0, auxScores: Tensor? = nil, dHidden: [Int: Tensor] = [:]
        if let auxHead, let index = auxHiddenIndex {
            let T = a.tokenCount, hidden = a.hiddenStates[index].data + D
            let pooled = MaxPooledClassifier.forward(tokens: hidden, batch: B, patches: N, dim: D, imageStride: T * D,
                                                     weight: auxHead.value.data, classes: C)
            let gAux = Tensor(shape: [B, C])
            auxLoss = ClassificationLoss.multilabelSoftMargin(logits: pooled.logits.data, labels: labels, batch: B, classes: C, gradient: gAux.data,
                                                              scale: settings.auxWeight)
            let dH = Tensor(shape: [B, T, D])
            MaxPooledClassifier.backward(pooled, dLogits: gAux.data, weight: auxHead.value.data, dWeight: auxHead.grad.data, dTokens: dH.data + D)
            dHidden[index] = dH
            // Its CAM is read only by PTC's labels and FSR's masking.
            if settings.ptcWeight > 0 || settings.fsr {
                auxScores = MaxPooledClassifier.patchScores(tokens: hidden, batch: B, patches: N, dim: D, imageStride: T * D,
                                                            weight: auxHead.value.data, classes: C)
            }
        }
        var segLoss = 0.0, labelled = 0.0, ptcLoss = 0.0
        let segmenting = segmentationActive && settings.segWeight > 0
        var pseudo: [UInt8] = []
        if segmenting || (settings.ptcWeight > 0 && auxScores == nil) {
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
                let dF = dFeatures ?? Tensor(shape: [B, h * w, D])
                network.decoder.backward(dec, dLogits: dSmall, dFeatures: dF)
                dFeatures = dF
            }
        }
        if settings.ptcWeight > 0 {
            // ToCo's and FSR's labels come from the auxiliary CAM (less smoothed than the last
            // layer's); without that head, from the online pseudo labels on the token grid.
            let tokenLabels = auxScores.map {
                PatchTokenContrast.camTokenLabels(patchScores: $0.data, classLabels: labels, batch: B, patches: N, classes: C,
                                                  high: Float(settings.auxHigh), low: Float(settings.auxLow), valid: validTokens)
            } ?? PatchTokenContrast.tokenLabels(pseudo, batch: B, height: Hs, width: Ws, gridH: a.gridH, gridW: a.gridW)
            let dF = dFeatures ?? Tensor(shape: [B, N, D])
            ptcLoss = tokenLabels.withUnsafeBufferPointer {
                PatchTokenContrast.loss(tokens: a.features.data, labels: $0.baseAddress!, batch: B, patches: N, dim: D,
                                        dTokens: dF.data, weight: Float(settings.ptcWeight))
            }
            dFeatures = dF
        }
        backbone.backward(a, ViTOutputGrads(camLogits: settings.classifierPooling == .average ? gCam : nil,
                                            clsLogits: settings.classTokenWeight > 0 ? gCls : nil, features: dFeatures, hiddenStates: dHidden))

        var fsrClass = 0.0, fsrPatch = 0.0, maskedFraction = 0.0
        var centreUpdates: (() -> Void)? = nil
        if settings.fsr, let head, let teacher, let teacherHead, let secondView, let classCentre, let patchCentre {
            let O = head.config.outDim
            let total = max(settings.optimizer.totalSteps, 1)
            let strategy: UncertaintyMasking.Strategy = Double(step) < Double(total) * settings.randomMaskFraction ? .random : .uncertain
            // FSR's code measures uncertainty on the auxiliary CAM where there is one.
            let cam = UncertaintyMasking.normalisedCAM(patchScores: (auxScores ?? a.patchScores).data, labels: labels, batch: B, patches: N, classes: C)
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

        // The classification term as reported: the CAM head's loss plus the class token's at its weight.
        let classification = camLoss + settings.classTokenWeight * clsLoss
        let loss = classification + settings.auxWeight * auxLoss + settings.segWeight * segLoss + settings.ptcWeight * ptcLoss
            + settings.fsrClassWeight * fsrClass + settings.fsrPatchWeight * fsrPatch
        guard loss.isFinite else {
            throw TrainingError("loss became \(loss.isNaN ? "NaN" : "infinite") at optimiser step \(step + 1) "
                                + "(cls \(classification), aux \(auxLoss), seg \(segLoss), ptc \(ptcLoss), fsr class \(fsrClass), fsr patch \(fsrPatch))")
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
        return StepResult(loss: loss, clsLoss: classification, segLoss: segLoss, ptcLoss: ptcLoss, auxLoss: auxLoss, fsrClassLoss: fsrClass, fsrPatchLoss: fsrPatch,
                          labelledFraction: labelled, maskedFraction: maskedFraction, gradNorm: norm, lr: lr)
    }
}
