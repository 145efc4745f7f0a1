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
import Imaging
import Localization
import StageKit

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 OpenBLAS kernels

struct Params: StageParameters {
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
    var initScheme = "xavier"
    /// "patch" (linear patch embedding) or a frozen pretrained convolutional stem
    /// ("efficientnet_lite0", weights from the `stem_weights` input; patch_size must be its stride 8).
    var stem = "efficientnet_lite0"
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
    var method = "baseline"
    var acrView = "flip"
    var acrAlpha = 100.0
    var acrBeta = 100.0
    /// Supervised layers (negative = from the end); empty = from depth * 7 / 12 on (the code's 7-11 of 12).
    var areamLayers: [Int] = []
    /// alpha1 < alpha2: background scores below which a pixel is background / above which its class wins.
    var areamLowThreshold = 0.35
    var areamHighThreshold = 0.55
    var areamLossWeight = 0.1
    /// Classification-only epochs before the affinity term starts; -1 = epochs / 6, rounded (the code's 10 of 60).
    var areamWarmupEpochs = -1
    /// Layer weights: "code" (batch-mean entropies, min-max normalised across layers) or "paper" (eq. 8 / 16 per image).
    var areamWeighting = "code"

    init() {}

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", patchSize = "patch_size", depth, dim, heads, mlpRatio = "mlp_ratio", stem
        case dropPathRate = "drop_path_rate", initScheme = "init_scheme", epochs, batchSize = "batch_size", lr, headLRMult = "head_lr_mult"
        case weightDecay = "weight_decay", beta1, beta2, eps, warmupEpochs = "warmup_epochs"
        case minLRFactor = "min_lr_factor", clipGradNorm = "clip_grad_norm", emaDecay = "ema_decay"
        case scaleMin = "scale_min", scaleMax = "scale_max", flip, brightness, contrast, saturation
        case normMean = "norm_mean", normStd = "norm_std", trainSplit = "train_split", valSplit = "val_split"
        case maxTrainImages = "max_train_images", maxValImages = "max_val_images", seed, threads, resume
        case saveOptimizerState = "save_optimizer_state"
        case method, acrView = "acr_view", acrAlpha = "acr_alpha", acrBeta = "acr_beta"
        case areamLayers = "aream_layers", areamLowThreshold = "aream_low_threshold"
        case areamHighThreshold = "aream_high_threshold", areamLossWeight = "aream_loss_weight"
        case areamWarmupEpochs = "aream_warmup_epochs", areamWeighting = "aream_weighting"
    }

    /// Resolved AReAM warm-up in epochs.
    var areamWarmup: Int { areamWarmupEpochs >= 0 ? areamWarmupEpochs : Int((Double(epochs) / 6).rounded()) }

    var augmentation: AugmentationSettings {
        AugmentationSettings(scaleMin: scaleMin, scaleMax: scaleMax, flip: flip,
                             brightness: brightness, contrast: contrast, saturation: saturation)
    }

    func validate() throws {
        guard epochs >= 1 else { throw StageError("epochs must be >= 1, got \(epochs)") }
        guard batchSize >= 1 else { throw StageError("batch_size must be >= 1, got \(batchSize)") }
        guard lr > 0, lr.isFinite else { throw StageError("lr must be a positive number, got \(lr)") }
        guard headLRMult > 0 else { throw StageError("head_lr_mult must be > 0, got \(headLRMult)") }
        guard weightDecay >= 0 else { throw StageError("weight_decay must be >= 0, got \(weightDecay)") }
        guard (0..<1).contains(beta1), (0..<1).contains(beta2) else { throw StageError("beta1 and beta2 must lie in [0, 1)") }
        guard eps > 0 else { throw StageError("eps must be > 0") }
        guard warmupEpochs >= 0 else { throw StageError("warmup_epochs must be >= 0") }
        guard (0...1).contains(minLRFactor) else { throw StageError("min_lr_factor must lie in [0, 1]") }
        guard clipGradNorm >= 0 else { throw StageError("clip_grad_norm must be >= 0 (0 disables clipping)") }
        guard (0..<1).contains(emaDecay) else { throw StageError("ema_decay must lie in [0, 1) (0 disables the EMA)") }
        guard normMean.count == 3, normStd.count == 3, normStd.allSatisfy({ $0 > 0 }) else {
            throw StageError("norm_mean and norm_std need 3 values each, std > 0")
        }
        guard threads >= 0, maxTrainImages >= 0, maxValImages >= 0 else { throw StageError("threads and max_*_images must be >= 0") }
        do { try augmentation.validate() } catch { throw StageError("\(error)") }
        guard ["trunc_normal", "xavier"].contains(initScheme) else {
            throw StageError("init_scheme must be trunc_normal or xavier, got '\(initScheme)'")
        }
                guard ["baseline", "acr", "areaM"].contains(method) else { throw StageError("method must be baseline, acr or areaM, got '\(method)'") }
        guard ConsistencyView(rawValue: acrView) != nil else {
            throw StageError("acr_view must be one of \(ConsistencyView.allCases.map(\.rawValue)), got '\(acrView)'")
        }
        guard acrAlpha >= 0, acrBeta >= 0, acrAlpha.isFinite, acrBeta.isFinite else { throw StageError("acr_alpha and acr_beta must be finite and >= 0") }
        if method == "areaM" {
            guard 0 < areamLowThreshold, areamLowThreshold < areamHighThreshold, areamHighThreshold < 1 else {
                throw StageError("aream thresholds need 0 < aream_low_threshold < aream_high_threshold < 1, got \(areamLowThreshold) and \(areamHighThreshold)")
            }
            guard areamLossWeight >= 0, areamLossWeight.isFinite else { throw StageError("aream_loss_weight must be >= 0, got \(areamLossWeight)") }
            guard areamWarmupEpochs >= -1 else { throw StageError("aream_warmup_epochs must be >= 0 (or -1 for epochs / 6), got \(areamWarmupEpochs)") }
            guard areamWarmup < epochs else {
                throw StageError("aream_warmup_epochs \(areamWarmup) leaves none of the \(epochs) epochs with the affinity term; lower it or raise epochs")
            }
            guard AReAMWeighting(rawValue: areamWeighting) != nil else {
                throw StageError("aream_weighting must be 'code' or 'paper', got '\(areamWeighting)'")
            }
        }
    }

    /// AReAM's objective for a model of `depth` layers trained `stepsPerEpoch` steps an epoch.
    func areaMObjective(depth: Int, stepsPerEpoch: Int) throws -> AReAMObjective {
        let requested = areamLayers.isEmpty ? AReAMObjective.defaultLayers(depth: depth) : areamLayers
        let layers: [Int]
        do { layers = try LayerSelection.resolve(requested, layers: depth, parameter: "aream_layers") } catch { throw StageError("\(error)") }
        return AReAMObjective(labels: AReAMTrainingLabels(lowThreshold: Float(areamLowThreshold), highThreshold: Float(areamHighThreshold),
                                                          weighting: AReAMWeighting(rawValue: areamWeighting)!),
                              layers: layers, lossWeight: areamLossWeight, warmupSteps: areamWarmup * stepsPerEpoch)
    }

    /// The objective `method` selects (nil for the baseline).
    func objective(depth: Int, stepsPerEpoch: Int) throws -> TrainingObjective? {
        switch method {
        case "acr": return ACRObjective(view: ConsistencyView(rawValue: acrView)!, alpha: acrAlpha, beta: acrBeta)
        case "areaM": return try areaMObjective(depth: depth, stepsPerEpoch: stepsPerEpoch)
        default: return nil
        }
    }
}

/// Reads, augments and batches images of one split. HDF5 reads stay on the calling thread;
/// augmentation runs on the cores. Each image's randomness comes from (seed, epoch, image).
final class Batcher {
    let split: DatasetSplit
    let indices: [Int]
    let labels: [Float]      // [indices.count, C], in `indices` order
    let classes: Int
    let size: Int
    let normalization: Normalization

    init(split: DatasetSplit, limit: Int, size: Int, normalization: Normalization) throws {
        self.split = split
        let count = limit > 0 ? min(limit, split.count) : split.count
        indices = Array(0..<count)
        classes = split.numClasses
        let all = try split.allLabels()
        labels = (0..<(count * classes)).map { Float(all[$0]) }
        self.size = size
        self.normalization = normalization
    }

    var count: Int { indices.count }

    /// Fills `images` [B, S, S, 3] and `batchLabels` [B, C] with items `positions` of `order`.
    func fill(_ positions: ArraySlice<Int>, order: [Int], images: Tensor, batchLabels: UnsafeMutablePointer<Float>,
              augmentation: AugmentationSettings?, seed: UInt64, epoch: Int) throws {
        let sources = try positions.map { try split.image(indices[order[$0]]) }
        let items = Array(positions)
        for (b, position) in items.enumerated() {
            let item = order[position]
            for c in 0..<classes { batchLabels[b * classes + c] = labels[item * classes + c] }
        }
        let plane = size * size * 3
        let out = UncheckedPointer(images.data)
        DispatchQueue.concurrentPerform(iterations: items.count) { b in
            let image = sources[b]
            image.pixels.withUnsafeBufferPointer { pixels in
                let target = out.pointer + b * plane
                if let augmentation {
                    var rng = TrainingRandom(seed: seed, stream: UInt64(epoch), index: UInt64(indices[order[items[b]]]))
                    ImageAugmenter.augment(pixels.baseAddress!, width: image.width, height: image.height, into: target, size: size,
                                           settings: augmentation, normalization: normalization, using: &rng)
                } else {
                    ImageAugmenter.resize(pixels.baseAddress!, width: image.width, height: image.height, into: target, size: size,
                                          normalization: normalization)
                }
            }
        }
    }
}

struct UncheckedPointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    init(_ pointer: UnsafeMutablePointer<Float>) { self.pointer = pointer }
}

/// Per-epoch training log, stored under /log.
struct TrainingLog {
    var series: [String: [Double]] = [:]
    var stepLoss: [Double] = []

    mutating func append(_ key: String, _ value: Double) { series[key, default: []].append(value) }

    static func read(from root: HDF5Group) throws -> TrainingLog {
        var log = TrainingLog()
        guard root.contains("log") else { return log }
        let group = try root.group("log")
        for name in try group.childNames() {
            let values = try group.read(name, as: Double.self).values
            if name == "step_loss" { log.stepLoss = values } else { log.series[name] = values }
        }
        return log
    }

    func write(to root: HDF5Group) throws {
        let group = try root.createGroup("log")
        for (name, values) in series.sorted(by: { $0.key < $1.key }) { try group.write(name, values) }
        try group.write("step_loss", stepLoss)
    }
}

let spec = StageSpec(
    name: "classify-train", version: "1.0.0",
    summary: "Trains a ViT classifier (CAM and class-token heads) on image-level labels; writes a checkpoint.",
    inputs: ["dataset"], optionalInputs: ["init", "stem_weights"], outputs: ["checkpoint"])

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
    var config = ViTConfig(imageSize: p.imageSize, patchSize: p.patchSize, depth: p.depth, dim: p.dim, heads: p.heads,
                           mlpRatio: p.mlpRatio, numClasses: dataset.numClasses, dropPathRate: p.dropPathRate, stem: p.stem)
    do { try config.validate() } catch { throw StageError("\(error)") }

    let train = try Batcher(split: try dataset.split(p.trainSplit), limit: p.maxTrainImages, size: p.imageSize, normalization: normalization)
    let val = try Batcher(split: try dataset.split(p.valSplit), limit: p.maxValImages, size: p.imageSize, normalization: normalization)
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

    // Model: fresh, or from `init`.
    let model: ViT
    var log = TrainingLog()
    var startEpoch = 0
    var initCheckpoint: LoadedCheckpoint?
    if let initPath = ctx.optionalInput("init") {
        let checkpoint = try LoadedCheckpoint(path: initPath)
        var expected = checkpoint.config
        expected.dropPathRate = config.dropPathRate
        guard expected == config else {
            throw StageError("\(initPath): the checkpoint's model (\(try String(decoding: JSONEncoder().encode(checkpoint.config), as: UTF8.self))) differs from the one the parameters ask for (\(try String(decoding: JSONEncoder().encode(config), as: UTF8.self))); pass matching model parameters")
        }
        guard checkpoint.classNames == dataset.classNames else {
            throw StageError("\(initPath): the checkpoint's classes \(checkpoint.classNames) differ from the dataset's \(dataset.classNames)")
        }
        guard checkpoint.normalization == normalization || !config.hasPretrainedStem else {
            throw StageError("\(initPath): the checkpoint's stem expects inputs normalised with \(checkpoint.normalization), the parameters give \(normalization); pass matching norm_mean/norm_std")
        }
        model = try checkpoint.makeModel()
        initCheckpoint = checkpoint
        if let stemPath = ctx.optionalInput("stem_weights") {
            ctx.log.warning("stem_weights \(stemPath) is not used: the stem comes from the init checkpoint")
        }
        ctx.log.info("initialised from \(initPath)")
    } else {
        var stem: PretrainedStem?
        if config.hasPretrainedStem {
            guard let stemPath = ctx.optionalInput("stem_weights") else {
                throw StageError("stem=\(p.stem) needs the pretrained stem file: pass --in stem_weights=PATH (made by Scripts/import_pretrained.py)")
            }
            stem = try PretrainedStem.load(path: stemPath, inputNormalization: normalization)
            guard stem!.architecture.name == config.stem else {
                throw StageError("\(stemPath): holds a \(stem!.architecture.name) stem, stem=\(config.stem) was asked for")
            }
            ctx.log.info("stem \(config.stem) from \(stemPath): \(stem!.outChannels) channels at stride \(stem!.architecture.stride), frozen")
        } else if let stemPath = ctx.optionalInput("stem_weights") {
            ctx.log.warning("stem_weights \(stemPath) is not used with stem=patch")
        }
        do { model = try ViT(config: config, seed: UInt64(p.seed), stem: stem) } catch { throw StageError("\(error)") }
        if p.initScheme == "xavier" { ViTInitialization.xavierUniform(model, seed: UInt64(p.seed)) }
    }
    config = model.config
    let trainer = ClassifierTrainer(model: model, settings: settings, objective: try p.objective(depth: config.depth, stepsPerEpoch: stepsPerEpoch))
    if p.method == "acr" { ctx.log.info("method acr: view \(p.acrView), alpha \(p.acrAlpha), beta \(p.acrBeta)") }
    if let areaM = trainer.objective as? AReAMObjective {
        ctx.log.info("areaM: affinity term on layers \(areaM.layers) with weight \(p.areamLossWeight) after \(p.areamWarmup) warm-up epochs, \(p.areamWeighting) weighting, thresholds \(p.areamLowThreshold)/\(p.areamHighThreshold)")
    }
    if p.resume {
        guard let checkpoint = initCheckpoint else { throw StageError("resume=true needs an init checkpoint: pass --in init=PATH") }
        guard checkpoint.hasOptimizerState else {
            throw StageError("\(checkpoint.path): has no optimiser state to resume from (it was written with save_optimizer_state=false)")
        }
        // The schedule's length follows `epochs`, which a resumed run may extend; all else must match.
        var stored = try Checkpoint.readJSON(checkpoint.reader.root, "optimizer", as: OptimizerSettings.self)
        stored.totalSteps = settings.totalSteps
        stored.warmupSteps = settings.warmupSteps
        guard stored == settings else {
            throw StageError("\(checkpoint.path): resuming needs the same optimiser settings and schedule; the checkpoint has \(stored), the parameters give \(settings)")
        }
        let optimizerGroup = try checkpoint.reader.root.group("optimizer")
        let moments = try model.parameters.map { param -> (m: [Float], v: [Float]) in
            (try optimizerGroup.read("m/\(param.name)", as: Float.self).values, try optimizerGroup.read("v/\(param.name)", as: Float.self).values)
        }
        do {
            try trainer.optimizer.restore(stepCount: Int(try optimizerGroup.int64Attribute("step")), moments: moments)
        } catch { throw StageError("\(checkpoint.path): \(error)") }
        if let ema = trainer.ema {
            let averages = try checkpoint.tensors("ema_weights")
            for (index, name) in ema.names.enumerated() {
                guard let values = averages[name]?.values, values.count == ema.counts[index] else {
                    throw StageError("\(checkpoint.path): EMA weights lack '\(name)'")
                }
                ema.load(index, from: values)
            }
        }
        // The objective's per-epoch terms continue the stored log, so it must be the same one.
        let storedParams = (try? JSONSerialization.jsonObject(with: Data(checkpoint.reader.provenance.paramsJSON.utf8))) as? [String: Any] ?? [:]
        let currentParams = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(p))) as? [String: Any] ?? [:]
        let objectiveKeys = currentParams.keys.filter { $0 == "method" || $0.hasPrefix("acr_") || $0.hasPrefix("aream_") }.sorted()
        func shown(_ params: [String: Any]) -> String {
            objectiveKeys.map { "\($0)=\(params[$0].map { "\($0)" } ?? (($0 == "method") ? "baseline" : "-"))" }.joined(separator: " ")
        }
        let storedMethod = storedParams["method"] as? String ?? "baseline"
        let sameObjective = storedMethod == p.method && (p.method == "baseline" || objectiveKeys.allSatisfy { key in
            guard let stored = storedParams[key] as? NSObject, let current = currentParams[key] as? NSObject else { return false }
            return stored.isEqual(current)
        })
        guard sameObjective else {
            throw StageError("\(checkpoint.path): resuming needs the same training objective; the checkpoint was trained with \(shown(storedParams)), the parameters give \(shown(currentParams))")
        }
        log = try TrainingLog.read(from: checkpoint.reader.root)
        startEpoch = try checkpoint.int("epochs_completed")
        guard startEpoch < p.epochs else {
            throw StageError("\(checkpoint.path): already trained for \(startEpoch) epochs; raise epochs above that to resume")
        }
        ctx.log.info("resuming at epoch \(startEpoch + 1) of \(p.epochs), optimiser step \(trainer.step)")
    }

    ctx.log.info("model: \(model.parameterCount) parameters, \(config.tokens) tokens, \(String(format: "%.2f", model.trainingFLOPs() / 1e9)) GFLOP per training image")
    ctx.log.info("data: \(train.count) train images (\(stepsPerEpoch) steps of \(batch) per epoch), \(val.count) val images, \(dataset.numClasses) classes")

    let classes = config.numClasses
    let images = Tensor(shape: [batch, p.imageSize, p.imageSize, 3])
    var batchLabels = [Float](repeating: 0, count: batch * classes)
    var batchScores = [Float](repeating: 0, count: batch * classes)
    let evalBatch = min(batch, max(val.count, 1))
    let evalImages = Tensor(shape: [evalBatch, p.imageSize, p.imageSize, 3])

    /// Probabilities for every image of a split (no augmentation), then metrics.
    func evaluate(_ data: Batcher) throws -> MultiLabelMetrics {
        var scores = [Float](repeating: 0, count: data.count * classes)
        var labelsBuffer = [Float](repeating: 0, count: evalBatch * classes)
        let order = Array(0..<data.count)
        var start = 0
        while start < data.count {
            let n = min(evalBatch, data.count - start)
            let input = n == evalBatch ? evalImages : Tensor(shape: [n, p.imageSize, p.imageSize, 3])
            try data.fill(order[start..<(start + n)], order: order, images: input, batchLabels: &labelsBuffer,
                          augmentation: nil, seed: 0, epoch: 0)
            scores.withUnsafeMutableBufferPointer { trainer.predict(images: input, into: $0.baseAddress! + start * classes) }
            start += n
        }
        return MultiLabelMetrics.compute(scores: scores, labels: data.labels, classes: classes)
    }

    let totalImages = (p.epochs - startEpoch) * stepsPerEpoch * batch
    let progress = ProgressReporter("classify-train", total: totalImages, unit: "img")
    let augmentation = p.augmentation
    for epoch in startEpoch..<p.epochs {
        let epochStart = Date()
        var order = Array(0..<train.count)
        var shuffle = TrainingRandom(seed: UInt64(p.seed), stream: UInt64(epoch), index: UInt64.max)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, shuffle.int(in: 0...i)) }
        var lossSum = 0.0, camSum = 0.0, clsSum = 0.0
        var termSums: [String: Double] = [:]
        var seenScores: [Float] = [], seenLabels: [Float] = []
        seenScores.reserveCapacity(stepsPerEpoch * batch * classes)
        for s in 0..<stepsPerEpoch {
            try train.fill(order[(s * batch)..<((s + 1) * batch)], order: order, images: images, batchLabels: &batchLabels,
                           augmentation: augmentation, seed: UInt64(p.seed), epoch: epoch)
            let result: ClassifierTrainer.StepResult
            do {
                result = try batchLabels.withUnsafeBufferPointer { labels in
                    try batchScores.withUnsafeMutableBufferPointer { scores in
                        try trainer.trainStep(images: images, labels: labels.baseAddress!, scores: scores.baseAddress!)
                    }
                }
            } catch let error as TrainingError {
                throw StageError("training diverged: \(error) in epoch \(epoch + 1), batch \(s + 1) of \(stepsPerEpoch); no checkpoint written (lower lr or clip_grad_norm)")
            }
            lossSum += result.loss
            camSum += result.camLoss
            clsSum += result.clsLoss
            for (name, value) in result.terms { termSums[name, default: 0] += value }
            log.stepLoss.append(result.loss)
            seenScores += batchScores
            seenLabels += batchLabels
            progress.advance(by: batch, note: "epoch \(epoch + 1)/\(p.epochs) loss \(String(format: "%.4f", result.loss)) lr \(String(format: "%.2e", result.lr))")
        }
        // Train metrics from the (augmented) batches as they were trained on, at no extra cost.
        let trainMetrics = MultiLabelMetrics.compute(scores: seenScores, labels: seenLabels, classes: classes)
        let valMetrics = val.count > 0 ? try evaluate(val) : nil
        let steps = Double(stepsPerEpoch)
        log.append("epoch_loss", lossSum / steps)
        log.append("epoch_cam_loss", camSum / steps)
        log.append("epoch_cls_loss", clsSum / steps)
        for name in trainer.objective?.termNames ?? [] { log.append("epoch_\(name)", (termSums[name] ?? .nan) / steps) }
        log.append("train_map", trainMetrics.mAP)
        log.append("train_f1", trainMetrics.macroF1)
        log.append("val_map", valMetrics?.mAP ?? .nan)
        log.append("val_f1", valMetrics?.macroF1 ?? .nan)
        log.append("val_micro_f1", valMetrics?.microF1 ?? .nan)
        log.append("lr", trainer.schedule.lr(atStep: max(trainer.step - 1, 0)))
        var line = "epoch \(epoch + 1)/\(p.epochs): loss \(String(format: "%.4f", lossSum / steps))"
        if let names = trainer.objective?.termNames {
            line += " (" + names.map { "\($0) \(String(format: "%.4g", (termSums[$0] ?? .nan) / steps))" }.joined(separator: ", ") + ")"
        }
        line += ", train mAP \(String(format: "%.3f", trainMetrics.mAP)) F1 \(String(format: "%.3f", trainMetrics.macroF1))"
        if let valMetrics {
            line += ", val mAP \(String(format: "%.3f", valMetrics.mAP)) F1 \(String(format: "%.3f", valMetrics.macroF1)) (micro \(String(format: "%.3f", valMetrics.microF1)))"
        }
        if trainer.ema != nil, val.count > 0 {
            let emaMetrics = try trainer.withEMAWeights { try evaluate(val) }
            log.append("ema_val_map", emaMetrics.mAP)
            log.append("ema_val_f1", emaMetrics.macroF1)
            line += ", EMA val mAP \(String(format: "%.3f", emaMetrics.mAP)) F1 \(String(format: "%.3f", emaMetrics.macroF1))"
        }
        log.append("epoch_seconds", Date().timeIntervalSince(epochStart))
        ctx.log.info("\(line) [\(String(format: "%.1f", Date().timeIntervalSince(epochStart))) s]")
    }

    // Only a finished run writes a checkpoint; the writer renames into place on commit.
    let writer = try ctx.createArtifact("checkpoint", kind: .checkpoint, formatVersion: Checkpoint.formatVersion)
    let root = writer.root
    try Checkpoint.writeJSON(root, "model_config", config)
    try Checkpoint.writeJSON(root, "normalization", normalization)
    try Checkpoint.writeJSON(root, "class_names", dataset.classNames)
    try Checkpoint.writeJSON(root, "optimizer", settings)
    try Checkpoint.writeJSON(root, "augmentation", augmentation)
    try root.setAttribute("seed", Int64(p.seed))
    try root.setAttribute("method", p.method)
    try root.setAttribute("epochs_completed", Int64(p.epochs))
    try root.setAttribute("steps_completed", Int64(trainer.step))
    try root.setAttribute("train_images", Int64(train.count))
    try root.setAttribute("val_images", Int64(val.count))
    try root.setAttribute("blas", blasLine)
    try root.setAttribute("train_seconds", Date().timeIntervalSince(started))
    let params = model.parameters
    // The frozen stem goes into both groups, so either makes a complete model.
    let frozenTensors = model.frozenTensors  // keeps the tensors behind the pointers alive
    let frozen = frozenTensors.map { ($0.name, $0.value.shape, UnsafePointer($0.value.data)) }
    try Checkpoint.writeTensors(try root.createGroup("weights"), params.map { ($0.name, $0.value.shape, UnsafePointer($0.value.data)) } + frozen)
    if let ema = trainer.ema {
        try Checkpoint.writeTensors(try root.createGroup("ema_weights"),
                                    params.enumerated().map { ($1.name, $1.value.shape, ema.average(of: $0).baseAddress!) } + frozen)
    }
    withExtendedLifetime(frozenTensors) {}
    if p.saveOptimizerState {
        let group = try root.createGroup("optimizer")
        try group.setAttribute("step", Int64(trainer.step))
        for (index, param) in params.enumerated() {
            let (m, v) = trainer.optimizer.moments(of: index)
            try group.write("m/\(param.name)", m, shape: param.value.shape)
            try group.write("v/\(param.name)", v, shape: param.value.shape)
        }
    }
    try log.write(to: root)
    try writer.commit()
    let finalF1 = log.series["val_f1"]?.last ?? .nan
    ctx.log.info("wrote \(ctx.output("checkpoint")): val F1 \(String(format: "%.3f", finalF1)) after \(p.epochs) epochs in \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
}
