import ArtifactStore
import Foundation
import TestSupport
import XCTest
@testable import Runner

/// `shards: N` in pipeline files: N cached shard jobs plus a merge, with the test stage (which
/// lists `items` in its `out`, a shard only its block) standing in for a per-image stage.
final class ShardRunnerTests: XCTestCase {
    var ws: TestWorkspace!

    override func setUpWithError() throws {
        ws = try TestWorkspace()
        try ws.write("hello\n", to: "data/raw.txt")
    }

    override func tearDown() {
        unsetenv("WSSS_TEST_FAIL_SHARD")
        ws.remove()
    }

    /// first <- data/raw.txt; split <- first (sharded when `shards` is given); after <- split.
    static func pipeline(shards: Int?) -> String {
        var split = testStage("split", inputs: ["a": "first.out"], params: "items: 10")
        if let shards { split = split.replacingOccurrences(of: "    run: wsss-test-stage\n", with: "    run: wsss-test-stage\n    shards: \(shards)\n") }
        return pipelineYAML("sharded", [
            testStage("first", inputs: ["a": "data/raw.txt"]),
            split,
            testStage("after", inputs: ["a": "split.out"]),
        ])
    }

    func outcomes(_ report: RunReport) -> [String: StageOutcome.Kind] {
        Dictionary(uniqueKeysWithValues: report.stages.map { ($0.name, $0.kind) })
    }

    /// The merged outputs are the unsharded run's bytes, so the stage after the split is cached
    /// when only the sharding changes; each shard and the merge is a job of its own in the report
    /// and the console.
    func testShardedStageMergesToTheUnshardedOutputs() throws {
        try ws.write(Self.pipeline(shards: nil), to: "Pipelines/p.yaml")
        XCTAssertTrue(try ws.run("Pipelines/p.yaml").succeeded)
        let unsharded = ws.read("Artifacts/t/split.txt")
        XCTAssertEqual(unsharded?.components(separatedBy: "item ").count, 11, unsharded ?? "")
        XCTAssertEqual(ws.started(), ["first", "split", "after"])

        try ws.write(Self.pipeline(shards: 3), to: "Pipelines/p.yaml")
        let report = try ws.run("Pipelines/p.yaml", RunOptions(jobs: 2))
        XCTAssertTrue(report.succeeded)
        XCTAssertEqual(report.stages.map(\.name), ["first", "split[0/3]", "split[1/3]", "split[2/3]", "split", "after"])
        XCTAssertEqual(outcomes(report), ["first": .cached, "split[0/3]": .ran, "split[1/3]": .ran, "split[2/3]": .ran, "split": .ran, "after": .cached])
        XCTAssertEqual(ws.started().sorted(), ["split merge 3", "split shard 0/3", "split shard 1/3", "split shard 2/3"])
        XCTAssertEqual(ws.read("Artifacts/t/split.txt"), unsharded)
        XCTAssertEqual(ws.read("Artifacts/t/split.shard-1-of-3.txt")?.components(separatedBy: "item ").dropFirst().map { $0.prefix(1) }, ["3", "4", "5"])
        XCTAssertTrue(ws.waitForLine { $0.hasPrefix("split[1/3]") && $0.contains("ran:") }, ws.lines.joined(separator: "\n"))
        XCTAssertTrue(ws.lines.contains { $0.hasPrefix("split ") && $0.contains("ran:") && $0.contains("sharding changed: unsharded -> merge 3") },
                      ws.lines.joined(separator: "\n"))

        // Status and the dry run name every job; all are up to date now.
        let status = try ws.status("Pipelines/p.yaml")
        XCTAssertEqual(Set(status.keys), ["first", "split[0/3]", "split[1/3]", "split[2/3]", "split", "after"])
        XCTAssertTrue(status.values.allSatisfy { $0.state == .upToDate })
        let dry = try ws.wsss(["run", "--dry-run", "Pipelines/p.yaml"])
        XCTAssertEqual(dry.0, 0, dry.2)
        XCTAssertTrue(dry.1.contains("split[2/3]  cached"), dry.1)
    }

    /// A shard that fails leaves the others' results cached: the rerun runs that shard and the merge.
    func testFailedShardRerunsAloneWithTheMerge() throws {
        try ws.write(Self.pipeline(shards: 3), to: "Pipelines/p.yaml")
        setenv("WSSS_TEST_FAIL_SHARD", "1", 1)
        let failed = try ws.run("Pipelines/p.yaml", RunOptions(jobs: 3))
        XCTAssertFalse(failed.succeeded)
        XCTAssertEqual(outcomes(failed), ["first": .ran, "split[0/3]": .ran, "split[1/3]": .failed, "split[2/3]": .ran, "split": .notRun, "after": .notRun])
        XCTAssertNil(ws.read("Artifacts/t/split.shard-1-of-3.txt"))
        XCTAssertNil(ws.read("Artifacts/t/split.txt"))
        _ = ws.started()

        unsetenv("WSSS_TEST_FAIL_SHARD")
        let rerun = try ws.run("Pipelines/p.yaml", RunOptions(jobs: 3))
        XCTAssertTrue(rerun.succeeded)
        XCTAssertEqual(rerun.ran, ["split[1/3]", "split", "after"])
        XCTAssertEqual(ws.started().sorted(), ["after", "split merge 3", "split shard 1/3"])
        XCTAssertEqual(ws.read("Artifacts/t/split.txt")?.components(separatedBy: "item ").count, 11)
    }

    /// Another N reruns the shards and the merge, not what comes before; the test stage's merged
    /// `out` is the same bytes for any N, so not what comes after either (a real stage's merged
    /// artifact lists its shards: its readers rerun). Back to the old N: all cached.
    func testChangingTheShardCountRerunsOnlyShardsAndMerge() throws {
        try ws.write(Self.pipeline(shards: 3), to: "Pipelines/p.yaml")
        XCTAssertTrue(try ws.run("Pipelines/p.yaml").succeeded)
        _ = ws.started()
        try ws.write(Self.pipeline(shards: 2), to: "Pipelines/p.yaml")
        let status = try ws.status("Pipelines/p.yaml")
        XCTAssertEqual(status["first"]?.state, .upToDate)
        XCTAssertEqual(status["split"]?.state, .stale)
        XCTAssertTrue(status["split"]?.reasons.contains("sharding changed: merge 3 -> merge 2") == true, "\(status["split"]!.reasons)")
        let report = try ws.run("Pipelines/p.yaml")
        XCTAssertEqual(report.ran, ["split[0/2]", "split[1/2]", "split"])
        XCTAssertEqual(outcomes(report)["after"], .cached)
        XCTAssertEqual(ws.started().sorted(), ["split merge 2", "split shard 0/2", "split shard 1/2"])
        try ws.write(Self.pipeline(shards: 3), to: "Pipelines/p.yaml")
        XCTAssertEqual(try ws.run("Pipelines/p.yaml").ran, [])
        // --force on the stage forces its shards and its merge.
        XCTAssertEqual(try ws.run("Pipelines/p.yaml", RunOptions(force: ["split"])).ran, ["split[0/3]", "split[1/3]", "split[2/3]", "split"])
    }

    /// `shards:` on a stage that does not split, or not a whole number >= 1: one clear line naming
    /// the file, the place and the stage; nothing runs.
    func testBadShardsAreClearErrors() throws {
        let notShardable = pipelineYAML("bad", [
            "  - name: data\n    run: prepare-data\n    shards: 2\n    outputs:\n      dataset: Artifacts/d.h5\n      contact_sheet: Artifacts/d.png\n",
        ])
        try ws.write(notShardable, to: "Pipelines/bad.yaml")
        let refused = try ws.wsss(["run", "Pipelines/bad.yaml"])
        XCTAssertEqual(refused.0, 2)
        XCTAssertEqual(refused.2.split(separator: "\n").count, 1, refused.2)
        XCTAssertTrue(refused.2.hasPrefix("Pipelines/bad.yaml:5:13: error: ") && refused.2.contains("stage 'data'")
                      && refused.2.contains("prepare-data does not split into shards"), refused.2)
        for bad in ["0", "-1", "two", "1.5"] {
            try ws.write(Self.pipeline(shards: nil).replacingOccurrences(of: "    params:\n      label: split\n",
                                                                         with: "    shards: \(bad)\n    params:\n      label: split\n"),
                         to: "Pipelines/p.yaml")
            let result = try ws.wsss(["status", "Pipelines/p.yaml"])
            XCTAssertEqual(result.0, 2, bad)
            XCTAssertTrue(result.2.hasPrefix("Pipelines/p.yaml:") && result.2.contains("'shards' of stage 'split' must be a whole number >= 1")
                          && result.2.contains("got '\(bad)'"), result.2)
        }
        XCTAssertEqual(ws.started(), [])

        // A shared parameter may give the count.
        try ws.write(Self.pipeline(shards: nil).replacingOccurrences(of: "stages:\n", with: "params:\n  n: 2\nstages:\n")
            .replacingOccurrences(of: "    params:\n      label: split\n", with: "    shards: ${n}\n    params:\n      label: split\n"), to: "Pipelines/p.yaml")
        XCTAssertEqual(Set(try ws.status("Pipelines/p.yaml").keys), ["first", "split[0/2]", "split[1/2]", "split", "after"])
    }
}
