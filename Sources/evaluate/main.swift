import ArtifactStore
import Datasets
import Foundation
import Imaging
import Localization
import StageKit

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "threshold_start": .probability, "threshold_stop": .probability, "threshold_step": ParameterRule(min: 0.0001, max: 1),
        "panels": .nonNegative,
    ]
    /// Background-score sweep for class maps (seeds, refined CAMs): start...stop by step.
    var thresholdStart = 0.0
    var thresholdStop = 0.8
    var thresholdStep = 0.01
    /// Images drawn in the panels picture (image | ground truth | prediction).
    var panels = 6

    enum CodingKeys: String, CodingKey {
        case thresholdStart = "threshold_start", thresholdStop = "threshold_stop", thresholdStep = "threshold_step", panels
    }
    init() {}
}

let spec = StageSpec(
    name: "evaluate", version: "0.1.0",
    summary: "Scores class maps (with a background-threshold sweep), label maps or predictions against the dataset's ground truth.",
    inputs: ["dataset", "subject"], outputs: ["metrics", "metrics_json", "panels", "confusion"],
    resources: StageResources(threads: 1, memoryMB: 2048, runtimeMinutes: 30), shardable: true)

/// What one evaluation found, before it is written out.
struct Evaluation {
    var classNames: [String]
    var subjectKind: ArtifactKind
    var description: String
    var split: String
    var images: Int
    var confusion: ConfusionMatrix
    var extra: [String: Any] = [:]
    var sweep: (thresholds: [Double], miou: [Double])? = nil
    var panels: [RGBImage] = []
}

/// The artifact scored, with the split it refers to.
struct Subject {
    enum Maps { case classMaps(ClassMapsReader), labelMaps(LabelMapsReader) }
    let maps: Maps
    let split: DatasetSplit
    let classCount: Int
    let classNames: [String]
    let kind: ArtifactKind

    init(datasetPath: String, subjectPath: String, datasetHash: String) throws {
        let dataset = try DatasetReader(path: datasetPath)
        kind = try ArtifactReader(path: subjectPath, kind: nil).provenance.kind
        classCount = dataset.numClasses + 1
        classNames = dataset.classNames
        switch kind {
        case .cams:
            let reader = try ClassMapsReader(path: subjectPath)
            maps = .classMaps(reader)
            split = try dataset.split(for: reader.context, datasetHash: datasetHash, artifactPath: subjectPath, imageIndices: reader.imageIndices)
        case .labels, .predictions:
            let reader = try LabelMapsReader(path: subjectPath, kind: kind)
            maps = .labelMaps(reader)
            split = try dataset.split(for: reader.context, datasetHash: datasetHash, artifactPath: subjectPath, imageIndices: reader.imageIndices)
        default:
            throw StoreError(path: subjectPath, "evaluate scores artifacts of kind 'cams', 'labels' or 'predictions', found kind '\(kind)'")
        }
    }

    var count: Int {
        switch maps {
        case .classMaps(let reader): return reader.count
        case .labelMaps(let reader): return reader.count
        }
    }

    /// Scores entries `entries` (all, or a shard's block).
    func score(_ entries: Range<Int>, params p: Params) throws -> Tally {
        var tally = Tally(kind: kind, classCount: classCount, thresholds: p.thresholds)
        let progress = ProgressReporter("evaluate", total: entries.count, unit: "img")
        switch maps {
        case .classMaps(let reader):
            for n in entries {
                tally.sweep!.add(try reader.maps(n), truth: try split.mask(reader.imageIndices[n]))
                progress.advance()
            }
        case .labelMaps(let reader):
            for n in entries {
                let index = reader.imageIndices[n]
                let truth = try split.mask(index)
                let (height, width, values) = try reader.labels(n)
                guard height == truth.height && width == truth.width else {
                    throw StoreError(path: reader.artifact.path, "entry \(n) is \(width)x\(height), image \(index) is \(truth.width)x\(truth.height)")
                }
                tally.add(labels: values, truth: truth)
                progress.advance()
            }
        }
        tally.images = entries.count
        return tally
    }

    /// The evaluation of `tally`, with panels of the entries `panelEntries` (image | truth |
    /// [top score |] prediction; class maps at the best background threshold).
    func evaluation(_ tally: Tally, panelEntries: Range<Int>) throws -> Evaluation {
        switch maps {
        case .classMaps(let reader):
            let sweep = tally.sweep!
            let best = sweep.best
            let panels = try panelEntries.map { n -> RGBImage in
                let index = reader.imageIndices[n]
                let truth = try split.mask(index), maps = try reader.maps(n)
                let pixels = truth.labels.count
                let scores = resizePlanes(maps.values, count: maps.classes.count, width: maps.width, height: maps.height, toWidth: truth.width, toHeight: truth.height)
                let prediction = LabelMap(width: truth.width, height: truth.height,
                                          labels: Argmax.planar(scores, classes: maps.classes, pixels: pixels, background: .constant(Float(best.threshold))))
                let top = topScores(scores, classes: maps.classes.count, pixels: pixels)
                return RGBImage.hstack([try split.image(index), truth.colorized(), ColorMap.heatmap(top, width: truth.width, height: truth.height, range: 0...1),
                                        prediction.colorized()])
            }
            let confusion = sweep.confusion(at: best.index)
            return Evaluation(
                classNames: classNames, subjectKind: .cams, description: reader.description, split: split.name, images: tally.images,
                confusion: confusion, extra: ["best_threshold": best.threshold].merging(missedPixels(confusion)) { a, _ in a },
                sweep: (sweep.thresholds, sweep.meanIoUs), panels: panels)
        case .labelMaps(let reader):
            let panels = try panelEntries.map { n -> RGBImage in
                let index = reader.imageIndices[n]
                let (height, width, values) = try reader.labels(n)
                return RGBImage.hstack([try split.image(index), try split.mask(index).colorized(), LabelMap(width: width, height: height, labels: values).colorized()])
            }
            var extra = missedPixels(kind == .labels ? tally.asBackground! : tally.labelled!)
            if kind == .labels {
                extra["coverage"] = tally.scoredPixels == 0 ? 0 : Double(tally.labelledPixels) / Double(tally.scoredPixels)
                extra["miou_ignore_as_background"] = jsonNumber(tally.asBackground!.meanIoU)
                // Shares of all true pixels: `asBackground` puts the uncertain ones in the background
                // column, `labelled` leaves them out, so that column's difference counts them.
                let labelled = tally.labelled!, all = tally.asBackground!
                func uncertain(foreground: Bool) -> Double {
                    Double(all.predictedBackground(foreground: foreground) - labelled.predictedBackground(foreground: foreground))
                        / Double(all.total(foreground: foreground))
                }
                extra["object_pixels_uncertain"] = jsonNumber(uncertain(foreground: true))
                extra["object_pixels_as_background"] = jsonNumber(all.foregroundAsBackground - uncertain(foreground: true))
                extra["background_pixels_uncertain"] = jsonNumber(uncertain(foreground: false))
            }
            return Evaluation(classNames: classNames, subjectKind: kind, description: "", split: split.name, images: tally.images,
                              confusion: tally.labelled!, extra: extra, panels: panels)
        }
    }
}

/// Where a map puts the true object and background pixels: the object pixels it calls
/// background (what a segmenter trained on it learns to miss) and the background it calls an
/// object. Label maps pass the matrix with uncertain pixels as background, so both are shares of
/// all true pixels; they then take the uncertain share out of the first.
func missedPixels(_ confusion: ConfusionMatrix) -> [String: Any] {
    ["object_pixels_as_background": jsonNumber(confusion.foregroundAsBackground),
     "background_pixels_as_object": jsonNumber(confusion.backgroundAsForeground)]
}

/// Counts over the images scored: sums over disjoint images, so the tallies of shards add up to
/// the unsharded run's, and every metric is recomputed from the sum. A shard's metrics artifact
/// stores its tally (`shard_*` arrays) for the merge; a whole run's does not.
struct Tally {
    var images = 0
    /// Class maps: the background-threshold sweep.
    var sweep: ThresholdSweep?
    /// Label maps: confusion where labelled (uncertain pixels left out) and with uncertain as background.
    var labelled: ConfusionMatrix?
    var asBackground: ConfusionMatrix?
    var scoredPixels: Int64 = 0, labelledPixels: Int64 = 0

    init(kind: ArtifactKind, classCount: Int, thresholds: [Double]) {
        if kind == .cams {
            sweep = ThresholdSweep(thresholds: thresholds, classCount: classCount)
        } else {
            labelled = ConfusionMatrix(classCount: classCount)
            asBackground = ConfusionMatrix(classCount: classCount)
        }
    }

    /// Uncertain pixels (255) are left out of `labelled` and count as background in `asBackground`.
    mutating func add(labels values: [UInt8], truth: LabelMap) {
        var truthWhereLabelled = truth.labels, filled = values
        values.withUnsafeBufferPointer { v in
            truth.labels.withUnsafeBufferPointer { t in
                truthWhereLabelled.withUnsafeMutableBufferPointer { tl in
                    filled.withUnsafeMutableBufferPointer { f in
                        for i in 0..<v.count where v[i] == LabelMap.ignore {
                            tl[i] = LabelMap.ignore
                            f[i] = 0
                        }
                        for i in 0..<v.count where t[i] != LabelMap.ignore {
                            scoredPixels += 1
                            if v[i] != LabelMap.ignore { labelledPixels += 1 }
                        }
                    }
                }
            }
        }
        labelled!.add(prediction: LabelMap(width: truth.width, height: truth.height, labels: values),
                      truth: LabelMap(width: truth.width, height: truth.height, labels: truthWhereLabelled))
        asBackground!.add(prediction: LabelMap(width: truth.width, height: truth.height, labels: filled), truth: truth)
    }

    func write(to root: HDF5Group) throws {
        try root.setAttribute("shard_images", Int64(images))
        if let sweep { try root.write("shard_sweep_counts", sweep.rawCounts) }
        if let labelled, let asBackground {
            try root.write("shard_labelled_confusion", labelled.counts + labelled.invalidPredictions)
            try root.write("shard_as_background_confusion", asBackground.counts + asBackground.invalidPredictions)
            try root.write("shard_pixels", [scoredPixels, labelledPixels])
        }
    }

    /// Adds the tally a shard stored in its metrics artifact.
    mutating func add(storedIn reader: ArtifactReader) throws {
        let root = reader.root
        func counts(_ name: String, _ count: Int) throws -> [Int64] {
            let values = try root.read(name, as: Int64.self).values
            guard values.count == count else { throw StoreError(path: reader.path, "'\(name)' holds \(values.count) counts, expected \(count)") }
            return values
        }
        func confusion(_ name: String, like matrix: ConfusionMatrix) throws -> ConfusionMatrix {
            let k = matrix.classCount
            let values = try counts(name, k * k + k)
            return ConfusionMatrix(classCount: k, counts: Array(values[..<(k * k)]), invalidPredictions: Array(values[(k * k)...]))
        }
        guard root.hasAttribute("shard_images") else { throw StoreError(path: reader.path, "holds no shard tally (not written by evaluate --shard)") }
        images += Int(try root.int64Attribute("shard_images"))
        if let current = sweep {
            let stored = try counts("shard_sweep_counts", current.rawCounts.count)
            sweep!.merge(ThresholdSweep(thresholds: current.thresholds, classCount: current.classCount, counts: stored)!)
        }
        if let current = labelled, let background = asBackground {
            labelled!.merge(try confusion("shard_labelled_confusion", like: current))
            asBackground!.merge(try confusion("shard_as_background_confusion", like: background))
            let pixels = try counts("shard_pixels", 2)
            scoredPixels += pixels[0]
            labelledPixels += pixels[1]
        }
    }
}

extension Params {
    var thresholds: [Double] { ThresholdSweep.range(start: thresholdStart, stop: thresholdStop, step: thresholdStep) }

    func check() throws {
        guard thresholdStep > 0, thresholdStop >= thresholdStart else {
            throw StageError("threshold sweep needs threshold_step > 0 and threshold_stop >= threshold_start")
        }
    }
}

StageMain.run(spec, parameters: Params.self, merge: mergeShards) { ctx in
    let p = ctx.params
    try p.check()
    let subject = try Subject(datasetPath: ctx.input("dataset"), subjectPath: ctx.input("subject"), datasetHash: try ctx.inputContentHashes()["dataset"]!)
    let part = ctx.shardRange(of: subject.count)
    let tally = try subject.score(part, params: p)
    let evaluation = try subject.evaluation(tally, panelEntries: part.prefix(p.panels))
    let artifact = try ctx.createArtifact("metrics", kind: .metrics)
    if ctx.shard != nil { try tally.write(to: artifact.root) }
    try write(evaluation, to: artifact, pendingOutput: ctx.pendingOutput)
    try ctx.commitOutputs()
    print(summaryLine(evaluation))
}

/// The shards' tallies summed, the metrics recomputed from the sum, the panels drawn again from the
/// first entries of the subject: the unsharded run's outputs (its metrics artifact plus `shards`).
func mergeShards(_ ctx: ShardMergeContext<Params>) throws {
    let p = ctx.params
    try p.check()
    let datasetPath = ctx.input("dataset")
    let subject = try Subject(datasetPath: datasetPath, subjectPath: ctx.input("subject"), datasetHash: try ContentHash.ofFile(datasetPath))
    let metricsFile = ctx.pendingOutput("metrics")
    let shards = try ShardParts(ctx.parts("metrics"), destination: metricsFile.destination)
    var tally = Tally(kind: subject.kind, classCount: subject.classCount, thresholds: p.thresholds)
    for reader in shards.readers { try tally.add(storedIn: reader) }
    guard tally.images == subject.count else {
        throw StoreError(path: shards.paths[0], "the shards scored \(tally.images) images; \(ctx.input("subject")) has \(subject.count)")
    }
    let evaluation = try subject.evaluation(tally, panelEntries: 0..<min(p.panels, subject.count))
    let artifact = try shards.createMerged(at: metricsFile.temporaryPath)
    do {
        try write(evaluation, to: artifact, pendingOutput: ctx.pendingOutput)
        try artifact.commit()
    } catch {
        artifact.abandon()
        throw error
    }
    print(summaryLine(evaluation))
}

func topScores(_ scores: [Float], classes: Int, pixels: Int) -> [Float] {
    (0..<pixels).map { p in (0..<classes).reduce(Float(0)) { max($0, scores[$1 * pixels + p]) } }
}

func jsonNumber(_ value: Double) -> Any { value.isFinite ? value : NSNull() }

/// Writes the metrics into `artifact` (not yet committed) and the side outputs as pending files.
func write(_ evaluation: Evaluation, to artifact: ArtifactWriter, pendingOutput: (String) -> PendingFile) throws {
    let names = ["background"] + evaluation.classNames
    let iou = evaluation.confusion.iou
    var json: [String: Any] = [
        "subject": evaluation.subjectKind.rawValue,
        "split": evaluation.split,
        "images": evaluation.images,
        "miou": jsonNumber(evaluation.confusion.meanIoU),
        "pixel_accuracy": jsonNumber(evaluation.confusion.pixelAccuracy),
        "foreground_iou": jsonNumber(evaluation.confusion.foregroundIoU),
        "foreground_class_accuracy": jsonNumber(evaluation.confusion.foregroundClassAccuracy),
        "per_class_iou": Dictionary(uniqueKeysWithValues: zip(names, iou.map(jsonNumber))),
    ]
    if !evaluation.description.isEmpty { json["subject_description"] = evaluation.description }
    for (key, value) in evaluation.extra { json[key] = value }
    if let sweep = evaluation.sweep { json["sweep"] = ["thresholds": sweep.thresholds, "miou": sweep.miou.map(jsonNumber)] }
    let text = String(decoding: try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]), as: UTF8.self)

    let root = artifact.root
    let k = evaluation.confusion.classCount
    try root.write("confusion", evaluation.confusion.counts, shape: [k, k])
    try root.write("iou", iou, shape: [k])
    if let sweep = evaluation.sweep {
        try root.write("sweep_thresholds", sweep.thresholds)
        try root.write("sweep_miou", sweep.miou)
    }
    try root.setAttribute("metrics_json", text)
    let jsonFile = pendingOutput("metrics_json")
    try Data((text + "\n").utf8).write(to: URL(fileURLWithPath: jsonFile.temporaryPath))
    let panelFile = pendingOutput("panels")
    let picture = evaluation.panels.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.vstack(evaluation.panels, gap: 4)
    try PNG.write(picture, to: panelFile.temporaryPath)
    let confusionFile = pendingOutput("confusion")
    try Data(confusionPicture(evaluation, names: names).utf8).write(to: URL(fileURLWithPath: confusionFile.temporaryPath))
}

func summaryLine(_ evaluation: Evaluation) -> String {
    var line = "evaluate: \(evaluation.subjectKind) on \(evaluation.split) (\(evaluation.images) images): mIoU \(String(format: "%.4f", evaluation.confusion.meanIoU))"
    if let t = evaluation.extra["best_threshold"] as? Double { line += " at background \(String(format: "%.2f", t))" }
    if let c = evaluation.extra["coverage"] as? Double { line += ", coverage \(String(format: "%.3f", c))" }
    line += String(format: ", foreground IoU %.4f, foreground class accuracy %.4f",
                   evaluation.confusion.foregroundIoU, evaluation.confusion.foregroundClassAccuracy)
    if let missed = evaluation.extra["object_pixels_as_background"] as? Double {
        line += String(format: ", object pixels called background %.3f", missed)
        if let uncertain = evaluation.extra["object_pixels_uncertain"] as? Double { line += String(format: " (uncertain %.3f)", uncertain) }
    }
    return line
}

/// The row-normalised confusion matrix (truth rows, predicted columns) as an SVG heatmap.
func confusionPicture(_ evaluation: Evaluation, names: [String]) -> String {
    let c = evaluation.confusion
    var notes = [String(format: "mIoU %.4f, pixel accuracy %.4f, foreground IoU %.4f, foreground class accuracy %.4f",
                        c.meanIoU, c.pixelAccuracy, c.foregroundIoU, c.foregroundClassAccuracy)]
    if let t = evaluation.extra["best_threshold"] as? Double { notes.append(String(format: "class maps at background threshold %.2f", t)) }
    if let missed = evaluation.extra["object_pixels_as_background"] as? Double, let wrong = evaluation.extra["background_pixels_as_object"] as? Double {
        notes.append(String(format: "object pixels called background %.1f %%, background called an object %.1f %%", 100 * missed, 100 * wrong))
    }
    if let uncertain = evaluation.extra["object_pixels_uncertain"] as? Double {
        notes.append(String(format: "pixels the labels leave uncertain (255) are not counted in the matrix (%.1f %% of the object pixels)", 100 * uncertain))
    } else if evaluation.subjectKind == .labels { notes.append("pixels the labels leave uncertain (255) are not counted") }
    let what = evaluation.description.isEmpty ? evaluation.subjectKind.rawValue : evaluation.description
    return SVGChart.matrix(title: "Confusion of \(what) on \(evaluation.split) (\(evaluation.images) images), % of each true class",
                           rowAxis: "true class", columnAxis: "predicted class", labels: names, values: c.rowNormalized, notes: notes)
}
