import ArtifactStore
import Datasets
import Engine
import Foundation
import Primitives
import Imaging
import Localization
import StageKit

/// Where a trainer's transformer comes from when no checkpoint is given: trained from scratch, or
/// a pretrained ViT (the `vit_weights` input, made by `make pretrained` or
/// Scripts/import_vit.py; its shape replaces depth/dim/heads/patch_size).
public enum BackboneSource: String, ParameterChoice {
    case scratch, pretrained
}

/// What both segmentation trainers (seg-train, single-stage-train) share: the backbone they start
/// from, the epoch loop with validation, the val predictions and the checkpoint.
public enum SegmentationBackbone {
    /// Shape of a fresh backbone (no `init` checkpoint).
    public struct Fresh {
        public var imageSize, patchSize, depth, dim, heads: Int
        public var stem: String
        public var source: BackboneSource
        public init(imageSize: Int, patchSize: Int, depth: Int, dim: Int, heads: Int, stem: String, source: BackboneSource = .scratch) {
            (self.imageSize, self.patchSize, self.depth, self.dim, self.heads, self.stem) = (imageSize, patchSize, depth, dim, heads, stem)
            self.source = source
        }
    }

    /// The backbone from a classifier checkpoint (`initPath`); or, with `fresh.source` pretrained,
    /// the ViT in `vitWeightsPath` at `fresh.imageSize` with fresh heads; or fresh with the `fresh`
    /// shape and a pretrained stem from `stemPath` where the shape names one. `maskToken` adds
    /// FSR's mask token.
    public static func make(initPath: String?, stemPath: String?, vitWeightsPath: String? = nil, fresh: Fresh, dataset: DatasetReader,
                            maskToken: Bool, seed: UInt64, log: (String) -> Void) throws -> (model: ViT, normalization: Normalization) {
        if let initPath {
            let initial = try Checkpoint(path: initPath)
            guard initial.classNames == dataset.classNames else {
                throw StoreError(path: initPath, "was trained on classes \(initial.classNames), the dataset \(dataset.path) has \(dataset.classNames)")
            }
            if let stemPath { log("stem_weights \(stemPath) is not used: the backbone (and its stem) comes from init") }
            if let vitWeightsPath { log("vit_weights \(vitWeightsPath) is not used: the backbone comes from init") }
            return (try initial.makeModel(maskToken: maskToken, seed: seed), initial.normalization)
        }
        if fresh.source == .pretrained {
            guard let vitWeightsPath else {
                throw StageError("backbone=pretrained needs the weights: pass --in vit_weights=PATH (made by `make pretrained`)")
            }
            let weights = try PretrainedViTWeights(path: vitWeightsPath)
            guard fresh.imageSize > 0, fresh.imageSize % weights.patchSize == 0 else {
                throw StageError("backbone=pretrained needs image_size, a positive multiple of the patch size \(weights.patchSize) (e.g. \(8 * weights.patchSize)), got \(fresh.imageSize)")
            }
            if let stemPath { log("stem_weights \(stemPath) is not used with a pretrained ViT") }
            return (try weights.makeModel(imageSize: fresh.imageSize, numClasses: dataset.numClasses, seed: seed, maskToken: maskToken),
                    weights.normalization)
        }
        if let vitWeightsPath { log("vit_weights \(vitWeightsPath) is not used with backbone=scratch") }
        let size = fresh.imageSize > 0 ? fresh.imageSize : try dataset.split("train").size(0).width
        let config = ViTConfig(imageSize: size, patchSize: fresh.patchSize, depth: fresh.depth, dim: fresh.dim, heads: fresh.heads,
                               numClasses: dataset.numClasses, maskToken: maskToken, stem: fresh.stem)
        do { try config.validate() } catch { throw StageError("backbone: \(error)") }
        let normalization = Normalization.imageNet
        var stem: PretrainedStem?
        if config.hasPretrainedStem {
            guard let stemPath else {
                throw StageError("stem=\(fresh.stem) needs the pretrained stem file: pass --in stem_weights=PATH (made by Scripts/import_pretrained.py)")
            }
            stem = try PretrainedStem.load(path: stemPath, inputNormalization: normalization)
        }
        do { return (try ViT(config: config, seed: seed, stem: stem), normalization) } catch { throw StageError("backbone: \(error)") }
    }
}

/// Settings of the epoch loop and the val predictions.
public struct SegmentationSchedule {
    public var epochs: Int
    public var batchSize: Int
    /// Validation mIoU after every n-th epoch (0: only after the last one).
    public var valEvery: Int
    /// Pictures (image | truth | prediction) in the samples output.
    public var samples: Int
    public init(epochs: Int, batchSize: Int, valEvery: Int, samples: Int) {
        (self.epochs, self.batchSize, self.valEvery, self.samples) = (epochs, batchSize, valEvery, samples)
    }
}

/// One optimiser step's report to the loop.
public struct SegmentationStep {
    public var loss: Double
    /// Whether the loss counts towards the epoch mean (a batch with no labelled pixel does not).
    public var counted: Bool
    /// Shown in the progress line after "epoch e/E".
    public var note: String
    public init(loss: Double, counted: Bool = true, note: String) { (self.loss, self.counted, self.note) = (loss, counted, note) }
}

/// The epoch loop of a segmentation trainer, its validation and outputs.
public final class SegmentationSession {
    public let name: String
    public let network: SegNetwork
    public let schedule: SegmentationSchedule
    public let predictor: SegmentationPredictor
    public let valSplit: DatasetSplit
    public private(set) var log = TrainingLog()
    /// Wall-clock seconds of the epochs, for the closing line (not stored).
    private var trainingSeconds = 0.0

    public init(name: String, network: SegNetwork, schedule: SegmentationSchedule, predictor: SegmentationPredictor, valSplit: DatasetSplit) {
        self.name = name
        self.network = network
        self.schedule = schedule
        self.predictor = predictor
        self.valSplit = valSplit
    }

    /// Predicts the val split: confusion matrix, optionally each map appended to `writer` and the
    /// first `schedule.samples` pictures collected.
    public func evaluate(writer: LabelMapsWriter?, pictures: inout [RGBImage]) throws -> ConfusionMatrix {
        var confusion = ConfusionMatrix(classCount: network.numClasses)
        var start = 0
        while start < valSplit.count {
            let end = min(start + schedule.batchSize, valSplit.count)
            let images = try (start..<end).map { try valSplit.image($0) }
            for (offset, prediction) in predictor.predict(images).enumerated() {
                let index = start + offset, image = images[offset]
                let truth = try valSplit.mask(index)
                let map = LabelMap(width: image.width, height: image.height, labels: prediction)
                confusion.add(prediction: map, truth: truth)
                try writer?.append(imageIndex: index, height: image.height, width: image.width, labels: prediction)
                if writer != nil && pictures.count < schedule.samples {
                    pictures.append(RGBImage.hstack([image, truth.colorized(), map.colorized()]))
                }
            }
            start = end
        }
        return confusion
    }

    /// Trains `schedule.epochs` epochs over `itemCount` items in seeded random order; `step` runs
    /// one optimiser step on a batch of item indices. `learningRate` reports the schedule's rate.
    public func train(itemCount: Int, seed: Int, learningRate: @escaping () -> Double,
                      step: ([Int], inout SplitMix64) throws -> SegmentationStep) throws {
        let batch = schedule.batchSize
        let stepsPerEpoch = (itemCount + batch - 1) / batch
        var rng = SplitMix64(seed: UInt64(seed))
        let progress = ProgressReporter(name, total: schedule.epochs * itemCount, unit: "img")
        for epoch in 1...schedule.epochs {
            let started = Date()
            var order = Array(0..<itemCount)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.int(in: 0...i)) }
            var lossSum = 0.0, lossCount = 0
            for s in 0..<stepsPerEpoch {
                let items = Array(order[(s * batch)..<min((s + 1) * batch, order.count)])
                let result = try step(items, &rng)
                log.stepLoss.append(result.loss)
                if result.counted { lossSum += result.loss; lossCount += 1 }
                progress.advance(by: items.count, note: "epoch \(epoch)/\(schedule.epochs) " + result.note)
            }
            let seconds = Date().timeIntervalSince(started)
            log.append("epoch_loss", lossCount > 0 ? lossSum / Double(lossCount) : 0)
            log.append("lr", learningRate())
            trainingSeconds += seconds  // not in the log: the checkpoint must not depend on the clock
            var line = String(format: "%@: epoch %d/%d loss %.4f (%.1f s)", name, epoch, schedule.epochs, log.series["epoch_loss"]!.last!, seconds)
            if epoch < schedule.epochs && schedule.valEvery > 0 && epoch % schedule.valEvery == 0 {
                var none: [RGBImage] = []
                let miou = try evaluate(writer: nil, pictures: &none).meanIoU
                log.append("val_miou", miou)
                line += String(format: " val mIoU %.4f", miou)
            } else {
                log.append("val_miou", .nan)
            }
            print(line)
            fflush(stdout)  // epoch lines show up while training even when stdout is a file
        }
    }

    /// Writes the outputs every segmentation trainer has: `predictions` (val label maps),
    /// `checkpoint` (`contents` plus the network's weights and this run's log) and `samples`.
    public func finish<P: StageParameters>(_ ctx: StageContext<P>, contents: Checkpoint.Contents, classNames: [String], datasetHash: String) throws {
        let writer = try LabelMapsWriter(try ctx.createArtifact("predictions", kind: .predictions),
                                         context: MapContext(split: valSplit.name, classNames: classNames, datasetHash: datasetHash))
        var pictures: [RGBImage] = []
        let confusion = try evaluate(writer: writer, pictures: &pictures)
        log.series["val_miou"]![log.series["val_miou"]!.count - 1] = confusion.meanIoU

        var contents = contents
        contents.log = log
        let frozen = network.backbone.frozenTensors  // keeps the tensors behind the pointers alive
        contents.groups["weights"] = network.parameters.map { StoredTensor(name: $0.name, tensor: $0.value) }
            + frozen.map { StoredTensor(name: $0.name, tensor: $0.value) }
        let checkpoint = try ctx.createArtifact("checkpoint", kind: .checkpoint, formatVersion: Checkpoint.formatVersion)
        try withExtendedLifetime(frozen) { try Checkpoint.write(contents, to: checkpoint.root) }

        let picture = ctx.pendingOutput("samples")
        try PNG.write(pictures.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.grid(pictures, columns: 2, gap: 6, margin: true), to: picture.temporaryPath)
        try writer.finish()
        try ctx.commitOutputs()
        print(String(format: "%@: val mIoU %.4f, pixel accuracy %.4f (scales %@, flip %@), %.0f s training", name,
                     confusion.meanIoU, confusion.pixelAccuracy, predictor.scales.map { String($0) }.joined(separator: ","),
                     predictor.flip ? "yes" : "no", trainingSeconds))
    }
}
