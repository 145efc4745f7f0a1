import TestSupport
import Foundation
import XCTest
@testable import Runner

/// Pipeline files that must be refused before anything runs, with FILE:LINE:COLUMN messages.
/// Columns below are counted by hand from the YAML text (1-based, as editors show them).
final class PipelineFileTests: XCTestCase {
    func errors(_ yaml: String, file: String = "bad.yaml", overrides: [String] = []) -> [String] {
        do {
            _ = try PipelineParser.parse(text: yaml, file: file, overrides: overrides)
            XCTFail("pipeline was accepted")
            return []
        } catch let error as PipelineErrors {
            return error.errors.map(\.description)
        } catch {
            XCTFail("unexpected error \(error)")
            return []
        }
    }

    /// A 20,000-stage chain written last stage first: ordering is linear (a Kahn pass, not a
    /// rescan of the file per stage) and iterative (no recursion 20,000 deep). The speed itself is
    /// measured by Benchmarks/bench_runner.sh, not here.
    func testLongChainWrittenBackwardsIsOrderedUpstreamFirst() throws {
        let count = 20_000
        var yaml = "name: long\nstages:\n"
        for i in stride(from: count - 1, through: 0, by: -1) {
            let input = i == 0 ? "data/raw.txt" : "s\(i - 1).out"
            yaml += "  - name: s\(i)\n    run: wsss-test-stage\n    inputs: {a: \(input)}\n    outputs: {out: T/s\(i).txt}\n"
        }
        yaml += "  - name: loose\n    run: wsss-test-stage\n    outputs: {out: T/loose.txt}\n"
        let pipeline = try PipelineParser.parse(text: yaml, file: "long.yaml")
        // Upstream first; among ready stages the one written first: every chain stage precedes
        // the independent one written after them all.
        XCTAssertEqual(pipeline.stages.map(\.name), (0..<count).map { "s\($0)" } + ["loose"])
        XCTAssertEqual(pipeline.stage("s12345")?.inputs.first?.source, .stage("s12344", output: "out"))
        XCTAssertEqual(pipeline.withAncestors("s3"), ["s0", "s1", "s2", "s3"])

        // A cycle closed at the far end of the chain is found and named, not overflowed.
        let cyclic = yaml.replacingOccurrences(of: "inputs: {a: data/raw.txt}", with: "inputs: {a: s\(count - 1).out}")
        let problems = errors(cyclic, file: "long.yaml")
        XCTAssertEqual(problems.count, 1)
        XCTAssertTrue(problems.first?.contains("cycle between stages: s19999 -> s0 -> s1 -> s2") ?? false, "\(problems.first?.prefix(200) ?? "")")
    }

    func testSeveralProblemsAreReportedTogetherWithPositions() {
        let yaml = """
        name: bad
        colour: red
        stages:
          - name: a
            run: wsss-test-stage
            outputs: {out: T/a.txt, metrics: T/a.json}
          - name: b
            run: wsss-test-stage
            inputs: {a: a.nope}
            outputs: {out: T/a.txt, metrics: T/b.json}
        """
        XCTAssertEqual(errors(yaml), [
            "bad.yaml:2:1: error: unknown key 'colour' in the pipeline file (allowed: name, description, params, stages, summary)",
            "bad.yaml:10:20: error: output path T/a.txt is already written by stage 'a' output 'out' (bad.yaml:6:20); two stages cannot write one file",
            "bad.yaml:9:17: error: stage 'a' has no output 'nope' (its outputs: out, metrics)",
        ])
    }

    func testUnknownStageReference() {
        let yaml = """
        name: bad
        stages:
          - name: a
            run: wsss-test-stage
            outputs: {out: T/a.txt}
          - name: b
            run: wsss-test-stage
            inputs: {a: nosuch.out}
            outputs: {out: T/b.txt}
        """
        XCTAssertEqual(errors(yaml), [
            "bad.yaml:8:17: error: input 'a' of stage 'b': 'nosuch.out' names no stage of this pipeline (stages: a, b); for a file of that name write ./nosuch.out",
        ])
    }

    func testCycleIsNamedInDataflowOrder() {
        let yaml = """
        name: loop
        stages:
          - name: a
            run: wsss-test-stage
            inputs: {a: b.out}
            outputs: {out: T/a.txt}
          - name: b
            run: wsss-test-stage
            inputs: {a: a.out}
            outputs: {out: T/b.txt}
        """
        XCTAssertEqual(errors(yaml, file: "loop.yaml"), ["loop.yaml:9:17: error: cycle between stages: a -> b -> a"])
        let selfLoop = """
        name: loop
        stages:
          - name: a
            run: wsss-test-stage
            inputs: {a: a.out}
            outputs: {out: T/a.txt}
        """
        XCTAssertEqual(errors(selfLoop, file: "loop.yaml"), ["loop.yaml:5:17: error: cycle between stages: a -> a"])
    }

    func testYAMLSyntaxAndDuplicateKeys() {
        let broken = errors("name: x\nstages:\n  - name: a\n    run: [b\n")
        XCTAssertEqual(broken.count, 1)
        XCTAssertTrue(broken[0].hasPrefix("bad.yaml:5:1: error: invalid YAML: "), broken[0])
        XCTAssertFalse(broken[0].contains("inside { }"), "the \"${name}\" hint is only for lines that use ${")

        let flow = errors("name: x\nstages:\n  - {name: a, run: s, params: {seed: ${seed}}, outputs: {out: o}}\n")
        XCTAssertEqual(flow.count, 1)
        XCTAssertTrue(flow[0].contains("inside { } or [ ] write a reference as $name or quote it"), flow[0])

        XCTAssertEqual(errors("name: x\nname: y\nstages: []\n"), ["bad.yaml:1:1: error: key 'name' appears twice in one mapping"])
        XCTAssertEqual(errors(""), ["bad.yaml:1:1: error: pipeline file is empty"])
        // The same from an empty file on disk (read without Foundation's reader, which leaks its
        // buffer on a 0-byte file: the FuzzPipeline target's first finding).
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("empty-\(UUID().uuidString).yaml").path
        FileManager.default.createFile(atPath: empty, contents: Data())
        defer { try? FileManager.default.removeItem(atPath: empty) }
        XCTAssertThrowsError(try PipelineParser.parse(file: empty, displayAs: "empty.yaml")) { error in
            XCTAssertEqual("\(error)", "empty.yaml:1:1: error: pipeline file is empty")
        }
        XCTAssertEqual(errors("name: x\nstages: []\n"),
                       ["bad.yaml:2:9: error: 'stages' must be a non-empty list of stages (each item starting with '- name:')"])
    }

    func testStageFieldsAreChecked() {
        let yaml = """
        name: x
        stages:
          - run: s
            outputs: {out: o}
          - name: has.dot
            run: s
            outputs: {out: o2}
          - name: c
            run: s
          - name: d
            run: s
            outputs: {out: ../outside.txt, other: Artifacts/.cache/x, fine: /abs/x}
        """
        XCTAssertEqual(errors(yaml), [
            "bad.yaml:3:5: error: a stage has no 'name'",
            "bad.yaml:5:11: error: stage name 'has.dot' must be letters, digits, '-' or '_' (no dots: 'stage.output' names an output)",
            "bad.yaml:8:5: error: stage 'c' has no 'outputs' (a stage must write at least one file)",
            "bad.yaml:12:20: error: output 'out' of stage 'd': '../outside.txt' must be a file path inside the workspace (relative, not climbing out with '..')",
            "bad.yaml:12:43: error: output 'other' of stage 'd': Artifacts/.cache belongs to the runner's store",
            "bad.yaml:12:69: error: output 'fine' of stage 'd': '/abs/x' must be a file path inside the workspace (relative, not climbing out with '..')",
        ])
    }

    func testReadingAnotherStagesOutputByPathIsRefused() {
        let yaml = """
        name: x
        stages:
          - name: a
            run: s
            outputs: {out: T/a.txt}
          - name: b
            run: s
            inputs: {a: ./T/a.txt}
            outputs: {out: T/b.txt}
        """
        XCTAssertEqual(errors(yaml), [
            "bad.yaml:8:17: error: input 'a' reads T/a.txt, which stage 'a' writes; write a.out so the runner knows the dependency",
        ])
    }

    func testSharedParametersAndReferences() throws {
        let yaml = """
        name: shared
        params: {n: 3, tag: v2, sizes: [1, 2]}
        stages:
          - name: consumer
            run: s
            inputs: {a: producer.out, raw: ./data.bin}
            params:
              whole: ${n}
              bare: $n
              text: run-${n}-$tag
              money: $$5
              list: ${sizes}
            outputs: {out: "Artifacts/${tag}/c.txt"}
          - name: producer
            run: s
            outputs: {out: Artifacts/$tag/p.txt}
        """
        let pipeline = try PipelineParser.parse(text: yaml, file: "shared.yaml")
        // Stages come in dependency order, whatever the file order.
        XCTAssertEqual(pipeline.stages.map(\.name), ["producer", "consumer"])
        let consumer = try XCTUnwrap(pipeline.stage("consumer"))
        XCTAssertEqual(consumer.params["whole"], .int(3))
        XCTAssertEqual(consumer.params["bare"], .int(3))
        XCTAssertEqual(consumer.params["text"], .string("run-3-v2"))
        XCTAssertEqual(consumer.params["money"], .string("$5"))
        XCTAssertEqual(consumer.params["list"], .array([.int(1), .int(2)]))
        XCTAssertEqual(consumer.outputs.map(\.path), ["Artifacts/v2/c.txt"])
        XCTAssertEqual(consumer.inputs.map(\.source), [.stage("producer", output: "out"), .path("./data.bin")])
        XCTAssertEqual(pipeline.stage("producer")?.outputs.map(\.path), ["Artifacts/v2/p.txt"])

        let overridden = try PipelineParser.parse(text: yaml, file: "shared.yaml", overrides: ["n=7", "consumer.money=0.5", "consumer.flag=true"])
        XCTAssertEqual(overridden.stage("consumer")?.params["whole"], .int(7))
        XCTAssertEqual(overridden.stage("consumer")?.params["money"], .double(0.5))
        XCTAssertEqual(overridden.stage("consumer")?.params["flag"], .bool(true))

        XCTAssertEqual(errors(yaml.replacingOccurrences(of: "whole: ${n}", with: "whole: ${m}"), file: "shared.yaml"),
                       ["shared.yaml:8:14: error: parameter 'whole' of stage 'consumer' refers to unknown shared parameter 'm' (shared: n, sizes, tag)"])
        XCTAssertEqual(errors(yaml, file: "shared.yaml", overrides: ["q=1"]),
                       ["--set q=1: error: no shared parameter 'q' (shared: n, sizes, tag); use STAGE.PARAM=VALUE for a stage's parameter"])
        XCTAssertEqual(errors(yaml, file: "shared.yaml", overrides: ["nosuch.x=1"]),
                       ["--set nosuch.x=1: error: no stage 'nosuch' in this pipeline (stages: consumer, producer)"])
    }

    func testExecutableDeclarationsAreChecked() throws {
        let ws = try TestWorkspace()
        defer { ws.remove() }
        try ws.write("hello\n", to: "data/raw.txt")
        try ws.write("""
        name: bind
        stages:
          - name: a
            run: no-such-stage
            outputs: {out: T/a.txt}
          - name: b
            run: wsss-test-stage
            inputs: {c: data/raw.txt, a: data/missing.txt}
            params: {facter: 2, factor: abc}
            outputs: {out: T/b.txt}
        """, to: "Pipelines/bind.yaml")
        XCTAssertThrowsError(try ws.runner().load(ws.path("Pipelines/bind.yaml"))) { error in
            XCTAssertEqual((error as? PipelineErrors)?.errors.map(\.description), [
                "Pipelines/bind.yaml:4:10: error: stage 'a': executable 'no-such-stage' not found (looked for \(productsDirectory)/no-such-stage; build it, or point --bin / WSSS_BIN at the folder that holds it)",
                "Pipelines/bind.yaml:8:17: error: stage 'b': wsss-test-stage has no input 'c' (it reads: a, b)",
                "Pipelines/bind.yaml:8:34: error: stage 'b': input 'a': no such file or folder: data/missing.txt",
                "Pipelines/bind.yaml:6:11: error: stage 'b': wsss-test-stage writes output 'metrics'; give it a path under 'outputs:'",
                "Pipelines/bind.yaml:9:14: error: stage 'b': wsss-test-stage has no parameter 'facter' (its parameters: factor, fail, items, kill_if_exists, label, payload_bytes, sleep_ms, touch, wait_for, wait_ms)",
                "Pipelines/bind.yaml:9:25: error: stage 'b': parameter 'factor' must be a number like its default 1, got string \"abc\"",
            ])
        }
    }

    func testCanonicalJSON() {
        XCTAssertEqual(JSONValue.number(2.0), .int(2))
        XCTAssertEqual(JSONValue.double(2.0).canonical, "2")
        XCTAssertEqual(JSONValue.double(0.1).canonical, "0.1")
        let object: JSONValue = .object(["b": .array([.null, .bool(true)]), "a": .string("x\"y\n\u{1}é")])
        XCTAssertEqual(object.canonical, "{\"a\":\"x\\\"y\\n\\u0001é\",\"b\":[null,true]}")
        XCTAssertEqual(try JSONValue.parse(Data(object.canonical.utf8)), object)
        XCTAssertEqual(try JSONValue.parse(Data("{\"lr\": 1.0, \"n\": 3}".utf8)), .object(["lr": .int(1), "n": .int(3)]))
    }
}

/// The committed pipelines must stay valid as the stages change: a renamed parameter, input or
/// output, or a choice a stage no longer knows, fails here rather than in `make demo`.
final class CommittedPipelineTests: XCTestCase {
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func testCIPipelineParses() throws {
        let pipeline = try PipelineParser.parse(file: Self.repositoryRoot.appendingPathComponent("Pipelines/ci.yaml").path, displayAs: "Pipelines/ci.yaml")
        XCTAssertEqual(pipeline.name, "ci")
        let data = try XCTUnwrap(pipeline.stage("data"))
        XCTAssertEqual(data.run, "prepare-data")
        XCTAssertEqual(data.params["image_size"], .int(32))
        XCTAssertEqual(data.outputs.map(\.path), ["Artifacts/ci/dataset.h5", "Artifacts/ci/samples.png"])
    }

    /// Every file in Pipelines/ binds against the real stage executables (inputs, outputs,
    /// parameter names and kinds as each stage's --describe declares them), and each stage's full
    /// parameters decode in the stage itself (--check-params: choices such as `method` too).
    func testEveryCommittedPipelineValidatesAgainstItsStages() throws {
        let folder = Self.repositoryRoot.appendingPathComponent("Pipelines")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".yaml") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 8, "\(files)")
        let ws = try TestWorkspace()
        defer { ws.remove() }
        var stagesChecked = 0
        for file in files {
            try ws.write(try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8), to: "Pipelines/\(file)")
            // Files read from outside the pipeline (pretrained weights) need only exist to validate.
            for stage in try PipelineParser.parse(file: ws.path("Pipelines/\(file)"), displayAs: file).stages {
                for input in stage.inputs {
                    if case .path(let path) = input.source, !FileManager.default.fileExists(atPath: ws.path(path)) { try ws.write("", to: path) }
                }
            }
            let bound: BoundPipeline
            do { bound = try ws.load("Pipelines/\(file)").1 } catch {
                XCTFail("Pipelines/\(file) does not validate against its stages:\n\(error)")
                continue
            }
            for stage in bound.stages {
                let params = ws.path("params-\(stage.name).json")
                try ws.write(JSONValue.object(stage.params).canonical, to: "params-\(stage.name).json")
                let result = try ProcessRunner.run(URL(fileURLWithPath: stage.executablePath), ["--check-params", "--params", params])
                XCTAssertEqual(result.status, 0, "Pipelines/\(file): stage '\(stage.name)' (\(stage.decl.run)): \(result.stderr)")
                stagesChecked += 1
            }
        }
        XCTAssertGreaterThan(stagesChecked, 40)
        // The check refuses what a stage would refuse: an unknown choice and a misspelt name.
        let stage = productsDirectory + "/single-stage-train"
        let choice = try ProcessRunner.run(URL(fileURLWithPath: stage), ["--check-params", "--param", "method=fssr"])
        XCTAssertEqual(choice.status, 1)
        XCTAssertEqual(choice.stderr, "error: single-stage-train: parameter 'method' is invalid: 'fssr' is not one of baseline, fsr\n")
        let name = try ProcessRunner.run(URL(fileURLWithPath: stage), ["--check-params", "--param", "bg_high=0.7"])
        XCTAssertEqual(name.status, 1)
        XCTAssertTrue(name.stderr.contains("unknown parameter 'bg_high'"), name.stderr)
    }
}
