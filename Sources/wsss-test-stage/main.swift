// A small stage that follows the stage contract, for the runner's tests and measurements.
// It writes `out` (a text summary of its parameters and of its inputs' content, followed by
// `payload_bytes` deterministic bytes) and `metrics` (JSON with `miou` = factor / (factor + 1)).
// It can be told to sleep, to fail, to kill itself with SIGKILL half-way through writing, or to
// create a marker file and wait for another's (so tests can prove that two stages overlap, or
// hold a stage running, without timing anything).
import Crypto
import Foundation
import StageKit

struct Params: StageParameters {
    var label = "x"
    var factor = 1.0
    var payload_bytes = 0
    var sleep_ms = 0
    var fail = false
    /// When this file exists, write part of `out`, then SIGKILL this process.
    var kill_if_exists = ""
    /// A file to create once started.
    var touch = ""
    /// A file to wait for after starting (and touching); gives up with an error after `wait_ms`.
    var wait_for = ""
    var wait_ms = 60_000
    /// Items listed in `out`, one a line; `--shard I/N` lists only its block, the merge all of them.
    var items = 0
    init() {}
    static let rules: [String: ParameterRule] = ["payload_bytes": .nonNegative, "sleep_ms": .nonNegative, "wait_ms": .nonNegative]
}

let spec = StageSpec(
    name: "wsss-test-stage", version: "1",
    summary: "Deterministic test stage: summarises its inputs and parameters; can sleep, fail or crash.",
    inputs: [], optionalInputs: ["a", "b"], outputs: ["out", "metrics"],
    resources: StageResources(threads: 1, memoryMB: 256), shardable: true)

/// The line before `out`'s item lines: what comes before it is the same in every shard.
let itemsMarker = "items:\n"

/// Tests count real executions (and see their overlap) through this log, named by an environment
/// variable so that it is not part of the stage key. O_APPEND keeps parallel stages' lines whole.
func testLog(_ line: String) {
    guard let log = ProcessInfo.processInfo.environment["WSSS_TEST_STAGE_LOG"] else { return }
    let fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0o644)
    guard fd >= 0 else { return }
    _ = (line + "\n").withCString { write(fd, $0, strlen($0)) }
    close(fd)
}

/// `out`: part 0's header and every part's item lines, in shard order; `metrics`: part 0's.
func mergeShards(_ ctx: ShardMergeContext<Params>) throws {
    testLog("start \(ctx.params.label) merge \(ctx.shardCount)")
    var merged = ""
    for (index, path) in ctx.parts("out").enumerated() {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let marker = text.range(of: itemsMarker) else {
            throw StageError("\(path): not an 'out' file of this stage (no items line)")
        }
        if index == 0 { merged = String(text[..<marker.upperBound]) }
        merged += text[marker.upperBound...]
    }
    try Data(merged.utf8).write(to: URL(fileURLWithPath: ctx.pendingOutput("out").temporaryPath))
    try ctx.takeFirstPart("metrics")
}

StageMain.run(spec, parameters: Params.self, merge: mergeShards) { ctx in
    let p = ctx.params
    testLog("start \(p.label)" + (ctx.shard.map { " shard \($0)" } ?? ""))
    // A failure outside the parameters (so outside the stage key), for rerunning one shard.
    if let shard = ctx.shard, ProcessInfo.processInfo.environment["WSSS_TEST_FAIL_SHARD"] == String(shard.index) {
        usleep(300_000)  // after the other shards have started
        throw StageError("failing shard \(shard) as WSSS_TEST_FAIL_SHARD asks")
    }
    var summary = "label=\(p.label)\nfactor=\(p.factor)\n"
    for name in ctx.inputPaths.keys.sorted() {
        guard let data = FileManager.default.contents(atPath: ctx.input(name)) else {
            throw StageError("\(ctx.input(name)): cannot read input '\(name)'")
        }
        summary += "\(name)=" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined() + "\n"
    }
    ctx.log.info("working on \(p.label)")
    if !p.touch.isEmpty { _ = FileManager.default.createFile(atPath: p.touch, contents: nil) }
    if !p.wait_for.isEmpty {
        var waited = 0
        while !FileManager.default.fileExists(atPath: p.wait_for) {
            guard waited < p.wait_ms else { throw StageError("gave up waiting for \(p.wait_for) after \(p.wait_ms) ms") }
            usleep(10_000)
            waited += 10
        }
    }
    if p.sleep_ms > 0 { usleep(useconds_t(p.sleep_ms) * 1000) }
    if p.fail { throw StageError("failing as asked (fail: true)") }

    let outFile = ctx.pendingOutput("out")
    let outPath = outFile.temporaryPath
    guard let out = FileHandle(forWritingAtPath: outPath) ?? {
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        return FileHandle(forWritingAtPath: outPath)
    }() else { throw StageError("\(outPath): cannot create") }
    if p.items > 0 || ctx.shard != nil { summary += itemsMarker + ctx.shardRange(of: p.items).map { "item \($0)\n" }.joined() }
    out.write(Data(summary.utf8))
    if !p.kill_if_exists.isEmpty, FileManager.default.fileExists(atPath: p.kill_if_exists) {
        out.synchronizeFile()
        kill(getpid(), SIGKILL)
    }
    if p.payload_bytes > 0 {
        // xorshift64 stream: deterministic, incompressible enough to make hashing real work.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let block = 1 << 20
        var buffer = [UInt64](repeating: 0, count: block / 8)
        var remaining = p.payload_bytes
        let progress = ProgressReporter("payload", total: p.payload_bytes, unit: "bytes")
        while remaining > 0 {
            buffer.withUnsafeMutableBufferPointer { words in
                for index in 0..<words.count {
                    state ^= state << 13
                    state ^= state >> 7
                    state ^= state << 17
                    words[index] = state
                }
            }
            let count = min(remaining, block)
            buffer.withUnsafeBytes { out.write(Data($0.prefix(count))) }
            remaining -= count
            progress.advance(by: count)
        }
    }
    out.closeFile()
    let miou = p.factor / (p.factor + 1)
    let metrics = "{\"miou\": \(miou), \"label\": \"\(p.label)\", \"inputs\": \(ctx.inputPaths.count)}\n"
    try Data(metrics.utf8).write(to: URL(fileURLWithPath: ctx.pendingOutput("metrics").temporaryPath))
    testLog("end \(p.label)")
}
