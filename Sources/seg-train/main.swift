// seg-train: trains a segmentation network (ViT + ASPP-lite decoder, pixel cross-entropy with 255
// ignored, poly learning rate) on label maps (`labels`: pseudo labels of the train split) or on
// the dataset's masks (supervision=ground_truth: the fully supervised bound), then predicts the
// val split. Single-stage training from image-level labels is `single-stage-train`.
import ArtifactStore
import Datasets
import Engine
import Foundation
import Imaging
import Localization
import Primitives
import StageKit
import Training

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 kernels and OpenBLAS's thread timeout

enum Supervision: String, ParameterChoice {
    /// The labels input (255 ignored).
    case labels
    /// The dataset's masks: the fully supervised bound.
    case groundTruth = "ground_truth"
}

struct Params: StageParameters {
    var seed = 0
    var supervision = Supervision.labels
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
    }
    init() {}
}

let spec = StageSpec(
    name: "seg-train", version: "0.2.0",
    summary: "Trains a segmentation network (ViT + ASPP-lite decoder) on label maps or ground truth; predicts the val split.",
    inputs: ["dataset"], optionalInputs: ["init", "labels", "stem_weights"], outputs: ["checkpoint", "predictions", "samples"])

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
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
    let trainSplit = try dataset.split("train"), valSplit = try dataset.split("val")

    // Training items: image and label map, from the labels artifact or the dataset's masks.
    var trainImages: [RGBImage] = [], trainLabels: [[UInt8]] = []
    switch p.supervision {
    case .labels:
        guard let labelsPath = ctx.optionalInput("labels") else {
            throw StageError("supervision 'labels' needs the input 'labels' (a labels artifact of the train split), or use supervision=ground_truth")
        }
        let (labels, split) = try dataset.labelMaps(at: labelsPath, kind: .labels, datasetHash: datasetHash)
        guard split.name == "train" else {
            throw StoreError(path: labelsPath, "holds labels of split '\(split.name)'; seg-train trains on split 'train'")
        }
        guard labels.count > 0 else { throw StoreError(path: labelsPath, "holds no label maps") }
        for n in 0..<labels.count {
            let index = labels.imageIndices[n]
            let image = try split.image(index)
            let map = try labels.labels(n)
            guard map.height == image.height, map.width == image.width else {
                throw StoreError(path: labelsPath, "label map \(n) is \(map.width)x\(map.height), image \(index) is \(image.width)x\(image.height)")
            }
            if let bad = map.values.first(where: { $0 != 255 && Int($0) > dataset.numClasses }) {
                throw StoreError(path: labelsPath, "label map \(n) holds class \(bad), the dataset has classes 0...\(dataset.numClasses) and 255")
            }
            trainImages.append(image)
            trainLabels.append(map.values)
        }
    case .groundTruth:
        if ctx.optionalInput("labels") != nil { ctx.log.warning("supervision is ground_truth: the labels input is not used") }
        for i in 0..<trainSplit.count {
            trainImages.append(try trainSplit.image(i))
            trainLabels.append(try trainSplit.mask(i).labels)
        }
    }
    guard !trainImages.isEmpty else { throw StoreError(path: datasetPath, "split 'train' is empty") }

    let (backbone, normalization) = try SegmentationBackbone.make(
        initPath: ctx.optionalInput("init"), stemPath: ctx.optionalInput("stem_weights"),
        fresh: .init(imageSize: p.imageSize, patchSize: p.patchSize, depth: p.depth, dim: p.dim, heads: p.heads, stem: p.stem),
        dataset: dataset, maskToken: false, seed: UInt64(p.seed), log: { ctx.log.warning("\($0)") })
    let size = backbone.config.imageSize
    let decoderConfig = SegDecoderConfig(inChannels: backbone.config.dim, channels: p.decoderChannels, dilations: p.dilations,
                                         numClasses: dataset.numClasses + 1)
    let network: SegNetwork
    do {
        network = try SegNetwork(backbone: backbone, decoder: try SegDecoder(config: decoderConfig, seed: UInt64(p.seed) &+ 1))
    } catch { throw StageError("decoder: \(error)") }

    var settings = SegOptimizerSettings()
    settings.lr = p.lr
    settings.backboneLRMultiplier = p.backboneLRMultiplier
    settings.weightDecay = p.weightDecay
    settings.clipGradNorm = p.clipGradNorm
    settings.polyPower = p.polyPower
    settings.totalSteps = (trainImages.count + p.batchSize - 1) / p.batchSize * p.epochs
    let trainer = SegTrainer(network: network, settings: settings)
    let session = SegmentationSession(
        name: "seg-train", network: network,
        schedule: SegmentationSchedule(epochs: p.epochs, batchSize: p.batchSize, valEvery: p.valEvery, samples: p.samples),
        predictor: SegmentationPredictor(network: network, trainSize: size, scales: p.evalScales, flip: p.evalFlip, normalization: normalization),
        valSplit: valSplit)

    print("seg-train: \(trainImages.count) training images (\(p.supervision.rawValue)), \(valSplit.count) val, \(size) px, " +
          "backbone \(ctx.optionalInput("init") == nil ? "random" : "from init") (\(backbone.parameterCount) params), " +
          "decoder \(network.decoder.parameterCount) params, \(settings.totalSteps) steps")
    fflush(stdout)

    let images = Tensor(shape: [p.batchSize, size, size, 3])
    var labels = [UInt8](repeating: 255, count: p.batchSize * size * size)
    try session.train(itemCount: trainImages.count, seed: p.seed, learningRate: { trainer.schedule.lr(atStep: max(trainer.step - 1, 0)) }) { batch, rng in
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
        let result = try labels.withUnsafeBufferPointer { try trainer.trainStep(images: input, labels: $0.baseAddress!) }
        return SegmentationStep(loss: result.loss, counted: result.counted > 0, note: String(format: "loss %.4f lr %.2e", result.loss, result.lr))
    }

    var contents = Checkpoint.Contents(modelConfig: backbone.config, normalization: normalization, classNames: dataset.classNames,
                                       optimizer: try .json(settings), augmentation: augmentation, seed: p.seed,
                                       epochsCompleted: p.epochs, stepsCompleted: trainer.step)
    contents.attributes["decoder_config"] = try .json(decoderConfig)
    contents.attributes["supervision"] = .text(p.supervision.rawValue)
    contents.attributes["blas"] = .text(blasLine)
    try session.finish(ctx, contents: contents, classNames: dataset.classNames, datasetHash: datasetHash)
}
