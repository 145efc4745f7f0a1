import Foundation
import StageKit
#if canImport(Glibc)
import Glibc
#endif

/// What a stage executable says about itself (`--describe`).
public struct StageDescription: Codable, Sendable {
    public var name: String
    public var version: String
    public var summary: String
    public var inputs: [String]
    public var optional_inputs: [String]?
    public var outputs: [String]
    public var params: [String: JSONValue]
    /// What one run asks of a machine (absent from stages built before stages declared it).
    public var resources: Resources?
    /// Which numeric parameters take whole numbers, and the declared ranges (absent from older stages).
    public var param_kinds: [String: ParameterKind]?
    public var param_rules: [String: ParameterRule]?
    /// Whether `--shard I/N` and `--merge-shards N` work (absent from stages built before shards).
    public var shardable: Bool?
    /// The values each choice parameter accepts (absent from older stages).
    public var param_choices: [String: [String]]?

    public struct Resources: Codable, Sendable {
        public var threads: Int
        public var mem_mb: Int
        /// Minutes; absent when the stage cannot say.
        public var runtime: Int?
    }

    public var allInputs: [String] { inputs + (optional_inputs ?? []) }
}

/// What one job of a pipeline stage does: the whole stage, one shard of a `shards: N` stage, or
/// the merge that joins its shards into the stage's declared outputs.
public enum JobRole: Sendable, Equatable {
    case whole
    /// `--shard index/count`, writing its outputs beside the stage's (`Runner.shardPath`).
    case shard(index: Int, count: Int)
    /// `--merge-shards count`: reads the stage's inputs plus each shard's outputs as `--part OUTPUT.I`.
    case merge(count: Int)

    /// Part of the cache key (nil for a whole stage, so its keys are what they were before shards).
    var keyMode: String? {
        switch self {
        case .whole: return nil
        case .shard(let index, let count): return "shard \(index)/\(count)"
        case .merge(let count): return "merge \(count)"
        }
    }
}

/// A pipeline stage tied to its executable: one job the runner schedules and caches.
public struct BoundStage: Sendable {
    public internal(set) var decl: StageDecl
    public let executablePath: String
    public let executableHash: String
    public let description: StageDescription
    /// The stage's defaults with the pipeline's values over them: what the stage will run with.
    public let params: [String: JSONValue]
    public var role: JobRole = .whole
    /// The pipeline stage this job belongs to (its own name unless it is a shard).
    public var stageName: String

    /// The job's name: the stage's, or `stage[I/N]` for a shard (the merge keeps the stage's name,
    /// as it writes the stage's outputs).
    public var name: String { decl.name }
    public var isShard: Bool { if case .shard = role { return true } else { return false } }
}

/// A validated pipeline, ready to run in a workspace.
public struct BoundPipeline: Sendable {
    public let pipeline: Pipeline
    /// Absolute path of the pipeline file.
    public let file: String
    /// The file as shown in messages and records (relative to the workspace when inside it).
    public let displayFile: String
    public let stages: [BoundStage]

    private let positions: [String: Int]

    public init(pipeline: Pipeline, file: String, displayFile: String, stages: [BoundStage]) {
        self.pipeline = pipeline
        self.file = file
        self.displayFile = displayFile
        self.stages = stages
        positions = Dictionary(stages.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public var name: String { pipeline.name }
    public func stage(_ name: String) -> BoundStage? { positions[name].map { stages[$0] } }

    /// The jobs of `name` and of every stage it reads from, directly or not.
    public func withAncestors(_ name: String) -> Set<String> {
        var result: Set<String> = []
        var queue = stages.filter { $0.stageName == name }.map(\.name)
        while let next = queue.popLast() {
            guard result.insert(next).inserted, let stage = stage(next) else { continue }
            queue += stage.decl.upstream
        }
        return result
    }

    /// The jobs of the pipeline stages named in `names` (a sharded stage: its shards and merge).
    public func jobs(of names: Set<String>) -> Set<String> {
        Set(stages.filter { names.contains($0.stageName) }.map(\.name))
    }
}

extension Runner {
    /// Parses, then checks the pipeline against its executables: each exists, and each stage's
    /// inputs, outputs and parameters are ones its executable declares. All problems at once.
    public func load(_ file: String, overrides: [String] = []) throws -> BoundPipeline {
        let absolute = Workspace.absolute(file, base: FileManager.default.currentDirectoryPath)
        let shown = workspace.display(absolute)
        // Problems of the file and of its stages against their executables come in one report.
        let (parsed, parseErrors) = try PipelineParser.parsePartially(file: absolute, displayAs: shown, overrides: overrides)
        guard let pipeline = parsed else { throw PipelineErrors(parseErrors) }
        var errors = parseErrors
        var bound: [BoundStage] = []
        for stage in pipeline.stages {
            let label = "stage '\(stage.name)'"
            let executable = resolveExecutable(stage.run)
            guard FileStamp.of(executable)?.isRegular == true, access(executable, X_OK) == 0 else {
                errors.append(PipelineError(stage.runLocation,
                    "\(label): executable '\(stage.run)' not found (looked for \(executable); build it, or point --bin / WSSS_BIN at the folder that holds it)"))
                continue
            }
            let hash: String
            let description: StageDescription
            do {
                hash = try memory.hash(of: executable)
                description = try describe(executable, hash: hash)
            } catch {
                errors.append(PipelineError(stage.runLocation, "\(label): \(error)"))
                continue
            }
            let before = errors.count
            for input in stage.inputs {
                if !description.allInputs.contains(input.name) {
                    errors.append(PipelineError(input.location,
                        "\(label): \(stage.run) has no input '\(input.name)' (it reads: \(Self.list(description.allInputs)))"))
                }
                if case .path(let path) = input.source, FileStamp.of(workspace.path(path)) == nil {
                    errors.append(PipelineError(input.location, "\(label): input '\(input.name)': no such file or folder: \(path)"))
                }
            }
            for name in description.inputs where !stage.inputs.contains(where: { $0.name == name }) {
                errors.append(PipelineError(stage.location, "\(label): \(stage.run) needs input '\(name)' (add it under 'inputs:')"))
            }
            for output in stage.outputs where !description.outputs.contains(output.name) {
                errors.append(PipelineError(output.location,
                    "\(label): \(stage.run) has no output '\(output.name)' (it writes: \(Self.list(description.outputs)))"))
            }
            for output in stage.outputs {
                if let problem = StageMain.outputPathProblem(workspace.path(output.path)) {
                    errors.append(PipelineError(output.location, "output '\(output.name)' of \(label): \(output.path): \(problem)"))
                }
            }
            for name in description.outputs where !stage.outputs.contains(where: { $0.name == name }) {
                errors.append(PipelineError(stage.location, "\(label): \(stage.run) writes output '\(name)'; give it a path under 'outputs:'"))
            }
            var params = description.params
            for key in stage.params.keys.sorted() {
                let value = stage.params[key]!
                let at = stage.paramLocations[key]
                guard let fallback = description.params[key] else {
                    errors.append(PipelineError(at, "\(label): \(stage.run) has no parameter '\(key)' (its parameters: \(Self.list(description.params.keys.sorted())))"))
                    continue
                }
                if fallback != .null, value != .null, fallback.kindName != value.kindName {
                    errors.append(PipelineError(at, "\(label): parameter '\(key)' must be a \(fallback.kindName) like its default \(fallback.canonical), got \(value.kindName) \(value.canonical)"))
                    continue
                }
                if let problem = ParameterCheck.problem(key: key, numbers: value.numbers, kind: description.param_kinds?[key],
                                                        rule: description.param_rules?[key], shown: value.canonical) {
                    errors.append(PipelineError(at, "\(label): \(problem)"))
                    continue
                }
                if case .string(let text) = value, let choices = description.param_choices?[key], !choices.contains(text) {
                    errors.append(PipelineError(at, "\(label): parameter '\(key)' is invalid: '\(text)' is not one of \(choices.joined(separator: ", "))"))
                    continue
                }
                params[key] = value
            }
            if let count = stage.shards, description.shardable != true {
                errors.append(PipelineError(stage.shardsLocation ?? stage.location,
                    "\(label): 'shards: \(count)', but \(stage.run) does not split into shards (per-image stages do: its --describe says \"shardable\": true)"))
            }
            if errors.count == before {
                let whole = BoundStage(decl: stage, executablePath: executable, executableHash: hash, description: description, params: params, stageName: stage.name)
                bound += stage.shards.map { Self.shardJobs(whole, count: $0) } ?? [whole]
            }
        }
        if !errors.isEmpty { throw PipelineErrors(errors) }
        return BoundPipeline(pipeline: pipeline, file: absolute, displayFile: shown, stages: bound)
    }

    /// A `shards: N` stage as N shard jobs (`stage[I/N]`, each writing its outputs at `shardPath`)
    /// and the merge, named as the stage, which reads the stage's inputs and every shard's outputs
    /// (input `OUTPUT.I`) and writes the stage's outputs.
    static func shardJobs(_ whole: BoundStage, count: Int) -> [BoundStage] {
        let decl = whole.decl
        var jobs: [BoundStage] = []
        var partInputs: [InputDecl] = []
        for index in 0..<count {
            let name = "\(decl.name)[\(index)/\(count)]"
            let outputs = decl.outputs.map { OutputDecl(name: $0.name, path: shardPath($0.path, index: index, count: count), location: $0.location) }
            var shard = whole
            shard.decl = StageDecl(name: name, run: decl.run, description: decl.description, inputs: decl.inputs, params: decl.params,
                                   paramLocations: decl.paramLocations, outputs: outputs, location: decl.location, runLocation: decl.runLocation)
            shard.role = .shard(index: index, count: count)
            jobs.append(shard)
            partInputs += decl.outputs.map { InputDecl(name: "\($0.name).\(index)", source: .stage(name, output: $0.name), location: $0.location) }
        }
        var merge = whole
        merge.decl.inputs = decl.inputs + partInputs
        merge.role = .merge(count: count)
        return jobs + [merge]
    }

    /// Where shard I of N of a stage writes the output the stage writes at `path`:
    /// `dir/name.shard-I-of-N.ext`.
    public static func shardPath(_ path: String, index: Int, count: Int) -> String {
        let folder = (path as NSString).deletingLastPathComponent, file = (path as NSString).lastPathComponent
        let ext = (file as NSString).pathExtension, stem = (file as NSString).deletingPathExtension
        let name = "\(stem).shard-\(index)-of-\(count)" + (ext.isEmpty ? "" : "." + ext)
        return folder.isEmpty ? name : folder + "/" + name
    }

    static func list(_ names: [String]) -> String { names.isEmpty ? "nothing" : names.joined(separator: ", ") }

    /// `run: name` is looked up in the bin folder; `run: some/path` is a path in the workspace.
    func resolveExecutable(_ run: String) -> String {
        run.contains("/") ? workspace.path(run) : Workspace.absolute(run, base: binDir)
    }

    /// `--describe` output, cached by executable content (the answer cannot change without it).
    func describe(_ executable: String, hash: String) throws -> StageDescription {
        let cached = workspace.describeDir + "/" + shortHash(hash) + String(hash.suffix(8)) + ".json"
        if let known = JSONDecoder.decodeFile(StageDescription.self, at: cached) { return known }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["--describe"]
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read both pipes to the end before waiting, so a chatty stage cannot block on a full pipe.
        final class Box: @unchecked Sendable { var data = Data() }
        let errorBox = Box()
        let errorReader = Thread { errorBox.data = err.fileHandleForReading.readDataToEndOfFile() }
        errorReader.start()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errorReader.isFinished { usleep(1000) }
        let errorData = errorBox.data
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let message = String(decoding: errorData, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
            throw RunnerError("'\(executable) --describe' failed (\(process.terminationReason == .exit ? "exit status" : "signal") \(process.terminationStatus))\(message.isEmpty ? "" : ": " + message); is it a stage executable?")
        }
        let description: StageDescription
        do {
            description = try JSONDecoder().decode(StageDescription.self, from: data)
        } catch {
            throw RunnerError("'\(executable) --describe' did not print a stage description (JSON with name, inputs, outputs, params)")
        }
        try? writeAtomically(data, to: cached)
        return description
    }
}
