/// The pipeline runner behind `wsss`: decides which stages are stale and why, runs them in
/// dependency order, and keeps their outputs in a content-addressed cache.
import ArtifactStore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where the runner's lines go: one line at a time, from any thread.
public final class Console: @unchecked Sendable {
    private let lock = NSLock()
    private let sink: (String) -> Void

    public init(_ sink: @escaping (String) -> Void) { self.sink = sink }

    public static let standardOutput = Console { line in
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    public func line(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        sink(text)
    }
}

public struct StageStatus: Sendable, Equatable {
    public enum State: String, Sendable { case upToDate = "up-to-date", stale }
    public let name: String
    public let state: State
    /// Why the stage is stale (empty when up to date).
    public let reasons: [String]
    /// Remarks that do not make it stale, e.g. a workspace file that will be restored from the cache.
    public let notes: [String]
    /// The stage key, when all its inputs are known.
    public let key: String?
}

public struct RunOptions: Sendable {
    public var force: Set<String> = []
    public var until: String?
    public var jobs = 1
    public var wait: WorkspaceLock.Wait = .wait
    public init(force: Set<String> = [], until: String? = nil, jobs: Int = 1, wait: WorkspaceLock.Wait = .wait) {
        self.force = force
        self.until = until
        self.jobs = jobs
        self.wait = wait
    }
}

public struct StageOutcome: Sendable {
    public enum Kind: String, Sendable { case cached, ran, failed, notRun = "not run" }
    public let name: String
    public let kind: Kind
    public let reasons: [String]
    public let seconds: Double
    public let message: String?
}

public struct RunReport: Sendable {
    public let pipeline: String
    public let stages: [StageOutcome]
    public let seconds: Double
    public var succeeded: Bool { stages.allSatisfy { $0.kind == .cached || $0.kind == .ran } }
    public func outcome(_ name: String) -> StageOutcome? { stages.first { $0.name == name } }
    public var ran: [String] { stages.filter { $0.kind == .ran }.map(\.name) }
}

/// A value handed between threads; whoever uses it provides the ordering (a lock or a join).
final class Shared<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

public final class Runner: @unchecked Sendable {
    public let workspace: Workspace
    public let binDir: String
    public let memory: HashMemory
    public let console: Console
    private var recordsByFile: [String: PipelineRecords] = [:]
    private var allRecordsLoaded = false
    private let state = NSLock()
    private var interrupted = false
    private var children: Set<Int32> = []

    public init(workspace: Workspace, binDir: String? = nil, console: Console = .standardOutput) {
        self.workspace = workspace
        self.binDir = binDir ?? Runner.defaultBinDir()
        self.console = console
        memory = HashMemory(file: workspace.hashMemoryFile)
    }

    /// `WSSS_BIN`, else the folder of the running `wsss` (so `.build/release/wsss` runs the stages
    /// built beside it).
    public static func defaultBinDir() -> String {
        if let bin = ProcessInfo.processInfo.environment["WSSS_BIN"], !bin.isEmpty {
            return Workspace.absolute(bin, base: FileManager.default.currentDirectoryPath)
        }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? Bundle.main.executablePath ?? CommandLine.arguments[0]
        return (Workspace.absolute(executable, base: FileManager.default.currentDirectoryPath) as NSString).deletingLastPathComponent
    }

    // MARK: Deciding

    struct Evaluation {
        var parts: KeyParts?
        var key: String? { parts?.key }
        var entry: CacheEntry?
        var upToDate: Bool
        var reasons: [String]
        var notes: [String] = []
        /// A cache entry exists for the key but its objects are damaged or missing.
        var brokenEntry = false
    }

    /// Decides whether `stage` is up to date, given the output hashes of the stages before it
    /// that are known (up to date or just run); inputs from other stages count as changing.
    func evaluate(_ stage: BoundStage, in pipeline: BoundPipeline, known: [String: [String: String]], force: Bool) throws -> Evaluation {
        var inputs: [String: String] = [:]
        var pending: [String: String] = [:]
        for input in stage.decl.inputs {
            switch input.source {
            case .stage(let upstream, let output):
                if let hash = known[upstream]?[output] { inputs[input.name] = hash } else { pending[input.name] = upstream }
            case .path(let path):
                inputs[input.name] = try memory.hash(of: workspace.path(path))
            }
        }
        let baseline = self.baseline(for: stage, in: pipeline)
        guard pending.isEmpty else {
            var reasons = pending.keys.sorted().map { "input '\($0)' will change: upstream stage '\(pending[$0]!)' is stale" }
            reasons += differences(stage, executable: stage.executableHash, params: stage.params, inputs: inputs, skipping: Set(pending.keys), baseline: baseline)
            return Evaluation(parts: nil, entry: nil, upToDate: false, reasons: reasons)
        }
        let parts = KeyParts(executable: stage.executableHash, params: stage.params, inputs: inputs, outputNames: stage.decl.outputs.map(\.name),
                             mode: stage.role.keyMode)
        let key = parts.key
        if let entry = JSONDecoder.decodeFile(CacheEntry.self, at: workspace.entryPath(key)) {
            if let problem = verify(entry) {
                return Evaluation(parts: parts, entry: nil, upToDate: false,
                                  reasons: ["cache entry \(key.prefix(12)) is damaged (\(problem)); rebuilding it"], brokenEntry: true)
            }
            if force { return Evaluation(parts: parts, entry: entry, upToDate: false, reasons: ["forced (--force \(stage.name))"]) }
            return Evaluation(parts: parts, entry: entry, upToDate: true, reasons: [], notes: restoreNotes(stage, entry: entry))
        }
        var reasons = differences(stage, executable: parts.executable, params: parts.params, inputs: inputs, skipping: [], baseline: baseline)
        if reasons.isEmpty {
            reasons = baseline?.key == key
                ? ["its cache entry is gone (removed by 'wsss gc' or by hand)"]
                : ["outputs changed: \(parts.outputNames.sorted().joined(separator: ", "))"]
        }
        if force { reasons.insert("forced (--force \(stage.name))", at: 0) }
        return Evaluation(parts: parts, entry: nil, upToDate: false, reasons: reasons)
    }

    /// The reasons, part by part, why this stage's key differs from the last one recorded.
    func differences(_ stage: BoundStage, executable: String, params: [String: JSONValue], inputs: [String: String],
                     skipping: Set<String>, baseline: StageRecord?) -> [String] {
        guard let baseline else { return ["never run: no earlier run of this stage is recorded"] }
        var reasons: [String] = []
        if baseline.mode != stage.role.keyMode {
            reasons.append("sharding changed: \(baseline.mode ?? "unsharded") -> \(stage.role.keyMode ?? "unsharded")")
        }
        if baseline.executable != executable {
            reasons.append("code changed: \(stage.decl.run) is a different executable than last run (\(shortHash(baseline.executable)) -> \(shortHash(executable)))")
        }
        for key in Set(params.keys).union(baseline.params.keys).sorted() {
            let old = baseline.params[key]
            let new = params[key]
            if old != new {
                reasons.append("param '\(key)' changed: \(old?.canonical ?? "(none)") -> \(new?.canonical ?? "(none)")")
            }
        }
        for input in stage.decl.inputs where !skipping.contains(input.name) {
            guard let new = inputs[input.name] else { continue }
            guard let old = baseline.inputs[input.name] else {
                reasons.append("input '\(input.name)' is new (\(input.source))")
                continue
            }
            guard old.hash != new else { continue }
            switch input.source {
            case .stage(let upstream, let output):
                reasons.append("input '\(input.name)' changed: \(upstream).\(output) has new content (\(shortHash(old.hash)) -> \(shortHash(new)))")
            case .path(let path):
                reasons.append("input '\(input.name)' changed: \(path) has new content (\(shortHash(old.hash)) -> \(shortHash(new)))")
            }
        }
        for name in baseline.inputs.keys.sorted() where !stage.decl.inputs.contains(where: { $0.name == name }) {
            reasons.append("input '\(name)' was removed")
        }
        return reasons
    }

    /// nil when every output object of the entry exists and still has the content it was stored with.
    func verify(_ entry: CacheEntry) -> String? {
        for (name, output) in entry.outputs.sorted(by: { $0.key < $1.key }) {
            let object = workspace.objectPath(output.hash)
            guard FileStamp.of(object)?.isRegular == true else { return "the stored file of output '\(name)' is missing" }
            guard let actual = try? memory.hash(of: object), actual == output.hash else {
                return "the stored file of output '\(name)' does not match its content hash"
            }
        }
        return nil
    }

    func restoreNotes(_ stage: BoundStage, entry: CacheEntry) -> [String] {
        stage.decl.outputs.compactMap { output in
            guard let stored = entry.outputs[output.name] else { return nil }
            return workspaceFileIsCurrent(output.path, hash: stored.hash) ? nil : "\(output.path) will be restored from the cache"
        }
    }

    func workspaceFileIsCurrent(_ relative: String, hash: String) -> Bool {
        let path = workspace.path(relative)
        guard let stamp = FileStamp.of(path), stamp.isRegular else { return false }
        if let object = FileStamp.of(workspace.objectPath(hash)), object.sameFile(as: stamp) { return true }
        return (try? memory.hash(of: path)) == hash
    }

    // MARK: Records

    func records(for pipeline: BoundPipeline) -> PipelineRecords {
        let path = workspace.recordsPath(pipelineFile: pipeline.file)
        state.lock()
        defer { state.unlock() }
        if let known = recordsByFile[path] { return known }
        let loaded = JSONDecoder.decodeFile(PipelineRecords.self, at: path) ?? PipelineRecords(pipeline: pipeline.displayFile, stages: [:])
        recordsByFile[path] = loaded
        return loaded
    }

    func allRecords() -> [PipelineRecords] {
        state.lock()
        if !allRecordsLoaded {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: workspace.recordsDir)) ?? [] where name.hasSuffix(".json") {
                let path = workspace.recordsDir + "/" + name
                if recordsByFile[path] == nil, let loaded = JSONDecoder.decodeFile(PipelineRecords.self, at: path) {
                    recordsByFile[path] = loaded
                }
            }
            allRecordsLoaded = true
        }
        defer { state.unlock() }
        return Array(recordsByFile.values)
    }

    /// What to compare a stage with: its own last record; else the latest record of a stage of the
    /// same name running the same executable in another pipeline file (a copy being tried out).
    func baseline(for stage: BoundStage, in pipeline: BoundPipeline) -> StageRecord? {
        if let own = records(for: pipeline).stages[stage.name] { return own }
        return allRecords().flatMap { $0.stages.values }
            .filter { $0.run == stage.decl.run && $0.stage == stage.name }
            .max { $0.updatedAtNs < $1.updatedAtNs }
    }

    func record(_ stage: BoundStage, in pipeline: BoundPipeline, parts: KeyParts, entry: CacheEntry) throws {
        let path = workspace.recordsPath(pipelineFile: pipeline.file)
        var records = self.records(for: pipeline)
        if let old = records.stages[stage.name], old.key == parts.key, old.executablePath == stage.executablePath,
           stage.decl.outputs.allSatisfy({ old.outputs[$0.name]?.path == $0.path && old.outputs[$0.name]?.hash == entry.outputs[$0.name]?.hash }) {
            return // unchanged: a no-op run writes nothing
        }
        records.pipeline = pipeline.displayFile
        records.stages[stage.name] = StageRecord(
            pipeline: pipeline.displayFile, stage: stage.name, run: stage.decl.run, key: parts.key,
            executable: parts.executable, executablePath: stage.executablePath, params: parts.params,
            inputs: Dictionary(uniqueKeysWithValues: stage.decl.inputs.map { ($0.name, StageRecord.Input(hash: parts.inputs[$0.name]!, source: $0.source.description)) }),
            outputs: Dictionary(uniqueKeysWithValues: stage.decl.outputs.map { ($0.name, StageRecord.Output(hash: entry.outputs[$0.name]!.hash, path: $0.path)) }),
            updatedAt: isoNow(), updatedAtNs: nowNanoseconds(), mode: parts.mode)
        state.lock()
        recordsByFile[path] = records
        state.unlock()
        try writeAtomically(try encodePretty(records), to: path)
    }

    // MARK: Status

    /// What a run would do, stage by stage in dependency order, without running anything.
    public func status(_ pipeline: BoundPipeline, force: Set<String> = [], until: String? = nil) throws -> [StageStatus] {
        try checkStageNames(pipeline, force: force, until: until)
        let selected = until.map { pipeline.withAncestors($0) }
        let forced = pipeline.jobs(of: force)
        var known: [String: [String: String]] = [:]
        var result: [StageStatus] = []
        for stage in pipeline.stages where selected?.contains(stage.name) ?? true {
            let evaluation = try evaluate(stage, in: pipeline, known: known, force: forced.contains(stage.name))
            if evaluation.upToDate, let entry = evaluation.entry { known[stage.name] = entry.outputs.mapValues(\.hash) }
            result.append(StageStatus(name: stage.name, state: evaluation.upToDate ? .upToDate : .stale,
                                      reasons: evaluation.reasons, notes: evaluation.notes, key: evaluation.key))
        }
        try? memory.save()
        return result
    }

    func checkStageNames(_ pipeline: BoundPipeline, force: Set<String>, until: String?) throws {
        for name in force.sorted() + (until.map { [$0] } ?? []) where !pipeline.stages.contains(where: { $0.stageName == name }) {
            throw RunnerError("\(pipeline.displayFile): no stage '\(name)' (stages: \(pipeline.pipeline.stages.map(\.name).joined(separator: ", ")))")
        }
    }

    // MARK: Running

    /// Runs what is stale, in dependency order, up to `options.jobs` stages at once.
    public func run(_ pipeline: BoundPipeline, options: RunOptions = RunOptions()) throws -> RunReport {
        try checkStageNames(pipeline, force: options.force, until: options.until)
        let started = Date()
        let lock = try WorkspaceLock(workspace, purpose: "run \(pipeline.displayFile)", wait: options.wait,
                                     stopWaiting: { self.isInterrupted }) { console.line($0) }
        defer { withExtendedLifetime(lock) {} }
        removeLeftovers()

        let selected = options.until.map { pipeline.withAncestors($0) }
        let forced = pipeline.jobs(of: options.force)
        // Jobs in dependency order; `taken` marks those started, `firstOpen` the first not yet
        // started, so that finding a ready job does not rescan the started ones (linear runs of
        // large pipelines).
        let pending = pipeline.stages.filter { selected?.contains($0.name) ?? true }
        var taken = [Bool](repeating: false, count: pending.count)
        var firstOpen = 0
        let width = pending.map(\.name.count).max() ?? 0
        func label(_ name: String) -> String { name.padding(toLength: width, withPad: " ", startingAt: 0) }

        var known: [String: [String: String]] = [:]
        var outcomes: [String: StageOutcome] = [:]
        var failed = false
        var running = 0
        let condition = NSCondition()
        // Guarded by `condition`: stages whose process has ended, for this thread to finish off.
        let finished = Shared<[(BoundStage, KeyParts, [String], Date, Result<CacheEntry, RunnerError>)]>([])

        func complete(_ stage: BoundStage, parts: KeyParts, reasons: [String], start: Date, result: Result<CacheEntry, RunnerError>) {
            let seconds = Date().timeIntervalSince(start)
            switch result {
            case .success(let entry):
                do {
                    try materialise(stage, entry: entry)
                    try record(stage, in: pipeline, parts: parts, entry: entry)
                    known[stage.name] = entry.outputs.mapValues(\.hash)
                    outcomes[stage.name] = StageOutcome(name: stage.name, kind: .ran, reasons: reasons, seconds: seconds, message: nil)
                    console.line("\(label(stage.name))  ran: \(reasons.joined(separator: "; "))  (\(Self.clock(seconds)))")
                } catch {
                    failed = true
                    outcomes[stage.name] = StageOutcome(name: stage.name, kind: .failed, reasons: reasons, seconds: seconds, message: "\(error)")
                    console.line("\(label(stage.name))  FAILED after \(Self.clock(seconds)): \(error)")
                }
            case .failure(let error):
                failed = true
                outcomes[stage.name] = StageOutcome(name: stage.name, kind: .failed, reasons: reasons, seconds: seconds, message: error.description)
                console.line("\(label(stage.name))  FAILED after \(Self.clock(seconds)): \(error)")
            }
        }

        while true {
            condition.lock()
            let stop = failed || isInterrupted
            let done = finished.value
            finished.value.removeAll()
            condition.unlock()
            for item in done {
                running -= 1
                complete(item.0, parts: item.1, reasons: item.2, start: item.3, result: item.4)
            }
            if !done.isEmpty { continue }
            while firstOpen < pending.count && taken[firstOpen] { firstOpen += 1 }
            if (stop || firstOpen == pending.count) && running == 0 { break }
            let readyIndex = stop ? nil : (firstOpen..<pending.count).first { index in
                !taken[index] && pending[index].decl.upstream.allSatisfy { known[$0] != nil }
            }
            if readyIndex == nil && running == 0 && !stop {
                throw RunnerError("internal: no stage of \(pending.indices.filter { !taken[$0] }.map { pending[$0].name }) can start")
            }
            if let index = readyIndex, running < max(options.jobs, 1) {
                taken[index] = true
                let stage = pending[index]
                let start = Date()
                do {
                    let evaluation = try evaluate(stage, in: pipeline, known: known, force: forced.contains(stage.name))
                    if evaluation.upToDate, let entry = evaluation.entry, let parts = evaluation.parts {
                        let restored = try materialise(stage, entry: entry)
                        try record(stage, in: pipeline, parts: parts, entry: entry)
                        known[stage.name] = entry.outputs.mapValues(\.hash)
                        let seconds = Date().timeIntervalSince(start)
                        outcomes[stage.name] = StageOutcome(name: stage.name, kind: .cached, reasons: [], seconds: seconds, message: nil)
                        let note = restored.isEmpty ? "" : ", restored \(restored.joined(separator: ", "))"
                        console.line("\(label(stage.name))  cached\(note)  (\(Self.clock(seconds)))")
                        continue
                    }
                    guard let parts = evaluation.parts else {
                        throw RunnerError("internal: stage '\(stage.name)' became ready with unknown inputs")
                    }
                    if evaluation.brokenEntry { discardEntry(parts.key) }
                    console.line("\(label(stage.name))  running: \(evaluation.reasons.joined(separator: "; "))")
                    running += 1
                    let reasons = evaluation.reasons
                    let inputPaths = Dictionary(uniqueKeysWithValues: stage.decl.inputs.map { input -> (String, String) in
                        switch input.source {
                        case .path(let path): return (input.name, workspace.path(path))
                        case .stage(let upstream, let output):
                            return (input.name, workspace.path(pipeline.stage(upstream)!.decl.outputs.first { $0.name == output }!.path))
                        }
                    })
                    let prefix = label(stage.name)
                    // Read here, not on the stage's thread: this HDF5 library is not thread-safe.
                    let epoch = Self.sourceDateEpoch(inputs: inputPaths.keys.sorted().map { inputPaths[$0]! })
                    let thread = Thread { [self] in
                        let result = execute(stage, parts: parts, pipeline: pipeline, inputPaths: inputPaths, sourceDateEpoch: epoch, label: prefix)
                        condition.lock()
                        finished.value.append((stage, parts, reasons, start, result))
                        condition.signal()
                        condition.unlock()
                    }
                    thread.stackSize = 1 << 20
                    thread.start()
                } catch {
                    failed = true
                    outcomes[stage.name] = StageOutcome(name: stage.name, kind: .failed, reasons: [], seconds: Date().timeIntervalSince(start), message: "\(error)")
                    console.line("\(label(stage.name))  FAILED: \(error)")
                }
                continue
            }
            // Nothing to start: wait for a running stage to finish (or an interrupt).
            condition.lock()
            while finished.value.isEmpty && !(isInterrupted && running == 0) {
                _ = condition.wait(until: Date().addingTimeInterval(0.5))
            }
            condition.unlock()
        }
        try? memory.save()

        let all = pipeline.stages.filter { selected?.contains($0.name) ?? true }.map { stage in
            outcomes[stage.name] ?? StageOutcome(name: stage.name, kind: .notRun, reasons: [], seconds: 0,
                                                 message: isInterrupted ? "interrupted" : "an earlier stage failed")
        }
        let report = RunReport(pipeline: pipeline.displayFile, stages: all, seconds: Date().timeIntervalSince(started))
        let ran = all.filter { $0.kind == .ran }.count
        let cached = all.filter { $0.kind == .cached }.count
        let notRun = all.filter { $0.kind == .notRun }.map(\.name)
        var summary = "wsss: \(pipeline.displayFile): \(ran) ran, \(cached) cached"
        if failed { summary += ", failed: \(all.filter { $0.kind == .failed }.map(\.name).joined(separator: ", "))" }
        if !notRun.isEmpty { summary += ", not run: \(notRun.joined(separator: ", "))" }
        console.line(summary + " in \(Self.clock(report.seconds))")
        return report
    }

    static func clock(_ seconds: Double) -> String {
        if seconds < 60 { return String(format: "%.2f s", seconds) }
        let whole = Int(seconds.rounded())
        return whole >= 3600 ? String(format: "%d:%02d:%02d", whole / 3600, whole / 60 % 60, whole % 60) : String(format: "%d:%02d", whole / 60, whole % 60)
    }

    /// Runs one stage into a private temporary folder and stores its outputs. Only an exit status
    /// of 0 with every declared output present gets stored; anything else leaves no trace.
    func execute(_ stage: BoundStage, parts: KeyParts, pipeline: BoundPipeline, inputPaths: [String: String],
                 sourceDateEpoch: Int64, label: String) -> Result<CacheEntry, RunnerError> {
        let key = parts.key
        let scratch = workspace.tmpDir + "/\(stage.name)-\(key.prefix(12))-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let started = Date()
        do {
            // The workspace copies of a rerunning stage's outputs go first: until it succeeds they
            // would show results that no longer match the pipeline (they stay in the cache).
            for output in stage.decl.outputs { unlink(workspace.path(output.path)) }
            var outputPaths: [String: String] = [:]
            for output in stage.decl.outputs {
                let folder = scratch + "/out-" + output.name
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                outputPaths[output.name] = folder + "/" + (output.path as NSString).lastPathComponent
            }
            let paramsFile = scratch + "/params.json"
            try writeAtomically(Data(JSONValue.object(stage.params).canonical.utf8), to: paramsFile)

            var arguments: [String] = []
            for name in inputPaths.keys.sorted() {
                // A merge's parts (OUTPUT.I) are not inputs of the stage's own: --part.
                arguments += [name.contains(".") ? "--part" : "--in", "\(name)=\(inputPaths[name]!)"]
            }
            for name in outputPaths.keys.sorted() { arguments += ["--out", "\(name)=\(outputPaths[name]!)"] }
            arguments += ["--params", paramsFile] + Self.roleArguments(stage.role)
            // The cache key names the executable hashed when the pipeline was loaded: one rebuilt
            // since (or while the stage runs) would store its outputs under the other code's key.
            func checkExecutable(_ when: String) throws {
                let now = try memory.hash(of: stage.executablePath)
                guard now == parts.executable else {
                    throw RunnerError("\(stage.decl.run) changed \(when) (\(shortHash(parts.executable)) -> \(shortHash(now))); "
                                      + "nothing was recorded: run the pipeline again")
                }
            }
            try checkExecutable("since the pipeline was loaded")
            try runProcess(stage.executablePath, arguments: arguments, stageName: stage.name, label: label, sourceDateEpoch: sourceDateEpoch)
            try checkExecutable("while the stage ran")

            var outputs: [String: CacheEntry.Output] = [:]
            for (name, path) in outputPaths {
                guard let stamp = FileStamp.of(path) else {
                    throw RunnerError("\(stage.decl.run) exited successfully but did not write output '\(name)'")
                }
                guard stamp.isRegular else { throw RunnerError("output '\(name)' is not a regular file") }
                let hash = try HashMemory.sha256(ofFile: path)
                try store(path, hash: hash)
                outputs[name] = CacheEntry.Output(hash: hash, size: stamp.size)
            }
            let entry = CacheEntry(key: key, run: stage.decl.run, executable: parts.executable, params: parts.params,
                                   inputs: parts.inputs, outputs: outputs, createdAt: isoNow(),
                                   seconds: Date().timeIntervalSince(started),
                                   madeBy: .init(pipeline: pipeline.displayFile, stage: stage.name))
            // The entry is the commit point: written last, it only ever describes complete objects.
            try writeAtomically(try encodePretty(entry), to: workspace.entryPath(key))
            return .success(entry)
        } catch let error as RunnerError {
            return .failure(error)
        } catch {
            return .failure(RunnerError("\(error)"))
        }
    }

    /// What a sharded stage's job adds to the stage contract's arguments.
    static func roleArguments(_ role: JobRole) -> [String] {
        switch role {
        case .whole: return []
        case .shard(let index, let count): return ["--shard", "\(index)/\(count)"]
        case .merge(let count): return ["--merge-shards", String(count)]
        }
    }

    /// `SOURCE_DATE_EPOCH` for a stage run, which its artifacts record as `created_at`: the newest
    /// `created_at` among its artifact inputs (as in reproducible builds: the time of the newest
    /// thing that went in), 0 when it reads none. It depends only on the inputs' content, which
    /// the cache key covers, so a rerun of one key (`--force`, a rebuilt cache entry) writes the
    /// same bytes and the stages after it stay cached.
    public static func sourceDateEpoch(inputs: [String]) -> Int64 {
        let formatter = ISO8601DateFormatter()
        var newest: Int64 = 0
        for path in inputs where FileStamp.of(path)?.isRegular == true {
            guard let file = try? HDF5File.open(path), let root = try? file.root, root.hasAttribute("created_at"),
                  let text = try? root.stringAttribute("created_at"), let date = formatter.date(from: text) else { continue }
            newest = max(newest, Int64(date.timeIntervalSince1970.rounded(.down)))
        }
        return newest
    }

    /// Runs an executable with its output streamed line by line as "stage | line".
    func runProcess(_ executable: String, arguments: [String], stageName: String, label: String, sourceDateEpoch: Int64) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: workspace.root)
        var environment = ProcessInfo.processInfo.environment
        environment["WSSS_STAGE"] = stageName
        // Always ours, never the caller's: the cache key does not cover the environment.
        environment["SOURCE_DATE_EPOCH"] = String(sourceDateEpoch)
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        let lastLines = Shared<[String]>([]) // written by the reader thread, read after it ends
        let reader = Thread { [console] in
            let handle = pipe.fileHandleForReading
            var pending = Data()
            func emit(_ bytes: Data) {
                // A progress line rewritten with "\r" on a terminal shows its latest state.
                let text = String(decoding: bytes, as: UTF8.self).split(separator: "\r").last.map(String.init) ?? ""
                console.line("\(label) | \(text)")
                lastLines.value.append(text)
                if lastLines.value.count > 5 { lastLines.value.removeFirst() }
            }
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    emit(pending[pending.startIndex..<newline])
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            if !pending.isEmpty { emit(pending) }
        }
        // Process closes the parent's copy of the pipe's write end after spawning, so the reader
        // sees end of file when the stage exits. It also starts the stage in its own process group:
        // a terminal's Ctrl-C reaches only wsss, which then stops the stages (`interrupt()`).
        try process.run()
        state.lock()
        children.insert(process.processIdentifier)
        let stopNow = interrupted
        state.unlock()
        if stopNow { kill(process.processIdentifier, SIGTERM) }
        reader.start()
        process.waitUntilExit()
        state.lock()
        children.remove(process.processIdentifier)
        state.unlock()
        while !reader.isFinished { usleep(2000) }
        switch process.terminationReason {
        case .uncaughtSignal:
            let name = String(cString: strsignal(process.terminationStatus))
            throw RunnerError("\((executable as NSString).lastPathComponent) was killed by signal \(process.terminationStatus) (\(name)); nothing was recorded")
        case .exit where process.terminationStatus != 0:
            let last = lastLines.value.last { $0.hasPrefix("error:") } ?? lastLines.value.last ?? ""
            throw RunnerError("\((executable as NSString).lastPathComponent) exited with status \(process.terminationStatus)\(last.isEmpty ? "" : ": " + last)")
        default:
            break
        }
    }

    /// Moves a finished output into the object store under its content hash, read-only (it may be
    /// hard-linked into the workspace, and nobody should edit the cache through that link).
    func store(_ path: String, hash: String) throws {
        let object = workspace.objectPath(hash)
        if FileStamp.of(object) != nil {
            if (try? memory.hash(of: object)) == hash {
                unlink(path)
                return
            }
            unlink(object) // damaged: replace with the good copy
            memory.forget(object)
        }
        try FileManager.default.createDirectory(atPath: (object as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        chmod(path, 0o444)
        guard rename(path, object) == 0 else {
            throw RunnerError("\(object): cannot move output into the cache: \(String(cString: strerror(errno)))")
        }
    }

    /// Puts the entry's outputs at their workspace paths: a hard link to the object (no copy), or a
    /// copy where links are impossible, placed by rename so the path is never half-written.
    @discardableResult
    func materialise(_ stage: BoundStage, entry: CacheEntry) throws -> [String] {
        var placed: [String] = []
        for output in stage.decl.outputs {
            guard let stored = entry.outputs[output.name] else { throw RunnerError("cache entry \(entry.key) lacks output '\(output.name)'") }
            if workspaceFileIsCurrent(output.path, hash: stored.hash) { continue }
            let destination = workspace.path(output.path)
            if FileStamp.of(destination)?.isDirectory == true {
                throw RunnerError("\(output.path): is a folder; the output of stage '\(stage.name)' cannot be placed there")
            }
            let folder = (destination as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let temporary = folder + "/." + (destination as NSString).lastPathComponent + ".wsss-\(getpid())"
            unlink(temporary)
            let object = workspace.objectPath(stored.hash)
            if link(object, temporary) != 0 {
                do {
                    try FileManager.default.copyItem(atPath: object, toPath: temporary)
                } catch {
                    throw RunnerError("\(output.path): cannot link or copy from the cache: \(error)")
                }
            }
            guard rename(temporary, destination) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw RunnerError("\(output.path): cannot put output in place: \(reason)")
            }
            placed.append(output.path)
        }
        return placed
    }

    func discardEntry(_ key: String) {
        guard let entry = JSONDecoder.decodeFile(CacheEntry.self, at: workspace.entryPath(key)) else { return }
        unlink(workspace.entryPath(key))
        for output in entry.outputs.values {
            let object = workspace.objectPath(output.hash)
            if (try? memory.hash(of: object)) != output.hash {
                unlink(object)
                memory.forget(object)
            }
        }
    }

    /// Scratch folders of runs that died (we hold the lock, so no live run owns one).
    func removeLeftovers() {
        try? FileManager.default.removeItem(atPath: workspace.tmpDir)
    }

    // MARK: Interrupts

    /// Whether `interrupt()` was called (the command line then exits with 130, as shells expect).
    public var isInterrupted: Bool {
        state.lock()
        defer { state.unlock() }
        return interrupted
    }

    /// Stops starting stages and asks running ones to stop (SIGTERM); the run then ends with
    /// nothing recorded for them. Safe to call from a signal source.
    public func interrupt() {
        state.lock()
        interrupted = true
        let running = children
        state.unlock()
        for pid in running { kill(pid, SIGTERM) }
    }
}
