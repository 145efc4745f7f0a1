// classify-train: trains the ViT classifier (CAM head + class-token head) on a dataset
// artifact's image-level labels only -- the masks are never read -- and writes a checkpoint
// artifact (layout in Sources/Engine/Training/Checkpoint.swift).
//
//   classify-train --in dataset=D.h5 [--in init=CKPT.h5] [--in stem_weights=STEM.h5] --out checkpoint=C.h5 [--param key=value ...]
//
// With stem=efficientnet_lite0 (a hybrid ViT) the frozen pretrained stem comes from `stem_weights`
// (Scripts/import_pretrained.py) and is stored in the checkpoint, so later stages need no file.
//
// With `init`, training starts from that checkpoint's weights (fine-tuning, fresh optimiser and
// log); with `resume=true` as well, the optimiser state, EMA, step count and log are restored and
// the run continues from the checkpoint's last epoch up to `epochs` (the cosine schedule is laid
// over the new total, so extending a finished run raises the learning rate again). A run that
// fails -- bad input, or a loss or gradient that turns NaN or infinite -- writes nothing.
import ArtifactStore
import Datasets
import Dispatch
import Engine
import Foundation
import Primitives
import Imaging
import Localization
import AReAM
import ACR
import Training
import StageKit

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 OpenBLAS kernels

/// The training objective: classification losses only, or a paper's term on top (Sources/Methods).
enum InitScheme: String, ParameterChoice {
    case truncNormal = "trunc_normal", xavier
}

enum Method: String, ParameterChoice {
    case baseline
    /// ACR: a second view, its classification losses and the attention consistency of all layers.
    case acr
    /// AReAM: the attention affinity term on the deep layers after a warm-up.
    case areaM
}

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "image_size": .between(1, 4096), "patch_size": .atLeast(1), "depth": .atLeast(1), "dim": .atLeast(1), "heads": .atLeast(1),
        "mlp_ratio": .atLeast(1), "frozen_blocks": .nonNegative, "drop_path_rate": ParameterRule(min: 0, max: 1, maxInclusive: false),
        "epochs": .atLeast(1), "batch_size": .atLeast(1), "lr": .positive, "head_lr_mult": .positive, "weight_decay": .nonNegative,
        "beta1": ParameterRule(min: 0, max: 1, maxInclusive: false), "beta2": ParameterRule(min: 0, max: 1, maxInclusive: false),
        "eps": .positive, "clip_grad_norm": .nonNegative, "warmup_epochs": .nonNegative, "min_lr_factor": .probability,
        "ema_decay": ParameterRule(min: 0, max: 1, maxInclusive: false), "brightness": .nonNegative, "contrast": .nonNegative,
        "saturation": .nonNegative, "scale_min": .positive, "scale_max": .positive, "norm_std": .positive,
        "max_train_images": .nonNegative, "max_val_images": .nonNegative, "threads": .nonNegative, "seed": .nonNegative,
        "high_background": .probability, "low_background": .probability, "aream_loss_weight": .nonNegative,
        "aream_warmup_epochs": .atLeast(-1), "acr_alpha": .nonNegative, "acr_beta": .nonNegative,
    ]
    // Model. The default is a small hybrid ViT: a frozen ImageNet-pretrained EfficientNet-Lite0 stem
    // (stride 8) under 4 transformer blocks of width 128. From a linear patch embedding the same
    // transformer stays at the label prior for hundreds of steps on fashion-scenes (PyTorch too);
    // with the stem it learns from the first epochs (README, "Classifier").
    var imageSize = 64
    var patchSize = 8
    var depth = 4
    var dim = 128
    var heads = 4
    var mlpRatio = 4
    var dropPathRate = 0.0
    /// Fresh weights: "trunc_normal" (the spec's std 0.02 everywhere) or "xavier" (Xavier-uniform
    /// block and patch-embedding matrices; learns much sooner from scratch, see ViTInitialization).
    var initScheme = InitScheme.xavier
    /// "patch" (linear patch embedding) or a frozen pretrained convolutional stem
    /// ("efficientnet_lite0", weights from the `stem_weights` input; patch_size must be its stride 8).
    var stem = "efficientnet_lite0"
    /// The transformer: trained from scratch (on the `stem`), or a pretrained ViT fine-tuned (the
    /// `vit_weights` input, made by `make pretrained`; its shape replaces depth/dim/heads/patch_size).
    var backbone = BackboneSource.scratch
    /// Layer-wise freezing: the embedding and the first n blocks are not trained (the backward
    /// stops above them).
    var frozenBlocks = 0
    // Optimisation.
    var epochs = 6
    var batchSize = 32
    var lr = 1e-3
    var headLRMult = 1.0
    var weightDecay = 0.05
    var beta1 = 0.9
    var beta2 = 0.999
    var eps = 1e-8
    /// Linear warm-up length in epochs (fractions allowed), then cosine decay.
    var warmupEpochs = 1.0
    var minLRFactor = 0.01
    var clipGradNorm = 1.0
    /// EMA of the weights; 0 disables. When enabled, validation is also reported for the EMA weights.
    var emaDecay = 0.0
    // Augmentation.
    var scaleMin = 0.75
    var scaleMax = 1.5
    var flip = true
    var brightness = 0.2
    var contrast = 0.2
    var saturation = 0.2
    var normMean: [Float] = Normalization.imageNet.mean
    var normStd: [Float] = Normalization.imageNet.std
    // Data.
    var trainSplit = "train"
    var valSplit = "val"
    /// Use only the first N images of a split (0 = all), e.g. for a quick CI run.
    var maxTrainImages = 0
    var maxValImages = 0
    // Run.
    var seed = 0
    /// Threads for OpenBLAS and the engine's own loops; 0 = all online cores.
    var threads = 0
    /// With an `init` checkpoint: continue its run (optimiser state, EMA, log) instead of fine-tuning.
    var resume = false
    /// Store the AdamW moments so the run can be resumed (triples the file size).
    var saveOptimizerState = true
    // Training objective: "baseline" (classification losses), "acr" (ACR: a second view, its
    // classification losses and the attention consistency of all layers, weights acr_alpha/acr_beta
    // on the mean L1 terms as the paper's alpha = beta = 100) or "areaM" (AReAM's attention affinity
    // term on the deep layers after a warm-up, AReAMObjective.swift).
    var method = Method.baseline
    var acrView = ConsistencyView.flip
    var acrAlpha = 100.0
    var acrBeta = 100.0
    /// Supervised layers (negative = from the end); empty = from depth * 7 / 12 on (the code's 7-11 of 12).
    var areamLayers: [Int] = []
    /// alpha1 < alpha2: background scores below which a pixel is background / above which its class wins.
    var lowBackground = 0.35
    var highBackground = 0.55
    var areamLossWeight = 0.1
    /// Classification-only epochs before the affinity term starts; -1 = epochs / 6, rounded (the code's 10 of 60).
    var areamWarmupEpochs = -1
    /// Layer weights: "code" (batch-mean entropies, min-max normalised across layers) or "paper" (eq. 8 / 16 per image).
    var areamWeighting = AReAMWeighting.code

    init() {}

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", patchSize = "patch_size", depth, dim, heads, mlpRatio = "mlp_ratio", stem, backbone
        case frozenBlocks = "frozen_blocks"
        case dropPathRate = "drop_path_rate", initScheme = "init_scheme", epochs, batchSize = "batch_size", lr, headLRMult = "head_lr_mult"
        case weightDecay = "weight_decay", beta1, beta2, eps, warmupEpochs = "warmup_epochs"
        case minLRFactor = "min_lr_factor", clipGradNorm = "clip_grad_norm", emaDecay = "ema_decay"
        case scaleMin = "scale_min", scaleMax = "scale_max", flip, brightness, contrast, saturation
        case normMean = "norm_mean", normStd = "norm_std", trainSplit = "train_split", valSplit = "val_split"
        case maxTrainImages = "max_train_images", maxValImages = "max_val_images", seed, threads, resume
        case saveOptimizerState = "save_optimizer_state"
        case method, acrView = "acr_view", acrAlpha = "acr_alpha", acrBeta = "acr_beta"
        case areamLayers = "aream_layers", lowBackground = "low_background"
        case highBackground = "high_background", areamLossWeight = "aream_loss_weight"
        case areamWarmupEpochs = "aream_warmup_epochs", areamWeighting = "aream_weighting"
    }

    /// The parameters that define the training objective (a resumed run must keep them).
    static func definesObjective(_ key: String) -> Bool {
        key == "method" || key.hasPrefix("acr_") || key.hasPrefix("aream_") || key.hasSuffix("_background")
    }

    /// Resolved AReAM warm-up in epochs.
    var areamWarmup: Int { areamWarmupEpochs >= 0 ? areamWarmupEpochs : Int((Double(epochs) / 6).rounded()) }

    var augmentation: AugmentationSettings {
        AugmentationSettings(scaleMin: scaleMin, scaleMax: scaleMax, flip: flip,
                             brightness: brightness, contrast: contrast, saturation: saturation)
    }

    func validate() throws {
        // Single-parameter ranges are the `rules` above (checked before decoding); here what
        // relates parameters to each other.
        guard normMean.count == 3, normStd.count == 3, normStd.allSatisfy({ $0 > 0 }) else {
            throw StageError("norm_mean and norm_std need 3 values each, std > 0")
        }
        do { try augmentation.validate() } catch { throw StageError("\(error)") }
        if method == .areaM {
            guard 0 < lowBackground, lowBackground < highBackground, highBackground < 1 else {
                throw StageError("areaM needs 0 < low_background < high_background < 1, got \(lowBackground) and \(highBackground)")
            }
            guard areamLossWeight >= 0, areamLossWeight.isFinite else { throw StageError("aream_loss_weight must be >= 0, got \(areamLossWeight)") }
            guard areamWarmupEpochs >= -1 else { throw StageError("aream_warmup_epochs must be >= 0 (or -1 for epochs / 6), got \(areamWarmupEpochs)") }
            guard areamWarmup < epochs else {
                throw StageError("aream_warmup_epochs \(areamWarmup) leaves none of the \(epochs) epochs with the affinity term; lower it or raise epochs")
            }
        }
    }

    /// AReAM's objective for a model of `depth` layers trained `stepsPerEpoch` steps an epoch.
    func areaMObjective(depth: Int, stepsPerEpoch: Int) throws -> AReAMObjective {
        let requested = areamLayers.isEmpty ? AReAMObjective.defaultLayers(depth: depth) : areamLayers
        let layers: [Int]
        do { layers = try LayerSelection.resolve(requested, layers: depth, parameter: "aream_layers") } catch { throw StageError("\(error)") }
        return AReAMObjective(labels: AReAMTrainingLabels(lowThreshold: Float(lowBackground), highThreshold: Float(highBackground),
                                                          weighting: areamWeighting),
                              layers: layers, lossWeight: areamLossWeight, warmupSteps: areamWarmup * stepsPerEpoch)
    }

    /// The objective `method` selects (nil for the baseline).
    func objective(depth: Int, stepsPerEpoch: Int) throws -> TrainingObjective? {
        switch method {
        case .acr: return ACRObjective(view: acrView, alpha: acrAlpha, beta: acrBeta)
        case .areaM: return try areaMObjective(depth: depth, stepsPerEpoch: stepsPerEpoch)
        case .baseline: return nil
        }
    }
}

let spec = StageSpec(
    name: "classify-train", version: "1.0.0",
    summary: "Trains a ViT classifier (CAM and class-token heads) on image-level labels; writes a checkpoint.",
    inputs: ["dataset"], optionalInputs: ["init", "stem_weights", "vit_weights"], outputs: ["checkpoint"],
    resources: StageResources(threads: 8, memoryMB: 16384, runtimeMinutes: 720))

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    try p.validate()
    let started = Date()
    if p.threads > 0 {
        setenv("WSSS_ENGINE_THREADS", String(p.threads), 1)  // read lazily by the engine
        EngineInfo.setBlasThreads(p.threads)
    }
    ctx.log.info("\(blasLine); engine threads \(Parallel.threads)")

    let dataset = try DatasetReader(path: ctx.input("dataset"))
    let normalization = Normalization(mean: p.normMean, std: p.normStd)
    var pretrained: PretrainedViTWeights?
    switch (p.backbone, ctx.optionalInput("vit_weights")) {
    case (.pretrained, let path?): pretrained = try PretrainedViTWeights(path: path)
    case (.pretrained, nil): throw StageError("backbone=pretrained needs the weights: pass --in vit_weights=PATH (made by `make pretrained`)")
    case (.scratch, let path?): ctx.log.warning("vit_weights \(path) is not used with backbone=scratch")
    case (.scratch, nil): break
    }
    var config = pretrained?.config(imageSize: p.imageSize, numClasses: dataset.numClasses, dropPathRate: p.dropPathRate)
        ?? ViTConfig(imageSize: p.imageSize, patchSize: p.patchSize, depth: p.depth, dim: p.dim, heads: p.heads,
                     mlpRatio: p.mlpRatio, numClasses: dataset.numClasses, dropPathRate: p.dropPathRate, stem: p.stem)
    do { try config.validate() } catch { throw StageError("\(error)") }
    guard p.frozenBlocks <= config.depth else { throw StageError("frozen_blocks \(p.frozenBlocks) exceeds the model's \(config.depth) blocks") }

    let train = try ClassificationBatcher(split: try dataset.split(p.trainSplit), limit: p.maxTrainImages, size: p.imageSize, normalization: normalization)
    let val = try ClassificationBatcher(split: try dataset.split(p.valSplit), limit: p.maxValImages, size: p.imageSize, normalization: normalization)
    guard train.count > 0 else { throw StageError("\(dataset.path): split '\(p.trainSplit)' has no images") }
    let batch = min(p.batchSize, train.count)
    let stepsPerEpoch = train.count / batch  // the incomplete last batch is dropped (fixed batch shape)

    var settings = OptimizerSettings()
    settings.lr = p.lr
    settings.headLRMultiplier = p.headLRMult
    settings.weightDecay = p.weightDecay
    settings.beta1 = p.beta1
    settings.beta2 = p.beta2
    settings.eps = p.eps
    settings.clipGradNorm = p.clipGradNorm
    settings.totalSteps = p.epochs * stepsPerEpoch
    settings.warmupSteps = min(Int((p.warmupEpochs * Double(stepsPerEpoch)).rounded()), settings.totalSteps)
    settings.minLRFactor = p.minLRFactor
    settings.emaDecay = p.emaDecay

    let (model, initCheckpoint) = try ClassifierSession.makeModel(
        config: config, normalization: normalization, classNames: dataset.classNames, initPath: ctx.optionalInput("init"),
        stemPath: ctx.optionalInput("stem_weights"), pretrained: pretrained, seed: UInt64(p.seed), xavier: p.initScheme == .xavier, log: ctx.log)
    model.frozenBlocks = p.frozenBlocks
    config = model.config
    try MemoryBudget.check(bytes: config.activationBytes(batch: batch, imageSide: config.imageSize), parameter: "batch_size",
                           what: "training batches of \(batch) images at \(config.imageSize) px")
    let trainer = ClassifierTrainer(model: model, settings: settings, objective: try p.objective(depth: config.depth, stepsPerEpoch: stepsPerEpoch))
    let session = ClassifierSession(trainer: trainer, train: train, val: val, batch: batch, seed: p.seed)
    if p.method == .acr { ctx.log.info("method acr: view \(p.acrView), alpha \(p.acrAlpha), beta \(p.acrBeta)") }
    if let areaM = trainer.objective as? AReAMObjective {
        ctx.log.info("areaM: affinity term on layers \(areaM.layers) with weight \(p.areamLossWeight) after \(p.areamWarmup) warm-up epochs, \(p.areamWeighting) weighting, background scores \(p.lowBackground)/\(p.highBackground)")
    }
    if p.resume {
        guard let checkpoint = initCheckpoint else { throw StageError("resume=true needs an init checkpoint: pass --in init=PATH") }
        let current = try ParameterMerge.jsonObject(p)
        try session.resume(from: checkpoint, epochs: p.epochs, objectiveParams: current.filter { Params.definesObjective($0.key) })
        ctx.log.info("resuming at epoch \(session.startEpoch + 1) of \(p.epochs), optimiser step \(trainer.step)")
    }

    ctx.log.info("model: \(model.parameterCount) parameters, \(config.tokens) tokens, \(String(format: "%.2f", model.trainingFLOPs() / 1e9)) GFLOP per training image")
    ctx.log.info("data: \(train.count) train images (\(stepsPerEpoch) steps of \(batch) per epoch), \(val.count) val images, \(dataset.numClasses) classes")

    let augmentation = p.augmentation
    try session.run(epochs: p.epochs, augmentation: augmentation, log: ctx.log)

    // Only a finished run writes a checkpoint; it is renamed into place on commit.
    let writer = try ctx.createArtifact("checkpoint", kind: .checkpoint, formatVersion: Checkpoint.formatVersion)
    var contents = Checkpoint.Contents(modelConfig: config, normalization: normalization, classNames: dataset.classNames,
                                       optimizer: try .json(settings), augmentation: augmentation, seed: p.seed,
                                       epochsCompleted: p.epochs, stepsCompleted: trainer.step)
    contents.attributes = ["method": .text(p.method.rawValue), "train_images": .integer(train.count), "val_images": .integer(val.count),
                           "blas": .text(blasLine)]
    try session.withContents(contents, saveOptimizerState: p.saveOptimizerState) { try Checkpoint.write($0, to: writer.root) }
    try ctx.commitOutputs()
    let finalF1 = session.log.series["val_f1"]?.last ?? .nan
    ctx.log.info("wrote \(ctx.output("checkpoint")): val F1 \(String(format: "%.3f", finalF1)) after \(p.epochs) epochs in \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
}
