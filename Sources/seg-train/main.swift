import ArtifactStore
import Datasets
import Engine
import Foundation
import Imaging
import Localization
import StageKit

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 kernels and OpenBLAS's thread timeout

// Segmentation checkpoints (kind "checkpoint", format 1), the classifier's layout plus the decoder:
//     /              provenance; model_config (ViTConfig JSON), decoder_config (SegDecoderConfig JSON),
//                    normalization, class_names (C foreground names; the network predicts 0...C),
//                    optimizer (SegOptimizerSettings JSON), augmentation, supervision, seed,
//                    epochs_completed, steps_completed; single stage adds single_stage_method,
//                    single_stage (SingleStageSettings JSON), pseudo_labels (ConfidentLabels JSON),
//                    and with FSR fsr_head_config (FSRHeadConfig JSON)
//     /ema_weights/<name>      single stage FSR: the EMA teacher's ViT weights (no decoder)
//     /fsr_weights/<name>      single stage FSR: the student's FSR head (aggregation + projector)
//     /fsr_ema_weights/<name>  single stage FSR: the teacher's FSR head
//     /weights/<name>  ViT weights under their PyTorch names, decoder weights under decoder.*
//     /log/          per-epoch float64 arrays epoch_loss, val_miou, lr, epoch_seconds; step_loss

struct Params: StageParameters {
    var seed = 0
    /// "labels" (the labels input, 255 ignored), "ground_truth" (the dataset's masks: the fully
    /// supervised bound), "single_stage" (image-level labels only: classification + online
    /// pseudo labels, see SingleStage.swift).
    var supervision = "labels"
    /// Single stage: "baseline" (classification + pseudo-label segmentation) or "fsr" (adds
    /// feature self-reinforcement).
    var singleStageMethod = "baseline"
    /// Single stage: segmentation loss weight and the epochs of classification only before it.
    var segWeight = 0.1
    var segWarmupEpochs = 1
    /// Single stage pseudo labels: the two background scores of CAM -> PAR -> labels (FSR code:
    /// high_thre 0.7, low_thre 0.25).
    var bgHigh = 0.7
    var bgLow = 0.25
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
    /// Fresh backbone only: "patch" or a frozen pretrained stem ("efficientnet_lite0", weights from
    /// the `stem_weights` input; classify-train's default). With `init` the stem comes from the checkpoint.
    var stem = "efficientnet_lite0"
    /// Inference: scales relative to the training size, and horizontal-flip averaging.
    var evalScales = [1.0]
    var evalFlip = false
    /// Validation mIoU after every n-th epoch (0: only after the last one).
    var valEvery = 1
    var samples = 8

    enum CodingKeys: String, CodingKey {
        case seed, supervision, epochs, batchSize = "batch_size", lr, backboneLRMultiplier = "backbone_lr_mult"
        case weightDecay = "weight_decay", clipGradNorm = "clip_grad_norm", polyPower = "poly_power"
        case scaleMin = "scale_min", scaleMax = "scale_max", flip, colorJitter = "color_jitter"
        case decoderChannels = "decoder_channels", dilations, imageSize = "image_size", patchSize = "patch_size"
        case depth, dim, heads, stem, evalScales = "eval_scales", evalFlip = "eval_flip", valEvery = "val_every", samples
        case singleStageMethod = "single_stage_method", segWeight = "seg_weight", segWarmupEpochs = "seg_warmup_epochs"
        case bgHigh = "bg_high", bgLow = "bg_low", parIterations = "par_iterations"
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
    name: "seg-train", version: "0.1.0",
    summary: "Trains a segmentation network (ViT + ASPP-lite decoder) on label maps, ground truth, or single stage from image-level labels (baseline or FSR); predicts the val split.",
    inputs: ["dataset"], optionalInputs: ["init", "labels", "stem_weights"], outputs: ["checkpoint", "predictions", "samples"])

/// The parts of a classifier checkpoint the backbone starts from (layout of classify-train's checkpoints).
func jsonString<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// Probabilities [h, w, K] of one batch element, averaged over scales and flips, at (height, width).
struct Predictor {
    let network: SegNetwork
    let trainSize: Int
    let scales: [Double]
    let flip: Bool
    let normalization: Normalization

    /// Label maps (argmax) of images, each at its own resolution.
    func predict(_ images: [RGBImage]) -> [[UInt8]] {
        let K = network.numClasses, B = images.count
        var probs = images.map { [Float](repeating: 0, count: $0.width * $0.height * K) }
        let p = network.backbone.config.patchSize
        for scale in scales {
            let size = max(p, Int((Double(trainSize) * scale / Double(p)).rounded()) * p)
            let input = Tensor(shape: [B, size, size, 3])
            for (b, image) in images.enumerated() {
                image.pixels.withUnsafeBufferPointer {
                    ImageAugmenter.resize($0.baseAddress!, width: image.width, height: image.height,
                                          into: input.data + b * size * size * 3, size: size, normalization: normalization)
                }
            }
            for flipped in flip ? [false, true] : [false] {
                if flipped { Self.flipHorizontally(input) }
                let logits = network.forward(images: input, training: false).logits
                if flipped { Self.flipHorizontally(logits); Self.flipHorizontally(input) }
                Self.softmaxRows(logits.data, rows: logits.count / K, classes: K)
                for (b, image) in images.enumerated() {
                    let resized = Tensor(shape: [1, image.height, image.width, K])
                    Kernels.bilinearResizeForward(out: resized.data, inp: logits.data + b * size * size * K, batch: 1,
                                                  inHeight: size, inWidth: size, outHeight: image.height, outWidth: image.width, channels: K)
                    probs[b].withUnsafeMutableBufferPointer { dst in
                        for i in 0..<resized.count { dst[i] += resized.data[i] }
                    }
                }
            }
        }
        return probs.map { values in
            values.withUnsafeBufferPointer { v in
                (0..<(v.count / K)).map { i -> UInt8 in
                    var best = 0
                    for k in 1..<K where v[i * K + k] > v[i * K + best] { best = k }
                    return UInt8(best)
                }
            }
        }
    }

    static func flipHorizontally(_ t: Tensor) {
        let B = t.shape[0], H = t.shape[1], W = t.shape[2], C = t.shape[3]
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: C)
        defer { tmp.deallocate() }
        for row in 0..<(B * H) {
            let r = t.data + row * W * C
            for x in 0..<(W / 2) {
                let a = r + x * C, b = r + (W - 1 - x) * C
                tmp.update(from: a, count: C)
                a.update(from: b, count: C)
                b.update(from: tmp, count: C)
            }
        }
    }

    static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, classes K: Int) {
        for r in 0..<rows {
            let z = p + r * K
            var m = z[0]
            for k in 1..<K { m = max(m, z[k]) }
            var s: Float = 0
            for k in 0..<K { z[k] = expf(z[k] - m); s += z[k] }
            for k in 0..<K { z[k] /= s }
        }
    }
}

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    switch p.supervision {
    case "labels", "ground_truth": break
    case "single_stage":
        guard ["baseline", "fsr"].contains(p.singleStageMethod) else {
            throw StageError("unknown single_stage_method '\(p.singleStageMethod)' (known: baseline, fsr)")
        }
    default:
        throw StageError("unknown supervision '\(p.supervision)' (known: labels, ground_truth, single_stage)")
    }
    guard p.epochs >= 1, p.batchSize >= 1, p.lr > 0, p.backboneLRMultiplier >= 0, p.decoderChannels >= 1,
          !p.evalScales.isEmpty, p.evalScales.allSatisfy({ $0 > 0 }), p.samples >= 0, p.valEvery >= 0 else {
        throw StageError("epochs, batch_size, decoder_channels must be >= 1, lr > 0, eval_scales non-empty and positive")
    }
    let augmentation = AugmentationSettings(scaleMin: p.scaleMin, scaleMax: p.scaleMax, flip: p.flip,
                                            brightness: p.colorJitter, contrast: p.colorJitter, saturation: p.colorJitter)
    do { try augmentation.validate() } catch { throw StageError("\(error)") }

    let datasetPath = ctx.input("dataset")
    let dataset = try DatasetReader(path: datasetPath)
    let datasetHash = try ctx.inputContentHashes()["dataset"]!
    guard dataset.splitNames.contains("train"), dataset.splitNames.contains("val") else {
        throw StoreError(path: datasetPath, "needs splits 'train' and 'val' (has \(dataset.splitNames.joined(separator: ", ")))")
    }
    let trainSplit = try dataset.split("train"), valSplit = try dataset.split("val")
    let C = dataset.numClasses

    // Training items: image and label map, from the labels artifact or the dataset's masks.
    var trainImages: [RGBImage] = [], trainLabels: [[UInt8]] = [], trainClassLabels: [[Float]] = []
    if p.supervision == "labels" {
        guard let labelsPath = ctx.optionalInput("labels") else {
            throw StageError("supervision 'labels' needs the input 'labels' (a labels artifact of the train split), or use supervision=ground_truth")
        }
        let labels = try LabelMapsReader(path: labelsPath, kind: .labels)
        try labels.context.check(againstDataset: datasetHash, datasetPath: datasetPath, mapsPath: labelsPath)
        guard labels.context.split == "train" else {
            throw StoreError(path: labelsPath, "holds labels of split '\(labels.context.split)'; seg-train trains on split 'train'")
        }
        guard labels.count > 0 else { throw StoreError(path: labelsPath, "holds no label maps") }
        for n in 0..<labels.count {
            let index = labels.imageIndices[n]
            guard index >= 0 && index < trainSplit.count else {
                throw StoreError(path: labelsPath, "refers to image \(index), but split 'train' of \(datasetPath) has \(trainSplit.count) images")
            }
            let image = try trainSplit.image(index)
            let map = try labels.labels(n)
            guard map.height == image.height, map.width == image.width else {
                throw StoreError(path: labelsPath, "label map \(n) is \(map.width)x\(map.height), image \(index) is \(image.width)x\(image.height)")
            }
            if let bad = map.values.first(where: { $0 != 255 && Int($0) > C }) {
                throw StoreError(path: labelsPath, "label map \(n) holds class \(bad), the dataset has classes 0...\(C) and 255")
            }
            trainImages.append(image)
            trainLabels.append(map.values)
        }
    } else if p.supervision == "single_stage" {
        // Image-level labels only: the masks of the train split are never read.
        if ctx.optionalInput("labels") != nil { ctx.log.warning("supervision is single_stage: the labels input is not used") }
        for i in 0..<trainSplit.count {
            trainImages.append(try trainSplit.image(i))
            trainClassLabels.append(try trainSplit.labels(i).map { $0 != 0 ? 1 : 0 })
        }
    } else {
        if ctx.optionalInput("labels") != nil { ctx.log.warning("supervision is ground_truth: the labels input is not used") }
        for i in 0..<trainSplit.count {
            trainImages.append(try trainSplit.image(i))
            trainLabels.append(try trainSplit.mask(i).labels)
        }
    }
    guard !trainImages.isEmpty else { throw StoreError(path: datasetPath, "split 'train' is empty") }

    // Backbone: from the classifier checkpoint, or random with the parameters' shape.
    let useFSR = p.supervision == "single_stage" && p.singleStageMethod == "fsr"
    let backbone: ViT, normalization: Normalization
    if let initPath = ctx.optionalInput("init") {
        let initial = try LoadedCheckpoint(path: initPath)
        guard initial.classNames == dataset.classNames else {
            throw StoreError(path: initPath, "was trained on classes \(initial.classNames), the dataset \(datasetPath) has \(dataset.classNames)")
        }
        backbone = useFSR && !initial.config.maskToken ? try withMaskToken(initial, seed: UInt64(p.seed)) : try initial.makeModel()
        normalization = initial.normalization
        if let stemPath = ctx.optionalInput("stem_weights") {
            ctx.log.warning("stem_weights \(stemPath) is not used: the backbone (and its stem) comes from init")
        }
    } else {
        let size = p.imageSize > 0 ? p.imageSize : try trainSplit.size(0).width
        let config = ViTConfig(imageSize: size, patchSize: p.patchSize, depth: p.depth, dim: p.dim, heads: p.heads, numClasses: C,
                               maskToken: useFSR, stem: p.stem)
        do { try config.validate() } catch { throw StageError("backbone: \(error)") }
        normalization = .imageNet
        var stem: PretrainedStem?
        if config.hasPretrainedStem {
            guard let stemPath = ctx.optionalInput("stem_weights") else {
                throw StageError("stem=\(p.stem) needs the pretrained stem file: pass --in stem_weights=PATH (made by Scripts/import_pretrained.py)")
            }
            stem = try PretrainedStem.load(path: stemPath, inputNormalization: normalization)
        }
        do { backbone = try ViT(config: config, seed: UInt64(p.seed), stem: stem) } catch { throw StageError("backbone: \(error)") }
    }
    let size = backbone.config.imageSize
    let decoderConfig = SegDecoderConfig(inChannels: backbone.config.dim, channels: p.decoderChannels, dilations: p.dilations, numClasses: C + 1)
    let network: SegNetwork
    do {
        network = try SegNetwork(backbone: backbone, decoder: try SegDecoder(config: decoderConfig, seed: UInt64(p.seed) &+ 1))
    } catch { throw StageError("decoder: \(error)") }

    let stepsPerEpoch = (trainImages.count + p.batchSize - 1) / p.batchSize
    var settings = SegOptimizerSettings()
    settings.lr = p.lr
    settings.backboneLRMultiplier = p.backboneLRMultiplier
    settings.weightDecay = p.weightDecay
    settings.clipGradNorm = p.clipGradNorm
    settings.polyPower = p.polyPower
    settings.totalSteps = stepsPerEpoch * p.epochs
    // Supervised: SegTrainer on label maps; single stage: SingleStageRun (SingleStage.swift).
    let single: SingleStageRun? = p.supervision == "single_stage"
        ? try SingleStageRun(params: p, network: network, images: trainImages, classLabels: trainClassLabels, size: size,
                             augmentation: augmentation, normalization: normalization, optimizer: settings, stepsPerEpoch: stepsPerEpoch)
        : nil
    let trainer: SegTrainer? = single == nil ? SegTrainer(network: network, settings: settings) : nil
    var optimizerSteps: Int { single?.trainer.step ?? trainer!.step }
    func learningRate(atStep step: Int) -> Double { single?.trainer.schedule.lr(atStep: step) ?? trainer!.schedule.lr(atStep: step) }
    let predictor = Predictor(network: network, trainSize: size, scales: p.evalScales, flip: p.evalFlip, normalization: normalization)

    func evaluate(write writer: LabelMapsWriter?, pictures: inout [RGBImage]) throws -> ConfusionMatrix {
        var confusion = ConfusionMatrix(classCount: C + 1)
        var start = 0
        while start < valSplit.count {
            let end = min(start + p.batchSize, valSplit.count)
            let images = try (start..<end).map { try valSplit.image($0) }
            let predictions = predictor.predict(images)
            for (offset, prediction) in predictions.enumerated() {
                let index = start + offset, image = images[offset]
                let truth = try valSplit.mask(index)
                let map = LabelMap(width: image.width, height: image.height, labels: prediction)
                confusion.add(prediction: map, truth: truth)
                try writer?.append(imageIndex: index, height: image.height, width: image.width, labels: prediction)
                if writer != nil && pictures.count < p.samples {
                    pictures.append(RGBImage.hstack([image, truth.colorized(), map.colorized()]))
                }
            }
            start = end
        }
        return confusion
    }

    if ctx.optionalInput("init") == nil && p.backboneLRMultiplier < 1 {
        // Measured: single stage with a random transformer at lr x 0.1 never left the prior (val mIoU 0.067, all background).
        ctx.log.warning("the transformer starts from random weights but trains at lr x \(p.backboneLRMultiplier) (backbone_lr_mult); without init use backbone_lr_mult=1")
    }
    print("seg-train: \(trainImages.count) training images (\(p.supervision)\(single.map { ", " + $0.summary } ?? "")), \(valSplit.count) val, \(size) px, " +
          "backbone \(ctx.optionalInput("init") == nil ? "random" : "from init") (\(backbone.parameterCount) params), " +
          "decoder \(network.decoder.parameterCount) params, \(settings.totalSteps) steps")
    fflush(stdout)

    var rng = TrainingRandom(seed: UInt64(p.seed))
    var epochLoss: [Double] = [], valMIoU: [Double] = [], epochLR: [Double] = [], epochSeconds: [Double] = [], stepLoss: [Double] = []
    let images = Tensor(shape: [p.batchSize, size, size, 3])
    var labels = [UInt8](repeating: 255, count: p.batchSize * size * size)
    let progress = ProgressReporter("seg-train", total: p.epochs * trainImages.count, unit: "img")
    for epoch in 1...p.epochs {
        let started = Date()
        var order = Array(0..<trainImages.count)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.int(in: 0...i)) }
        var lossSum = 0.0, lossCount = 0
        for s in 0..<stepsPerEpoch {
            let batch = Array(order[(s * p.batchSize)..<min((s + 1) * p.batchSize, order.count)])
            if let single {
                let result = try single.step(batch: batch, rng: &rng)
                stepLoss.append(result.loss)
                lossSum += result.loss
                lossCount += 1
                progress.advance(by: batch.count, note: String(format: "epoch %d/%d loss %.4f (cls %.4f seg %.4f%@) lr %.2e", epoch, p.epochs,
                                                               result.loss, result.clsLoss, result.segLoss,
                                                               single.settings.fsr ? String(format: " fsr %.4f/%.4f", result.fsrClassLoss, result.fsrPatchLoss) : "",
                                                               result.lr))
                continue
            }
            let input = batch.count == p.batchSize ? images : Tensor(shape: [batch.count, size, size, 3])
            for (b, index) in batch.enumerated() {
                let image = trainImages[index]
                let draw = ImageAugmenter.draw(size: size, settings: augmentation, using: &rng)
                image.pixels.withUnsafeBufferPointer {
                    ImageAugmenter.render($0.baseAddress!, width: image.width, height: image.height,
                                          into: input.data + b * size * size * 3, size: size, draw: draw, normalization: normalization)
                }
                trainLabels[index].withUnsafeBufferPointer { src in
                    labels.withUnsafeMutableBufferPointer { dst in
                        ImageAugmenter.renderLabels(src.baseAddress!, width: image.width, height: image.height,
                                                    into: dst.baseAddress! + b * size * size, size: size, draw: draw)
                    }
                }
            }
            let result = try labels.withUnsafeBufferPointer { try trainer!.trainStep(images: input, labels: $0.baseAddress!) }
            stepLoss.append(result.loss)
            if result.counted > 0 { lossSum += result.loss; lossCount += 1 }
            progress.advance(by: batch.count, note: String(format: "epoch %d/%d loss %.4f lr %.2e", epoch, p.epochs, result.loss, result.lr))
        }
        epochLoss.append(lossCount > 0 ? lossSum / Double(lossCount) : 0)
        epochLR.append(learningRate(atStep: max(optimizerSteps - 1, 0)))
        epochSeconds.append(Date().timeIntervalSince(started))
        var line = String(format: "seg-train: epoch %d/%d loss %.4f (%.1f s)", epoch, p.epochs, epochLoss.last!, epochSeconds.last!)
        if epoch < p.epochs && p.valEvery > 0 && epoch % p.valEvery == 0 {
            var none: [RGBImage] = []
            let miou = try evaluate(write: nil, pictures: &none).meanIoU
            valMIoU.append(miou)
            line += String(format: " val mIoU %.4f", miou)
        } else {
            valMIoU.append(.nan)
        }
        print(line)
        fflush(stdout)  // epoch lines show up while training even when stdout is a file
    }

    // Final predictions of the val split (the artifact `evaluate` scores).
    let writer = try LabelMapsWriter(try ctx.createArtifact("predictions", kind: .predictions),
                                     context: MapContext(split: "val", classNames: dataset.classNames, datasetHash: datasetHash))
    var pictures: [RGBImage] = []
    let confusion = try evaluate(write: writer, pictures: &pictures)
    valMIoU[valMIoU.count - 1] = confusion.meanIoU

    let checkpoint = try ctx.createArtifact("checkpoint", kind: .checkpoint)
    let root = checkpoint.root
    try root.setAttribute("model_config", try jsonString(backbone.config))
    try root.setAttribute("decoder_config", try jsonString(decoderConfig))
    try root.setAttribute("normalization", try jsonString(normalization))
    try root.setAttribute("class_names", try jsonString(dataset.classNames))
    try root.setAttribute("optimizer", try jsonString(settings))
    try root.setAttribute("augmentation", try jsonString(augmentation))
    try root.setAttribute("supervision", p.supervision)
    try root.setAttribute("seed", Int64(p.seed))
    try root.setAttribute("blas", blasLine)
    try root.setAttribute("epochs_completed", Int64(p.epochs))
    try root.setAttribute("steps_completed", Int64(optimizerSteps))
    try single?.write(to: root)
    let weights = try root.createGroup("weights")
    for q in network.parameters + backbone.frozenTensors.map({ ($0.name, $0.value, $0.value) }) {
        try weights.write(q.name, UnsafeBufferPointer(start: q.value.data, count: q.value.count), shape: q.value.shape)
    }
    let log = try root.createGroup("log")
    for (name, values) in [("epoch_loss", epochLoss), ("val_miou", valMIoU), ("lr", epochLR), ("epoch_seconds", epochSeconds), ("step_loss", stepLoss)] {
        try log.write(name, values, shape: [values.count])
    }

    let picture = PendingFile(destination: ctx.output("samples"))
    try PNG.write(pictures.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.grid(pictures, columns: 2, gap: 6, margin: true), to: picture.temporaryPath)
    try writer.finish()
    try checkpoint.commit()
    try picture.commit()
    print(String(format: "seg-train: val mIoU %.4f, pixel accuracy %.4f (scales %@, flip %@), %.0f s training",
                 confusion.meanIoU, confusion.pixelAccuracy, p.evalScales.map { String($0) }.joined(separator: ","),
                 p.evalFlip ? "yes" : "no", epochSeconds.reduce(0, +)))
}
