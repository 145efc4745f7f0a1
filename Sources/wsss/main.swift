import ArgumentParser
import Dispatch
import Foundation
import Runner

/// Options every command that reads pipelines shares.
struct Place: ParsableArguments {
    @Option(help: "Folder holding the stage executables (default: $WSSS_BIN, else the folder of this wsss).")
    var bin: String?

    @Option(help: "Workspace folder (default: the nearest folder holding Pipelines/ above the pipeline file or the current folder).")
    var workspace: String?

    /// A named workspace must exist: nothing is created for a mistyped one.
    func validate() throws {
        guard let workspace else { return }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: workspace, isDirectory: &isDirectory), isDirectory.boolValue else {
            let problem = FileManager.default.fileExists(atPath: workspace) ? "not a folder" : "no such folder"
            FileHandle.standardError.write(Data("error: --workspace \(workspace): \(problem)\n".utf8))
            throw ExitCode(1)
        }
    }

    func runner(for pipelineFile: String?) -> Runner {
        let place = Workspace.locate(explicit: workspace, pipelineFile: pipelineFile)
        return Runner(workspace: place, binDir: bin.map { Workspace.absolute($0) })
    }
}

extension Workspace {
    static func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath + "/")).standardizedFileURL.path
    }
}

/// Prints an error the way every command does and picks the exit status: 2 for a pipeline that
/// does not validate, 1 for anything else.
func fail(_ error: Error) -> ExitCode {
    FileHandle.standardError.write(Data("\(error is PipelineErrors ? "" : "error: ")\(error)\n".utf8))
    return ExitCode(error is PipelineErrors ? 2 : 1)
}

struct Wsss: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wsss",
        abstract: "Runs WSSS pipelines: reruns only what changed, and says why.",
        subcommands: [RunCommand.self, StatusCommand.self, CompareCommand.self, SummaryCommand.self, ReportCommand.self, ShowCommand.self, GCCommand.self,
                      ExportCommand.self, SourceDateEpochCommand.self])
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run the stale stages of a pipeline, in dependency order.")

    @Argument(help: "Pipeline file (YAML).") var pipeline: String
    @Flag(help: "Only say what would run and why.") var dryRun = false
    @Option(help: "Rerun this stage even if it is up to date (repeatable).") var force: [String] = []
    @Option(help: "Run only this stage and the stages it depends on.") var until: String?
    @Option(name: .customLong("set"), help: "Override a parameter: STAGE.PARAM=VALUE, or PARAM=VALUE for a shared one (repeatable).")
    var sets: [String] = []
    @Option(name: .shortAndLong, help: "Run up to N independent stages at once.") var jobs = 1
    @Flag(help: "Refuse instead of waiting when another wsss run holds the workspace.") var noWait = false
    @OptionGroup var place: Place

    func run() throws {
        let runner = place.runner(for: pipeline)
        do {
            let bound = try runner.load(pipeline, overrides: sets)
            if dryRun {
                let states = try runner.status(bound, force: Set(force), until: until)
                let width = states.map(\.name.count).max() ?? 0
                for state in states {
                    let name = state.name.padding(toLength: width, withPad: " ", startingAt: 0)
                    print(state.state == .upToDate ? "\(name)  cached" : "\(name)  would run: \(state.reasons.joined(separator: "; "))")
                }
                return
            }
            // Ctrl-C or SIGTERM: stop the running stages (they are in their own process groups) and
            // end with nothing recorded for them.
            var sources: [DispatchSourceSignal] = []
            for signalNumber in [SIGINT, SIGTERM] {
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
                source.setEventHandler { runner.interrupt() }
                source.resume()
                sources.append(source)
            }
            let report = try runner.run(bound, options: RunOptions(force: Set(force), until: until, jobs: jobs, wait: noWait ? .refuse : .wait))
            withExtendedLifetime(sources) {}
            if runner.isInterrupted {
                FileHandle.standardError.write(Data("wsss: interrupted; the stopped stages recorded nothing\n".utf8))
                throw ExitCode(130)
            }
            if !report.succeeded { throw ExitCode(1) }
        } catch let exit as ExitCode {
            throw exit
        } catch is WorkspaceLockAbandoned {
            FileHandle.standardError.write(Data("wsss: interrupted while waiting for the workspace; nothing ran\n".utf8))
            throw ExitCode(130)
        } catch {
            throw fail(error)
        }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Say which stages are stale and why, without running anything.")

    @Argument(help: "Pipeline file (YAML).") var pipeline: String
    @Flag(help: "Print JSON: {\"stages\": [{\"name\", \"state\", \"reasons\"}, ...]} in dependency order.") var json = false
    @Option(name: .customLong("set"), help: "Override a parameter as `run --set` would.") var sets: [String] = []
    @OptionGroup var place: Place

    func run() throws {
        let runner = place.runner(for: pipeline)
        do {
            let bound = try runner.load(pipeline, overrides: sets)
            let states = try runner.status(bound)
            if json {
                let stages: [JSONValue] = states.map { state in
                    var object: [String: JSONValue] = [
                        "name": .string(state.name), "state": .string(state.state.rawValue),
                        "reasons": .array(state.reasons.map(JSONValue.string)),
                    ]
                    if !state.notes.isEmpty { object["notes"] = .array(state.notes.map(JSONValue.string)) }
                    if let key = state.key { object["key"] = .string(key) }
                    return .object(object)
                }
                let document: JSONValue = .object(["pipeline": .string(bound.displayFile), "stages": .array(stages)])
                print(String(decoding: try prettyJSON(document), as: UTF8.self))
                return
            }
            let stale = states.filter { $0.state == .stale }.count
            print("\(bound.displayFile) (\(bound.name)): \(stale) stale, \(states.count - stale) up to date")
            let width = states.map(\.name.count).max() ?? 0
            for state in states {
                let name = state.name.padding(toLength: width, withPad: " ", startingAt: 0)
                if state.state == .upToDate {
                    print("  \(name)  up-to-date" + (state.notes.isEmpty ? "" : " (\(state.notes.joined(separator: "; ")))"))
                } else {
                    print("  \(name)  stale: \(state.reasons.joined(separator: "; "))")
                }
            }
        } catch {
            throw fail(error)
        }
    }
}

func prettyJSON(_ value: JSONValue) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(value)
}

struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare", abstract: "Pipelines' summary fields (or with --all-metrics every evaluate metric) side by side, with training time and the parameters that differ.")

    @Argument(help: "Pipeline files (YAML).") var pipelines: [String]
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Flag(name: .customLong("all-metrics"), help: "Every metric of every evaluate stage, not only the pipelines' summary fields.")
    var allMetrics = false
    @Option(name: .customLong("set"), help: "Override a parameter as `run --set` would.") var sets: [String] = []
    @OptionGroup var place: Place

    func validate() throws {
        if pipelines.isEmpty { throw ValidationError("name at least one pipeline file") }
    }

    func run() throws {
        let runner = place.runner(for: pipelines.first)
        do {
            let bound = try pipelines.map { try runner.load($0, overrides: sets) }
            // Pipelines with `summary:` sections compare by those fields (plus training time).
            let bySummary = !allMetrics && bound.allSatisfy { !$0.pipeline.summary.isEmpty }
            let comparison = bySummary ? try runner.compareSummaries(bound) : try runner.compare(bound)
            print(json ? String(decoding: try prettyJSON(comparison.json), as: UTF8.self) : comparison.table)
        } catch {
            throw fail(error)
        }
    }
}

struct SummaryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "summary", abstract: "The pipelines' summary fields (and stage times) as summary.json and summary.md.")

    @Argument(help: "Pipeline files (YAML) with a 'summary:' section.") var pipelines: [String]
    @Option(help: "Folder for summary.json and summary.md (default: print the table only).") var out: String?
    @Option(help: "JSON of recorded values ({\"tolerance\": T, \"rows\": {pipeline: {field: value}}}); exit 1 when a field is off by more than T.")
    var expect: String?
    @Option(name: .customLong("set"), help: "Override a parameter as `run --set` would (the rows are those of that run).") var sets: [String] = []
    @OptionGroup var place: Place

    func validate() throws {
        if pipelines.isEmpty { throw ValidationError("name at least one pipeline file") }
    }

    func run() throws {
        let runner = place.runner(for: pipelines.first)
        var problems: [String] = []
        do {
            let bound = try pipelines.map { try runner.load($0, overrides: sets) }
            let summary = try runner.summary(bound)
            let table = Runner.summaryMarkdown(summary, fields: Runner.summaryFields(bound))
            if let out {
                try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
                try prettyJSON(summary).write(to: URL(fileURLWithPath: out).appendingPathComponent("summary.json"))
                try Data(("# Summary\n\n" + table).utf8).write(to: URL(fileURLWithPath: out).appendingPathComponent("summary.md"))
            }
            print(table, terminator: "")
            if case .object(let top) = summary, case .array(let notes)? = top["notes"] {
                for case .string(let note) in notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
            }
            if let expect {
                guard let data = FileManager.default.contents(atPath: expect), let expected = try? JSONValue.parse(data) else {
                    throw ValidationError("\(expect): cannot read recorded values as JSON")
                }
                problems = Runner.checkSummary(summary, against: expected)
                for problem in problems { FileHandle.standardError.write(Data("\(expect): \(problem)\n".utf8)) }
                if problems.isEmpty { print("metrics match \(expect)") }
            }
        } catch {
            throw fail(error)
        }
        if !problems.isEmpty { throw ExitCode(1) }
    }
}

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Describe an artifact: kind, producer, params, inputs, arrays and their shapes.")

    @Argument(help: "Artifact file (e.g. Artifacts/ci/dataset.h5).") var artifact: String
    @OptionGroup var place: Place

    func run() throws {
        do {
            print(try place.runner(for: nil).show(artifact))
        } catch {
            throw fail(error)
        }
    }
}

struct GCCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Remove cache entries that no pipeline in Pipelines/ uses.")

    @Flag(help: "Only list what would be removed.") var dryRun = false
    @Flag(help: "List every removed entry and file.") var verbose = false
    @OptionGroup var place: Place

    func run() throws {
        do {
            let report = try place.runner(for: nil).gc(dryRun: dryRun)
            if verbose || dryRun {
                for key in report.removedEntries { print("  entry \(key)") }
                for path in report.removedObjects { print("  file  \(path)") }
                for path in report.removedRecords { print("  record \(path)") }
            }
            print(report.summary)
        } catch {
            throw fail(error)
        }
    }
}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write a pipeline for another workflow engine.",
        subcommands: [ExportSnakemakeCommand.self])
}

struct ExportSnakemakeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snakemake",
        abstract: "Write DIR/Snakefile (+ config.yaml, params/): one rule per stage, calling the stage executables as `wsss run` would.")

    @Argument(help: "Pipeline file (YAML).") var pipeline: String
    @Option(help: "Folder for the Snakefile (default: Artifacts/snakemake/<pipeline name> in the workspace).") var out: String?
    @Option(name: .customLong("set"), help: "Override a parameter as `run --set` would.") var sets: [String] = []
    @OptionGroup var place: Place

    func run() throws {
        let runner = place.runner(for: pipeline)
        do {
            let bound = try runner.load(pipeline, overrides: sets)
            let folder = out.map { Workspace.absolute($0) } ?? runner.workspace.path("Artifacts/snakemake/" + bound.name)
            // This wsss itself: the rules ask it for SOURCE_DATE_EPOCH.
            let wsss = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                ?? Workspace.absolute(Bundle.main.executablePath ?? CommandLine.arguments[0])
            let command = (["wsss", "export", "snakemake", bound.displayFile] + (out.map { ["--out", $0] } ?? [])
                           + sets.flatMap { ["--set", $0] }).joined(separator: " ")
            let export = try runner.snakemakeExport(bound, wsss: wsss, command: command)
            let written = try export.write(to: folder)
            let shown = runner.workspace.display(folder)
            print("\(shown)/Snakefile: \(bound.stages.count) rules (\(written.count) files changed)")
            print("run it: snakemake -s \(shown)/Snakefile --cores N   (on Slurm: --executor slurm; README, \"Pipelines and the runner\")")
        } catch {
            throw fail(error)
        }
    }
}

/// For exported rules: prints the SOURCE_DATE_EPOCH `wsss run` gives a stage reading these inputs.
struct SourceDateEpochCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "source-date-epoch", abstract: "Print the SOURCE_DATE_EPOCH the runner sets for a stage with these inputs.",
        shouldDisplay: false)

    @Argument(help: "The stage's input files.") var inputs: [String] = []

    func run() throws {
        print(Runner.sourceDateEpoch(inputs: inputs.map { Workspace.absolute($0) }))
    }
}

Wsss.main()
