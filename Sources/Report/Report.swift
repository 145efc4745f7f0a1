import ArtifactStore
import Datasets
import Foundation
import Imaging
import Localization
import Runner
import Training
#if canImport(Glibc)
import Glibc
#endif

/// One image of a dataset split, followed through every pipeline of a report.
public struct ReportImage: Hashable, Sendable, CustomStringConvertible {
    public let split: String
    public let index: Int

    public init(split: String, index: Int) {
        self.split = split
        self.index = index
    }

    /// `SPLIT:INDEX`, e.g. `val:3`.
    public init?(parsing text: String) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, let index = Int(parts[1]), index >= 0 else { return nil }
        self.init(split: parts[0], index: index)
    }

    public var description: String { "\(split):\(index)" }

    /// The default selection: the first ⌈n/2⌉ images of the train split (where the seeds, refined
    /// maps and labels are) and the first ⌊n/2⌋ of val (where the segmenters predict).
    public static func defaults(count: Int) -> [ReportImage] {
        (0..<(count + 1) / 2).map { ReportImage(split: "train", index: $0) } + (0..<count / 2).map { ReportImage(split: "val", index: $0) }
    }
}

public struct ReportOptions: Sendable {
    /// The folder that gets index.html and index_files/.
    public var folder: String
    public var images: [ReportImage]
    /// make compare's compare.json (mean ± std over seeds), when present.
    public var seedStatistics: String?
    /// The command line, shown on the page.
    public var command: String
    /// Compare every evaluate metric, not the pipelines' summary fields (`wsss compare --all-metrics`).
    public var allMetrics: Bool

    public init(folder: String, images: [ReportImage], seedStatistics: String?, command: String, allMetrics: Bool = false) {
        self.folder = folder
        self.images = images
        self.seedStatistics = seedStatistics
        self.command = command
        self.allMetrics = allMetrics
    }
}

public struct ReportResult: Sendable {
    /// index.html's absolute path.
    public let page: String
    public let files: Int
    public let bytes: Int64
    /// Pipelines or stages that have not run (or are stale), one line each.
    public let notes: [String]
}

/// `wsss report`: one static HTML page (plus its pictures in index_files/) for a comparison of
/// pipelines, drawn from their artifacts and the runner's records only.
public enum Report {
    public static func write(runner: Runner, pipelines: [BoundPipeline], options: ReportOptions) throws -> ReportResult {
        let page = try ReportPage(runner: runner, pipelines: pipelines, options: options)
        return try page.write()
    }
}

/// The columns in which a pipeline's maps appear, by the stage executable that makes them.
enum MapColumn: Int, CaseIterable {
    case seeds, refined, pseudo, psa, prediction

    var title: String {
        switch self {
        case .seeds: return "seeds"
        case .refined: return "refined"
        case .pseudo: return "pseudo labels"
        case .psa: return "PSA labels"
        case .prediction: return "prediction"
        }
    }

    /// Stage executable -> (column, the output holding the maps).
    static let producers: [String: (column: MapColumn, output: String)] = [
        "extract-attention": (.seeds, "cams"), "cam-refine": (.refined, "cams"), "pseudo-label": (.pseudo, "labels"),
        "psa-refine": (.psa, "labels"), "seg-train": (.prediction, "predictions"), "single-stage-train": (.prediction, "predictions"),
    ]
}

func executableName(_ stage: BoundStage) -> String { (stage.decl.run as NSString).lastPathComponent }

/// One pipeline with what its stages produced.
struct PipelineView {
    let bound: BoundPipeline
    let stages: [StageProducts]
    var name: String { bound.name }

    func products(_ stage: String) -> StageProducts? { stages.first { $0.name == stage } }

    /// Evaluate stages and the stage their subject comes from.
    var evaluations: [(evaluate: StageProducts, subject: BoundStage)] {
        stages.compactMap { products in
            guard executableName(products.stage) == "evaluate",
                  case .stage(let upstream, _)? = products.stage.decl.inputs.first(where: { $0.name == "subject" })?.source,
                  let subject = bound.stage(upstream) else { return nil }
            return (products, subject)
        }
    }

    /// The stages whose maps fill `column`: those an evaluate stage scores, else every such stage.
    func mapStages(_ column: MapColumn) -> [StageProducts] {
        let all = stages.filter { MapColumn.producers[executableName($0.stage)]?.column == column }
        let scored = Set(evaluations.map(\.subject.name))
        let evaluated = all.filter { scored.contains($0.name) }
        return evaluated.isEmpty ? all : evaluated
    }

    /// The evaluate stage scoring `stage`, if any.
    func evaluation(of stage: String) -> StageProducts? { evaluations.first { $0.subject.name == stage }?.evaluate }

    /// The dataset artifact: the `dataset` output of a stage (prepare-data).
    var datasetStage: StageProducts? { stages.first { $0.stage.decl.outputs.contains { $0.name == "dataset" } } }
}

final class ReportPage {
    let runner: Runner
    let views: [PipelineView]
    let options: ReportOptions
    let provenance = Provenance()
    let assets: String
    var notes: [String] = []
    private var datasets: [String: DatasetReader] = [:]
    private var written = 0

    init(runner: Runner, pipelines: [BoundPipeline], options: ReportOptions) throws {
        self.runner = runner
        self.options = options
        views = try pipelines.map { PipelineView(bound: $0, stages: try runner.products($0)) }
        assets = options.folder + "/index_files"
    }

    // MARK: Reading

    func dataset(_ view: PipelineView) -> (reader: DatasetReader, hash: String, source: Int)? {
        guard let stage = view.datasetStage, let output = stage.outputs["dataset"] else { return nil }
        let source = provenance.artifact(output, pipeline: view.name, stage: stage.name)
        if let known = datasets[output.hash] { return (known, output.hash, source) }
        guard let reader = try? DatasetReader(path: output.stored) else { return nil }
        datasets[output.hash] = reader
        return (reader, output.hash, source)
    }

    /// A JSON output of a stage, with its source number.
    func json(_ stage: StageProducts, _ output: String, pipeline: String) -> (value: [String: JSONValue], source: Int)? {
        guard let file = stage.outputs[output], let data = FileManager.default.contents(atPath: file.stored),
              case .object(let object)? = try? JSONValue.parse(data) else { return nil }
        return (object, provenance.artifact(file, pipeline: pipeline, stage: stage.name))
    }

    /// The JSON output of an evaluate (or metrics) stage: `metrics_json`, else the first JSON object among its outputs.
    func metrics(_ stage: StageProducts, pipeline: String) -> (value: [String: JSONValue], source: Int)? {
        if let found = json(stage, "metrics_json", pipeline: pipeline) { return found }
        for output in stage.stage.decl.outputs where output.name != "metrics_json" {
            if let found = json(stage, output.name, pipeline: pipeline) { return found }
        }
        return nil
    }

    /// Copies a stored output into index_files/ and returns its name there.
    func copy(_ output: StageProducts.Output, as name: String) throws -> String {
        let target = assets + "/" + name
        try? FileManager.default.removeItem(atPath: target)
        try FileManager.default.copyItem(atPath: output.stored, toPath: target)
        // Stored objects are read-only; the copy need not be.
        chmod(target, 0o644)
        written += 1
        return "index_files/" + name
    }

    func writeAsset(_ name: String, _ text: String) throws -> String {
        try Data(text.utf8).write(to: URL(fileURLWithPath: assets + "/" + name))
        written += 1
        return "index_files/" + name
    }

    func writePNG(_ name: String, _ image: RGBImage) throws -> String {
        if !FileManager.default.fileExists(atPath: assets + "/" + name) {
            try PNG.write(image, to: assets + "/" + name)
            written += 1
        }
        return "index_files/" + name
    }

    // MARK: The page

    func write() throws -> ReportResult {
        let fm = FileManager.default
        try fm.createDirectory(atPath: options.folder, withIntermediateDirectories: true)
        try? fm.removeItem(atPath: assets)
        try fm.createDirectory(atPath: assets, withIntermediateDirectories: true)

        var body = ""
        body += "<h1>wsss report: \(HTML.escape(views.map(\.name).joined(separator: ", ")))</h1>\n"
        body += "<p><small>Written by <code>\(HTML.escape(options.command))</code> from the artifacts and the runner's records in "
            + "<code>\(HTML.escape(runner.workspace.root))</code>. Every number and picture comes from a stage output or a cache "
            + "entry; [n] links to its row under <a href=\"#provenance-section\">Provenance</a> (file and content hash).</small></p>\n"
        body += stateBanner()
        body += ##"<p>Sections: <a href="#comparison">comparison</a> · <a href="#timings-section">stage timings</a> · <a href="#iou-section">per-class IoU</a> · <a href="#confusion-section">confusion</a> · <a href="#images-section">images</a> · <a href="#layers-section">per-layer analysis</a> · <a href="#training-section">training curves</a> · <a href="#provenance-section">provenance</a></p>"## + "\n"
        body += try comparisonSection()
        body += timingsSection()
        body += try iouSection()
        body += try confusionSection()
        body += try imagesSection()
        body += try layersSection()
        body += try trainingSection()
        body += #"<h2 id="provenance-section">Provenance</h2>"# + "\n"
        body += "<p>Stage outputs are read from the runner's object store (<code>Artifacts/.cache/objects</code>) by content hash, "
            + "so a file another pipeline overwrote since cannot stand in; paths are those of the pipeline files. "
            + "Stage times come from the cache entries (artifacts hold no wall-clock times).</p>\n"
        body += provenance.table

        let title = "wsss report: " + views.map(\.name).joined(separator: ", ")
        let html = """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>\(HTML.escape(title))</title>
        <style>
        \(HTML.style)
        </style>
        </head>
        <body>
        \(body)
        </body>
        </html>

        """
        let page = options.folder + "/index.html"
        let temporary = options.folder + "/.index.html.tmp"
        try Data(html.utf8).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, page) == 0 else { throw RunnerError("\(page): cannot write (\(String(cString: strerror(errno))))") }
        var bytes = Int64(html.utf8.count)
        for name in (try? fm.contentsOfDirectory(atPath: assets)) ?? [] {
            bytes += (try? fm.attributesOfItem(atPath: assets + "/" + name)[.size] as? Int64) ?? 0
        }
        return ReportResult(page: page, files: written + 1, bytes: bytes, notes: notes)
    }

    /// Which pipelines or stages have not run (or are stale): said once at the top, and marked in every cell.
    func stateBanner() -> String {
        var lines: [String] = []
        for view in views {
            let notRun = view.stages.filter { $0.state == .notRun }
            let stale = view.stages.filter { $0.state == .stale }
            if notRun.count == view.stages.count {
                lines.append("<b>\(HTML.escape(view.name))</b> has not run: no stage has outputs (run <code>wsss run \(HTML.escape(view.bound.displayFile))</code>).")
                notes.append("\(view.name): not run (wsss run \(view.bound.displayFile))")
            } else if !notRun.isEmpty {
                lines.append("<b>\(HTML.escape(view.name))</b>: not run yet: \(HTML.escape(notRun.map(\.name).joined(separator: ", "))).")
                notes.append("\(view.name): stages not run yet: \(notRun.map(\.name).joined(separator: ", "))")
            }
            if !stale.isEmpty {
                let why = stale.map { "\($0.name) (\($0.reasons.first ?? "stale"))" }.joined(separator: "; ")
                lines.append("<b>\(HTML.escape(view.name))</b>: stale, shown from their last run: \(HTML.escape(why)).")
                notes.append("\(view.name): stale, shown from their last run: \(stale.map(\.name).joined(separator: ", "))")
            }
        }
        if lines.isEmpty {
            return #"<div class="banner ok" id="state">Every stage of every pipeline is up to date.</div>"# + "\n"
        }
        return #"<div class="banner" id="state">"# + lines.joined(separator: "<br>\n") + "</div>\n"
    }

    /// The cell for a stage that is absent or has not run.
    func absentCell(_ stage: StageProducts?, what: String = "not in this pipeline") -> String {
        guard let stage else { return HTML.notApplicable(what) }
        // A stale stage shows its last run, which may predate an output the stage writes now.
        return stage.state == .notRun ? HTML.notRun() : HTML.notApplicable("not written by its last run (stale)")
    }

    // MARK: Comparison, parameters, timings

    func comparisonSection() throws -> String {
        let bound = views.map(\.bound)
        let bySummary = !options.allMetrics && bound.allSatisfy { !$0.pipeline.summary.isEmpty }
        let comparison = bySummary ? try runner.compareSummaries(bound) : try runner.compare(bound)
        let seeds = seedStatistics()
        var out = #"<h2 id="comparison">Comparison</h2>"# + "\n"
        out += "<p>The table of <code>wsss compare</code>"
            + (bySummary ? " (each pipeline's <code>summary:</code> fields, then training and total seconds)" : " (every evaluate metric, then training and total seconds)")
        if let seeds {
            out += "; below each value, the mean ± sample standard deviation over seeds from <code>\(HTML.escape(seeds.shown))</code> (<code>make compare</code>)\(HTML.source(seeds.source))"
        }
        out += ". Training and total seconds add up the stage times below, of the runs shown (a stale stage's last run too).</p>\n"
        var rows: [[String]] = []
        let none = [JSONValue?](repeating: nil, count: views.count)
        let metricRows = comparison.metrics.map { (name: $0.name, values: $0.values) }
            + (bySummary ? [] : [(name: "train_seconds", values: none), (name: "total_seconds", values: none)])
        for metric in metricRows {
            var row = ["<th>\(HTML.escape(metric.name))</th>"]
            for (p, view) in views.enumerated() {
                row.append(comparisonCell(metric: metric.name, value: metric.values[p], view: view, bySummary: bySummary,
                                          seeds: seeds?.rows[view.name]?[metric.name], seedSource: seeds?.source))
            }
            rows.append(row)
        }
        if comparison.metrics.isEmpty { rows.append(["<th>metrics</th>"] + views.map { absentCell($0.evaluations.first?.evaluate, what: "no evaluate stage") }) }
        out += HTML.table(id: "compare", header: ["metric"] + comparison.pipelines, rows: rows)

        out += "<h3>Parameters that differ</h3>\n"
        if views.count < 2 {
            out += "<p>One pipeline: nothing to differ from.</p>\n"
        } else if comparison.params.isEmpty {
            out += "<p>No stage parameter differs between these pipelines.</p>\n"
        } else {
            let sources = views.map { view in
                provenance.file(view.bound.file, shown: view.bound.displayFile, use: "\(view.name): pipeline file (parameters)")
            }
            out += HTML.table(id: "params", header: ["stage.parameter"] + comparison.pipelines, rows: comparison.params.map { param in
                ["<th>\(HTML.escape(param.name))</th>"] + param.values.enumerated().map { p, value in
                    guard let value else { return HTML.notApplicable() }
                    return HTML.cell("<code>\(HTML.escape(value.display))</code>" + (sources[p].map(HTML.source) ?? ""))
                }
            })
        }
        return out
    }

    func comparisonCell(metric: String, value: JSONValue?, view: PipelineView, bySummary: Bool,
                        seeds: (mean: Double, std: Double, n: Int)?, seedSource: Int?) -> String {
        let isTime = metric == "train_seconds" || metric == "total_seconds"
        // The stage the metric comes from: `summary:` maps a field to STAGE.KEY; --all-metrics rows are STAGE.KEY.
        let reference = bySummary ? view.bound.pipeline.summary.first { $0.field == metric }?.metric : metric
        let stageName = reference.map { String($0.split(separator: ".", maxSplits: 1).first ?? "") }
        var html: String
        if isTime {
            // The runs shown (a stale stage's last run included), as in the timings table; `wsss
            // compare` counts up-to-date stages only.
            let counted = metric == "total_seconds" ? view.stages
                : view.stages.filter { Runner.trainingExecutables.contains(executableName($0.stage)) }
            let times = counted.compactMap(\.seconds)
            if times.isEmpty { return counted.isEmpty ? HTML.notApplicable("no training stage") : HTML.notRun() }
            html = HTML.seconds(times.reduce(0, +))
                + ##"<a class="src" href="#timings-section" title="the sum of the stage times below, from the cache entries">[t]</a>"##
            if times.count < counted.count { html += "<br><small>(\(counted.count - times.count) stages not run)</small>" }
        } else if let value, let number = value.doubleValue {
            html = HTML.number(number)
            if let stageName, let stage = view.products(stageName), let found = metrics(stage, pipeline: view.name) {
                html += HTML.source(found.source)
            }
        } else if let value {
            html = HTML.escape(value.display)
        } else if !isTime, let stageName, let stage = view.products(stageName), stage.state == .notRun {
            return HTML.notRun()
        } else if !isTime, reference == nil || view.products(stageName ?? "") == nil {
            return HTML.notApplicable()
        } else {
            return HTML.notApplicable("no such metric")
        }
        if let seeds, let seedSource {
            let text = isTime ? String(format: "%.0f ± %.0f s", seeds.mean, seeds.std) : String(format: "%.3f ± %.3f", seeds.mean, seeds.std)
            html += "<br><small>\(text) (\(seeds.n) seeds)</small>\(HTML.source(seedSource))"
        }
        return HTML.cell(html, numeric: true)
    }

    /// make compare's compare.json: pipeline -> field -> mean, std, n.
    func seedStatistics() -> (rows: [String: [String: (mean: Double, std: Double, n: Int)]], shown: String, source: Int)? {
        let path = options.seedStatistics ?? runner.workspace.path("Artifacts/compare/compare.json")
        guard let data = FileManager.default.contents(atPath: path), case .object(let top)? = try? JSONValue.parse(data),
              case .array(let rows)? = top["rows"] else { return nil }
        var table: [String: [String: (mean: Double, std: Double, n: Int)]] = [:]
        for case .object(let row) in rows {
            guard case .string(let name)? = row["pipeline"], views.contains(where: { $0.name == name }) else { continue }
            for (field, value) in row {
                guard case .object(let stats) = value, let mean = stats["mean"]?.doubleValue, let std = stats["std"]?.doubleValue else { continue }
                table[name, default: [:]][field] = (mean, std, Int(stats["n"]?.doubleValue ?? 0))
            }
        }
        let shown = runner.workspace.display(path)
        guard !table.isEmpty, let source = provenance.file(path, shown: shown, use: "make compare: mean ± std over seeds") else { return nil }
        return (table, shown, source)
    }

    func timingsSection() -> String {
        var names: [String] = []
        for view in views { for stage in view.stages where !names.contains(stage.name) { names.append(stage.name) } }
        var rows: [[String]] = names.map { name in
            ["<th>\(HTML.escape(name))</th>"] + views.map { view in
                guard let stage = view.products(name) else { return HTML.notApplicable() }
                guard let seconds = stage.seconds, let key = stage.entryKey else { return absentCell(stage) }
                let source = provenance.entry(key, path: runner.entryDisplayPath(key), pipeline: view.name, stage: name)
                let run = executableName(stage.stage)
                let stale = stage.state == .stale ? " <small>(stale: last run)</small>" : ""
                return HTML.cell(HTML.seconds(seconds) + HTML.source(source) + "<br><small>\(HTML.escape(run))</small>" + stale, numeric: true)
            }
        }
        rows.append(["<th>total</th>"] + views.map { view in
            let times = view.stages.compactMap(\.seconds)
            return times.isEmpty ? HTML.notRun("nothing has run") : HTML.cell("<b>\(HTML.seconds(times.reduce(0, +)))</b>", numeric: true)
        })
        return #"<h3 id="timings-section">Stage timings</h3>"# + "\n"
            + "<p>Seconds each stage ran when it made the outputs shown (the runner's cache entries; a cached stage keeps the time of the run that made it).</p>\n"
            + HTML.table(id: "timings", header: ["stage"] + views.map(\.name), rows: rows)
    }

    // MARK: Per-class IoU and confusion

    func classNames(_ view: PipelineView) -> [String]? { dataset(view).map { ["background"] + $0.reader.classNames } }

    func iouSection() throws -> String {
        var out = #"<h2 id="iou-section">Per-class IoU</h2>"# + "\n"
        out += "<p>Every evaluated stage: IoU of each class (evaluate's <code>per_class_iou</code>) by the kind of map it scores; classes absent from the split have no bar.</p>\n"
        var rows: [[String]] = []
        for (p, view) in views.enumerated() {
            var row = ["<th>\(HTML.escape(view.name))</th>"]
            for column in MapColumn.allCases {
                let evaluations = view.evaluations.filter { MapColumn.producers[executableName($0.subject)]?.column == column }
                if evaluations.isEmpty {
                    row.append(HTML.notApplicable(view.mapStages(column).isEmpty ? "not in this pipeline" : "not evaluated"))
                    continue
                }
                var figures: [String] = []
                for (evaluate, subject) in evaluations {
                    guard let found = metrics(evaluate, pipeline: view.name), case .object(let perClass)? = found.value["per_class_iou"] else {
                        figures.append(#"<figure><span class="missing">\#(evaluate.state == .notRun ? "not run yet" : "no metrics")</span><figcaption>\#(HTML.escape(evaluate.name))</figcaption></figure>"#)
                        continue
                    }
                    let names = classNames(view) ?? perClass.keys.sorted()
                    let present = names.filter { perClass[$0]?.doubleValue != nil }
                    let values = present.map { perClass[$0]!.doubleValue! }
                    let (json, source) = found
                    let miou = json["miou"]?.doubleValue ?? .nan
                    let svg = SVGChart.bars(title: "\(view.name) · \(evaluate.name) (\(subject.name)): mIoU \(HTML.number(miou, digits: 3))",
                                            yLabel: "IoU", labels: present.map(shortClassName), values: values)
                    let file = try writeAsset("iou-\(p)-\(evaluate.name).svg", svg)
                    figures.append(#"<figure><img class="chart" src="\#(file)" alt="per-class IoU of \#(HTML.escape(view.name)) \#(HTML.escape(evaluate.name))"><figcaption>\#(HTML.escape(evaluate.name)) of \#(HTML.escape(subject.name))\#(HTML.source(source))</figcaption></figure>"#)
                }
                row.append(HTML.cell(figures.joined()))
            }
            rows.append(row)
        }
        return out + HTML.table(id: "iou", header: ["pipeline"] + MapColumn.allCases.map(\.title), rows: rows)
    }

    func confusionSection() throws -> String {
        var out = #"<h2 id="confusion-section">Confusion of the final segmenter</h2>"# + "\n"
        out += "<p>evaluate's confusion matrix of each segmenter's predictions (rows: true class, as % of its pixels).</p>\n"
        var rows: [[String]] = []
        for (p, view) in views.enumerated() {
            let evaluations = view.evaluations.filter { MapColumn.producers[executableName($0.subject)]?.column == .prediction }
            guard !evaluations.isEmpty else {
                rows.append(["<th>\(HTML.escape(view.name))</th>", HTML.notApplicable(view.mapStages(.prediction).isEmpty ? "no segmenter in this pipeline" : "not evaluated")])
                continue
            }
            var figures: [String] = []
            var allMissing = true
            for (evaluate, subject) in evaluations {
                guard let output = evaluate.outputs["confusion"] else {
                    let why = evaluate.state == .notRun ? #"<span class="missing">not run yet</span>"# : "— its last run (stale) wrote no confusion matrix"
                    figures.append("<figure>\(why)<figcaption>\(HTML.escape(evaluate.name))</figcaption></figure>")
                    continue
                }
                allMissing = false
                let source = provenance.artifact(output, pipeline: view.name, stage: evaluate.name)
                let file = try copy(output, as: "confusion-\(p)-\(evaluate.name).svg")
                figures.append(#"<figure><img class="wide" src="\#(file)" alt="confusion of \#(HTML.escape(view.name)) \#(HTML.escape(evaluate.name))"><figcaption>\#(HTML.escape(evaluate.name)) of \#(HTML.escape(subject.name))\#(HTML.source(source))</figcaption></figure>"#)
            }
            let stale = evaluations.contains { $0.evaluate.state == .stale }
            rows.append(["<th>\(HTML.escape(view.name))</th>", !allMissing ? HTML.cell(figures.joined())
                         : stale ? HTML.notApplicable("its last run (stale) wrote no confusion matrix") : HTML.notRun()])
        }
        return out + HTML.table(id: "confusion", header: ["pipeline", "confusion matrix"], rows: rows)
    }

    // MARK: Images

    func imagesSection() throws -> String {
        var out = #"<h2 id="images-section">Images followed through every pipeline</h2>"# + "\n"
        guard let reference = views.lazy.compactMap({ self.dataset($0) }).first else {
            return out + #"<table id="images-none"><tr><td class="missing">no dataset has been made yet: run a pipeline</td></tr></table>"# + "\n"
        }
        let names = ["background"] + reference.reader.classNames
        out += "<p>The same images (by id, from each pipeline's dataset) in every pipeline, one row per pipeline. Maps in the VOC palette; "
            + "class maps (seeds, refined) are shown as their argmax with the background threshold their evaluate stage found best. "
            + "Seeds, refined maps and labels are made for the train split, predictions for val, so each image fills the columns of its split.</p>\n"
        var legend = #"<p class="legend" id="legend">"#
        for (label, name) in names.enumerated().map({ ($0.offset, $0.element) }) + [(Int(LabelMap.ignore), "ignore / uncertain (255)")] {
            let swatch = try writePNG("class-\(label).png", LabelMap(width: 8, height: 8, fill: UInt8(label)).colorized())
            legend += #"<span><img class="swatch" src="\#(swatch)" alt="colour of \#(HTML.escape(name))">\#(label) \#(HTML.escape(name))</span>"#
        }
        out += legend + "</p>\n"
        for (number, image) in options.images.enumerated() {
            guard let split = try? reference.reader.split(image.split), image.index < split.count else {
                out += "<h3>\(HTML.escape(image.description))</h3>\n"
                out += HTML.table(id: "image-\(number)", header: ["image"], rows: [[HTML.notApplicable("the dataset has no image \(image.description)")]])
                continue
            }
            let id = (try? split.id(image.index)) ?? "?"
            out += "<h3>\(HTML.escape(image.split)) image \(image.index) <small>(id <code>\(HTML.escape(id))</code>)</small></h3>\n"
            let header = ["pipeline", "image", "truth"] + MapColumn.allCases.map(\.title)
            var rows: [[String]] = []
            for view in views {
                rows.append(["<th>\(HTML.escape(view.name))</th>"] + (try imageRow(view, split: image.split, id: id)))
            }
            out += HTML.table(id: "image-\(number)", header: header, rows: rows)
        }
        return out
    }

    /// image | truth | one cell per map column for one pipeline and one image (found by id).
    func imageRow(_ view: PipelineView, split splitName: String, id: String) throws -> [String] {
        let columns = 2 + MapColumn.allCases.count
        guard let data = dataset(view) else {
            return [String](repeating: absentCell(view.datasetStage, what: "no dataset stage"), count: columns)
        }
        guard let split = try? data.reader.split(splitName), let index = try split.allIDs().firstIndex(of: id) else {
            return [String](repeating: HTML.notApplicable("image not in this pipeline's dataset"), count: columns)
        }
        let tag = "\(data.hash.dropFirst(7).prefix(12))-\(splitName)-\(index)"
        let picture = try writePNG("image-\(tag).png", try split.image(index))
        let truth = try split.mask(index)
        let truthFile = try writePNG("truth-\(tag).png", truth.colorized())
        var cells = [
            HTML.cell(#"<img class="px" src="\#(picture)" alt="image \#(HTML.escape(id))">"# + HTML.source(data.source)),
            HTML.cell(#"<img class="px" src="\#(truthFile)" alt="truth \#(HTML.escape(id))">"# + HTML.source(data.source)),
        ]
        for column in MapColumn.allCases {
            let stages = view.mapStages(column)
            if stages.isEmpty { cells.append(HTML.notApplicable()); continue }
            var parts: [(html: String, kind: String)] = []
            for stage in stages {
                parts.append(try mapPicture(view, stage: stage, column: column, split: split, index: index, datasetHash: data.hash, truth: truth))
            }
            let caption = stages.count > 1
            let html = zip(stages, parts).map { stage, part in
                caption ? "<figure>\(part.html)<figcaption>\(HTML.escape(stage.name))</figcaption></figure>" : part.html
            }.joined()
            let kinds = Set(parts.map(\.kind))
            if kinds == ["na"] {
                cells.append(#"<td class="na">\#(html)</td>"#)
            } else if kinds == ["missing"] {
                cells.append(#"<td class="missing">\#(html)</td>"#)
            } else {
                cells.append(HTML.cell(html))
            }
        }
        return cells
    }

    /// One stage's map of one image as a palette picture, or why there is none ("na": not made
    /// for this image; "missing": not run).
    func mapPicture(_ view: PipelineView, stage: StageProducts, column: MapColumn, split: DatasetSplit, index: Int,
                    datasetHash: String, truth: LabelMap) throws -> (html: String, kind: String) {
        guard let outputName = MapColumn.producers[executableName(stage.stage)]?.output, let output = stage.outputs[outputName] else {
            return (stage.state == .notRun ? "not run yet" : "no output", "missing")
        }
        var source = HTML.source(provenance.artifact(output, pipeline: view.name, stage: stage.name))
        let file = "map-\(output.hash.dropFirst(7).prefix(12))-\(split.name)-\(index).png"
        let labels: LabelMap
        do {
            if column == .seeds || column == .refined {
                let reader = try ClassMapsReader(path: output.stored)
                guard reader.context.split == split.name, reader.context.datasetHash == datasetHash,
                      let entry = reader.imageIndices.firstIndex(of: index) else {
                    return (notMade(reader.context, split: split.name, datasetHash: datasetHash, count: reader.count, stale: stage.state == .stale), "na")
                }
                // Background threshold: the one the stage's evaluation found best.
                var threshold = 0.5
                var thresholdNote = "background 0.50 (not evaluated)"
                if let evaluate = view.evaluation(of: stage.name), let found = metrics(evaluate, pipeline: view.name),
                   let best = found.value["best_threshold"]?.doubleValue {
                    threshold = best
                    thresholdNote = "background \(HTML.number(best, digits: 2))"
                    source += HTML.source(found.source)
                }
                let maps = try reader.maps(entry)
                let scores = resizePlanes(maps.values, count: maps.classes.count, width: maps.width, height: maps.height,
                                          toWidth: truth.width, toHeight: truth.height)
                labels = LabelMap(width: truth.width, height: truth.height,
                                  labels: Argmax.planar(scores, classes: maps.classes, pixels: truth.labels.count, background: .constant(Float(threshold))))
                source += "<br><small>\(thresholdNote)</small>"
            } else {
                let reader = try LabelMapsReader(path: output.stored, kind: column == .prediction ? .predictions : .labels)
                guard reader.context.split == split.name, reader.context.datasetHash == datasetHash,
                      let entry = reader.imageIndices.firstIndex(of: index) else {
                    return (notMade(reader.context, split: split.name, datasetHash: datasetHash, count: reader.count, stale: stage.state == .stale), "na")
                }
                let (height, width, values) = try reader.labels(entry)
                labels = LabelMap(width: width, height: height, labels: values)
            }
        } catch {
            notes.append("\(view.name): \(stage.name): \(error)")
            return ("cannot read \(HTML.escape(output.path)): \(HTML.escape("\(error)"))", "missing")
        }
        let picture = try writePNG(file, labels.colorized())
        return (#"<img class="px" src="\#(picture)" alt="\#(HTML.escape(stage.name)) \#(split.name) \#(index)">"# + source, "value")
    }

    func notMade(_ context: MapContext, split: String, datasetHash: String, count: Int, stale: Bool) -> String {
        if context.datasetHash != datasetHash { return stale ? "— its last run (stale) read another dataset" : "— made from another dataset" }
        if context.split != split { return "— made for the \(context.split) split" }
        return "— not among the \(count) images it mapped"
    }

    // MARK: Per-layer analysis

    func layersSection() throws -> String {
        var out = #"<h2 id="layers-section">Per-layer analysis</h2>"# + "\n"
        out += "<p>From cam-refine's report: per attention layer, the normalised entropy of the refined maps (AReAM's weighting), "
            + "the mean Hellinger distance between attention rows and the seed mIoU of refining with that layer alone "
            + "(the last two with <code>analyse: true</code>).</p>\n"
        var overview: [[String]] = []
        var details = ""
        for (p, view) in views.enumerated() {
            let refiners = view.stages.filter { executableName($0.stage) == "cam-refine" }
            guard !refiners.isEmpty else {
                overview.append(["<th>\(HTML.escape(view.name))</th>", HTML.notApplicable("no cam-refine stage in this pipeline")])
                continue
            }
            var cells: [String] = []
            for stage in refiners {
                guard let found = json(stage, "report", pipeline: view.name) else {
                    cells.append("\(HTML.escape(stage.name)): <span class=\"missing\">not run yet</span>")
                    continue
                }
                let (report, source) = found
                let anchor = "layers-\(p)-\(stage.name)"
                let method = report["method"]?.display ?? "?"
                let analysed = report["per_layer"] != nil
                cells.append(##"<a href="#\##(anchor)">\##(HTML.escape(stage.name))</a> (\##(HTML.escape(method))\##(analysed ? ", analysed" : ""))\##(HTML.source(source))"##)
                details += try layerDetails(view, stage: stage, report: report, source: source, anchor: anchor)
            }
            let anyRun = refiners.contains { $0.outputs["report"] != nil }
            overview.append(["<th>\(HTML.escape(view.name))</th>", anyRun ? HTML.cell(cells.joined(separator: "<br>")) : HTML.notRun()])
        }
        return out + HTML.table(id: "layers", header: ["pipeline", "cam-refine stages"], rows: overview) + details
    }

    func layerDetails(_ view: PipelineView, stage: StageProducts, report: [String: JSONValue], source: Int, anchor: String) throws -> String {
        func objects(_ value: JSONValue?) -> [[String: JSONValue]] {
            guard case .array(let items)? = value else { return [] }
            return items.compactMap(\.objectValue)
        }
        let count = Int(report["attention_layers"]?.doubleValue ?? 0)
        let perLayer = Dictionary(objects(report["per_layer"]).compactMap { row in row["layer"]?.doubleValue.map { (Int($0), row) } },
                                  uniquingKeysWith: { a, _ in a })
        var entropy: [Double?] = perLayer.isEmpty ? [] : (0..<count).map { perLayer[$0]?["normalised_entropy"]?.doubleValue }
        if entropy.allSatisfy({ $0 == nil || !$0!.isFinite }), case .object(let split)? = report["split_mean_entropy"],
           case .array(let values)? = split["normalised_entropy"] {
            entropy = values.map(\.doubleValue)
        }
        let weights = Dictionary(objects(report["layer_weights"]).compactMap { row in row["layer"]?.doubleValue.map { (Int($0), row["mean"]?.doubleValue) } },
                                 uniquingKeysWith: { a, _ in a })
        let analysed = !perLayer.isEmpty
        let notAnalysed = HTML.notApplicable("not analysed (analyse: false)")
        var rows: [[String]] = []
        var series: [(String, [Double?])] = [("entropy / log n", []), ("Hellinger", []), ("single-layer mIoU", [])]
        for layer in 0..<count {
            let e = layer < entropy.count ? entropy[layer] : nil
            let h = perLayer[layer]?["hellinger"]?.doubleValue, m = perLayer[layer]?["miou"]?.doubleValue
            let t = perLayer[layer]?["best_threshold"]?.doubleValue
            series[0].1.append(e); series[1].1.append(h); series[2].1.append(m)
            func value(_ v: Double?, absent: String, digits: Int = 4) -> String {
                guard let v, v.isFinite else { return absent }
                return HTML.cell(HTML.number(v, digits: digits) + HTML.source(source), numeric: true)
            }
            let weight: String
            if let w = weights[layer] { weight = value(w, absent: HTML.notApplicable("n/a")) } else { weight = HTML.notApplicable("layer not used") }
            rows.append([HTML.cell("\(layer)", numeric: true),
                         value(e, absent: HTML.notApplicable("not computed by method \(report["method"]?.display ?? "?")")),
                         value(h, absent: analysed ? HTML.notApplicable("n/a") : notAnalysed),
                         value(m, absent: analysed ? HTML.notApplicable("n/a") : notAnalysed),
                         value(t, absent: analysed ? HTML.notApplicable("n/a") : notAnalysed, digits: 2),
                         weight])
        }
        var out = #"<h3 id="\#(anchor)">\#(HTML.escape(view.name)) · \#(HTML.escape(stage.name)) (\#(HTML.escape(report["method"]?.display ?? "?")))</h3>"# + "\n"
        let colors = ["#4472c4", "#c0504d", "#9bbb59"]
        let drawn = series.enumerated().filter { $0.element.1.contains { $0 != nil } }
        if !drawn.isEmpty && count > 0 {
            let svg = SVGChart.lines(
                title: "\(view.name) · \(stage.name): per attention layer", xLabel: "layer", yLabel: "value",
                xTicks: (0..<count).map { (value: Double($0), label: "\($0)") }, yRange: 0...1,
                series: drawn.map { item in
                    SVGChart.Series(name: item.element.0, color: colors[item.offset],
                                    points: item.element.1.enumerated().map { (x: Double($0.offset), y: $0.element ?? .nan) })
                })
            let file = try writeAsset("layers-\(anchor).svg", svg)
            out += #"<figure><img class="wide" src="\#(file)" alt="per-layer analysis of \#(HTML.escape(view.name)) \#(HTML.escape(stage.name))"><figcaption>from \#(HTML.escape(stage.name)).report\#(HTML.source(source))</figcaption></figure>"# + "\n"
        }
        if !analysed && !entropy.contains(where: { $0?.isFinite == true }) {
            // Nothing per layer but the weights applied (method mean or acr without analyse: true).
            out += "<p>No per-layer entropy, Hellinger distance or single-layer mIoU: method \(HTML.escape(report["method"]?.display ?? "?")) "
                + "computes none, and the stage ran without <code>analyse: true</code>. The weights it applied:</p>\n"
            out += HTML.table(id: "\(anchor)-table", header: ["layer", "weight applied"], rows: rows.map { [$0[0], $0[5]] })
        } else {
            out += HTML.table(id: "\(anchor)-table", header: ["layer", "entropy / log n", "Hellinger", "single-layer mIoU", "best threshold", "weight applied"], rows: rows)
        }
        let methods = objects(report["methods"])
        if !methods.isEmpty {
            out += HTML.table(id: "\(anchor)-methods", header: ["refinement of the same seeds", "mIoU", "best threshold"], rows: methods.map { row in
                [HTML.cell(HTML.escape(row["method"]?.display ?? "?")),
                 row["miou"]?.doubleValue.map { HTML.cell(HTML.number($0) + HTML.source(source), numeric: true) } ?? HTML.notApplicable("n/a"),
                 row["best_threshold"]?.doubleValue.map { HTML.cell(HTML.number($0, digits: 2) + HTML.source(source), numeric: true) } ?? HTML.notApplicable("n/a")]
            })
        }
        return out
    }

    // MARK: Training curves

    static let trainers: Set<String> = ["classify-train", "seg-train", "single-stage-train"]

    func trainingSection() throws -> String {
        var out = #"<h2 id="training-section">Training curves</h2>"# + "\n"
        out += "<p>Per epoch, from the training log stored in each checkpoint (<code>/log</code>): losses, quality (mAP, F1, mIoU, ...) and learning rate; and the loss of every step.</p>\n"
        var rows: [[String]] = []
        for (p, view) in views.enumerated() {
            let trainers = view.stages.filter { Self.trainers.contains(executableName($0.stage)) && $0.stage.decl.outputs.contains { $0.name == "checkpoint" } }
            if trainers.isEmpty {
                rows.append(["<th>\(HTML.escape(view.name))</th>", HTML.notApplicable("no training stage")] + [String](repeating: HTML.notApplicable("no training stage"), count: 3))
                continue
            }
            for stage in trainers {
                var row = ["<th>\(HTML.escape(view.name))<br><small>\(HTML.escape(stage.name)) (\(HTML.escape(executableName(stage.stage))))</small></th>"]
                guard let output = stage.outputs["checkpoint"] else {
                    rows.append(row + [String](repeating: absentCell(stage), count: 4))
                    continue
                }
                let source = provenance.artifact(output, pipeline: view.name, stage: stage.name)
                let log: TrainingLog
                do {
                    log = try TrainingLog.read(from: try ArtifactReader(path: output.stored, kind: .checkpoint, versions: 1...Checkpoint.formatVersion).root)
                } catch {
                    notes.append("\(view.name): \(stage.name): \(error)")
                    rows.append(row + [String](repeating: HTML.notRun("cannot read the checkpoint"), count: 4))
                    continue
                }
                let groups: [(String, [String])] = [
                    ("loss per epoch", log.series.keys.filter { $0.contains("loss") }.sorted()),
                    // Times are the runner's (stage timings above); older logs that kept epoch_seconds are not charted.
                    ("quality per epoch", log.series.keys.filter { !$0.contains("loss") && !Self.isRate($0) && !$0.hasSuffix("seconds") }.sorted()),
                    ("learning rate per epoch", log.series.keys.filter(Self.isRate).sorted()),
                ]
                for (g, group) in groups.enumerated() {
                    guard !group.1.isEmpty else { row.append(HTML.notApplicable("no such series in this log")); continue }
                    let svg = curves(title: "\(view.name) · \(stage.name): \(group.0)", series: group.1.map { ($0, log.series[$0]!) }, xLabel: "epoch", firstX: 1)
                    let file = try writeAsset("training-\(p)-\(stage.name)-\(g).svg", svg)
                    row.append(HTML.cell(#"<img class="chart" src="\#(file)" alt="\#(HTML.escape(group.0)) of \#(HTML.escape(stage.name))">"# + HTML.source(source)))
                }
                if log.stepLoss.isEmpty {
                    row.append(HTML.notApplicable("no step loss in this log"))
                } else {
                    let svg = curves(title: "\(view.name) · \(stage.name): loss per step", series: [("step_loss", log.stepLoss)], xLabel: "step", firstX: 1)
                    let file = try writeAsset("training-\(p)-\(stage.name)-steps.svg", svg)
                    row.append(HTML.cell(#"<img class="chart" src="\#(file)" alt="step loss of \#(HTML.escape(stage.name))">"# + HTML.source(source)))
                }
                rows.append(row)
            }
        }
        return out + HTML.table(id: "training", header: ["pipeline · stage", "loss", "quality", "learning rate", "loss per step"], rows: rows)
    }

    static func isRate(_ name: String) -> Bool { name == "lr" || name.hasSuffix("_lr") || name.hasPrefix("lr_") }

    /// Lines over epochs (or steps); the y axis spans the values, scaled by a power of ten when
    /// they are small (learning rates), which the axis label then says.
    func curves(title: String, series: [(String, [Double])], xLabel: String, firstX: Int) -> String {
        let finite = series.flatMap(\.1).filter(\.isFinite)
        let high = finite.max() ?? 1, low = min(finite.min() ?? 0, 0)
        var scale = 1.0
        while high > 0, high * scale < 0.1 { scale *= 10 }
        let top = max(high * scale * 1.05, low * scale + 1e-9)
        let count = series.map(\.1.count).max() ?? 0
        let step = max(1, count / 10)
        let ticks = stride(from: 0, to: count, by: step).map { (value: Double($0 + firstX), label: "\($0 + firstX)") }
        let colors = ["#4472c4", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#2c4d75", "#772c2a"]
        let yLabel = scale == 1 ? "value" : String(format: "value × %.0e", 1 / scale)
        return SVGChart.lines(title: title, xLabel: xLabel, yLabel: yLabel, xTicks: ticks, yRange: (low * scale)...top,
                              series: series.enumerated().map { item in
                                  SVGChart.Series(name: item.element.0, color: colors[item.offset % colors.count],
                                                  points: item.element.1.enumerated().map { (x: Double($0.offset + firstX), y: $0.element * scale) })
                              })
    }
}

/// Class names as bar labels: long names cut so that eleven of them fit under the bars.
func shortClassName(_ name: String) -> String {
    name.count > 8 ? String(name.prefix(7)) + "…" : name
}
