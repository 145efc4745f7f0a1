import ArgumentParser
import Foundation
import Report
import Runner

/// `wsss report`: one static HTML page for a comparison of pipelines (README, "Commands").
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write DIR/index.html: the comparison, stage times, per-class IoU, confusion, images through every pipeline, per-layer analysis, training curves and provenance.")

    @Argument(help: "Pipeline files (YAML).") var pipelines: [String]
    @Option(help: "Folder for index.html and index_files/ (default: Artifacts/report/<first pipeline's name> in the workspace).") var out: String?
    @Option(help: "How many images to follow (the first half of them from train, the rest from val).") var images = 8
    @Option(name: .customLong("image"), help: "Follow this image instead, SPLIT:INDEX of the dataset (repeatable), e.g. val:3.")
    var imageList: [String] = []
    @Option(name: .customLong("seeds"), help: "make compare's compare.json for mean ± std (default: Artifacts/compare/compare.json when it exists).")
    var seedStatistics: String?
    @Flag(name: .customLong("all-metrics"), help: "Compare every evaluate metric, as `wsss compare --all-metrics`.") var allMetrics = false
    @Option(name: .customLong("set"), help: "Override a parameter as `run --set` would (the report shows that run).") var sets: [String] = []
    @OptionGroup var place: Place

    func validate() throws {
        if pipelines.isEmpty { throw ValidationError("name at least one pipeline file") }
        if images < 0 { throw ValidationError("--images must be 0 or more") }
        for text in imageList where ReportImage(parsing: text) == nil {
            throw ValidationError("--image \(text): expected SPLIT:INDEX, e.g. val:3")
        }
    }

    func run() throws {
        let runner = place.runner(for: pipelines.first)
        do {
            let bound = try pipelines.map { try runner.load($0, overrides: sets) }
            let folder = out.map { Workspace.absolute($0) } ?? runner.workspace.path("Artifacts/report/" + bound[0].name)
            let command = (["wsss", "report"] + pipelines + (out.map { ["--out", $0] } ?? []) + sets.flatMap { ["--set", $0] }).joined(separator: " ")
            let chosen = imageList.isEmpty ? ReportImage.defaults(count: images) : imageList.compactMap(ReportImage.init(parsing:))
            let result = try Report.write(runner: runner, pipelines: bound, options: ReportOptions(
                folder: folder, images: chosen, seedStatistics: seedStatistics.map { Workspace.absolute($0) },
                command: command, allMetrics: allMetrics))
            for note in result.notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
            print("\(runner.workspace.display(result.page)): \(result.files) files, \(String(format: "%.1f", Double(result.bytes) / 1000)) kB")
        } catch {
            throw fail(error)
        }
    }
}
