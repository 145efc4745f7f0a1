import TestSupport
import Foundation
import XCTest
@testable import Runner

/// The folder where SwiftPM put the executables of this build (wsss, wsss-test-stage, stages).
let productsDirectory: String = {
    if let bin = ProcessInfo.processInfo.environment["WSSS_TEST_BIN"] { return bin }
    var candidates: [String] = []
    if let executable = Bundle.main.executablePath { candidates.append((executable as NSString).deletingLastPathComponent) }
    for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
        candidates.append((bundle.bundlePath as NSString).deletingLastPathComponent)
    }
    let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    candidates.append(packageRoot.appendingPathComponent(".build/debug").path)
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0 + "/wsss-test-stage") } ?? candidates.last!
}()

/// A throwaway workspace with `Pipelines/`, a test-stage log, and helpers to run the runner in
/// process (for structured results) or the real `wsss` binary (for the command line).
final class TestWorkspace {
    /// The hash memory's racy margin in these tests: short, so that a test waits for it to pass
    /// (`waitPastRacyMargin`) in a fraction of a second rather than the default second.
    static let racyMarginNs: Int64 = 100_000_000

    let root: String
    let log: String
    var lines: [String] = []
    private let lock = NSLock()

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("wsss-runner-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root + "/Pipelines", withIntermediateDirectories: true)
        log = root + "/stage.log"
        setenv("WSSS_TEST_STAGE_LOG", log, 1)
        guard FileManager.default.isExecutableFile(atPath: productsDirectory + "/wsss-test-stage"),
              FileManager.default.isExecutableFile(atPath: productsDirectory + "/wsss") else {
            throw RunnerError("wsss and wsss-test-stage are not built in \(productsDirectory): run `swift build` first")
        }
    }

    func remove() {
        // Stored objects are read-only; the folders holding them are not, so removal works.
        try? FileManager.default.removeItem(atPath: root)
    }

    func path(_ relative: String) -> String { root + "/" + relative }

    func write(_ text: String, to relative: String) throws {
        let full = path(relative)
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: full))
    }

    func read(_ relative: String) -> String? {
        FileManager.default.contents(atPath: path(relative)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Labels of the test-stage runs that started since the last call.
    func started() -> [String] {
        let text = read("stage.log") ?? ""
        unlink(log)
        return text.split(separator: "\n").filter { $0.hasPrefix("start ") }.map { String($0.dropFirst(6)) }
    }

    func logLines() -> [String] {
        (read("stage.log") ?? "").split(separator: "\n").map(String.init)
    }

    func runner() -> Runner {
        let runner = Runner(workspace: Workspace(root: root), binDir: productsDirectory, console: Console { [self] line in
            lock.lock()
            lines.append(line)
            lock.unlock()
        })
        runner.memory.racyMarginNs = Self.racyMarginNs
        return runner
    }

    /// Waits (up to `timeout` seconds) until the runner has printed a line that `matches`.
    func waitForLine(timeout: TimeInterval = 60, _ matches: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            lock.lock()
            let found = lines.contains(where: matches)
            lock.unlock()
            if found { return true }
            usleep(10_000)
        }
        return false
    }

    /// Waits until the test-stage log has a line that `matches` (up to `timeout` seconds).
    func waitForLogLine(timeout: TimeInterval = 60, _ matches: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if logLines().contains(where: matches) { return true }
            usleep(10_000)
        }
        return false
    }

    /// Waits until every file in the workspace last changed more than the racy margin ago, so
    /// that the hashes taken from now on are remembered and trusted.
    func waitPastRacyMargin() {
        var newest: Int64 = 0
        if let walker = FileManager.default.enumerator(atPath: root) {
            while let relative = walker.nextObject() as? String {
                if let stamp = FileStamp.of(root + "/" + relative) { newest = max(newest, stamp.mtimeNs, stamp.ctimeNs) }
            }
        }
        while nowNanoseconds() - newest <= Self.racyMarginNs { usleep(10_000) }
    }

    func load(_ pipeline: String, overrides: [String] = []) throws -> (Runner, BoundPipeline) {
        let runner = self.runner()
        return (runner, try runner.load(path(pipeline), overrides: overrides))
    }

    func run(_ pipeline: String, _ options: RunOptions = RunOptions(), overrides: [String] = []) throws -> RunReport {
        let (runner, bound) = try load(pipeline, overrides: overrides)
        return try runner.run(bound, options: options)
    }

    func status(_ pipeline: String, overrides: [String] = []) throws -> [String: StageStatus] {
        let (runner, bound) = try load(pipeline, overrides: overrides)
        return Dictionary(uniqueKeysWithValues: try runner.status(bound).map { ($0.name, $0) })
    }

    /// Runs the real `wsss` binary in the workspace: (exit status, stdout, stderr).
    func wsss(_ arguments: [String]) throws -> (Int32, String, String) {
        let r = try ProcessRunner.run(URL(fileURLWithPath: productsDirectory + "/wsss"), arguments, in: URL(fileURLWithPath: root),
                                      environment: ["WSSS_BIN": productsDirectory])
        return (r.status, r.stdout, r.stderr)
    }

    /// Cache entries on disk, by key.
    func entries() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root + "/Artifacts/.cache/entries")) ?? [])
            .filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }
}

/// A stage of the test executable, in pipeline YAML.
func testStage(_ name: String, inputs: [String: String] = [:], params: String = "", outputs prefix: String = "Artifacts/t") -> String {
    var text = """
      - name: \(name)
        run: wsss-test-stage

    """
    if !inputs.isEmpty {
        text += "    inputs:\n" + inputs.keys.sorted().map { "      \($0): \(inputs[$0]!)\n" }.joined()
    }
    text += "    params:\n      label: \(name)\n"
    if !params.isEmpty { text += params.split(separator: ",").map { "      " + $0.trimmingCharacters(in: .whitespaces) + "\n" }.joined() }
    text += "    outputs:\n      out: \(prefix)/\(name).txt\n      metrics: \(prefix)/\(name).json\n"
    return text
}

func pipelineYAML(_ name: String, _ stages: [String]) -> String {
    "name: \(name)\nstages:\n" + stages.joined()
}
