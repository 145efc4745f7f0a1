import ArtifactStore
import Datasets
import Engine
import Foundation
import Primitives
import Imaging
import Localization
import Training
import PSA
import StageKit

let blasLine = BLASCorePolicy.apply()  // may re-execute with AVX-512 kernels and OpenBLAS's thread timeout

/// How the random walk propagates: sparse steps, or PSA's dense repeated squaring.
enum Walk: String, ParameterChoice { case iterated, squaring }

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "seed": .nonNegative, "alpha_low": .positive, "alpha_high": .positive, "alpha_walk": .positive,
        "constant_background": .probability, "constant_foreground": .probability, "epochs": .atLeast(1),
        "batch_size": .atLeast(1), "lr": .positive, "weight_decay": .nonNegative, "feature_dim": .atLeast(1),
        "hidden": .atLeast(1), "radius": .atLeast(1), "beta": .positive, "logt": .between(0, 16), "samples": .nonNegative,
        "input_size": .between(0, 4096), "feature_batch": .atLeast(1),
    ]
    var seed = 0
    /// power: background (1 - max M)^alpha_low / ^alpha_high (PSA); constant: fixed scores.
    var backgroundMode = BackgroundMode.power
    var alphaLow: Float = 4
    var alphaHigh: Float = 32
    /// Constant mode: the background score that foreground must beat to be confident, and the one
    /// that background must reach (our maps are min-max normalised).
    var constantForeground: Float = 0.6
    var constantBackground: Float = 0.3
    /// Pair / walk radius in tokens (offsets with dy^2 + dx^2 < radius^2). PSA uses 5 at stride 8
    /// on 56x56 grids; our grids are 8x8 (64 px / patch 8), where 5 would join nearly every pair
    /// of a 32 px object with the background around it, so 4 (reach 3 tokens = 24 px).
    var radius = 4
    var hidden = 64
    var featureDim = 32
    var epochs = 8
    var batchSize = 8
    var lr = 1e-3
    var weightDecay = 1e-4
    /// Random walk: T = a^beta, 2^logt steps.
    var beta: Float = 8
    var logt = 6
    /// Background channel of the walked maps: (1 - max M)^alpha_walk.
    var alphaWalk: Float = 16
    /// "iterated" (sparse steps, never builds T^t; cheaper, default) or "squaring" (PSA's dense
    /// repeated squaring through sgemm; 8 n^2 bytes).
    var walk = Walk.iterated
    var useEMA = true
    var samples = 8
    /// Side in pixels at which the frozen backbone sees each image for the affinity features
    /// (a multiple of its patch size): a finer token grid than the classifier's gives the walk
    /// finer boundaries (224 px: 16x16 tokens of a ViT-S/14 instead of 8x8 at 112 px). 0: the
    /// classifier's training size (images whose sides are multiples of the patch run as they are).
    var inputSize = 0
    /// Images of one size per forward pass of the frozen backbone (one GEMM per layer for the
    /// batch; 1 = image by image). Recorded: float rounding may differ with the batch.
    var featureBatch = 16

    enum CodingKeys: String, CodingKey {
        case seed, backgroundMode = "background_mode", alphaLow = "alpha_low", alphaHigh = "alpha_high"
        case constantForeground = "constant_foreground", constantBackground = "constant_background"
        case radius, hidden, featureDim = "feature_dim", epochs, batchSize = "batch_size", lr, weightDecay = "weight_decay"
        case beta, logt, alphaWalk = "alpha_walk", walk, useEMA = "use_ema", samples, inputSize = "input_size", featureBatch = "feature_batch"
    }
    init() {}
}

let spec = StageSpec(
    name: "psa-refine", version: "0.1.0",
    summary: "Trains an affinity head (PSA) on confident labels from class maps and refines the maps by a random walk into label maps.",
    inputs: ["dataset", "cams", "checkpoint"], outputs: ["labels", "samples"],
    resources: StageResources(threads: 8, memoryMB: 12288, runtimeMinutes: 360))

/// Model input [1, H, W, 3]: (rgb/255 - mean) / std.
func normalised(_ image: RGBImage, mean: [Float], std: [Float]) -> Tensor {
    let t = Tensor(shape: [1, image.height, image.width, 3])
    let d = t.data
    image.pixels.withUnsafeBufferPointer { p in
        for i in 0..<(image.width * image.height) {
            for c in 0..<3 { d[i * 3 + c] = (Float(p[i * 3 + c]) / 255 - mean[c]) / std[c] }
        }
    }
    return t
}

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    guard p.radius >= 1, p.hidden >= 1, p.featureDim >= 1, p.epochs >= 0, p.batchSize >= 1, p.logt >= 0, p.logt <= 16 else {
        throw StageError("radius, hidden, feature_dim, batch_size must be >= 1, epochs >= 0, logt in 0...16")
    }
    guard p.lr > 0, p.beta > 0 else { throw StageError("lr and beta must be positive") }

    let dataset = try DatasetReader(path: ctx.input("dataset"))
    let (maps, split) = try dataset.classMaps(at: ctx.input("cams"), datasetHash: try ctx.inputContentHashes()["dataset"]!)
    let checkpoint = try Checkpoint(path: ctx.input("checkpoint"))
    guard checkpoint.classNames == maps.context.classNames else {
        throw StoreError(path: checkpoint.path, "classes \(checkpoint.classNames) differ from those of \(maps.artifact.path) \(maps.context.classNames)")
    }
    let model = try checkpoint.makeModel(useEMA: p.useEMA)
    let patch = checkpoint.config.patchSize
    guard p.inputSize == 0 || p.inputSize % patch == 0 else {
        throw StageError("parameter 'input_size' must be 0 or a multiple of the backbone's patch size \(patch), got \(p.inputSize)")
    }
    // Every image's features are held for the affinity head's epochs.
    if p.inputSize > 0 {
        let tokens = Double((p.inputSize / patch) * (p.inputSize / patch))
        try MemoryBudget.check(bytes: Double(maps.count) * tokens * Double(checkpoint.config.dim) * 4 * 1.5, parameter: "input_size",
                               what: "\(maps.count) images' features on a \(p.inputSize / patch)x\(p.inputSize / patch) token grid")
    }

    let featureSide = p.inputSize > 0 ? p.inputSize : checkpoint.config.imageSize
    try MemoryBudget.check(bytes: checkpoint.config.activationBytes(batch: min(p.featureBatch, max(maps.count, 1)), imageSide: featureSide),
                           parameter: "feature_batch", what: "forward passes of \(p.featureBatch) images at \(featureSide) px")

    var labelling = TokenLabelling()
    labelling.mode = p.backgroundMode
    labelling.alphaLow = p.alphaLow
    labelling.alphaHigh = p.alphaHigh
    labelling.foregroundBackground = p.constantForeground
    labelling.backgroundBackground = p.constantBackground

    // 1. Frozen backbone features and confident token labels for every image.
    struct Item { var index: Int; var gridH: Int; var gridW: Int; var features: [Float]; var maps: ClassMaps; var labels: [UInt8] }
    var items: [Item] = []
    var dim = 0
    let extract = ProgressReporter("psa-refine features", total: maps.count, unit: "img")
    /// The model's input for image n: native size when its sides are multiples of the patch
    /// size, else resized (a pretrained ViT's 14 px patches on 64 px scenes) to input_size or the
    /// model's training size, as extract-attention does.
    func modelInput(_ n: Int) throws -> Tensor {
        let image = try split.image(maps.imageIndices[n])
        if p.inputSize == 0 && image.width % patch == 0 && image.height % patch == 0 {
            return normalised(image, mean: checkpoint.normalization.mean, std: checkpoint.normalization.std)
        }
        let size = p.inputSize > 0 ? p.inputSize : checkpoint.config.imageSize
        let input = Tensor(shape: [1, size, size, 3])
        image.pixels.withUnsafeBufferPointer {
            ImageAugmenter.resize($0.baseAddress!, width: image.width, height: image.height, into: input.data, size: size,
                                  normalization: checkpoint.normalization)
        }
        return input
    }
    let featureBatch = p.featureBatch
    var n = 0
    var pending: Tensor? = nil  // the input that ended the last batch by its size
    while n < maps.count {
        var inputs = [try pending ?? modelInput(n)]
        pending = nil
        while inputs.count < featureBatch, n + inputs.count < maps.count {
            let next = try modelInput(n + inputs.count)
            guard next.shape == inputs[0].shape else { pending = next; break }
            inputs.append(next)
        }
        let (h, w) = (inputs[0].shape[1], inputs[0].shape[2])
        let batch = Tensor(shape: [inputs.count, h, w, 3])
        for (i, input) in inputs.enumerated() { (batch.data + i * h * w * 3).update(from: input.data, count: h * w * 3) }
        let (gh, gw) = (h / patch, w / patch)
        let acts = model.forward(images: batch, training: false)
        dim = acts.features.shape[2]
        for i in inputs.indices {
            let entry = try maps.maps(n + i)
            let values = resizePlanes(entry.values, count: entry.classes.count, width: entry.width, height: entry.height, toWidth: gw, toHeight: gh)
            let tokenMaps = ClassMaps(classes: entry.classes, height: gh, width: gw, values: values)
            let labels = values.withUnsafeBufferPointer { labelling.labels(maps: $0, classes: entry.classes, pixels: gh * gw) }
            let features = Array(UnsafeBufferPointer(start: acts.features.data + i * gh * gw * dim, count: gh * gw * dim))
            items.append(Item(index: maps.imageIndices[n + i], gridH: gh, gridW: gw, features: features, maps: tokenMaps, labels: labels))
            extract.advance()
        }
        n += inputs.count
    }

    // 2. Train the affinity head on pairs of confident tokens.
    let head = AffinityHead(inFeatures: max(dim, 1), hidden: p.hidden, outFeatures: p.featureDim, seed: UInt64(p.seed))
    let optimizer = head.makeOptimizer(lr: p.lr, weightDecay: p.weightDecay)
    var rng = SplitMix64(seed: UInt64(p.seed) &+ 1)
    let batchesPerEpoch = (items.count + p.batchSize - 1) / p.batchSize
    let trainStart = Date()
    let training = ProgressReporter("psa-refine train", total: p.epochs * batchesPerEpoch, unit: "step")
    var lastParts: AffinityLoss.Parts?
    var pairCount = 0
    for epoch in 0..<p.epochs {
        var order = Array(items.indices)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        var epochLoss = 0.0, epochBatches = 0
        for b in 0..<batchesPerEpoch {
            let batch = order[(b * p.batchSize)..<min(order.count, (b + 1) * p.batchSize)]
            let rows = batch.reduce(0) { $0 + items[$1].gridH * items[$1].gridW }
            let x = Tensor(shape: [rows, dim])
            var pairs = AffinityPairs()
            var base = 0
            for i in batch {
                let item = items[i]
                item.features.withUnsafeBufferPointer { (x.data + base * dim).update(from: $0.baseAddress!, count: $0.count) }
                pairs.append(AffinityPairs.extract(labels: item.labels, height: item.gridH, width: item.gridW, radius: p.radius, base: base))
                base += item.gridH * item.gridW
            }
            if epoch == 0 { pairCount += pairs.count }
            guard pairs.count > 0 else { training.advance(); continue }
            let parts: AffinityLoss.Parts
            do {
                parts = try head.trainStep(features: x, pairs: pairs, optimizer: optimizer)
            } catch let error as TrainingError {
                throw StageError("\(error) at epoch \(epoch + 1), step \(b + 1)")
            }
            lastParts = parts
            epochLoss += parts.total
            epochBatches += 1
            training.advance(note: String(format: "loss %.4f", parts.total))
        }
        ctx.log.info("epoch \(epoch + 1)/\(p.epochs): mean loss \(String(format: "%.4f", epochLoss / Double(max(epochBatches, 1))))")
    }
    let trainSeconds = Date().timeIntervalSince(trainStart)
    if p.epochs > 0 && pairCount == 0 { ctx.log.warning("no confident pairs: the affinity head stayed at its initialisation") }

    // 3. Random walk per image, upsample, argmax.
    let writer = try LabelMapsWriter(try ctx.createArtifact("labels", kind: .labels), context: maps.context)
    var pictures: [RGBImage] = []
    let refineStart = Date()
    let refining = ProgressReporter("psa-refine walk", total: items.count, unit: "img")
    var changed = 0, total = 0
    for item in items {
        let n = item.gridH * item.gridW
        let x = Tensor(shape: [n, dim])
        item.features.withUnsafeBufferPointer { x.data.update(from: $0.baseAddress!, count: $0.count) }
        let f = head.forward(x).output
        let transition = RandomWalk.transition(features: f.data, featureDim: p.featureDim, height: item.gridH, width: item.gridW, radius: p.radius, beta: p.beta)
        let channels = item.maps.classes.count + 1
        let start = RandomWalk.withBackground(item.maps.values, classes: item.maps.classes.count, tokens: n, alpha: p.alphaWalk)
        let walked = p.walk == .iterated
            ? RandomWalk.propagateIterated(maps: start, channels: channels, transition: transition, logt: p.logt)
            : RandomWalk.propagateBySquaring(maps: start, channels: channels, transition: transition, logt: p.logt)
        let image = try split.image(item.index)
        let pixels = image.width * image.height
        let up = resizePlanes(walked, count: channels, width: item.gridW, height: item.gridH, toWidth: image.width, toHeight: image.height)
        let labels = Argmax.planar(up, classes: item.maps.classes, pixels: pixels, background: .firstPlane)
        try writer.append(imageIndex: item.index, height: image.height, width: image.width, labels: labels)
        let before = Argmax.planar(resizePlanes(start, count: channels, width: item.gridW, height: item.gridH, toWidth: image.width, toHeight: image.height),
                                   classes: item.maps.classes, pixels: pixels, background: .firstPlane)
        changed += zip(before, labels).reduce(0) { $0 + ($1.0 != $1.1 ? 1 : 0) }
        total += pixels
        if pictures.count < p.samples {
            pictures.append(RGBImage.hstack([image, LabelMap(width: image.width, height: image.height, labels: before).colorized(),
                                             LabelMap(width: image.width, height: image.height, labels: labels).colorized()]))
        }
        refining.advance()
    }
    let refineSeconds = Date().timeIntervalSince(refineStart)
    let picture = ctx.pendingOutput("samples")
    try PNG.write(pictures.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.grid(pictures, columns: 2, gap: 6, margin: true), to: picture.temporaryPath)
    // Training outcome beside the parameters (provenance), so a run can be compared with another.
    let root = writer.artifact.root
    try root.setAttribute("psa_pairs_per_epoch", Int64(pairCount))
    if let first = items.first { try root.setAttribute("psa_token_grid", "\(first.gridH)x\(first.gridW)") }
    try root.setAttribute("blas", blasLine)
    try root.setAttribute("psa_final_loss", lastParts?.total ?? .nan)
    try root.setAttribute("psa_walk_changed_fraction", Double(changed) / Double(max(total, 1)))
    try writer.finish()
    try ctx.commitOutputs()
    let loss = lastParts.map { String(format: "%.4f (bg+ %.4f, fg+ %.4f, neg %.4f)", $0.total, $0.backgroundPositive, $0.foregroundPositive, $0.negative) } ?? "n/a"
    print("psa-refine: \(items.count) images of split '\(split.name)'; \(pairCount) pairs per epoch; train \(String(format: "%.2f", trainSeconds)) s, last loss \(loss); "
        + "walk (\(p.walk.rawValue)) \(String(format: "%.1f", Double(items.count) / max(refineSeconds, 1e-9))) img/s; "
        + "\(String(format: "%.1f", 100 * Double(changed) / Double(max(total, 1))))% of pixels changed by the walk")
}
