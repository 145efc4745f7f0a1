import TestSupport
import Foundation
import XCTest
@testable import Runner

/// `wsss export snakemake` against the real engine: Snakemake from the tests' Python venv
/// (WSSS_PYTHON's bin/, where `make test` installs it).
final class SnakemakeExportTests: XCTestCase {
    var workspaces: [TestWorkspace] = []

    override func tearDown() {
        for workspace in workspaces { workspace.remove() }
    }

    func makeWorkspace() throws -> TestWorkspace {
        let workspace = try TestWorkspace()
        workspaces.append(workspace)
        return workspace
    }

    static func snakemake() throws -> String {
        let path = ((try Repository.python) as NSString).deletingLastPathComponent + "/snakemake"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw RunnerError("\(path) is missing: `make test` installs snakemake into the venv")
        }
        return path
    }

    /// Runs Snakemake in `workspace` on its exported Snakefile.
    func snakemake(_ workspace: TestWorkspace, _ arguments: [String], snakefile: String = "Artifacts/snakemake/Snakefile") throws -> ProcessRunner.Result {
        try ProcessRunner.run(URL(fileURLWithPath: try Self.snakemake()), ["-s", snakefile] + arguments,
                              in: URL(fileURLWithPath: workspace.root), environment: ["WSSS_BIN": productsDirectory])
    }

    func export(_ workspace: TestWorkspace, _ pipeline: String, _ extra: [String] = []) throws -> (Int32, String, String) {
        try workspace.wsss(["export", "snakemake", pipeline, "--out", "Artifacts/snakemake"] + extra)
    }

    static let twoStages = pipelineYAML("pair", [
        testStage("first", params: "factor: 1"),
        testStage("second", inputs: ["a": "first.out"], params: "factor: 2"),
    ])

    /// Each stage is a rule with the stage's declared threads and memory; Snakemake runs it to the
    /// same outputs as `wsss run`; a re-export with nothing changed reruns nothing, and a changed
    /// parameter reruns that stage alone (its output is the same file content upstream).
    func testExportedRulesRunAndRerunOnlyWhatChanged() throws {
        let workspace = try makeWorkspace()
        try workspace.write(Self.twoStages, to: "Pipelines/pair.yaml")
        let (status, out, err) = try export(workspace, "Pipelines/pair.yaml")
        XCTAssertEqual(status, 0, out + err)
        let snakefile = try XCTUnwrap(workspace.read("Artifacts/snakemake/Snakefile"))
        XCTAssertTrue(snakefile.contains("rule first:"), snakefile)
        XCTAssertTrue(snakefile.contains("threads: 1"), snakefile)
        XCTAssertTrue(snakefile.contains("mem_mb=256"), snakefile)
        XCTAssertFalse(snakefile.contains("runtime="), "wsss-test-stage declares no runtime")
        XCTAssertTrue(snakefile.contains(productsDirectory + "/wsss-test-stage"), "absolute executable path")
        XCTAssertTrue(snakefile.contains("a=\"Artifacts/t/first.txt\""), snakefile)
        let params = try JSONValue.parse(XCTUnwrap(FileManager.default.contents(atPath: workspace.path("Artifacts/snakemake/params/second.json"))))
        XCTAssertEqual(params, .object(try workspace.load("Pipelines/pair.yaml").1.stage("second")!.params))

        let run = try snakemake(workspace, ["--cores", "2"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertEqual(workspace.started().sorted(), ["first", "second"])
        let byEngine = ["first.txt", "first.json", "second.txt", "second.json"].map { workspace.read("Artifacts/t/" + $0) }

        let reference = try makeWorkspace()
        try reference.write(Self.twoStages, to: "Pipelines/pair.yaml")
        XCTAssertTrue(try reference.run("Pipelines/pair.yaml").succeeded)
        XCTAssertEqual(byEngine, ["first.txt", "first.json", "second.txt", "second.json"].map { reference.read("Artifacts/t/" + $0) })

        XCTAssertEqual(try export(workspace, "Pipelines/pair.yaml").0, 0)
        let unchanged = try snakemake(workspace, ["--dry-run"])
        XCTAssertEqual(unchanged.status, 0, unchanged.output)
        XCTAssertTrue(unchanged.output.contains("Nothing to be done"), unchanged.output)

        XCTAssertEqual(try export(workspace, "Pipelines/pair.yaml", ["--set", "second.factor=3"]).0, 0)
        let changed = try snakemake(workspace, ["--dry-run"])
        XCTAssertEqual(changed.status, 0, changed.output)
        XCTAssertTrue(changed.output.contains("rule second:"), changed.output)
        XCTAssertFalse(changed.output.contains("rule first:"), changed.output)
    }

    /// The exported file passes a dry run with Snakemake's Slurm executor when the plugin is
    /// installed (`make test` tries; it needs no cluster for a dry run).
    func testSlurmExecutorDryRun() throws {
        let workspace = try makeWorkspace()
        try workspace.write(Self.twoStages, to: "Pipelines/pair.yaml")
        XCTAssertEqual(try export(workspace, "Pipelines/pair.yaml").0, 0)
        let local = try snakemake(workspace, ["--dry-run"])
        XCTAssertEqual(local.status, 0, local.output)
        XCTAssertTrue(local.output.contains("rule second:"), local.output)
        let probe = try ProcessRunner.run(URL(fileURLWithPath: try Repository.python), ["-c", "import snakemake_executor_plugin_slurm"])
        guard probe.status == 0 else { throw XCTSkip("snakemake-executor-plugin-slurm is not installed in the venv") }
        let slurm = try snakemake(workspace, ["--dry-run", "--executor", "slurm", "--jobs", "4"])
        XCTAssertEqual(slurm.status, 0, slurm.output)
        XCTAssertTrue(slurm.output.contains("rule second:"), slurm.output)
    }

    /// One clear line for each kind of bad input, and nothing written.
    func testBadInputIsOneClearLine() throws {
        let workspace = try makeWorkspace()
        try workspace.write(Self.twoStages, to: "Pipelines/pair.yaml")
        let missing = try export(workspace, "Pipelines/nope.yaml")
        XCTAssertNotEqual(missing.0, 0)
        XCTAssertTrue(missing.2.contains("Pipelines/nope.yaml"), missing.2)
        let badSet = try export(workspace, "Pipelines/pair.yaml", ["--set", "second.no_such_param=1"])
        XCTAssertNotEqual(badSet.0, 0)
        XCTAssertTrue(badSet.2.contains("no_such_param"), badSet.2)
        try workspace.write("", to: "blocker")
        let unwritable = try workspace.wsss(["export", "snakemake", "Pipelines/pair.yaml", "--out", "blocker/export"])
        XCTAssertNotEqual(unwritable.0, 0)
        XCTAssertTrue(unwritable.2.hasPrefix("error: ") && unwritable.2.contains("blocker/export") && unwritable.2.contains("is a file"), unwritable.2)
        XCTAssertEqual(unwritable.2.split(separator: "\n").count, 1, unwritable.2)
        XCTAssertNil(workspace.read("Artifacts/snakemake/Snakefile"))
    }

    /// Pipelines/ci.yaml (every real stage, toy size) exported and run by `snakemake --cores 2`
    /// writes the same bytes, metrics included, as `wsss run` does in another workspace: the
    /// rules set SOURCE_DATE_EPOCH as the runner does.
    func testCIPipelineUnderSnakemakeEqualsWsssRun() throws {
        let ci = try String(contentsOf: Repository.root.appendingPathComponent("Pipelines/ci.yaml"), encoding: .utf8)
        let byRunner = try makeWorkspace(), bySnakemake = try makeWorkspace()
        for workspace in [byRunner, bySnakemake] {
            try workspace.write(ci, to: "Pipelines/ci.yaml")
            // The random-weight stem fixture stands in for the downloaded ImageNet stem.
            try FileManager.default.createDirectory(atPath: workspace.path("Artifacts/pretrained"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: StemFixture.path, toPath: workspace.path("Artifacts/pretrained/efficientnet-lite0-stem.h5"))
        }
        var started = Date()
        let run = try byRunner.wsss(["run", "Pipelines/ci.yaml", "-j", "2"])
        XCTAssertEqual(run.0, 0, run.1 + run.2)
        let runnerSeconds = Date().timeIntervalSince(started)

        XCTAssertEqual(try export(bySnakemake, "Pipelines/ci.yaml").0, 0)
        started = Date()
        let snake = try snakemake(bySnakemake, ["--cores", "2"])
        XCTAssertEqual(snake.status, 0, snake.output)
        let snakemakeSeconds = Date().timeIntervalSince(started)
        print(String(format: "ci.yaml: wsss run -j 2 %.1f s, snakemake --cores 2 %.1f s", runnerSeconds, snakemakeSeconds))

        let (_, bound) = try byRunner.load("Pipelines/ci.yaml")
        assertSameOutputs(of: bound, byRunner, bySnakemake)
        let metrics = try JSONValue.parse(XCTUnwrap(bySnakemake.read("Artifacts/ci/eval-seg.json")).data(using: .utf8)!)
        guard case .object(let fields) = metrics, case .some = fields["miou"] else { return XCTFail("no miou in eval-seg.json") }
    }

    /// A `shards: 3` stage is 3 shard rules (`--shard I/3`) and a merge rule under the stage's name
    /// (`--merge-shards 3` with each shard's outputs as `--part`); Snakemake runs them to the bytes
    /// `wsss run` writes, shard files included.
    func testShardedStageExportsAsShardRulesAndAMergeRule() throws {
        let pipeline = ShardRunnerTests.pipeline(shards: 3)
        let workspace = try makeWorkspace()
        try workspace.write("hello\n", to: "data/raw.txt")
        try workspace.write(pipeline, to: "Pipelines/p.yaml")
        let (status, out, err) = try export(workspace, "Pipelines/p.yaml")
        XCTAssertEqual(status, 0, out + err)
        XCTAssertTrue(out.contains("6 rules"), out)
        let snakefile = try XCTUnwrap(workspace.read("Artifacts/snakemake/Snakefile"))
        for expected in ["rule split_shard0of3:", "rule split_shard2of3:", "rule split:", "--shard 1/3", "--merge-shards 3",
                         "out_part2=\"Artifacts/t/split.shard-2-of-3.txt\"", "--part out.2={input.out_part2:q}"] {
            XCTAssertTrue(snakefile.contains(expected), "\(expected) missing from:\n\(snakefile)")
        }
        let run = try snakemake(workspace, ["--cores", "2"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertEqual(workspace.started().sorted(), ["after", "first", "split merge 3", "split shard 0/3", "split shard 1/3", "split shard 2/3"])

        let reference = try makeWorkspace()
        try reference.write("hello\n", to: "data/raw.txt")
        try reference.write(pipeline, to: "Pipelines/p.yaml")
        XCTAssertTrue(try reference.run("Pipelines/p.yaml").succeeded)
        let (_, bound) = try reference.load("Pipelines/p.yaml")
        XCTAssertEqual(bound.stages.count, 6)
        for stage in bound.stages {
            for output in stage.decl.outputs {
                let ours = FileManager.default.contents(atPath: reference.path(output.path))
                XCTAssertNotNil(ours, output.path)
                XCTAssertTrue(ours == FileManager.default.contents(atPath: workspace.path(output.path)), "\(output.path) differs between wsss run and snakemake")
            }
        }
    }

    /// ci.yaml's stages up to the pseudo labels' evaluation, with every per-image stage in 3 shards:
    /// each sharded stage's merged outputs equal the unsharded run's (arrays, metrics, pictures),
    /// and the exported Snakefile run by `snakemake --cores 2` writes the bytes `wsss run` writes.
    func testShardedCIStagesEqualUnshardedAndUnderSnakemake() throws {
        let ci = try String(contentsOf: Repository.root.appendingPathComponent("Pipelines/ci.yaml"), encoding: .utf8)
        let sharded = ["attention", "refine", "pseudo", "eval-seeds", "eval-refined", "eval-pseudo"]
        let kept = ["data", "classifier"] + sharded
        let blocks = ci.components(separatedBy: "\n  - name: ")
        var plain = blocks[0], withShards = blocks[0]
        for block in blocks.dropFirst() {
            let name = String(block.prefix { !$0.isNewline })
            guard kept.contains(name) else { continue }
            let text = block.components(separatedBy: "\n\n  #")[0].trimmingCharacters(in: .newlines) + "\n"
            plain += "\n  - name: " + text
            withShards += "\n  - name: " + (sharded.contains(name) ? text.replacingOccurrences(of: "\n    run: ", with: "\n    shards: 3\n    run: ") : text)
        }
        let byRunner = try makeWorkspace(), bySnakemake = try makeWorkspace()
        for workspace in [byRunner, bySnakemake] {
            try workspace.write(plain, to: "Pipelines/plain.yaml")
            try workspace.write(withShards, to: "Pipelines/sharded.yaml")
            try FileManager.default.createDirectory(atPath: workspace.path("Artifacts/pretrained"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: StemFixture.path, toPath: workspace.path("Artifacts/pretrained/efficientnet-lite0-stem.h5"))
        }
        let unshardedRun = try byRunner.wsss(["run", "Pipelines/plain.yaml", "-j", "2"])
        XCTAssertEqual(unshardedRun.0, 0, unshardedRun.1 + unshardedRun.2)
        let (_, plainBound) = try byRunner.load("Pipelines/plain.yaml")
        var unsharded: [String: Data] = [:]
        for stage in plainBound.stages { for output in stage.decl.outputs { unsharded[output.path] = FileManager.default.contents(atPath: byRunner.path(output.path)) } }
        let saved = byRunner.path("unsharded")
        try FileManager.default.createDirectory(atPath: saved, withIntermediateDirectories: true)

        let shardedRun = try byRunner.wsss(["run", "Pipelines/sharded.yaml", "-j", "2"])
        XCTAssertEqual(shardedRun.0, 0, shardedRun.1 + shardedRun.2)
        let lines = shardedRun.1.split(separator: "\n")
        for upstream in ["data ", "classifier "] {
            XCTAssertTrue(lines.contains { $0.hasPrefix(upstream) && $0.hasSuffix(")") && $0.contains(" cached") }, shardedRun.1)
        }
        XCTAssertTrue(shardedRun.1.contains("attention[2/3]"), shardedRun.1)
        let (_, shardedBound) = try byRunner.load("Pipelines/sharded.yaml")
        var pairs: [String] = []
        for stage in shardedBound.stages where sharded.contains(stage.name) {
            for output in stage.decl.outputs {
                let before = try XCTUnwrap(unsharded[output.path], output.path)
                let after = try XCTUnwrap(FileManager.default.contents(atPath: byRunner.path(output.path)), output.path)
                switch (output.path as NSString).pathExtension {
                case "h5":
                    let copy = saved + "/" + (output.path as NSString).lastPathComponent
                    try before.write(to: URL(fileURLWithPath: copy))
                    pairs += [byRunner.path(output.path), copy]
                case "json" where stage.name == "refine":
                    // The report names its inputs by content hash: downstream of a merge (which lists
                    // its shards) those differ; everything else must not.
                    func withoutHashes(_ data: Data) throws -> JSONValue {
                        guard case .object(var fields) = try JSONValue.parse(data) else { return .null }
                        fields["seeds"] = nil
                        fields["attention"] = nil
                        return .object(fields)
                    }
                    XCTAssertEqual(try withoutHashes(after), try withoutHashes(before), output.path)
                default:
                    XCTAssertTrue(after == before, "\(output.path): the sharded run's file differs from the unsharded one")
                }
            }
        }
        // `inputs`: the content hashes of a stage's inputs differ downstream of a merged artifact.
        let script = Repository.root.appendingPathComponent("Tests/Fixtures/compare_artifacts.py").path
        let compared = try ProcessRunner.run(URL(fileURLWithPath: try Repository.python), [script, "--ignore=inputs"] + pairs)
        XCTAssertEqual(compared.status, 0, compared.output)

        XCTAssertEqual(try export(bySnakemake, "Pipelines/sharded.yaml").0, 0)
        let snake = try snakemake(bySnakemake, ["--cores", "2"])
        XCTAssertEqual(snake.status, 0, snake.output)
        assertSameOutputs(of: shardedBound, byRunner, bySnakemake)
    }

    /// Every output of `pipeline` exists in the runner's workspace and is byte for byte the same
    /// in Snakemake's.
    func assertSameOutputs(of pipeline: BoundPipeline, _ byRunner: TestWorkspace, _ bySnakemake: TestWorkspace,
                           file: StaticString = #filePath, line: UInt = #line) {
        for stage in pipeline.stages {
            for output in stage.decl.outputs {
                let ours = FileManager.default.contents(atPath: byRunner.path(output.path))
                XCTAssertNotNil(ours, output.path, file: file, line: line)
                XCTAssertTrue(ours == FileManager.default.contents(atPath: bySnakemake.path(output.path)),
                              "\(stage.name).\(output.name) (\(output.path)) differs between wsss run and snakemake", file: file, line: line)
            }
        }
    }
}
