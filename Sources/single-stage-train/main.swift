// single-stage-train: one network, classification heads and segmentation decoder, trained from
// image-level labels only with online pseudo labels from its own CAMs (CAM -> PAR -> two
// background scores); method=fsr adds FSR's uncertainty masking and EMA-teacher self-distillation
// (Sources/Methods/SingleStage, Sources/Methods/FSR). Predicts the val split like seg-train.
import ArtifactStore
import Datasets
import Engine
import FSR
import Foundation
import Imaging
import Localization
import Primitives
import SingleStage
import StageKit
import Training

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 kernels and OpenBLAS's thread timeout

enum Method: String, ParameterChoice {
    /// Classification + pseudo-label segmentation.
    case baseline
    /// Adds feature self-reinforcement.
    case fsr
}

/// single-stage-train's own parameters, next to the shared SegmentationParameters.
struct SingleStageParameters: Codable {
    static let rules: [String: ParameterRule] = [
        "seg_weight": .nonNegative, "seg_warmup_epochs": .nonNegative, "ptc_weight": .nonNegative, "class_token_weight": .nonNegative,
        "aux_layer": ParameterRule(max: 0), "aux_weight": .nonNegative, "high_background": .probability,
        "low_background": .probability, "par_iterations": .nonNegative, "fsr_class_weight": .nonNegative,
        "fsr_patch_weight": .nonNegative, "mask_ratio": .probability, "uncertain_low": .probability,
        "uncertain_high": .probability, "mask_block": .atLeast(1), "random_mask_fraction": .probability,
        "teacher_momentum": .probability, "teacher_temp_warmup": .positive, "teacher_temp": .positive,
        "teacher_temp_warmup_fraction": .probability, "student_temp": .positive, "centre_momentum": .probability,
        "aggregation_blocks": .atLeast(1), "projector_hidden": .atLeast(1), "projector_bottleneck": .atLeast(1),
        "projector_out_dim": .atLeast(1),
    ]
    var method = Method.baseline
    /// Segmentation loss weight and the epochs of classification only before it.
    var segWeight = 0.1
    var segWarmupEpochs = 1
    /// ToCo's patch token contrast on the last layer's tokens (ToCo / FSR code: 0.2; labelled by
    /// the auxiliary CAM when aux_layer is set, else by the online pseudo labels); 0 = off.
    var ptcWeight = 0.0
    /// CAM head pooling (`average`, or ToCo/FSR's `max`), the class-token head's loss weight
    /// (ToCo/FSR: 0), and the auxiliary max-pooled CAM head on block `aux_layer` from the end
    /// (ToCo/FSR: -3; 0 = off) with its loss weight; its CAM gives the PTC labels (thresholds
    /// high_background / low_background, as FSR's code uses one pair) and FSR's uncertainty.
    var classifierPooling = ClassifierPooling.average
    var classTokenWeight = 1.0
    var auxLayer = 0
    var auxWeight = 1.0
    /// Online pseudo labels: the two background scores of CAM -> PAR -> labels (FSR code:
    /// high_thre 0.7, low_thre 0.25), as pseudo-label's.
    var highBackground = 0.7
    var lowBackground = 0.25
    var parIterations = 10
    /// FSR (paper / reference defaults; the projector is scaled down from 2048-256-4096).
    var fsrClassWeight = 0.1
    var fsrPatchWeight = 0.1
    var maskRatio = 0.4
    var uncertainLow = 0.2
    var uncertainHigh = 0.7
    var maskBlock = 1
    var randomMaskFraction = 0.2
    var teacherMomentum = 0.9995
    var teacherTempWarmup = 0.04
    var teacherTemp = 0.07
    var teacherTempWarmupFraction = 0.125
    var studentTemp = 0.1
    var centreMomentum = 0.9
    var aggregationBlocks = 2
    var projectorHidden = 512
    var projectorBottleneck = 128
    var projectorOutDim = 1024
    enum CodingKeys: String, CodingKey {
        case method
        case segWeight = "seg_weight", segWarmupEpochs = "seg_warmup_epochs", ptcWeight = "ptc_weight"
        case classifierPooling = "classifier_pooling", classTokenWeight = "class_token_weight", auxLayer = "aux_layer", auxWeight = "aux_weight"
        case highBackground = "high_background", lowBackground = "low_background", parIterations = "par_iterations"
        case fsrClassWeight = "fsr_class_weight", fsrPatchWeight = "fsr_patch_weight", maskRatio = "mask_ratio"
        case uncertainLow = "uncertain_low", uncertainHigh = "uncertain_high", maskBlock = "mask_block"
        case randomMaskFraction = "random_mask_fraction", teacherMomentum = "teacher_momentum"
        case teacherTempWarmup = "teacher_temp_warmup", teacherTemp = "teacher_temp"
        case teacherTempWarmupFraction = "teacher_temp_warmup_fraction", studentTemp = "student_temp"
        case centreMomentum = "centre_momentum", aggregationBlocks = "aggregation_blocks", projectorHidden = "projector_hidden"
        case projectorBottleneck = "projector_bottleneck", projectorOutDim = "projector_out_dim"
    }
}

struct Params: StageParameters {
    static let rules = SegmentationParameters.rules.merging(SingleStageParameters.rules) { first, _ in first }
    /// The network, its optimisation, augmentation and val predictions (as seg-train's).
    var common = SegmentationParameters()
    var own = SingleStageParameters()

    init() {}
    init(from decoder: Decoder) throws {
        common = try SegmentationParameters(from: decoder)
        own = try SingleStageParameters(from: decoder)
    }
    func encode(to encoder: Encoder) throws {
        try common.encode(to: encoder)
        try own.encode(to: encoder)
    }
}

let spec = StageSpec(
    name: "single-stage-train", version: "0.1.0",
    summary: "Trains classification + segmentation from image-level labels with online pseudo labels (baseline or FSR); predicts the val split.",
    inputs: ["dataset"], optionalInputs: ["init", "stem_weights", "vit_weights"], outputs: ["checkpoint", "predictions", "samples"],
    resources: StageResources(threads: 8, memoryMB: 16384, runtimeMinutes: 720))

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params.common, s = ctx.params.own
    try p.validate()
    guard s.segWarmupEpochs >= 0 else { throw StageError("seg_warmup_epochs must be >= 0") }
    guard s.lowBackground < s.highBackground, s.parIterations >= 0 else {
        throw StageError("low_background (\(s.lowBackground)) must be below high_background (\(s.highBackground)) and par_iterations >= 0")
    }
    let augmentation = p.augmentation

    let datasetPath = ctx.input("dataset")
    let dataset = try DatasetReader(path: datasetPath)
    let datasetHash = try ctx.inputContentHashes()["dataset"]!
    let trainSplit = try dataset.split("train"), valSplit = try dataset.split("val")
    // Image-level labels only: the masks of the train split are never read.
    let images = try (0..<trainSplit.count).map { try trainSplit.image($0) }
    let classLabels = try (0..<trainSplit.count).map { try trainSplit.labels($0).map { Float($0 != 0 ? 1 : 0) } }
    guard !images.isEmpty else { throw StoreError(path: datasetPath, "split 'train' is empty") }

    let (backbone, normalization) = try SegmentationBackbone.make(
        initPath: ctx.optionalInput("init"), stemPath: ctx.optionalInput("stem_weights"), vitWeightsPath: ctx.optionalInput("vit_weights"),
        fresh: p.freshBackbone,
        dataset: dataset, maskToken: s.method == .fsr, seed: UInt64(p.seed), log: { ctx.log.warning("\($0)") })
    try p.checkMemory(backbone: backbone.config)
    let size = backbone.config.imageSize
    let (network, decoderConfig) = try p.network(backbone: backbone, classes: dataset.numClasses)

    let stepsPerEpoch = (images.count + p.batchSize - 1) / p.batchSize
    var settings = SingleStageSettings()
    settings.optimizer = p.optimizer(totalSteps: stepsPerEpoch * p.epochs)
    settings.segWeight = s.segWeight
    settings.segWarmupSteps = s.segWarmupEpochs * stepsPerEpoch
    settings.ptcWeight = s.ptcWeight
    settings.classifierPooling = s.classifierPooling
    settings.classTokenWeight = s.classTokenWeight
    settings.auxLayer = s.auxLayer
    settings.auxWeight = s.auxWeight
    settings.auxHigh = s.highBackground
    settings.auxLow = s.lowBackground
    settings.fsr = s.method == .fsr
    settings.fsrClassWeight = s.fsrClassWeight
    settings.fsrPatchWeight = s.fsrPatchWeight
    settings.maskRatio = s.maskRatio
    settings.uncertainLow = s.uncertainLow
    settings.uncertainHigh = s.uncertainHigh
    settings.maskBlock = s.maskBlock
    settings.randomMaskFraction = s.randomMaskFraction
    settings.teacherMomentum = s.teacherMomentum
    settings.teacherTempWarmup = s.teacherTempWarmup
    settings.teacherTemp = s.teacherTemp
    settings.teacherTempWarmupFraction = s.teacherTempWarmupFraction
    settings.studentTemp = s.studentTemp
    settings.centreMomentum = s.centreMomentum
    var confident = ConfidentLabels()
    confident.highBackground = Float(s.highBackground)
    confident.lowBackground = Float(s.lowBackground)
    confident.par.iterations = s.parIterations
    var head: FSRHead? = nil
    if settings.fsr {
        let config = FSRHeadConfig(dim: backbone.config.dim, heads: backbone.config.heads, blocks: s.aggregationBlocks,
                                   mlpRatio: backbone.config.mlpRatio, projectorHidden: s.projectorHidden,
                                   bottleneck: s.projectorBottleneck, outDim: s.projectorOutDim)
        do { head = try FSRHead(config: config, seed: UInt64(p.seed) &+ 2) } catch { throw StageError("FSR head: \(error)") }
        // The reference aggregates with the encoder's own (pretrained) class token as the query.
        let query = head!.parameters.first { $0.name == "fsr.aggregate.cls_token" }!.value
        query.copy(from: backbone.parameters.first { $0.name == "cls_token" }!.value)
    }
    let run: SingleStageRun
    do {
        run = try SingleStageRun(network: network, head: head, settings: settings, confident: confident, images: images,
                                 classLabels: classLabels, augmentation: augmentation, normalization: normalization,
                                 batchSize: p.batchSize, seed: UInt64(p.seed))
    } catch { throw StageError("\(error)") }

    if ctx.optionalInput("init") == nil && p.backbone == .scratch && p.backboneLRMultiplier < 1 {
        // Measured: single stage with a random transformer at lr x 0.1 never left the prior (val mIoU 0.067, all background).
        ctx.log.warning("the transformer starts from random weights but trains at lr x \(p.backboneLRMultiplier) (backbone_lr_mult); without init use backbone_lr_mult=1")
    }
    print("single-stage-train: \(images.count) training images (\(run.summary)), \(valSplit.count) val, \(size) px, " +
          "backbone \(ctx.optionalInput("init") != nil ? "from init" : p.backbone == .pretrained ? "pretrained" : "random") (\(backbone.parameterCount) params), " +
          "decoder \(network.decoder.parameterCount) params, \(settings.optimizer.totalSteps) steps")
    fflush(stdout)

    let session = SegmentationSession(
        name: "single-stage-train", network: network,
        schedule: p.schedule,
        predictor: SegmentationPredictor(network: network, trainSize: size, scales: p.evalScales, flip: p.evalFlip, normalization: normalization),
        valSplit: valSplit)
    try session.train(itemCount: images.count, seed: p.seed,
                      learningRate: { run.trainer.schedule.lr(atStep: max(run.trainer.step - 1, 0)) }) { batch, rng in
        let r = try run.step(batch: batch, rng: &rng)
        let fsr = (settings.auxLayer != 0 ? String(format: " aux %.4f", r.auxLoss) : "")
            + (settings.ptcWeight > 0 ? String(format: " ptc %.4f", r.ptcLoss) : "")
            + (settings.fsr ? String(format: " fsr %.4f/%.4f", r.fsrClassLoss, r.fsrPatchLoss) : "")
        return SegmentationStep(loss: r.loss, note: String(format: "loss %.4f (cls %.4f seg %.4f%@) lr %.2e", r.loss, r.clsLoss, r.segLoss, fsr, r.lr))
    }

    var contents = Checkpoint.Contents(modelConfig: backbone.config, normalization: normalization, classNames: dataset.classNames,
                                       optimizer: try .json(settings.optimizer), augmentation: augmentation, seed: p.seed,
                                       epochsCompleted: p.epochs, stepsCompleted: run.trainer.step)
    contents.attributes["decoder_config"] = try .json(decoderConfig)
    contents.attributes["supervision"] = .text("single_stage")
    contents.attributes["blas"] = .text(blasLine)
    try run.record(into: &contents)
    try session.finish(ctx, contents: contents, classNames: dataset.classNames, datasetHash: datasetHash)
}
