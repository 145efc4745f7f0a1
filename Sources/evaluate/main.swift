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
    resources: StageResources(threads: 1, memoryMB: 2048, runtimeMinutes: 30))

/// What one evaluation found, before it is written out.
struct Evaluation {
    var subjectKind: ArtifactKind
    var description: String
    var split: String
    var images: Int
    var confusion: ConfusionMatrix
    var extra: [String: Any] = [:]
    var sweep: (thresholds: [Double], miou: [Double])? = nil
    var panels: [RGBImage] = []
}

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    guard p.thresholdStep > 0, p.thresholdStop >= p.thresholdStart else {
        throw StageError("threshold sweep needs threshold_step > 0 and threshold_stop >= threshold_start")
    }
    let datasetPath = ctx.input("dataset"), subjectPath = ctx.input("subject")
    let dataset = try DatasetReader(path: datasetPath)
    let datasetHash = try ctx.inputContentHashes()["dataset"]!
    let kind = try ArtifactReader(path: subjectPath, kind: nil).provenance.kind

    let evaluation: Evaluation
    switch kind {
    case .cams:
        evaluation = try evaluateMaps(ClassMapsReader(path: subjectPath), dataset: dataset, datasetHash: datasetHash, params: p, ctx: ctx)
    case .labels, .predictions:
        evaluation = try evaluateLabels(LabelMapsReader(path: subjectPath, kind: kind), dataset: dataset, datasetHash: datasetHash, params: p, ctx: ctx)
    default:
        throw StoreError(path: subjectPath, "evaluate scores artifacts of kind 'cams', 'labels' or 'predictions', found kind '\(kind)'")
    }
    try write(evaluation, classNames: dataset.classNames, ctx: ctx)
}

func evaluateMaps(_ reader: ClassMapsReader, dataset: DatasetReader, datasetHash: String, params p: Params, ctx: StageContext<Params>) throws -> Evaluation {
    let split = try dataset.split(for: reader.context, datasetHash: datasetHash, artifactPath: reader.artifact.path, imageIndices: reader.imageIndices)
    let classCount = dataset.numClasses + 1
    var sweep = ThresholdSweep(thresholds: ThresholdSweep.range(start: p.thresholdStart, stop: p.thresholdStop, step: p.thresholdStep), classCount: classCount)
    let progress = ProgressReporter("evaluate", total: reader.count, unit: "img")
    var panelInputs: [(image: RGBImage, truth: LabelMap, scores: [Float], classes: [Int])] = []
    for n in 0..<reader.count {
        let index = reader.imageIndices[n]
        let truth = try split.mask(index)
        let maps = try reader.maps(n)
        let scores = sweep.add(maps, truth: truth)
        if panelInputs.count < p.panels { panelInputs.append((try split.image(index), truth, scores, maps.classes)) }
        progress.advance()
    }
    let best = sweep.best
    let panels = panelInputs.map { input -> RGBImage in
        let prediction = LabelMap(width: input.truth.width, height: input.truth.height,
                                  labels: Argmax.planar(input.scores, classes: input.classes, pixels: input.truth.labels.count,
                                                        background: .constant(Float(best.threshold))))
        let top = topScores(input.scores, classes: input.classes.count, pixels: input.truth.labels.count)
        return RGBImage.hstack([input.image, input.truth.colorized(), ColorMap.heatmap(top, width: input.truth.width, height: input.truth.height, range: 0...1), prediction.colorized()])
    }
    return Evaluation(
        subjectKind: .cams, description: reader.description, split: split.name, images: reader.count,
        confusion: sweep.confusion(at: best.index), extra: ["best_threshold": best.threshold],
        sweep: (sweep.thresholds, sweep.meanIoUs), panels: panels)
}

func evaluateLabels(_ reader: LabelMapsReader, dataset: DatasetReader, datasetHash: String, params p: Params, ctx: StageContext<Params>) throws -> Evaluation {
    let split = try dataset.split(for: reader.context, datasetHash: datasetHash, artifactPath: reader.artifact.path, imageIndices: reader.imageIndices)
    let classCount = dataset.numClasses + 1
    var labelled = ConfusionMatrix(classCount: classCount), asBackground = ConfusionMatrix(classCount: classCount)
    var scoredPixels: Int64 = 0, labelledPixels: Int64 = 0
    var panels: [RGBImage] = []
    let progress = ProgressReporter("evaluate", total: reader.count, unit: "img")
    for n in 0..<reader.count {
        let index = reader.imageIndices[n]
        let truth = try split.mask(index)
        let (height, width, values) = try reader.labels(n)
        guard height == truth.height && width == truth.width else {
            throw StoreError(path: reader.artifact.path, "entry \(n) is \(width)x\(height), image \(index) is \(truth.width)x\(truth.height)")
        }
        // Uncertain pixels (255) are left out of `labelled` and count as background in `asBackground`.
        var truthWhereLabelled = truth.labels, filled = values
        for i in 0..<values.count where values[i] == LabelMap.ignore {
            truthWhereLabelled[i] = LabelMap.ignore
            filled[i] = 0
        }
        for i in 0..<values.count where truth.labels[i] != LabelMap.ignore {
            scoredPixels += 1
            if values[i] != LabelMap.ignore { labelledPixels += 1 }
        }
        labelled.add(prediction: LabelMap(width: width, height: height, labels: values), truth: LabelMap(width: width, height: height, labels: truthWhereLabelled))
        asBackground.add(prediction: LabelMap(width: width, height: height, labels: filled), truth: truth)
        if panels.count < p.panels {
            panels.append(RGBImage.hstack([try split.image(index), truth.colorized(), LabelMap(width: width, height: height, labels: values).colorized()]))
        }
        progress.advance()
    }
    var extra: [String: Any] = [:]
    if reader.artifact.provenance.kind == .labels {
        extra["coverage"] = scoredPixels == 0 ? 0 : Double(labelledPixels) / Double(scoredPixels)
        extra["miou_ignore_as_background"] = jsonNumber(asBackground.meanIoU)
    }
    return Evaluation(subjectKind: reader.artifact.provenance.kind, description: "", split: split.name, images: reader.count,
                      confusion: labelled, extra: extra, panels: panels)
}

func topScores(_ scores: [Float], classes: Int, pixels: Int) -> [Float] {
    (0..<pixels).map { p in (0..<classes).reduce(Float(0)) { max($0, scores[$1 * pixels + p]) } }
}

func jsonNumber(_ value: Double) -> Any { value.isFinite ? value : NSNull() }

func write(_ evaluation: Evaluation, classNames: [String], ctx: StageContext<Params>) throws {
    let names = ["background"] + classNames
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

    let artifact = try ctx.createArtifact("metrics", kind: .metrics)
    let root = artifact.root
    let k = evaluation.confusion.classCount
    try root.write("confusion", evaluation.confusion.counts, shape: [k, k])
    try root.write("iou", iou, shape: [k])
    if let sweep = evaluation.sweep {
        try root.write("sweep_thresholds", sweep.thresholds)
        try root.write("sweep_miou", sweep.miou)
    }
    try root.setAttribute("metrics_json", text)
    let jsonFile = ctx.pendingOutput("metrics_json")
    try Data((text + "\n").utf8).write(to: URL(fileURLWithPath: jsonFile.temporaryPath))
    let panelFile = ctx.pendingOutput("panels")
    let picture = evaluation.panels.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.vstack(evaluation.panels, gap: 4)
    try PNG.write(picture, to: panelFile.temporaryPath)
    let confusionFile = ctx.pendingOutput("confusion")
    try Data(confusionPicture(evaluation, names: names).utf8).write(to: URL(fileURLWithPath: confusionFile.temporaryPath))
    try ctx.commitOutputs()

    var line = "evaluate: \(evaluation.subjectKind) on \(evaluation.split) (\(evaluation.images) images): mIoU \(String(format: "%.4f", evaluation.confusion.meanIoU))"
    if let t = evaluation.extra["best_threshold"] as? Double { line += " at background \(String(format: "%.2f", t))" }
    if let c = evaluation.extra["coverage"] as? Double { line += ", coverage \(String(format: "%.3f", c))" }
    line += String(format: ", foreground IoU %.4f, foreground class accuracy %.4f",
                   evaluation.confusion.foregroundIoU, evaluation.confusion.foregroundClassAccuracy)
    print(line)
}

/// The row-normalised confusion matrix (truth rows, predicted columns) as an SVG heatmap.
func confusionPicture(_ evaluation: Evaluation, names: [String]) -> String {
    let c = evaluation.confusion
    var notes = [String(format: "mIoU %.4f, pixel accuracy %.4f, foreground IoU %.4f, foreground class accuracy %.4f",
                        c.meanIoU, c.pixelAccuracy, c.foregroundIoU, c.foregroundClassAccuracy)]
    if let t = evaluation.extra["best_threshold"] as? Double { notes.append(String(format: "class maps at background threshold %.2f", t)) }
    if evaluation.subjectKind == .labels { notes.append("pixels the labels leave uncertain (255) are not counted") }
    let what = evaluation.description.isEmpty ? evaluation.subjectKind.rawValue : evaluation.description
    return SVGChart.matrix(title: "Confusion of \(what) on \(evaluation.split) (\(evaluation.images) images), % of each true class",
                           rowAxis: "true class", columnAxis: "predicted class", labels: names, values: c.rowNormalized, notes: notes)
}
