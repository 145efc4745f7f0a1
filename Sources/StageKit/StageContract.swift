import ArgumentParser
import ArtifactStore
import Foundation
import Logging

/// The one way every stage is invoked, by the runner or by hand:
///
///     <stage> --in NAME=PATH ... --out NAME=PATH ... [--params FILE.json] [--param KEY=VALUE ...]
///
/// Parameters start from the stage's defaults, then the JSON file, then each `--param` (values
/// parsed as JSON when they parse, else taken as strings). `--describe` prints the stage's inputs,
/// outputs and default parameters as JSON, which the runner uses to validate pipeline files.
public struct StageOptions: ParsableArguments {
    @Option(name: .customLong("in"), help: "An input artifact: NAME=PATH (repeatable).")
    public var inputs: [String] = []

    @Option(name: .customLong("out"), help: "An output path: NAME=PATH (repeatable).")
    public var outputs: [String] = []

    @Option(name: .customLong("params"), help: "JSON file of parameters.")
    public var paramsFile: String?

    @Option(name: .customLong("param"), help: "One parameter: KEY=VALUE (repeatable; overrides --params).")
    public var paramOverrides: [String] = []

    @Option(name: .customLong("shard"), help: "Process only part I of N of the images (I in 0..<N), for stages that say \"shardable\"; a merge joins the parts.")
    public var shard: String?

    @Option(name: .customLong("merge-shards"),
            help: "Join N shard runs' outputs (--part) into the outputs (--out) the unsharded run writes; --in and --params as for the run.")
    public var mergeShards: Int?

    @Option(name: .customLong("part"), help: "With --merge-shards: output OUTPUT of shard I: OUTPUT.I=PATH (repeatable, one per output and shard).")
    public var parts: [String] = []

    @Flag(help: "Print this stage's inputs, outputs and default parameters as JSON and exit.")
    public var describe = false

    @Flag(name: .customLong("check-params"),
          help: "Decode the parameters (defaults, --params, --param) and exit: status 0 when every name, type and choice is valid.")
    public var checkParams = false

    public init() {}
}

/// What a stage consumes and produces, by name.
public struct StageSpec: Sendable {
    public let name: String
    public let version: String
    public let summary: String
    public let inputs: [String]
    public let optionalInputs: [String]
    public let outputs: [String]
    public let resources: StageResources
    /// Per-image work that `--shard I/N` splits; `--merge-shards N` joins the parts' outputs into
    /// the unsharded run's (the stage's `merge` body, e.g. `MapShards.merge` for map artifacts).
    public let shardable: Bool

    public init(name: String, version: String, summary: String, inputs: [String], optionalInputs: [String] = [], outputs: [String],
                resources: StageResources = StageResources(), shardable: Bool = false) {
        self.shardable = shardable
        self.name = name
        self.version = version
        self.summary = summary
        self.inputs = inputs
        self.optionalInputs = optionalInputs
        self.outputs = outputs
        self.resources = resources
    }

    public var producer: String { "\(name) \(version)" }
}

/// What one run of a stage asks of a machine, for cluster schedulers (`--describe` prints it as
/// "resources"; `wsss export snakemake` makes it a rule's `threads` and `resources`). Estimates at
/// the demo's scale; a scheduler's own overrides (Snakemake's --set-resources) win.
public struct StageResources: Sendable, Equatable {
    /// Cores the stage keeps busy (its engine and BLAS threads are capped to what it is given).
    public var threads: Int
    /// Peak resident memory, in MB.
    public var memoryMB: Int
    /// Wall-clock limit in minutes (Snakemake's `runtime`); nil when it cannot be said.
    public var runtimeMinutes: Int?

    public init(threads: Int = 1, memoryMB: Int = 2048, runtimeMinutes: Int? = nil) {
        self.threads = threads
        self.memoryMB = memoryMB
        self.runtimeMinutes = runtimeMinutes
    }

    var jsonObject: [String: Any] {
        var object: [String: Any] = ["threads": threads, "mem_mb": memoryMB]
        if let runtimeMinutes { object["runtime"] = runtimeMinutes }
        return object
    }
}

/// Part `index` of `count` of a stage's images: a contiguous block, so that the parts in order
/// are the images in order and a merge is a concatenation.
public struct Shard: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    public init(index: Int, count: Int) {
        precondition(count >= 1 && (0..<count).contains(index))
        self.index = index
        self.count = count
    }

    /// "I/N" with 0 <= I < N.
    public static func parse(_ text: String) throws -> Shard {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]), count >= 1, (0..<count).contains(index) else {
            throw StageError("--shard expects I/N with 0 <= I < N, got '\(text)'")
        }
        return Shard(index: index, count: count)
    }

    /// This part's items of `total`.
    public func range(of total: Int) -> Range<Int> { total * index / count..<total * (index + 1) / count }

    public var description: String { "\(index)/\(count)" }
}

/// A stage's parameters: a Codable struct whose `init()` holds the defaults.
public protocol StageParameters: Codable {
    init()
    /// The accepted range of each numeric parameter (JSON name -> rule); see ParameterRule.
    static var rules: [String: ParameterRule] { get }
}

extension StageParameters {
    public static var rules: [String: ParameterRule] { [:] }
}

/// An error a stage reports as its one line; the runner shows it as the stage's failure.
public struct StageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Everything a running stage needs: resolved paths, decoded parameters, provenance, logging.
public final class StageContext<P: StageParameters> {
    public let spec: StageSpec
    public let params: P
    /// Parameters as canonical JSON (sorted keys), as recorded in every output artifact.
    public let paramsJSON: String
    public let inputPaths: [String: String]
    public let outputPaths: [String: String]
    /// `--shard I/N`: which part of the images to process (nil: all).
    public let shard: Shard?
    public let log: Logger
    private var inputHashes: [String: String] = [:]
    /// Every output this run writes, placed together by `commitOutputs()`.
    private let outputSet = OutputSet()
    private var outputsStarted: Set<String> = []

    init(spec: StageSpec, params: P, paramsJSON: String, inputs: [String: String], outputs: [String: String], shard: Shard? = nil) {
        self.spec = spec
        self.shard = shard
        self.params = params
        self.paramsJSON = paramsJSON
        inputPaths = inputs
        outputPaths = outputs
        var logger = Logger(label: spec.name)
        logger.logLevel = ProcessInfo.processInfo.environment["WSSS_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
        log = logger
    }

    public func input(_ name: String) -> String {
        guard let path = inputPaths[name] else { preconditionFailure("\(spec.name) reads undeclared input '\(name)'") }
        return path
    }

    public func optionalInput(_ name: String) -> String? { inputPaths[name] }

    /// The items of `total` this run processes: all, or its shard's block.
    public func shardRange(of total: Int) -> Range<Int> { shard?.range(of: total) ?? 0..<total }

    public func output(_ name: String) -> String {
        guard let path = outputPaths[name] else { preconditionFailure("\(spec.name) writes undeclared output '\(name)'") }
        return path
    }

    /// Content hashes of all inputs (computed once), recorded in outputs so a consumer can tell
    /// which exact data an artifact came from.
    public func inputContentHashes() throws -> [String: String] {
        for (name, path) in inputPaths where inputHashes[name] == nil {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                inputHashes[name] = "dir:" + path
            } else {
                inputHashes[name] = try ContentHash.ofFile(path)
            }
        }
        return inputHashes
    }

    /// Starts an output artifact with full provenance. It appears at its path with the stage's
    /// other outputs, on `commitOutputs()` (its own `commit()` only completes it).
    public func createArtifact(_ outputName: String, kind: ArtifactKind, formatVersion: Int = 1) throws -> ArtifactWriter {
        let provenance = Provenance(
            kind: kind, formatVersion: formatVersion, producer: spec.producer,
            paramsJSON: paramsJSON, inputs: try inputContentHashes())
        let writer = try ArtifactWriter(path: startOutput(outputName), provenance: provenance)
        outputSet.adopt(writer.pending)
        // A part says which; the merge checks it has every part once.
        if let shard { try writer.root.setAttribute("shard", shard.description) }
        return writer
    }

    /// A side-file output (PNG, JSON, SVG): write it at `temporaryPath`; it appears at its path
    /// with the stage's other outputs, on `commitOutputs()`.
    public func pendingOutput(_ outputName: String) -> PendingFile {
        let file = PendingFile(destination: startOutput(outputName))
        outputSet.adopt(file)
        return file
    }

    private func startOutput(_ name: String) -> String {
        precondition(outputsStarted.insert(name).inserted, "\(spec.name) starts output '\(name)' twice")
        return output(name)
    }

    /// Puts every output in place, all or none (see `OutputSet`); later calls do nothing.
    /// `StageMain.run` calls it after the stage's body, so a stage need not, unless it reports
    /// something after its outputs are in place.
    public func commitOutputs() throws {
        for name in spec.outputs where !outputsStarted.contains(name) {
            throw StageError("internal: output '\(name)' was never written")
        }
        try outputSet.commit()
    }

    /// Deletes the temporary files of outputs not yet committed (a failed run leaves nothing).
    func abandonOutputs() {
        outputSet.abandon()
    }
}

public enum StageMain {
    /// Parses the contract's arguments, runs `body`, and turns any error into one line on stderr
    /// and exit status 1.
    /// A shardable stage passes `merge`, which `--merge-shards N` runs instead of `body`.
    public static func run<P: StageParameters>(_ spec: StageSpec, parameters: P.Type = P.self, merge: ((ShardMergeContext<P>) throws -> Void)? = nil,
                                               body: (StageContext<P>) throws -> Void) -> Never {
        precondition(spec.shardable == (merge != nil), "\(spec.name): a shardable stage needs a merge, and only a shardable one has one")
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        let options = parseOptions(spec)
        var context: StageContext<P>?
        var mergeContext: ShardMergeContext<P>?
        do {
            if options.describe {
                print(try describe(spec, defaults: P()))
                exit(0)
            }
            if options.checkParams {
                _ = try ParameterMerge.merge(P.self, layers: try parameterLayers(options))
                exit(0)
            }
            if options.mergeShards != nil || !options.parts.isEmpty {
                guard let merge else { throw StageError("--merge-shards: this stage does not split into shards (it is not per image)") }
                mergeContext = try makeMergeContext(spec, options: options, parameters: P.self)
                try merge(mergeContext!)
                try mergeContext!.commitOutputs()
                print("\(spec.name): merged \(mergeContext!.shardCount) shards")
                exit(0)
            }
            context = try makeContext(spec, options: options, parameters: P.self)
            try body(context!)
            try context!.commitOutputs()
            // The high-water mark of resident memory, for sizing machines (and cluster resources).
            print("\(spec.name): peak resident memory \(String(format: "%.0f", ResourceUsage.peakResidentMB())) MB")
            exit(0)
        } catch {
            // exit() runs no deinit: the temporary files go now.
            context?.abandonOutputs()
            mergeContext?.abandonOutputs()
            FileHandle.standardError.write(Data("error: \(spec.name): \(error)\n".utf8))
            exit(1)
        }
    }

    /// For stages whose work lands in a later issue: accepts the contract, then refuses honestly.
    public static func notImplemented(_ spec: StageSpec, plannedIn issue: String) -> Never {
        let options = parseOptions(spec)
        if options.describe {
            print((try? describe(spec, defaults: EmptyParameters())) ?? "{}")
            exit(0)
        }
        FileHandle.standardError.write(Data("error: \(spec.name) is not implemented yet (\(issue))\n".utf8))
        exit(2)
    }

    /// The contract's arguments; a command line they do not parse (an unknown flag, a flag without
    /// its value) ends like every other failure: one line `error: <stage>: ...`, status 1. `--help`
    /// prints the help and exits 0.
    static func parseOptions(_ spec: StageSpec) -> StageOptions {
        do {
            return try StageOptions.parse()
        } catch {
            if StageOptions.exitCode(for: error).isSuccess { StageOptions.exit(withError: error) }
            let message = StageOptions.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("error: \(spec.name): \(message) (see --help)\n".utf8))
            exit(1)
        }
    }

    /// Why `path` cannot receive an output file, or nil: an empty path, a folder at the path, or
    /// a regular file where a folder above it should be (missing folders are created on commit).
    /// The stages check their outputs with it before any work, `wsss` a pipeline's outputs.
    public static func outputPathProblem(_ path: String) -> String? {
        guard !path.isEmpty else { return "the path is empty" }
        let manager = FileManager.default
        var isFolder: ObjCBool = false
        if manager.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue { return "is a folder, not a file" }
        var folder = URL(fileURLWithPath: path).deletingLastPathComponent()
        while true {
            if manager.fileExists(atPath: folder.path, isDirectory: &isFolder) {
                if !isFolder.boolValue { return "\(folder.path) is not a folder" }
                if !manager.isWritableFile(atPath: folder.path) { return "folder \(folder.path) is not writable" }
                return nil
            }
            let parent = folder.deletingLastPathComponent()
            if parent.path == folder.path { return nil }
            folder = parent
        }
    }

    /// Whether two paths name one file: the same path once links are resolved, or (for files that
    /// exist) the same inode on the same device, which hard links share.
    static func sameFile(_ a: String, _ b: String) -> Bool {
        func resolved(_ path: String) -> String { URL(fileURLWithPath: path).resolvingSymlinksInPath().standardizedFileURL.path }
        if resolved(a) == resolved(b) { return true }
        let manager = FileManager.default
        guard let x = try? manager.attributesOfItem(atPath: a), let y = try? manager.attributesOfItem(atPath: b),
              let inodeX = x[.systemFileNumber] as? NSNumber, let inodeY = y[.systemFileNumber] as? NSNumber,
              let deviceX = x[.systemNumber] as? NSNumber, let deviceY = y[.systemNumber] as? NSNumber else { return false }
        return inodeX == inodeY && deviceX == deviceY
    }

    static func describe<P: StageParameters>(_ spec: StageSpec, defaults: P) throws -> String {
        let object: [String: Any] = [
            "name": spec.name, "version": spec.version, "summary": spec.summary,
            "inputs": spec.inputs, "optional_inputs": spec.optionalInputs, "outputs": spec.outputs,
            "params": try ParameterMerge.jsonObject(defaults), "resources": spec.resources.jsonObject, "shardable": spec.shardable,
            "param_kinds": try ParameterMerge.kinds(P.self).mapValues(\.rawValue),
            "param_rules": try ParameterMerge.jsonObject(P.rules),
            "param_choices": try ParameterMerge.choices(P.self),
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }

    public static func makeContext<P: StageParameters>(_ spec: StageSpec, options: StageOptions, parameters: P.Type) throws -> StageContext<P> {
        let (inputs, outputs) = try inputsAndOutputs(spec, options: options)
        let shard = try options.shard.map(Shard.parse)
        if shard != nil, !spec.shardable { throw StageError("--shard: this stage does not split into shards (it is not per image)") }
        let (params, json) = try ParameterMerge.merge(P.self, layers: try parameterLayers(options))
        return StageContext(spec: spec, params: params, paramsJSON: json, inputs: inputs, outputs: outputs, shard: shard)
    }

    /// `--merge-shards N`: the stage's inputs and outputs as for a run, and every output of every
    /// shard as `--part OUTPUT.I=PATH`.
    public static func makeMergeContext<P: StageParameters>(_ spec: StageSpec, options: StageOptions, parameters: P.Type) throws -> ShardMergeContext<P> {
        guard let count = options.mergeShards else { throw StageError("--part is only for --merge-shards N") }
        guard count >= 1 else { throw StageError("--merge-shards expects N >= 1, got \(count)") }
        if options.shard != nil { throw StageError("--shard and --merge-shards exclude each other: a shard runs, a merge joins") }
        let (inputs, outputs) = try inputsAndOutputs(spec, options: options)
        var parts: [String: [String?]] = Dictionary(uniqueKeysWithValues: spec.outputs.map { ($0, [String?](repeating: nil, count: count)) })
        for (name, path) in try pairs(options.parts, flag: "--part") {
            let pieces = name.split(separator: ".", omittingEmptySubsequences: false)
            guard pieces.count == 2, let index = Int(pieces[1]), (0..<count).contains(index), parts[String(pieces[0])] != nil else {
                throw StageError("--part \(name)=...: expected OUTPUT.I with OUTPUT one of \(spec.outputs.joined(separator: ", ")) and I in 0..<\(count)")
            }
            parts[String(pieces[0])]![index] = path
        }
        for output in spec.outputs {
            if let missing = parts[output]!.firstIndex(where: { $0 == nil }) {
                throw StageError("missing part: pass --part \(output).\(missing)=PATH (output '\(output)' of shard \(missing)/\(count))")
            }
        }
        let (params, json) = try ParameterMerge.merge(P.self, layers: try parameterLayers(options))
        return ShardMergeContext(spec: spec, params: params, paramsJSON: json, count: count, inputs: inputs, outputs: outputs,
                                 parts: parts.mapValues { $0.map { $0! } })
    }

    /// `--in` and `--out`, checked against the spec.
    static func inputsAndOutputs(_ spec: StageSpec, options: StageOptions) throws -> (inputs: [String: String], outputs: [String: String]) {
        let inputs = try pairs(options.inputs, flag: "--in")
        let outputs = try pairs(options.outputs, flag: "--out")
        for name in inputs.keys where !(spec.inputs + spec.optionalInputs).contains(name) {
            throw StageError("unknown input '\(name)' (this stage reads: \((spec.inputs + spec.optionalInputs).joined(separator: ", ")))")
        }
        for name in spec.inputs where inputs[name] == nil {
            throw StageError("missing input '\(name)': pass --in \(name)=PATH")
        }
        for name in outputs.keys where !spec.outputs.contains(name) {
            throw StageError("unknown output '\(name)' (this stage writes: \(spec.outputs.joined(separator: ", ")))")
        }
        for name in spec.outputs where outputs[name] == nil {
            throw StageError("missing output '\(name)': pass --out \(name)=PATH")
        }
        for name in (spec.inputs + spec.optionalInputs) where inputs[name]?.isEmpty == true {
            throw StageError("input '\(name)': the path is empty")
        }
        // Checked before any work, so that a bad place fails at once, not after hours of training.
        for name in spec.outputs {
            if let problem = outputPathProblem(outputs[name]!) { throw StageError("output '\(name)': \(outputs[name]!): \(problem)") }
        }
        // Two outputs at one path would overwrite each other (and share a temporary name).
        var outputByPath: [String: String] = [:]
        for name in outputs.keys.sorted() {
            let path = URL(fileURLWithPath: outputs[name]!).resolvingSymlinksInPath().standardizedFileURL.path
            if let other = outputByPath[path] {
                throw StageError("outputs '\(other)' and '\(name)' are both given the path \(outputs[name]!): each output needs its own file")
            }
            outputByPath[path] = name
        }
        // An output at an input's path would replace the input when the outputs are placed.
        for input in inputs.keys.sorted() {
            for output in outputs.keys.sorted() where sameFile(inputs[input]!, outputs[output]!) {
                throw StageError("output '\(output)' is given the path of input '\(input)', \(outputs[output]!): the stage would replace what it reads; write it elsewhere")
            }
        }
        do {
            _ = try Provenance.sourceDateEpoch()
        } catch {
            throw StageError("\(error)")
        }
        return (inputs, outputs)
    }

    /// The parameter layers over the defaults: the --params file, then each --param.
    static func parameterLayers(_ options: StageOptions) throws -> [[String: Any]] {
        var fileParams: [String: Any] = [:]
        if let file = options.paramsFile {
            guard let data = FileManager.default.contents(atPath: file) else { throw StageError("\(file): cannot read parameter file") }
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw StageError("\(file): parameter file is not a JSON object")
            }
            fileParams = object
        }
        var overrides: [String: Any] = [:]
        for (key, text) in try pairs(options.paramOverrides, flag: "--param") {
            overrides[key] = ParameterMerge.parseValue(text)
        }
        return [fileParams, overrides]
    }

    static func pairs(_ items: [String], flag: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for item in items {
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                throw StageError("\(flag) expects NAME=VALUE, got '\(item)'")
            }
            let name = String(item[..<equals])
            if result[name] != nil { throw StageError("\(flag) \(name) given twice") }
            result[name] = String(item[item.index(after: equals)...])
        }
        return result
    }
}

/// Parameters of a stage that has none yet.
public struct EmptyParameters: StageParameters {
    public init() {}
}

/// What a `--merge-shards N` run of a shardable stage has: the run's parameters and inputs, each
/// output's N parts in shard order, and the outputs to write (all or none, like a run's).
public final class ShardMergeContext<P: StageParameters> {
    public let spec: StageSpec
    public let params: P
    public let paramsJSON: String
    /// N: how many shards are joined.
    public let shardCount: Int
    public let inputPaths: [String: String]
    public let outputPaths: [String: String]
    private let partPaths: [String: [String]]
    public let log: Logger
    private let outputSet = OutputSet()

    init(spec: StageSpec, params: P, paramsJSON: String, count: Int, inputs: [String: String], outputs: [String: String], parts: [String: [String]]) {
        self.spec = spec
        self.params = params
        self.paramsJSON = paramsJSON
        shardCount = count
        inputPaths = inputs
        outputPaths = outputs
        partPaths = parts
        log = Logger(label: spec.name)
    }

    public func input(_ name: String) -> String {
        guard let path = inputPaths[name] else { preconditionFailure("\(spec.name) reads undeclared input '\(name)'") }
        return path
    }

    public func optionalInput(_ name: String) -> String? { inputPaths[name] }

    /// The N shards' files of output `name`, in shard order.
    public func parts(_ name: String) -> [String] {
        guard let paths = partPaths[name] else { preconditionFailure("\(spec.name) has no output '\(name)'") }
        return paths
    }

    /// The joined output `name`: write it at `temporaryPath`; it appears with the others on commit.
    public func pendingOutput(_ name: String) -> PendingFile {
        guard let path = outputPaths[name] else { preconditionFailure("\(spec.name) writes undeclared output '\(name)'") }
        let file = PendingFile(destination: path)
        outputSet.adopt(file)
        return file
    }

    /// A side picture that shows the first images of the split: shard 0's, which holds them (the
    /// same file as the unsharded run's when shard 0 has at least as many images as it draws).
    public func takeFirstPart(_ name: String) throws {
        let source = parts(name)[0]
        guard let data = FileManager.default.contents(atPath: source) else { throw StageError("\(source): cannot read part 0 of output '\(name)'") }
        try data.write(to: URL(fileURLWithPath: pendingOutput(name).temporaryPath))
    }

    func commitOutputs() throws {
        for name in spec.outputs where !outputSet.destinations.contains(outputPaths[name]!) {
            throw StageError("internal: merged output '\(name)' was never written")
        }
        try outputSet.commit()
    }

    func abandonOutputs() { outputSet.abandon() }
}
