import ArtifactStore
import Dispatch
import Engine
import FSR
import Foundation
import Imaging
import Localization
import Primitives
import Training

/// Single-stage training from image-level labels (single-stage-train): batches of
/// augmented views, online pseudo labels from the current CAMs (normalised CAMs of the present
/// classes -> PAR -> two background scores, `ConfidentLabels`), and `SingleStageTrainer`
/// (baseline, or FSR with a second view and the EMA teacher).
public final class SingleStageRun {
    public let trainer: SingleStageTrainer
    public let settings: SingleStageSettings
    public let confident: ConfidentLabels
    public let images: [RGBImage]
    public let classLabels: [[Float]]
    public let size: Int
    public let augmentation: AugmentationSettings
    public let normalization: Normalization
    let view: Tensor, secondView: Tensor

    /// `head` is FSR's aggregation + projector (nil for the baseline); `settings.fsr` must agree.
    public init(network: SegNetwork, head: FSRHead?, settings: SingleStageSettings, confident: ConfidentLabels,
                images: [RGBImage], classLabels: [[Float]], augmentation: AugmentationSettings, normalization: Normalization,
                batchSize: Int, seed: UInt64) throws {
        try settings.validate()
        trainer = try SingleStageTrainer(network: network, head: head, settings: settings, seed: seed)
        self.settings = settings
        self.confident = confident
        self.images = images
        self.classLabels = classLabels
        size = network.backbone.config.imageSize
        self.augmentation = augmentation
        self.normalization = normalization
        view = Tensor(shape: [batchSize, size, size, 3])
        secondView = Tensor(shape: [batchSize, size, size, 3])
    }

    public var summary: String {
        var text = "single stage \(settings.fsr ? "fsr" : "baseline"), \(settings.classifierPooling.rawValue)-pooled CAM head, "
            + "seg weight \(settings.segWeight) after \(settings.segWarmupSteps) steps"
        if settings.auxLayer != 0 { text += ", auxiliary CAM head on block \(settings.auxLayer)" }
        if settings.ptcWeight > 0 { text += ", PTC weight \(settings.ptcWeight)" }
        if settings.fsr, let head = trainer.head {
            text += ", FSR mask ratio \(settings.maskRatio), head \(head.parameterCount) params"
        }
        return text
    }

    /// One optimiser step on the images `batch` (indices into `images`).
    public func step(batch: [Int], rng: inout SplitMix64) throws -> SingleStageTrainer.StepResult {
        let B = batch.count, C = classLabels.first?.count ?? 0
        let first = B == view.shape[0] ? view : Tensor(shape: [B, size, size, 3])
        let second = B == secondView.shape[0] ? secondView : Tensor(shape: [B, size, size, 3])
        var draws: [AugmentationDraw] = []
        var batchLabels = [Float](repeating: 0, count: B * C)
        for (b, index) in batch.enumerated() {
            let image = images[index]
            let draw = ImageAugmenter.draw(size: size, settings: augmentation, using: &rng)
            draws.append(draw)
            image.pixels.withUnsafeBufferPointer {
                ImageAugmenter.render($0.baseAddress!, width: image.width, height: image.height,
                                      into: first.data + b * size * size * 3, size: size, draw: draw, normalization: normalization)
            }
            if settings.fsr {
                let other = ImageAugmenter.draw(size: size, settings: augmentation, using: &rng)
                image.pixels.withUnsafeBufferPointer {
                    ImageAugmenter.render($0.baseAddress!, width: image.width, height: image.height,
                                          into: second.data + b * size * size * 3, size: size, draw: other, normalization: normalization)
                }
            }
            for c in 0..<C { batchLabels[b * C + c] = classLabels[index][c] }
        }
        let valid = trainer.auxHead == nil ? nil : validTokens(draws: draws)
        return try batchLabels.withUnsafeBufferPointer { labels in
            try trainer.trainStep(view: first, secondView: settings.fsr ? second : nil, labels: labels.baseAddress!, validTokens: valid) { acts in
                pseudoLabels(acts, view: first, draws: draws, labels: labels.baseAddress!, classes: C)
            }
        }
    }

    /// [B, grid * grid]: whether a token shows the image (the pixel that `PatchTokenContrast.tokenLabels`
    /// would read for it lies inside the resized image) rather than the augmentation's padding.
    func validTokens(draws: [AugmentationDraw]) -> [Bool] {
        let g = trainer.network.backbone.config.grid, S = size
        var out = [Bool](repeating: false, count: draws.count * g * g)
        for (b, d) in draws.enumerated() {
            for i in 0..<g {
                let y = i * S / g + d.cropY
                for j in 0..<g {
                    let x = j * S / g + d.cropX
                    out[(b * g + i) * g + j] = y >= 0 && y < d.resizedHeight && x >= 0 && x < d.resizedWidth
                }
            }
        }
        return out
    }

    /// Labels [B, S, S] in {0...C, 255} from the forward's CAMs: per present class ReLU(score)
    /// over its maximum on the patch grid, then ConfidentLabels (resize, PAR against the view,
    /// two background scores). Padding that the augmentation added around a shrunken image is 255.
    func pseudoLabels(_ acts: ViTActivations, view: Tensor, draws: [AugmentationDraw], labels: UnsafePointer<Float>, classes C: Int) -> [UInt8] {
        let B = acts.batch, N = acts.patches, h = acts.gridH, w = acts.gridW, S = size
        var out = [UInt8](repeating: 255, count: B * S * S)
        let scores = SendablePointer(acts.patchScores.data), labelPointer = SendablePointer(labels)
        // PAR per image is serial work: spread over the cores (epoch with segmentation 27.5 s -> 24.6 s).
        out.withUnsafeMutableBufferPointer { buffer in
            let target = SendablePointer(buffer.baseAddress!)
            DispatchQueue.concurrentPerform(iterations: B) { b in
                let scores = scores.p, labels = labelPointer.p, out = target.p
                let present = (0..<C).filter { labels[b * C + $0] > 0.5 }
                var values = [Float](repeating: 0, count: present.count * N)
                for (k, c) in present.enumerated() {
                    var top: Float = 0
                    for n in 0..<N { top = max(top, scores[(b * N + n) * C + c]) }
                    let inv = 1 / (top + 1e-5)
                    for n in 0..<N { values[k * N + n] = max(scores[(b * N + n) * C + c], 0) * inv }
                }
                let maps = ClassMaps(classes: present.map { $0 + 1 }, height: h, width: w, values: values)
                let map = confident.labels(image: denormalised(view, index: b), maps: maps)
                let d = draws[b]
                for y in 0..<S where y + d.cropY >= 0 && y + d.cropY < d.resizedHeight {
                    for x in 0..<S where x + d.cropX >= 0 && x + d.cropX < d.resizedWidth {
                        out[(b * S + y) * S + x] = map[y * S + x]
                    }
                }
            }
        }
        return out
    }

    /// The view as 8-bit RGB (PAR reads colour differences).
    func denormalised(_ t: Tensor, index b: Int) -> RGBImage {
        let S = size, src = t.data + b * S * S * 3
        var pixels = [UInt8](repeating: 0, count: S * S * 3)
        for i in 0..<(S * S) {
            for c in 0..<3 {
                let v = src[i * 3 + c] * normalization.std[c] + normalization.mean[c]
                pixels[i * 3 + c] = UInt8((min(max(v, 0), 1) * 255).rounded())
            }
        }
        return RGBImage(width: S, height: S, pixels: pixels)
    }

    /// Single-stage attributes and, with FSR, the teacher and head weights, for its checkpoint.
    public func record(into contents: inout Checkpoint.Contents) throws {
        contents.attributes["method"] = .text(settings.fsr ? "fsr" : "baseline")
        contents.attributes["single_stage"] = try .json(settings)
        contents.attributes["pseudo_labels"] = try .json(confident)
        if let aux = trainer.auxHead { contents.groups["aux_weights"] = [StoredTensor(name: aux.name, tensor: aux.value)] }
        guard settings.fsr, let head = trainer.head, let teacher = trainer.teacher, let teacherHead = trainer.teacherHead else { return }
        contents.attributes["fsr_head_config"] = try .json(head.config)
        for (group, parameters) in [("ema_weights", teacher.parameters), ("fsr_weights", head.parameters), ("fsr_ema_weights", teacherHead.parameters)] {
            contents.groups[group] = parameters.map { StoredTensor(name: $0.name, tensor: $0.value) }
        }
    }
}
