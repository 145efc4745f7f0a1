// extract-attention: for every image of a split (or its first `limit`), from a classifier checkpoint:
//   cams       CAM seeds of the present classes (image-level labels, never the masks) on the token
//              grid h x w: the CAM head's patch scores summed over scales and flips, ReLU, per-class
//              min-max (AReAM eq. 1-2)
//   attention  per layer the head-averaged post-softmax patch-to-patch attention [L, n, n], the
//              class-token rows [L, n], and ACR's gradient maps [K, L, n] (scale 1, unflipped)
//   samples    PNG: per sample image the image and one CAM heat map per present class
// Images stream in batches: each batch's records are written as soon as it is done, so memory
// does not depend on the split's size. Storage is float16 (relative precision 2^-11, ample for
// probabilities and [0, 1] maps): per image 2 * (L n^2 + L n + K (L n + n)) bytes before zstd,
// about 49 KiB + 0.9 KiB per present class for the default classifier (64 px, patch 8, n = 64,
// L = 6); the patch-to-patch attention is almost all of it and grows with n^2.

import ArtifactStore
import Datasets
import Engine
import Foundation
import Imaging
import Localization
import CAM
import Training
import Primitives
import StageKit

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 kernels and OpenBLAS's thread timeout

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "batch_size": .atLeast(1), "limit": .nonNegative, "samples": .nonNegative, "scales": .between(0.1, 8),
    ]
    /// Dataset split to extract from ("train" for pseudo labels, "val" for evaluation).
    var split = "train"
    /// Use the checkpoint's EMA weights (an error when it has none).
    var useEMA = false
    /// Input scales for the CAMs (relative to the classifier's training size), summed.
    var scales: [Double] = [1.0]
    /// Also run mirrored images (their maps mirrored back) for the CAMs.
    var flip = false
    /// Score whose attention gradients ACR reads: "cls" (class-token head, ACR's y_c), "cam", or
    /// "none" (no gradients; about one forward's time instead of one backward per present class).
    var gradientScore = GradientScore.cls
    var batchSize = 16
    /// 0 = every image of the split; otherwise the first `limit` images (quick runs).
    var limit = 0
    /// Images drawn in the samples picture.
    var samples = 8

    enum CodingKeys: String, CodingKey {
        case split, useEMA = "use_ema", scales, flip, gradientScore = "gradient_score", batchSize = "batch_size", limit, samples
    }
    init() {}
}

let spec = StageSpec(
    name: "extract-attention", version: "0.1.0",
    summary: "Extracts CAM seeds, per-layer head-averaged attention and ACR attention gradients from a classifier.",
    inputs: ["dataset", "checkpoint"], outputs: ["cams", "attention", "samples"],
    resources: StageResources(threads: 4, memoryMB: 8192, runtimeMinutes: 240), shardable: true)

/// The cams and attention joined; the samples picture is shard 0's (it draws the first images).
func mergeShards(_ ctx: ShardMergeContext<Params>) throws {
    try MapShards.merge(ctx.parts("cams"), to: ctx.pendingOutput("cams").temporaryPath)
    try MapShards.merge(ctx.parts("attention"), to: ctx.pendingOutput("attention").temporaryPath)
    try ctx.takeFirstPart("samples")
}

StageMain.run(spec, parameters: Params.self, merge: mergeShards) { ctx in
    let p = ctx.params
    let score = p.gradientScore
    guard p.batchSize >= 1, p.limit >= 0, p.samples >= 0 else { throw StageError("batch_size must be >= 1, limit and samples >= 0") }
    let dataset = try DatasetReader(path: ctx.input("dataset"))
    let split = try dataset.split(p.split)
    let checkpoint = try Checkpoint(path: ctx.input("checkpoint"))
    guard checkpoint.classNames == dataset.classNames else {
        let what = checkpoint.classNames.count == dataset.classNames.count
            ? "other class names (\(checkpoint.classNames.joined(separator: ", ")) vs \(dataset.classNames.joined(separator: ", ")))"
            : "\(checkpoint.classNames.count) classes, the dataset \(dataset.classNames.count)"
        throw StageError("checkpoint \(checkpoint.path) does not fit dataset \(dataset.path): the classifier has \(what)")
    }
    if p.useEMA && !checkpoint.hasEMAWeights { throw StoreError(path: checkpoint.path, "use_ema is set but the checkpoint has no EMA weights") }
    let model = try checkpoint.makeModel(useEMA: p.useEMA)
    let options = ExtractionOptions(scales: p.scales, flip: p.flip, gradientScore: score)
    let extractor: AttentionExtractor
    do { extractor = try AttentionExtractor(model: model, normalization: checkpoint.normalization, options: options) } catch let error as EngineError { throw StageError(error.description) }
    let config = model.config
    let largest = p.scales.map { extractor.inputSize(scale: $0) }.max() ?? config.imageSize
    try MemoryBudget.check(bytes: config.activationBytes(batch: p.batchSize, imageSide: largest), parameter: largest > config.imageSize ? "scales" : "batch_size",
                           what: "batches of \(p.batchSize) images at \(largest) px with every layer's attention kept")
    let g = extractor.grid, n = g * g
    // The images of this run: the split (or its first `limit`), or this shard's block of them.
    let part = ctx.shardRange(of: p.limit > 0 ? min(p.limit, split.count) : split.count)
    let count = part.count

    let context = MapContext(split: split.name, classNames: dataset.classNames, datasetHash: try ctx.inputContentHashes()["dataset"]!)
    let sizes = p.scales.map { "\(extractor.inputSize(scale: $0))" }.joined(separator: ", ")
    let camDescription = "CAM seeds (cam head): per present class ReLU then min-max of the patch scores summed over scales "
        + "\(p.scales) (inputs \(sizes) px square, resized to the \(g)x\(g) grid), flip \(p.flip); weights \(p.useEMA ? "EMA" : "raw")"
    let cams = try ClassMapsWriter(try ctx.createArtifact("cams", kind: .cams), context: context, description: camDescription)
    let attentionArtifact = try ctx.createArtifact("attention", kind: .attention)
    let attention = try AttentionMapsWriter(attentionArtifact, context: context, gridHeight: g, gridWidth: g, layers: config.depth)
    try attentionArtifact.root.setAttribute("map_description",
        (score == .none ? "attention (no ACR gradients: gradient_score none)"
            : "attention and ACR gradients (d \(score == .cls ? "class-token head" : "CAM head") logit / d softmax attention, class-token row, head mean, ReLU)")
        + " at scale 1 unflipped (\(config.imageSize) px square input); weights \(p.useEMA ? "EMA" : "raw")")
    try attentionArtifact.root.setAttribute("gradient_score", score.rawValue)
    try attentionArtifact.root.setAttribute("blas", blasLine)

    let labels = try split.allLabels()
    let C = dataset.numClasses
    var pictures: [RGBImage] = []
    let progress = ProgressReporter("extract-attention", total: count, unit: "img")
    let started = Date()
    var start = part.lowerBound
    while start < part.upperBound {
        let indices = Array(start..<min(start + p.batchSize, part.upperBound))
        var images: [RGBImage] = [], inputs: [ExtractionInput] = [], ids: [String] = []
        for i in indices {
            let id = try split.id(i)
            guard !id.isEmpty else { throw StoreError(path: dataset.path, "image \(i) of split '\(split.name)' has no id") }
            let image = try split.image(i)
            let present = (0..<C).filter { labels[i * C + $0] != 0 }
            images.append(image)
            ids.append(id)
            inputs.append(ExtractionInput(pixels: image.pixels, width: image.width, height: image.height, classes: present))
        }
        let results = try extractor.extract(inputs)
        for (k, r) in results.enumerated() {
            let i = indices[k], image = images[k]
            for (name, values) in [("CAM", r.cams), ("patch attention", r.patchAttention), ("class attention", r.classAttention), ("gradient map", r.gradients)] {
                if let bad = values.first(where: { !$0.isFinite }) {
                    throw StageError("the classifier of \(checkpoint.path) produced \(bad) in the \(name) of image \(i) ('\(ids[k])') of \(dataset.path)")
                }
            }
            var maps = r.cams
            AffinityRefinement.normalise(&maps, count: r.classes.count, tokens: n)
            let classIDs = r.classes.map { $0 + 1 }
            try cams.append(imageIndex: i, imageHeight: image.height, imageWidth: image.width,
                            maps: ClassMaps(classes: classIDs, height: g, width: g, values: maps))
            try attention.append(imageIndex: i, imageHeight: image.height, imageWidth: image.width,
                                 AttentionMaps(layers: r.layers, tokens: n, patchAttention: r.patchAttention,
                                               classAttention: r.classAttention, classes: classIDs, gradients: r.gradients))
            if pictures.count < p.samples {
                var row = [image]
                for k in 0..<classIDs.count {
                    let up = Resize.bilinear(Array(maps[k * n..<(k + 1) * n]), width: g, height: g, toWidth: image.width, toHeight: image.height)
                    row.append(image.blended(with: ColorMap.heatmap(up, width: image.width, height: image.height, range: 0...1), alpha: 0.6))
                }
                pictures.append(RGBImage.hstack(row))
            }
        }
        progress.advance(by: indices.count)
        start += indices.count
    }
    let seconds = Date().timeIntervalSince(started)
    let picture = ctx.pendingOutput("samples")
    try PNG.write(pictures.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.grid(pictures, columns: 1, gap: 6, margin: true), to: picture.temporaryPath)
    try cams.finish()
    try attention.finish()
    try ctx.commitOutputs()
    func size(_ path: String) -> Double { Double(((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.int64Value ?? 0) }
    let perImage = count > 0 ? (size(ctx.output("cams")) + size(ctx.output("attention"))) / Double(count) : 0
    print("extract-attention: \(count) images of split '\(split.name)' in \(String(format: "%.1f", seconds)) s "
          + "(\(String(format: "%.1f", Double(count) / max(seconds, 1e-9))) images/s), grid \(g)x\(g), \(config.depth) layers, "
          + "\(String(format: "%.1f", perImage / 1024)) KiB per image (cams + attention)")
}
