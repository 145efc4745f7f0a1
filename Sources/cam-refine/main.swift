import ArtifactStore
import Datasets
import Foundation
import Imaging
import AReAM
import CAMRefinement
import Localization
import Primitives
import StageKit

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "threshold_start": .probability, "threshold_stop": .probability,
        "threshold_step": ParameterRule(min: 0.0001, max: 1),
    ]
    var method = RefinementMethod.areaM
    /// Affinity layers for mean, areaM and ACR's eq. 8 affinity: indices, negative from the end
    /// (-1 = last), empty = all layers.
    var layers: [Int] = []
    /// areaM layer weights: "code" (split-mean entropies, min-max across layers: what produced
    /// the paper's numbers, and what its text calls "mean normalized inverse entropy") or "paper"
    /// (eq. 8 per image, entropy divided by log n so that 1 - H stays in [0, 1]).
    var areamWeighting = AReAMWeighting.code
    /// ACR: gradient rows of layers acr_start_layer... are averaged (negative from the end).
    var acrStartLayer = 0
    /// ACR: eq. 8 (spread by the mean affinity of `layers`) when true, eq. 7 when false.
    var acrUseAffinity = true
    /// Also score, against the dataset's ground truth, every single layer and every method (needs
    /// the optional input `dataset`); the report gets the tables, the chart the per-layer curves.
    var analyse = false
    /// Background-score sweep for the analysis: start...stop by step (as `evaluate`).
    var thresholdStart = 0.0
    var thresholdStop = 0.8
    var thresholdStep = 0.01

    enum CodingKeys: String, CodingKey {
        case method, layers, areamWeighting = "aream_weighting", acrStartLayer = "acr_start_layer"
        case acrUseAffinity = "acr_use_affinity", analyse
        case thresholdStart = "threshold_start", thresholdStop = "threshold_stop", thresholdStep = "threshold_step"
    }
    init() {}
}

let spec = StageSpec(
    name: "cam-refine", version: "0.1.0",
    summary: "Refines CAM seeds with attention affinity (none, mean, areaM, acr); analyse mode scores each layer (Hellinger distance, single-layer mIoU).",
    inputs: ["cams", "attention"], optionalInputs: ["dataset"], outputs: ["cams", "report", "chart"],
    resources: StageResources(threads: 4, memoryMB: 4096, runtimeMinutes: 120))

func json(_ value: Double) -> Any { value.isFinite ? value : NSNull() }
func format(_ value: Double) -> String { value.isFinite ? String(format: "%.4f", value) : "n/a" }
/// Right-aligns `text` in `width` columns.
func pad(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - text.count)) + text }
func padRight(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    let method = p.method, weighting = p.areamWeighting
    guard p.thresholdStep > 0, p.thresholdStop >= p.thresholdStart else {
        throw StageError("threshold sweep needs threshold_step > 0 and threshold_stop >= threshold_start")
    }
    let seeds = try ClassMapsReader(path: ctx.input("cams"))
    let attention = try AttentionMapsReader(path: ctx.input("attention"))
    try attention.checkPairing(with: seeds)
    if method == .acr && attention.gradientScore == "none" {
        throw StoreError(path: attention.artifact.path, "holds no attention gradients (extract-attention ran with gradient_score=none); method acr needs them: rerun it with gradient_score=cls")
    }

    var split: DatasetSplit?
    if let datasetPath = ctx.optionalInput("dataset") {
        let dataset = try DatasetReader(path: datasetPath)
        split = try dataset.split(for: seeds.context, datasetHash: try ctx.inputContentHashes()["dataset"]!,
                                  artifactPath: seeds.artifact.path, imageIndices: seeds.imageIndices)
    } else if p.analyse {
        throw StageError("analyse scores against ground truth: pass the optional input --in dataset=PATH")
    }

    let layerCount = attention.layers, tokens = attention.tokens
    let layers: [Int], gradientLayers: [Int]
    do {
        layers = try LayerSelection.resolve(p.layers, layers: layerCount)
        let start = try LayerSelection.resolve([p.acrStartLayer], layers: layerCount, parameter: "acr_start_layer")[0]
        gradientLayers = Array(start..<layerCount)
    } catch let error as RefinementError {
        throw StageError(error.description)
    }
    guard tokens > 1 else { throw StoreError(path: attention.artifact.path, "has a token grid of \(attention.gridHeight)x\(attention.gridWidth); refinement needs at least 2 tokens") }

    // First pass (areaM code weighting, analysis): split-mean refined entropies of every layer,
    // and for the analysis the mean Hellinger distance of every layer.
    let needsEntropies = (method == .areaM && weighting == .code) || p.analyse
    var meanEntropies: [Double]?, meanHellinger: [Double]?
    if needsEntropies {
        var entropy = [Double](repeating: 0, count: layerCount), hellinger = [Double](repeating: 0, count: layerCount)
        var withClasses = 0
        let progress = ProgressReporter("cam-refine pass 1/2 (layer entropies)", total: seeds.count, unit: "img")
        for n in 0..<seeds.count {
            let maps = try seeds.maps(n), record = try attention.record(n)
            try attention.checkEntry(n, maps, record, seeds: seeds)
            if !maps.classes.isEmpty {
                withClasses += 1
                for l in 0..<layerCount {
                    entropy[l] += AffinityRefinement.normalisedRefinedEntropy(maps: maps.values, count: maps.classes.count, tokens: tokens,
                                                                              stacked: record.patchAttention, layer: l)
                }
            }
            if p.analyse {
                let h = AffinityRefinement.meanHellinger(stacked: record.patchAttention, tokens: tokens, layers: layerCount)
                for l in 0..<layerCount { hellinger[l] += h[l] }
            }
            progress.advance()
        }
        guard withClasses > 0 else { throw StoreError(path: seeds.artifact.path, "has no image with a present class: no layer entropies to weigh by") }
        meanEntropies = entropy.map { $0 / Double(withClasses) }
        if p.analyse { meanHellinger = hellinger.map { $0 / Double(max(seeds.count, 1)) } }
    }
    let codeWeights = meanEntropies.map { AReAMWeights.code(meanEntropies: $0) }
    let codeUsable = codeWeights.map { w in layers.contains { w[$0] > 0 } } ?? false
    if method == .areaM && weighting == .code && !codeUsable {
        throw StageError("areaM code weighting gives every selected layer \(layers) weight 0 (the highest split-mean entropy); select more layers")
    }

    let refiner = CamRefiner(method: method, layers: layers, weighting: weighting, codeWeights: codeWeights,
                             gradientLayers: gradientLayers, useAffinity: p.acrUseAffinity)
    let description: String
    switch method {
    case .none: description = "cam-refine none (seeds re-normalised) of: \(seeds.description)"
    case .mean: description = "cam-refine mean affinity of layers \(layers) applied to: \(seeds.description)"
    case .areaM: description = "cam-refine areaM (\(weighting.rawValue) entropy weighting) of layers \(layers) applied to: \(seeds.description)"
    case .acr: description = "cam-refine acr: gradient rows of layers \(gradientLayers)" + (p.acrUseAffinity ? " spread by the mean affinity of layers \(layers)" : "")
    }

    // Analysis variants, each with the same layer selection as the output.
    var variants: [(name: String, refiner: CamRefiner)] = []
    if p.analyse {
        variants = [("none", CamRefiner(method: .none, layers: layers)), ("mean", CamRefiner(method: .mean, layers: layers)),
                    ("areaM paper", CamRefiner(method: .areaM, layers: layers, weighting: .paper))]
        if codeUsable { variants.append(("areaM code", CamRefiner(method: .areaM, layers: layers, weighting: .code, codeWeights: codeWeights))) }
        // Without stored gradients (gradient_score none) ACR's maps would be all zero: not a variant.
        if attention.gradientScore != "none" {
            variants.append(("acr", CamRefiner(method: .acr, layers: layers, gradientLayers: gradientLayers, useAffinity: p.acrUseAffinity)))
        }
    }
    let thresholds = ThresholdSweep.range(start: p.thresholdStart, stop: p.thresholdStop, step: p.thresholdStep)
    let classCount = seeds.context.classNames.count + 1
    var layerSweeps = [ThresholdSweep](repeating: ThresholdSweep(thresholds: thresholds, classCount: classCount), count: p.analyse ? layerCount : 0)
    var variantSweeps = [ThresholdSweep](repeating: ThresholdSweep(thresholds: thresholds, classCount: classCount), count: variants.count)
    let singleLayer = (0..<layerCount).map { CamRefiner(method: .mean, layers: [$0]) }

    let writer = try ClassMapsWriter(try ctx.createArtifact("cams", kind: .cams), context: seeds.context, description: description)
    var statistics = WeightStatistics(layers: layers.count)
    var fallbacks = 0
    let progress = ProgressReporter(needsEntropies ? "cam-refine pass 2/2" : "cam-refine", total: seeds.count, unit: "img")
    for n in 0..<seeds.count {
        let maps = try seeds.maps(n), record = try attention.record(n)
        try attention.checkEntry(n, maps, record, seeds: seeds)
        let output = try refiner.refine(seeds: maps, attention: record)
        if let weights = output.weights, !maps.classes.isEmpty { statistics.add(weights) }
        if output.equalWeightsFallback { fallbacks += 1 }
        let size = seeds.imageSizes[n]
        try writer.append(imageIndex: seeds.imageIndices[n], imageHeight: size.height, imageWidth: size.width, maps: output.maps)
        if let split, p.analyse {
            let truth = try split.mask(seeds.imageIndices[n])
            for l in 0..<layerCount { layerSweeps[l].add(ClassMapsWriter.asStored(try singleLayer[l].refine(seeds: maps, attention: record).maps), truth: truth) }
            for (v, variant) in variants.enumerated() { variantSweeps[v].add(ClassMapsWriter.asStored(try variant.refiner.refine(seeds: maps, attention: record).maps), truth: truth) }
        }
        progress.advance()
    }

    // Report. Inputs by content hash, not path: a path names the workspace, and the same inputs
    // must give the same bytes wherever they are.
    let inputHashes = try ctx.inputContentHashes()
    var report: [String: Any] = [
        "method": method.rawValue, "layers": layers, "attention_layers": layerCount,
        "grid": [attention.gridHeight, attention.gridWidth], "images": seeds.count, "split": seeds.context.split,
        "seeds": inputHashes["cams"]!, "attention": inputHashes["attention"]!, "map_description": description,
    ]
    if method == .areaM { report["aream_weighting"] = weighting.rawValue }
    if method == .acr { report["acr"] = ["gradient_layers": gradientLayers, "use_affinity": p.acrUseAffinity] }
    let appliedWeights = statistics.mean
    if method != .none && !(method == .acr && !p.acrUseAffinity) {
        report["layer_weights"] = layers.indices.map { i -> [String: Any] in
            ["layer": layers[i], "mean": json(appliedWeights[i]), "min": json(statistics.low[i]), "max": json(statistics.high[i])]
        }
    }
    if method == .areaM && weighting == .paper { report["equal_weight_fallbacks"] = fallbacks }
    if let meanEntropies, let codeWeights {
        report["split_mean_entropy"] = ["normalised_entropy": meanEntropies.map(json), "code_weights": codeWeights.map { Double($0) },
                                        "note": "per attention layer: refined-map entropy / log n averaged over images with classes; code weight = 1 - min-max normalised entropy"]
    }
    var table = ""
    var levels: [SVGChart.Level] = []
    var layerMIoU: [Double] = []
    if p.analyse, let meanHellinger {
        let layerBest = layerSweeps.map(\.best)
        layerMIoU = layerBest.map(\.meanIoU)
        report["per_layer"] = (0..<layerCount).map { l -> [String: Any] in
            ["layer": l, "hellinger": json(meanHellinger[l]), "miou": json(layerBest[l].meanIoU), "best_threshold": layerBest[l].threshold,
             "normalised_entropy": json(meanEntropies?[l] ?? .nan), "code_weight": Double(codeWeights?[l] ?? .nan), "selected": layers.contains(l)]
        }
        let variantBest = variantSweeps.map(\.best)
        report["methods"] = variants.indices.map { v -> [String: Any] in
            ["method": variants[v].name, "miou": json(variantBest[v].meanIoU), "best_threshold": variantBest[v].threshold]
        }
        table += "layer  hellinger  single-layer mIoU  threshold  entropy/log n  code weight\n"
        for l in 0..<layerCount {
            table += pad(String(l), 5) + pad(format(meanHellinger[l]), 11) + pad(format(layerBest[l].meanIoU), 19)
                + pad(String(format: "%.2f", layerBest[l].threshold), 11) + pad(format(meanEntropies?[l] ?? .nan), 15)
                + pad(format(Double(codeWeights?[l] ?? .nan)), 13) + (layers.contains(l) ? "" : "  (not selected)") + "\n"
        }
        table += "\n" + padRight("method (layers \(layers))", 28) + "    mIoU  threshold\n"
        for v in variants.indices {
            table += padRight(variants[v].name, 28) + pad(format(variantBest[v].meanIoU), 8)
                + pad(String(format: "%.2f", variantBest[v].threshold), 11) + "\n"
        }
        let colours = ["none": "#7f7f7f", "mean": "#2ca02c", "areaM paper": "#9467bd", "areaM code": "#d62728", "acr": "#ff7f0e"]
        for v in variants.indices {
            levels.append(SVGChart.Level(name: variants[v].name == "none" ? "seeds (no refinement)" : variants[v].name, value: variantBest[v].meanIoU,
                                         color: colours[variants[v].name] ?? "#000"))
        }
        report["table"] = table
    }

    let chart: String
    if p.analyse, let meanHellinger {
        let xs = (0..<layerCount).map(Double.init)
        chart = SVGChart.lines(
            title: "Per layer: Hellinger distance, mIoU refined with that layer (\(seeds.context.split), \(seeds.count) images)",
            xLabel: "layer", yLabel: "Hellinger distance / mIoU", xTicks: xs.map { ($0, String(Int($0))) }, yRange: 0...1,
            series: [SVGChart.Series(name: "mean Hellinger distance", color: "#1f77b4", points: Array(zip(xs, meanHellinger)).map { (x: $0.0, y: $0.1) }),
                     SVGChart.Series(name: "mIoU, this layer alone", color: "#d62728", points: Array(zip(xs, layerMIoU)).map { (x: $0.0, y: $0.1) })],
            levels: levels)
    } else if method == .none || (method == .acr && !p.acrUseAffinity) {
        chart = SVGChart.bars(title: "Layer weights", yLabel: "weight", labels: [], values: [],
                              note: method == .none ? "method none: no attention layers applied" : "acr without affinity: gradient layers \(gradientLayers), equal weights")
    } else {
        chart = SVGChart.bars(title: "Layer weights applied (\(method.rawValue)\(method == .areaM ? ", \(weighting.rawValue)" : ""), mean over images)",
                              yLabel: "weight", labels: layers.map { "layer \($0)" }, values: appliedWeights)
    }

    let reportText = String(decoding: try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]), as: UTF8.self)
    let reportFile = ctx.pendingOutput("report")
    try Data((reportText + "\n").utf8).write(to: URL(fileURLWithPath: reportFile.temporaryPath))
    let chartFile = ctx.pendingOutput("chart")
    try Data(chart.utf8).write(to: URL(fileURLWithPath: chartFile.temporaryPath))
    try writer.finish()
    try ctx.commitOutputs()

    if !table.isEmpty { print(table, terminator: "") }
    var line = "cam-refine: \(method.rawValue) on \(seeds.count) images of split '\(seeds.context.split)', layers \(layers)"
    if method == .areaM { line += " (\(weighting.rawValue) weights " + appliedWeights.map { String(format: "%.3f", $0) }.joined(separator: " ") + ")" }
    print(line)
}
