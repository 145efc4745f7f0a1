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

struct Params: StageParameters {
    var seed = 0
    var method = Method.baseline
    /// Segmentation loss weight and the epochs of classification only before it.
    var segWeight = 0.1
    var segWarmupEpochs = 1
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
    var epochs = 3
    var batchSize = 32
    var lr = 1e-3
    var backboneLRMultiplier = 0.1
    var weightDecay = 0.01
    var clipGradNorm = 1.0
    var polyPower = 0.9
    var scaleMin = 0.75
    var scaleMax = 1.5
    var flip = true
    var colorJitter = 0.2
    var decoderChannels = 64
    var dilations = [1, 2, 3]
    /// Backbone shape when there is no `init` checkpoint (image_size 0: the dataset's image size).
    var imageSize = 0
    var patchSize = 8
    var depth = 4
    var dim = 128
    var heads = 4
    var stem = "efficientnet_lite0"
    var evalScales = [1.0]
    var evalFlip = false
    var valEvery = 1
    var samples = 8

    enum CodingKeys: String, CodingKey {
        case seed, method, epochs, batchSize = "batch_size", lr, backboneLRMultiplier = "backbone_lr_mult"
        case weightDecay = "weight_decay", clipGradNorm = "clip_grad_norm", polyPower = "poly_power"
        case scaleMin = "scale_min", scaleMax = "scale_max", flip, colorJitter = "color_jitter"
        case decoderChannels = "decoder_channels", dilations, imageSize = "image_size", patchSize = "patch_size"
        case depth, dim, heads, stem, evalScales = "eval_scales", evalFlip = "eval_flip", valEvery = "val_every", samples
        case segWeight = "seg_weight", segWarmupEpochs = "seg_warmup_epochs"
        case highBackground = "high_background", lowBackground = "low_background", parIterations = "par_iterations"
        case fsrClassWeight = "fsr_class_weight", fsrPatchWeight = "fsr_patch_weight", maskRatio = "mask_ratio"
        case uncertainLow = "uncertain_low", uncertainHigh = "uncertain_high", maskBlock = "mask_block"
        case randomMaskFraction = "random_mask_fraction", teacherMomentum = "teacher_momentum"
        case teacherTempWarmup = "teacher_temp_warmup", teacherTemp = "teacher_temp"
        case teacherTempWarmupFraction = "teacher_temp_warmup_fraction", studentTemp = "student_temp"
        case centreMomentum = "centre_momentum", aggregationBlocks = "aggregation_blocks", projectorHidden = "projector_hidden"
        case projectorBottleneck = "projector_bottleneck", projectorOutDim = "projector_out_dim"
    }
    init() {}
}

let spec = StageSpec(
    name: "single-stage-train", version: "0.1.0",
    summary: "Trains classification + segmentation from image-level labels with online pseudo labels (baseline or FSR); predicts the val split.",
    inputs: ["dataset"], optionalInputs: ["init", "stem_weights"], outputs: ["checkpoint", "predictions", "samples"])

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    guard p.epochs >= 1, p.batchSize >= 1, p.lr > 0, p.backboneLRMultiplier >= 0, p.decoderChannels >= 1,
          !p.evalScales.isEmpty, p.evalScales.allSatisfy({ $0 > 0 }), p.samples >= 0, p.valEvery >= 0 else {
        throw StageError("epochs, batch_size, decoder_channels must be >= 1, lr > 0, eval_scales non-empty and positive")
    }
    guard p.segWarmupEpochs >= 0 else { throw StageError("seg_warmup_epochs must be >= 0") }
    guard p.lowBackground < p.highBackground, p.parIterations >= 0 else {
        throw StageError("low_background (\(p.lowBackground)) must be below high_background (\(p.highBackground)) and par_iterations >= 0")
    }
    let augmentation = AugmentationSettings(scaleMin: p.scaleMin, scaleMax: p.scaleMax, flip: p.flip,
                                            brightness: p.colorJitter, contrast: p.colorJitter, saturation: p.colorJitter)
    do { try augmentation.validate() } catch { throw StageError("\(error)") }

    let datasetPath = ctx.input("dataset")
    let dataset = try DatasetReader(path: datasetPath)
    let datasetHash = try ctx.inputContentHashes()["dataset"]!
    let trainSplit = try dataset.split("train"), valSplit = try dataset.split("val")
    // Image-level labels only: the masks of the train split are never read.
    let images = try (0..<trainSplit.count).map { try trainSplit.image($0) }
    let classLabels = try (0..<trainSplit.count).map { try trainSplit.labels($0).map { Float($0 != 0 ? 1 : 0) } }
    guard !images.isEmpty else { throw StoreError(path: datasetPath, "split 'train' is empty") }

    let (backbone, normalization) = try SegmentationBackbone.make(
        initPath: ctx.optionalInput("init"), stemPath: ctx.optionalInput("stem_weights"),
        fresh: .init(imageSize: p.imageSize, patchSize: p.patchSize, depth: p.depth, dim: p.dim, heads: p.heads, stem: p.stem),
        dataset: dataset, maskToken: p.method == .fsr, seed: UInt64(p.seed), log: { ctx.log.warning("\($0)") })
    let size = backbone.config.imageSize
    let decoderConfig = SegDecoderConfig(inChannels: backbone.config.dim, channels: p.decoderChannels, dilations: p.dilations,
                                         numClasses: dataset.numClasses + 1)
    let network: SegNetwork
    do {
        network = try SegNetwork(backbone: backbone, decoder: try SegDecoder(config: decoderConfig, seed: UInt64(p.seed) &+ 1))
    } catch { throw StageError("decoder: \(error)") }

    let stepsPerEpoch = (images.count + p.batchSize - 1) / p.batchSize
    var settings = SingleStageSettings()
    settings.optimizer.lr = p.lr
    settings.optimizer.backboneLRMultiplier = p.backboneLRMultiplier
    settings.optimizer.weightDecay = p.weightDecay
    settings.optimizer.clipGradNorm = p.clipGradNorm
    settings.optimizer.polyPower = p.polyPower
    settings.optimizer.totalSteps = stepsPerEpoch * p.epochs
    settings.segWeight = p.segWeight
    settings.segWarmupSteps = p.segWarmupEpochs * stepsPerEpoch
    settings.fsr = p.method == .fsr
    settings.fsrClassWeight = p.fsrClassWeight
    settings.fsrPatchWeight = p.fsrPatchWeight
    settings.maskRatio = p.maskRatio
    settings.uncertainLow = p.uncertainLow
    settings.uncertainHigh = p.uncertainHigh
    settings.maskBlock = p.maskBlock
    settings.randomMaskFraction = p.randomMaskFraction
    settings.teacherMomentum = p.teacherMomentum
    settings.teacherTempWarmup = p.teacherTempWarmup
    settings.teacherTemp = p.teacherTemp
    settings.teacherTempWarmupFraction = p.teacherTempWarmupFraction
    settings.studentTemp = p.studentTemp
    settings.centreMomentum = p.centreMomentum
    var confident = ConfidentLabels()
    confident.highBackground = Float(p.highBackground)
    confident.lowBackground = Float(p.lowBackground)
    confident.par.iterations = p.parIterations
    var head: FSRHead? = nil
    if settings.fsr {
        let config = FSRHeadConfig(dim: backbone.config.dim, heads: backbone.config.heads, blocks: p.aggregationBlocks,
                                   mlpRatio: backbone.config.mlpRatio, projectorHidden: p.projectorHidden,
                                   bottleneck: p.projectorBottleneck, outDim: p.projectorOutDim)
        do { head = try FSRHead(config: config, seed: UInt64(p.seed) &+ 2) } catch { throw StageError("FSR head: \(error)") }
    }
    let run: SingleStageRun
    do {
        run = try SingleStageRun(network: network, head: head, settings: settings, confident: confident, images: images,
                                 classLabels: classLabels, augmentation: augmentation, normalization: normalization,
                                 batchSize: p.batchSize, seed: UInt64(p.seed))
    } catch { throw StageError("\(error)") }

    if ctx.optionalInput("init") == nil && p.backboneLRMultiplier < 1 {
        // Measured: single stage with a random transformer at lr x 0.1 never left the prior (val mIoU 0.067, all background).
        ctx.log.warning("the transformer starts from random weights but trains at lr x \(p.backboneLRMultiplier) (backbone_lr_mult); without init use backbone_lr_mult=1")
    }
    print("single-stage-train: \(images.count) training images (\(run.summary)), \(valSplit.count) val, \(size) px, " +
          "backbone \(ctx.optionalInput("init") == nil ? "random" : "from init") (\(backbone.parameterCount) params), " +
          "decoder \(network.decoder.parameterCount) params, \(settings.optimizer.totalSteps) steps")
    fflush(stdout)

    let session = SegmentationSession(
        name: "single-stage-train", network: network,
        schedule: SegmentationSchedule(epochs: p.epochs, batchSize: p.batchSize, valEvery: p.valEvery, samples: p.samples),
        predictor: SegmentationPredictor(network: network, trainSize: size, scales: p.evalScales, flip: p.evalFlip, normalization: normalization),
        valSplit: valSplit)
    try session.train(itemCount: images.count, seed: p.seed,
                      learningRate: { run.trainer.schedule.lr(atStep: max(run.trainer.step - 1, 0)) }) { batch, rng in
        let r = try run.step(batch: batch, rng: &rng)
        let fsr = settings.fsr ? String(format: " fsr %.4f/%.4f", r.fsrClassLoss, r.fsrPatchLoss) : ""
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
