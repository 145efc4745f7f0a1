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

/// A pipeline stage tied to its executable.
public struct BoundStage: Sendable {
    public let decl: StageDecl
    public let executablePath: String
    public let executableHash: String
    public let description: StageDescription
    /// The stage's defaults with the pipeline's values over them: what the stage will run with.
    public let params: [String: JSONValue]

    public var name: String { decl.name }
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
            if errors.count == before {
                bound.append(BoundStage(decl: stage, executablePath: executable, executableHash: hash, description: description, params: params))
            }
        }
        if !errors.isEmpty { throw PipelineErrors(errors) }
        return BoundPipeline(pipeline: pipeline, file: absolute, displayFile: shown, stages: bound)
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
