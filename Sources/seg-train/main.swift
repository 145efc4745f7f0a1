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
    static let rules = SegmentationParameters.rules
    /// The network, its optimisation, augmentation and val predictions (as single-stage-train's).
    var common = SegmentationParameters()
    var supervision = Supervision.labels

    enum CodingKeys: String, CodingKey { case supervision }
    init() {}
    init(from decoder: Decoder) throws {
        common = try SegmentationParameters(from: decoder)
        supervision = try decoder.container(keyedBy: CodingKeys.self).decode(Supervision.self, forKey: .supervision)
    }
    func encode(to encoder: Encoder) throws {
        try common.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(supervision, forKey: .supervision)
    }
}

let spec = StageSpec(
    name: "seg-train", version: "0.2.0",
    summary: "Trains a segmentation network (ViT + ASPP-lite decoder) on label maps or ground truth; predicts the val split.",
    inputs: ["dataset"], optionalInputs: ["init", "labels", "stem_weights", "vit_weights"], outputs: ["checkpoint", "predictions", "samples"],
    resources: StageResources(threads: 8, memoryMB: 16384, runtimeMinutes: 720))

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params.common, supervision = ctx.params.supervision
    try p.validate()
    let augmentation = p.augmentation

    let datasetPath = ctx.input("dataset")
    let dataset = try DatasetReader(path: datasetPath)
    let datasetHash = try ctx.inputContentHashes()["dataset"]!
    let trainSplit = try dataset.split("train"), valSplit = try dataset.split("val")

    // Training items: image and label map, from the labels artifact or the dataset's masks.
    var trainImages: [RGBImage] = [], trainLabels: [[UInt8]] = []
    switch supervision {
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
        initPath: ctx.optionalInput("init"), stemPath: ctx.optionalInput("stem_weights"), vitWeightsPath: ctx.optionalInput("vit_weights"),
        fresh: p.freshBackbone,
        dataset: dataset, maskToken: false, seed: UInt64(p.seed), log: { ctx.log.warning("\($0)") })
    try p.checkMemory(backbone: backbone.config)
    let size = backbone.config.imageSize
    let (network, decoderConfig) = try p.network(backbone: backbone, classes: dataset.numClasses)
    let settings = p.optimizer(totalSteps: (trainImages.count + p.batchSize - 1) / p.batchSize * p.epochs)
    let trainer = SegTrainer(network: network, settings: settings)
    let session = SegmentationSession(
        name: "seg-train", network: network, schedule: p.schedule,
        predictor: SegmentationPredictor(network: network, trainSize: size, scales: p.evalScales, flip: p.evalFlip, normalization: normalization),
        valSplit: valSplit)

    print("seg-train: \(trainImages.count) training images (\(supervision.rawValue)), \(valSplit.count) val, \(size) px, " +
          "backbone \(ctx.optionalInput("init") != nil ? "from init" : p.backbone == .pretrained ? "pretrained" : "random") (\(backbone.parameterCount) params), " +
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
    contents.attributes["supervision"] = .text(supervision.rawValue)
    contents.attributes["blas"] = .text(blasLine)
    try session.finish(ctx, contents: contents, classNames: dataset.classNames, datasetHash: datasetHash)
}
