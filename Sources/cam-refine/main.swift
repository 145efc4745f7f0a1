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
    resources: StageResources(threads: 4, memoryMB: 4096, runtimeMinutes: 120), shardable: true)

func json(_ value: Double) -> Any { value.isFinite ? value : NSNull() }
func format(_ value: Double) -> String { value.isFinite ? String(format: "%.4f", value) : "n/a" }
/// Right-aligns `text` in `width` columns.
func pad(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - text.count)) + text }
func padRight(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }

/// The inputs opened and checked, and everything decided before the per-image refinement: the
/// layers, the split-mean statistics of pass 1 (over every image, also in a shard: the weights of
/// areaM's code weighting are split-wide), the refiner and the analysis variants.
struct Plan {
    let seeds: ClassMapsReader
    let attention: AttentionMapsReader
    let split: DatasetSplit?
    let method: RefinementMethod
    let weighting: AReAMWeighting
    let layers: [Int], gradientLayers: [Int]
    let layerCount: Int, tokens: Int
    let meanEntropies: [Double]?, meanHellinger: [Double]?
    let codeWeights: [Float]?
    let codeUsable: Bool
    let refiner: CamRefiner
    let description: String
    let variants: [(name: String, refiner: CamRefiner)]
    let thresholds: [Double]
    let classCount: Int

    /// `pass1`: the split-mean entropies and Hellinger distances when a shard stored them (a
    /// merge); nil computes them when they are needed.
    init(_ p: Params, camsPath: String, attentionPath: String, datasetPath: String?, datasetHash: () throws -> String,
         pass1 stored: (entropies: [Double]?, hellinger: [Double]?)? = nil) throws {
        method = p.method
        weighting = p.areamWeighting
        guard p.thresholdStep > 0, p.thresholdStop >= p.thresholdStart else {
            throw StageError("threshold sweep needs threshold_step > 0 and threshold_stop >= threshold_start")
        }
        seeds = try ClassMapsReader(path: camsPath)
        attention = try AttentionMapsReader(path: attentionPath)
        try attention.checkPairing(with: seeds)
        if method == .acr && attention.gradientScore == "none" {
            throw StoreError(path: attention.artifact.path, "holds no attention gradients (extract-attention ran with gradient_score=none); method acr needs them: rerun it with gradient_score=cls")
        }
        if let datasetPath {
            let dataset = try DatasetReader(path: datasetPath)
            split = try dataset.split(for: seeds.context, datasetHash: try datasetHash(), artifactPath: seeds.artifact.path, imageIndices: seeds.imageIndices)
        } else if p.analyse {
            throw StageError("analyse scores against ground truth: pass the optional input --in dataset=PATH")
        } else {
            split = nil
        }

        layerCount = attention.layers
        tokens = attention.tokens
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
        if let stored {
            meanEntropies = stored.entropies
            meanHellinger = stored.hellinger
        } else if needsEntropies {
            (meanEntropies, meanHellinger) = try Plan.splitMeans(seeds: seeds, attention: attention, analyse: p.analyse)
        } else {
            (meanEntropies, meanHellinger) = (nil, nil)
        }
        codeWeights = meanEntropies.map { AReAMWeights.code(meanEntropies: $0) }
        let layers = self.layers, gradientLayers = self.gradientLayers
        codeUsable = codeWeights.map { w in layers.contains { w[$0] > 0 } } ?? false
        if method == .areaM && weighting == .code && !codeUsable {
            throw StageError("areaM code weighting gives every selected layer \(layers) weight 0 (the highest split-mean entropy); select more layers")
        }

        refiner = CamRefiner(method: method, layers: layers, weighting: weighting, codeWeights: codeWeights,
                             gradientLayers: gradientLayers, useAffinity: p.acrUseAffinity)
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
        self.variants = variants
        thresholds = ThresholdSweep.range(start: p.thresholdStart, stop: p.thresholdStop, step: p.thresholdStep)
        classCount = seeds.context.classNames.count + 1
    }

    /// Pass 1 over every image: mean normalised refined entropy per layer (over images with a
    /// class) and, for the analysis, the mean Hellinger distance per layer.
    static func splitMeans(seeds: ClassMapsReader, attention: AttentionMapsReader, analyse: Bool) throws -> ([Double], [Double]?) {
        let layerCount = attention.layers, tokens = attention.tokens
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
            if analyse {
                let h = AffinityRefinement.meanHellinger(stacked: record.patchAttention, tokens: tokens, layers: layerCount)
                for l in 0..<layerCount { hellinger[l] += h[l] }
            }
            progress.advance()
        }
        guard withClasses > 0 else { throw StoreError(path: seeds.artifact.path, "has no image with a present class: no layer entropies to weigh by") }
        return (entropy.map { $0 / Double(withClasses) }, analyse ? hellinger.map { $0 / Double(max(seeds.count, 1)) } : nil)
    }

    func newTally(analyse: Bool) -> Tally {
        let sweep = ThresholdSweep(thresholds: thresholds, classCount: classCount)
        return Tally(layers: layers.count, layerSweeps: [ThresholdSweep](repeating: sweep, count: analyse ? layerCount : 0),
                     variantSweeps: [ThresholdSweep](repeating: sweep, count: variants.count))
    }
}

/// What pass 2 adds up over the images it refines: the applied layer weights of every image (kept
/// per image, so that a merge adds them in image order and gets the same sums to the bit), the
/// equal-weight fallbacks, and the analysis sweeps (counts: shards' add up).
struct Tally {
    var layers: Int
    var weights: [[Float]] = []
    var fallbacks = 0
    var layerSweeps: [ThresholdSweep]
    var variantSweeps: [ThresholdSweep]

    init(layers: Int, layerSweeps: [ThresholdSweep], variantSweeps: [ThresholdSweep]) {
        self.layers = layers
        self.layerSweeps = layerSweeps
        self.variantSweeps = variantSweeps
    }

    var statistics: WeightStatistics {
        var statistics = WeightStatistics(layers: layers)
        for w in weights { statistics.add(w) }
        return statistics
    }

    /// A shard's tally and the pass-1 means, in its cams artifact (`shard_*`; a merge drops them).
    func write(to root: HDF5Group, plan: Plan) throws {
        // Arrays only where there is something to store (HDF5 chunks cannot be empty).
        if !weights.isEmpty { try root.write("shard_layer_weights", weights.flatMap { $0 }, shape: [weights.count, layers]) }
        try root.setAttribute("shard_fallbacks", Int64(fallbacks))
        let sweeps = layerSweeps + variantSweeps
        if !sweeps.isEmpty { try root.write("shard_sweep_counts", sweeps.flatMap(\.rawCounts)) }
        if let entropies = plan.meanEntropies { try root.write("shard_mean_entropies", entropies) }
        if let hellinger = plan.meanHellinger { try root.write("shard_mean_hellinger", hellinger) }
    }

    static func storedPass1(in reader: ArtifactReader) throws -> (entropies: [Double]?, hellinger: [Double]?) {
        func optional(_ name: String) throws -> [Double]? {
            reader.root.contains(name) ? try reader.root.read(name, as: Double.self).values : nil
        }
        return (try optional("shard_mean_entropies"), try optional("shard_mean_hellinger"))
    }

    mutating func add(storedIn reader: ArtifactReader) throws {
        let root = reader.root
        guard root.hasAttribute("shard_fallbacks") else { throw StoreError(path: reader.path, "holds no shard tally (not written by cam-refine --shard)") }
        if root.contains("shard_layer_weights") {
            let stored = try root.read("shard_layer_weights", as: Float.self)
            guard stored.shape.count == 2, stored.shape[1] == layers else {
                throw StoreError(path: reader.path, "'shard_layer_weights' has shape \(stored.shape), expected [images, \(layers)]")
            }
            for row in 0..<stored.shape[0] { weights.append(Array(stored.values[row * layers..<(row + 1) * layers])) }
        }
        fallbacks += Int(try root.int64Attribute("shard_fallbacks"))
        let counts = root.contains("shard_sweep_counts") ? try root.read("shard_sweep_counts", as: Int64.self).values : []
        let size = (layerSweeps + variantSweeps).first?.rawCounts.count ?? 0
        guard counts.count == size * (layerSweeps.count + variantSweeps.count) else {
            throw StoreError(path: reader.path, "'shard_sweep_counts' holds \(counts.count) counts, expected \(size * (layerSweeps.count + variantSweeps.count))")
        }
        for k in 0..<(layerSweeps.count + variantSweeps.count) {
            let chunk = Array(counts[k * size..<(k + 1) * size])
            if k < layerSweeps.count {
                layerSweeps[k].merge(ThresholdSweep(thresholds: layerSweeps[k].thresholds, classCount: layerSweeps[k].classCount, counts: chunk)!)
            } else {
                let v = k - layerSweeps.count
                variantSweeps[v].merge(ThresholdSweep(thresholds: variantSweeps[v].thresholds, classCount: variantSweeps[v].classCount, counts: chunk)!)
            }
        }
    }
}

/// The report (JSON text), chart (SVG), analysis table and applied mean weights for `tally`.
func report(_ plan: Plan, _ tally: Tally, params p: Params, seedsHash: String, attentionHash: String)
    -> (json: String, chart: String, table: String, weights: [Double]) {
    let (method, weighting, layers, layerCount, seeds, attention) = (plan.method, plan.weighting, plan.layers, plan.layerCount, plan.seeds, plan.attention)
    let statistics = tally.statistics
    // Inputs by content hash, not path: a path names the workspace, and the same inputs must
    // give the same bytes wherever they are.
    var report: [String: Any] = [
        "method": method.rawValue, "layers": layers, "attention_layers": layerCount,
        "grid": [attention.gridHeight, attention.gridWidth], "images": seeds.count, "split": seeds.context.split,
        "seeds": seedsHash, "attention": attentionHash, "map_description": plan.description,
    ]
    if method == .areaM { report["aream_weighting"] = weighting.rawValue }
    if method == .acr { report["acr"] = ["gradient_layers": plan.gradientLayers, "use_affinity": p.acrUseAffinity] }
    let appliedWeights = statistics.mean
    if method != .none && !(method == .acr && !p.acrUseAffinity) {
        report["layer_weights"] = layers.indices.map { i -> [String: Any] in
            ["layer": layers[i], "mean": json(appliedWeights[i]), "min": json(statistics.low[i]), "max": json(statistics.high[i])]
        }
    }
    if method == .areaM && weighting == .paper { report["equal_weight_fallbacks"] = tally.fallbacks }
    let (meanEntropies, codeWeights, variants) = (plan.meanEntropies, plan.codeWeights, plan.variants)
    if let meanEntropies, let codeWeights {
        report["split_mean_entropy"] = ["normalised_entropy": meanEntropies.map(json), "code_weights": codeWeights.map { Double($0) },
                                        "note": "per attention layer: refined-map entropy / log n averaged over images with classes; code weight = 1 - min-max normalised entropy"]
    }
    var table = ""
    var levels: [SVGChart.Level] = []
    var layerMIoU: [Double] = []
    if p.analyse, let meanHellinger = plan.meanHellinger {
        let layerBest = tally.layerSweeps.map(\.best)
        layerMIoU = layerBest.map(\.meanIoU)
        report["per_layer"] = (0..<layerCount).map { l -> [String: Any] in
            ["layer": l, "hellinger": json(meanHellinger[l]), "miou": json(layerBest[l].meanIoU), "best_threshold": layerBest[l].threshold,
             "normalised_entropy": json(meanEntropies?[l] ?? .nan), "code_weight": Double(codeWeights?[l] ?? .nan), "selected": layers.contains(l)]
        }
        let variantBest = tally.variantSweeps.map(\.best)
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
    if p.analyse, let meanHellinger = plan.meanHellinger {
        let xs = (0..<layerCount).map(Double.init)
        chart = SVGChart.lines(
            title: "Per layer: Hellinger distance, mIoU refined with that layer (\(seeds.context.split), \(seeds.count) images)",
            xLabel: "layer", yLabel: "Hellinger distance / mIoU", xTicks: xs.map { ($0, String(Int($0))) }, yRange: 0...1,
            series: [SVGChart.Series(name: "mean Hellinger distance", color: "#1f77b4", points: Array(zip(xs, meanHellinger)).map { (x: $0.0, y: $0.1) }),
                     SVGChart.Series(name: "mIoU, this layer alone", color: "#d62728", points: Array(zip(xs, layerMIoU)).map { (x: $0.0, y: $0.1) })],
            levels: levels)
    } else if method == .none || (method == .acr && !p.acrUseAffinity) {
        chart = SVGChart.bars(title: "Layer weights", yLabel: "weight", labels: [], values: [],
                              note: method == .none ? "method none: no attention layers applied" : "acr without affinity: gradient layers \(plan.gradientLayers), equal weights")
    } else {
        chart = SVGChart.bars(title: "Layer weights applied (\(method.rawValue)\(method == .areaM ? ", \(weighting.rawValue)" : ""), mean over images)",
                              yLabel: "weight", labels: layers.map { "layer \($0)" }, values: appliedWeights)
    }
    // Unchanged from a failed serialisation: every value above is JSON.
    let text = String(decoding: (try? JSONSerialization.data(withJSONObject: report, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data(), as: UTF8.self)
    return (text, chart, table, appliedWeights)
}

/// Writes the report and chart as pending outputs.
func writeReport(_ made: (json: String, chart: String, table: String, weights: [Double]), pendingOutput: (String) -> PendingFile) throws {
    try Data((made.json + "\n").utf8).write(to: URL(fileURLWithPath: pendingOutput("report").temporaryPath))
    try Data(made.chart.utf8).write(to: URL(fileURLWithPath: pendingOutput("chart").temporaryPath))
}

func summaryLine(_ plan: Plan, weights: [Double]) -> String {
    var line = "cam-refine: \(plan.method.rawValue) on \(plan.seeds.count) images of split '\(plan.seeds.context.split)', layers \(plan.layers)"
    if plan.method == .areaM { line += " (\(plan.weighting.rawValue) weights " + weights.map { String(format: "%.3f", $0) }.joined(separator: " ") + ")" }
    return line
}

StageMain.run(spec, parameters: Params.self, merge: mergeShards) { ctx in
    let p = ctx.params
    let plan = try Plan(p, camsPath: ctx.input("cams"), attentionPath: ctx.input("attention"), datasetPath: ctx.optionalInput("dataset"),
                        datasetHash: { try ctx.inputContentHashes()["dataset"]! })
    let (seeds, attention, layerCount) = (plan.seeds, plan.attention, plan.layerCount)
    let singleLayer = (0..<layerCount).map { CamRefiner(method: .mean, layers: [$0]) }

    let writer = try ClassMapsWriter(try ctx.createArtifact("cams", kind: .cams), context: seeds.context, description: plan.description)
    var tally = plan.newTally(analyse: p.analyse)
    let part = ctx.shardRange(of: seeds.count)
    let needsEntropies = plan.meanEntropies != nil
    let progress = ProgressReporter(needsEntropies ? "cam-refine pass 2/2" : "cam-refine", total: part.count, unit: "img")
    for n in part {
        let maps = try seeds.maps(n), record = try attention.record(n)
        try attention.checkEntry(n, maps, record, seeds: seeds)
        let output = try plan.refiner.refine(seeds: maps, attention: record)
        if let weights = output.weights, !maps.classes.isEmpty { tally.weights.append(weights) }
        if output.equalWeightsFallback { tally.fallbacks += 1 }
        let size = seeds.imageSizes[n]
        try writer.append(imageIndex: seeds.imageIndices[n], imageHeight: size.height, imageWidth: size.width, maps: output.maps)
        if let split = plan.split, p.analyse {
            let truth = try split.mask(seeds.imageIndices[n])
            for l in 0..<layerCount { tally.layerSweeps[l].add(ClassMapsWriter.asStored(try singleLayer[l].refine(seeds: maps, attention: record).maps), truth: truth) }
            for (v, variant) in plan.variants.enumerated() {
                tally.variantSweeps[v].add(ClassMapsWriter.asStored(try variant.refiner.refine(seeds: maps, attention: record).maps), truth: truth)
            }
        }
        progress.advance()
    }
    if ctx.shard != nil { try tally.write(to: writer.artifact.root, plan: plan) }

    let inputHashes = try ctx.inputContentHashes()
    let made = report(plan, tally, params: p, seedsHash: inputHashes["cams"]!, attentionHash: inputHashes["attention"]!)
    try writeReport(made, pendingOutput: ctx.pendingOutput)
    try writer.finish()
    try ctx.commitOutputs()

    if !made.table.isEmpty { print(made.table, terminator: "") }
    print(summaryLine(plan, weights: made.weights))
}

/// The refined maps joined; the report and chart made again from the shards' tallies (summed;
/// per-image weights added in image order) and the pass-1 means they stored: the unsharded run's.
func mergeShards(_ ctx: ShardMergeContext<Params>) throws {
    let p = ctx.params
    let camsFile = ctx.pendingOutput("cams")
    let shards = try ShardParts(ctx.parts("cams"), destination: camsFile.destination)
    let plan = try Plan(p, camsPath: ctx.input("cams"), attentionPath: ctx.input("attention"), datasetPath: ctx.optionalInput("dataset"),
                        datasetHash: { try shards.provenance.inputs["dataset"] ?? ContentHash.ofFile(ctx.input("dataset")) },
                        pass1: try Tally.storedPass1(in: shards.readers[0]))
    var tally = plan.newTally(analyse: p.analyse)
    for reader in shards.readers { try tally.add(storedIn: reader) }
    try MapShards.merge(shards.paths, to: camsFile.temporaryPath)
    let hashes = shards.provenance.inputs
    guard let seedsHash = hashes["cams"], let attentionHash = hashes["attention"] else {
        throw StoreError(path: shards.paths[0], "its provenance does not name the inputs 'cams' and 'attention'")
    }
    let made = report(plan, tally, params: p, seedsHash: seedsHash, attentionHash: attentionHash)
    try writeReport(made, pendingOutput: ctx.pendingOutput)
    print(summaryLine(plan, weights: made.weights))
}
