import ArtifactStore
import Foundation
import TestSupport
import XCTest
@testable import Runner

/// sha256("hello\n"), the content of data/raw.txt in these tests (a well-known digest).
let helloDigest = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"

/// first <- data/raw.txt; second <- first; third <- second, first; side <- data/raw.txt.
let chain = pipelineYAML("chain", [
    testStage("first", inputs: ["a": "data/raw.txt"], params: "factor: 2"),
    testStage("second", inputs: ["a": "first.out"], params: "factor: 1"),
    testStage("third", inputs: ["a": "second.out", "b": "first.out"]),
    testStage("side", inputs: ["a": "data/raw.txt"]),
])

final class RunnerTests: XCTestCase {
    var ws: TestWorkspace!

    override func setUpWithError() throws {
        ws = try TestWorkspace()
        try ws.write("hello\n", to: "data/raw.txt")
        try ws.write(chain, to: "Pipelines/chain.yaml")
    }

    override func tearDown() {
        ws.remove()
    }

    func inode(_ relative: String) -> UInt64? { FileStamp.of(ws.path(relative))?.inode }

    /// Sets a file's mtime (ctime moves on regardless: the kernel sets it).
    func setModificationTime(_ relative: String, to nanoseconds: Int64) {
        var times = [timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000)),
                     timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))]
        XCTAssertEqual(utimensat(AT_FDCWD, ws.path(relative), &times, 0), 0)
    }

    // MARK: Caching

    func testSecondRunExecutesNoStage() throws {
        let first = try ws.run("Pipelines/chain.yaml")
        XCTAssertTrue(first.succeeded)
        XCTAssertEqual(Set(ws.started()), ["first", "second", "third", "side"])
        XCTAssertEqual(first.outcome("first")?.reasons, ["never run: no earlier run of this stage is recorded"])
        // The stage's own summary: its label, its factor, and the digest of what it read.
        XCTAssertEqual(ws.read("Artifacts/t/first.txt"), "label=first\nfactor=2.0\na=\(helloDigest)\n")

        let second = try ws.run("Pipelines/chain.yaml")
        XCTAssertEqual(ws.started(), [], "no stage executable may start on a no-op run")
        XCTAssertEqual(second.stages.map(\.kind), [.cached, .cached, .cached, .cached])
        XCTAssertEqual(second.stages.map(\.name), ["first", "second", "third", "side"])
        XCTAssertTrue(ws.lines.contains { $0.hasPrefix("first") && $0.contains("cached") })
        // Workspace outputs are hard links of the read-only cached objects.
        let entry = try XCTUnwrap(JSONDecoder.decodeFile(CacheEntry.self, at: ws.path("Artifacts/.cache/entries/\(try statusKey("first")).json")))
        let object = Workspace(root: ws.root).objectPath(entry.outputs["out"]!.hash)
        XCTAssertEqual(FileStamp.of(object)?.inode, inode("Artifacts/t/first.txt"))
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: object)[.posixPermissions] as? Int, 0o444)
    }

    func statusKey(_ stage: String, pipeline: String = "Pipelines/chain.yaml") throws -> String {
        try XCTUnwrap(try ws.status(pipeline)[stage]?.key)
    }

    func testParameterChangeRerunsThatStageAndDownstreamNamingTheParameter() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        _ = ws.started()
        try ws.write(chain.replacingOccurrences(of: "label: second\n      factor: 1", with: "label: second\n      factor: 3"), to: "Pipelines/chain.yaml")

        let status = try ws.status("Pipelines/chain.yaml")
        XCTAssertEqual(status["first"]?.state, .upToDate)
        XCTAssertEqual(status["side"]?.state, .upToDate)
        XCTAssertEqual(status["second"]?.state, .stale)
        XCTAssertEqual(status["second"]?.reasons, ["param 'factor' changed: 1 -> 3"])
        XCTAssertEqual(status["third"]?.state, .stale)
        XCTAssertEqual(status["third"]?.reasons, ["input 'a' will change: upstream stage 'second' is stale"])

        let report = try ws.run("Pipelines/chain.yaml")
        XCTAssertEqual(ws.started(), ["second", "third"])
        XCTAssertEqual(report.ran, ["second", "third"])
        XCTAssertEqual(report.outcome("second")?.reasons, ["param 'factor' changed: 1 -> 3"])
        let thirdReasons = try XCTUnwrap(report.outcome("third")?.reasons)
        XCTAssertEqual(thirdReasons.count, 1)
        XCTAssertTrue(thirdReasons[0].hasPrefix("input 'a' changed: second.out has new content"), thirdReasons[0])
        XCTAssertEqual(ws.read("Artifacts/t/second.txt")?.split(separator: "\n").prefix(2), ["label=second", "factor=3.0"])
    }

    func testCosmeticParameterEditsKeepTheCache() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        // 2 -> 2.0 is the same number, and sleep_ms: 0 is the stage's default anyway.
        try ws.write(chain.replacingOccurrences(of: "factor: 2", with: "factor: 2.0\n      sleep_ms: 0"), to: "Pipelines/chain.yaml")
        XCTAssertEqual(try ws.status("Pipelines/chain.yaml").values.filter { $0.state == .stale }.map(\.name), [])
    }

    func testSetOverridesAParameterForOneRun() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        let status = try ws.status("Pipelines/chain.yaml", overrides: ["second.factor=3"])
        XCTAssertEqual(status["second"]?.reasons, ["param 'factor' changed: 1 -> 3"])
        XCTAssertEqual(status["first"]?.state, .upToDate)
        XCTAssertThrowsError(try ws.load("Pipelines/chain.yaml", overrides: ["nosuch.factor=3"])) { error in
            XCTAssertTrue("\(error)".contains("no stage 'nosuch'"), "\(error)")
        }
        XCTAssertThrowsError(try ws.load("Pipelines/chain.yaml", overrides: ["second.factr=3"])) { error in
            XCTAssertTrue("\(error)".contains("has no parameter 'factr'"), "\(error)")
        }
    }

    func testInputFileChangeIsSeenEvenWithSameSizeAndRestoredMtime() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        _ = ws.started()
        // Hashes taken within the racy margin of a file's last change are not trusted, so the
        // first look after that margin reads the new files once; from then on nothing is read.
        ws.waitPastRacyMargin()
        let (refresh, refreshBound) = try ws.load("Pipelines/chain.yaml")
        XCTAssertEqual(try refresh.status(refreshBound).map(\.state), [.upToDate, .upToDate, .upToDate, .upToDate])
        XCTAssertGreaterThan(refresh.memory.filesHashed, 0)
        let (runner, bound) = try ws.load("Pipelines/chain.yaml")
        XCTAssertEqual(try runner.status(bound).map(\.state), [.upToDate, .upToDate, .upToDate, .upToDate])
        XCTAssertEqual(runner.memory.filesHashed, 0, "unchanged files must not be read again")

        // Same size, and the old mtime put back: only ctime (and the content) tell.
        let before = try XCTUnwrap(FileStamp.of(ws.path("data/raw.txt")))
        try ws.write("HELLO\n", to: "data/raw.txt")
        setModificationTime("data/raw.txt", to: before.mtimeNs)
        let after = try XCTUnwrap(FileStamp.of(ws.path("data/raw.txt")))
        XCTAssertEqual(after.size, before.size)
        XCTAssertEqual(after.mtimeNs, before.mtimeNs)

        let status = try ws.status("Pipelines/chain.yaml")
        XCTAssertEqual(status["first"]?.state, .stale)
        XCTAssertEqual(status["side"]?.state, .stale)
        XCTAssertEqual(status["first"]?.reasons.count, 1)
        XCTAssertTrue(status["first"]!.reasons[0].hasPrefix("input 'a' changed: data/raw.txt has new content (5891b5b522d5 -> "), status["first"]!.reasons[0])
        let report = try ws.run("Pipelines/chain.yaml")
        XCTAssertEqual(Set(ws.started()), ["first", "second", "third", "side"])
        XCTAssertTrue(report.succeeded)
    }

    func testChangedStageExecutableRerunsWithCodeReason() throws {
        let executable = ws.path("bin/stage")
        try FileManager.default.createDirectory(atPath: ws.path("bin"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: productsDirectory + "/wsss-test-stage", toPath: executable)
        try ws.write(pipelineYAML("code", [
            testStage("first", inputs: ["a": "data/raw.txt"]).replacingOccurrences(of: "run: wsss-test-stage", with: "run: bin/stage"),
            testStage("after", inputs: ["a": "first.out"]),
        ]), to: "Pipelines/code.yaml")
        XCTAssertTrue(try ws.run("Pipelines/code.yaml").succeeded)
        _ = ws.started()

        // Bytes appended to an ELF file change its content but not how it runs.
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: executable))
        handle.seekToEndOfFile()
        handle.write(Data("rebuilt".utf8))
        handle.closeFile()

        let status = try ws.status("Pipelines/code.yaml")
        XCTAssertEqual(status["first"]?.state, .stale)
        XCTAssertEqual(status["first"]?.reasons.count, 1)
        XCTAssertTrue(status["first"]!.reasons[0].hasPrefix("code changed: bin/stage is a different executable than last run"), status["first"]!.reasons[0])
        let report = try ws.run("Pipelines/code.yaml")
        // The rebuilt stage writes the same bytes, so the stage after it is still up to date.
        XCTAssertEqual(ws.started(), ["first"])
        XCTAssertEqual(report.outcome("after")?.kind, .cached)
    }

    func testExecutableRebuiltAfterLoadingIsRefusedAndNothingRecorded() throws {
        let executable = ws.path("bin/stage")
        try FileManager.default.createDirectory(atPath: ws.path("bin"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: productsDirectory + "/wsss-test-stage", toPath: executable)
        try ws.write(pipelineYAML("swap", [
            testStage("first", inputs: ["a": "data/raw.txt"]).replacingOccurrences(of: "run: wsss-test-stage", with: "run: bin/stage"),
        ]), to: "Pipelines/swap.yaml")
        let runner = ws.runner()
        let bound = try runner.load(ws.path("Pipelines/swap.yaml"))
        // Rebuilt between loading (when the key was made) and running.
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: executable))
        handle.seekToEndOfFile()
        handle.write(Data("rebuilt".utf8))
        handle.closeFile()

        let report = try runner.run(bound)
        XCTAssertFalse(report.succeeded)
        let outcome = try XCTUnwrap(report.outcome("first"))
        XCTAssertEqual(outcome.kind, .failed)
        XCTAssertTrue(outcome.message?.contains("bin/stage changed since the pipeline was loaded") == true, outcome.message ?? "no message")
        XCTAssertEqual(ws.started(), [], "the stage must not start")
        // A fresh load hashes the new executable and runs it.
        XCTAssertTrue(try ws.run("Pipelines/swap.yaml").succeeded)
        XCTAssertEqual(ws.started(), ["first"])
    }

    func testTwoPipelinesShareACacheEntry() throws {
        let shared = testStage("prep", inputs: ["a": "data/raw.txt"], params: "factor: 5", outputs: "Artifacts/a")
        try ws.write(pipelineYAML("a", [shared, testStage("left", inputs: ["a": "prep.out"], outputs: "Artifacts/a")]), to: "Pipelines/a.yaml")
        try ws.write(pipelineYAML("b", [
            shared.replacingOccurrences(of: "Artifacts/a", with: "Artifacts/b"),
            testStage("right", inputs: ["a": "prep.out"], params: "factor: 7", outputs: "Artifacts/b"),
        ]), to: "Pipelines/b.yaml")
        XCTAssertTrue(try ws.run("Pipelines/a.yaml").succeeded)
        XCTAssertEqual(ws.started(), ["prep", "left"])

        let status = try ws.status("Pipelines/b.yaml")
        XCTAssertEqual(status["prep"]?.state, .upToDate)
        XCTAssertEqual(status["prep"]?.notes, ["Artifacts/b/prep.txt will be restored from the cache", "Artifacts/b/prep.json will be restored from the cache"])
        XCTAssertEqual(status["right"]?.reasons, ["never run: no earlier run of this stage is recorded"])
        XCTAssertEqual(try statusKey("prep", pipeline: "Pipelines/a.yaml"), status["prep"]?.key)

        let report = try ws.run("Pipelines/b.yaml")
        XCTAssertEqual(ws.started(), ["right"])
        XCTAssertEqual(report.outcome("prep")?.kind, .cached)
        XCTAssertTrue(ws.lines.contains { $0.hasPrefix("prep   cached, restored Artifacts/b/prep.txt, Artifacts/b/prep.json  (") }, "\(ws.lines)")
        XCTAssertEqual(inode("Artifacts/b/prep.txt"), inode("Artifacts/a/prep.txt"))
        XCTAssertEqual(ws.entries().count, 3)
    }

    // MARK: Safety

    func testStageKilledBySignalLeavesNothingRecorded() throws {
        let marker = ws.path("kill-now")
        try ws.write("", to: "kill-now")
        try ws.write(pipelineYAML("kill", [
            testStage("first", inputs: ["a": "data/raw.txt"]),
            testStage("victim", inputs: ["a": "first.out"], params: "kill_if_exists: \(marker)"),
            testStage("after", inputs: ["a": "victim.out"]),
        ]), to: "Pipelines/kill.yaml")

        let report = try ws.run("Pipelines/kill.yaml")
        XCTAssertFalse(report.succeeded)
        XCTAssertEqual(report.outcome("victim")?.kind, .failed)
        XCTAssertTrue(report.outcome("victim")?.message?.contains("killed by signal 9") == true, report.outcome("victim")?.message ?? "")
        XCTAssertEqual(report.outcome("after")?.kind, .notRun)
        XCTAssertEqual(ws.started(), ["first", "victim"])
        XCTAssertEqual(ws.entries(), [try statusKey("first", pipeline: "Pipelines/kill.yaml")])
        XCTAssertNil(FileStamp.of(ws.path("Artifacts/t/victim.txt")), "a killed stage's partial output must not appear")
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: ws.path("Artifacts/.cache/tmp"))) ?? [], [])
        let records = try XCTUnwrap(JSONDecoder.decodeFile(PipelineRecords.self, at: Workspace(root: ws.root).recordsPath(pipelineFile: ws.path("Pipelines/kill.yaml"))))
        XCTAssertEqual(records.stages.keys.sorted(), ["first"])

        unlink(marker)
        XCTAssertEqual(try ws.status("Pipelines/kill.yaml")["victim"]?.state, .stale)
        let again = try ws.run("Pipelines/kill.yaml")
        XCTAssertTrue(again.succeeded)
        XCTAssertEqual(ws.started(), ["victim", "after"])
        XCTAssertEqual(ws.read("Artifacts/t/victim.txt")?.hasPrefix("label=victim\n"), true)
    }

    func testFailingStageRemovesItsOldOutputAndRecordsNothing() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        let entriesBefore = ws.entries()
        try ws.write(chain.replacingOccurrences(of: "label: second\n", with: "label: second\n      fail: true\n"), to: "Pipelines/chain.yaml")
        let report = try ws.run("Pipelines/chain.yaml")
        XCTAssertFalse(report.succeeded)
        let message = try XCTUnwrap(report.outcome("second")?.message)
        XCTAssertTrue(message.contains("exited with status 1") && message.contains("failing as asked"), message)
        XCTAssertEqual(report.outcome("third")?.kind, .notRun)
        XCTAssertEqual(ws.entries(), entriesBefore)
        // The old result no longer matches the pipeline, so it is not left looking like one.
        XCTAssertNil(FileStamp.of(ws.path("Artifacts/t/second.txt")))
        XCTAssertEqual(try ws.status("Pipelines/chain.yaml")["second"]?.reasons, ["param 'fail' changed: false -> true"])
    }

    func testCorruptCacheEntryIsDetectedAndRebuilt() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        _ = ws.started()
        ws.waitPastRacyMargin() // so the remembered hash would be trusted
        XCTAssertEqual(try ws.status("Pipelines/chain.yaml")["first"]?.state, .upToDate)

        let key = try statusKey("first")
        let entry = try XCTUnwrap(JSONDecoder.decodeFile(CacheEntry.self, at: ws.path("Artifacts/.cache/entries/\(key).json")))
        let object = Workspace(root: ws.root).objectPath(entry.outputs["out"]!.hash)
        let stamp = try XCTUnwrap(FileStamp.of(object))
        // Flip bytes in place, keeping size and mtime.
        chmod(object, 0o644)
        let original = try XCTUnwrap(FileManager.default.contents(atPath: object))
        try Data(original.map { $0 ^ 0x20 }).write(to: URL(fileURLWithPath: object))
        var times = [timespec(tv_sec: Int(stamp.mtimeNs / 1_000_000_000), tv_nsec: Int(stamp.mtimeNs % 1_000_000_000))]
        times.append(times[0])
        XCTAssertEqual(utimensat(AT_FDCWD, object, &times, 0), 0)

        let status = try ws.status("Pipelines/chain.yaml")
        XCTAssertEqual(status["first"]?.state, .stale)
        XCTAssertEqual(status["first"]?.reasons, ["cache entry \(key.prefix(12)) is damaged (the stored file of output 'out' does not match its content hash); rebuilding it"])
        let report = try ws.run("Pipelines/chain.yaml")
        XCTAssertTrue(report.succeeded)
        XCTAssertEqual(ws.started(), ["first"], "downstream stages see identical content again and stay cached")
        XCTAssertEqual(ws.read("Artifacts/t/first.txt"), "label=first\nfactor=2.0\na=\(helloDigest)\n")
        XCTAssertEqual(try HashMemory.sha256(ofFile: object), entry.outputs["out"]!.hash)
    }

    func testKilledRunnerLeavesNothingAndNextRunReruns() throws {
        // The stage waits for a marker that only appears after the runner is killed.
        let release = ws.path("release")
        try ws.write(pipelineYAML("slow", [testStage("slow", inputs: ["a": "data/raw.txt"], params: "wait_for: \(release)")]), to: "Pipelines/slow.yaml")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: productsDirectory + "/wsss")
        process.arguments = ["run", "Pipelines/slow.yaml", "--bin", productsDirectory]
        process.currentDirectoryURL = URL(fileURLWithPath: ws.root)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        XCTAssertTrue(ws.waitForLogLine { $0 == "start slow" })
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .uncaughtSignal)
        XCTAssertEqual(ws.entries(), [])
        XCTAssertNil(FileStamp.of(ws.path("Artifacts/t/slow.txt")))
        // The orphaned stage finishes into its dead runner's scratch folder, which nobody reads.
        try ws.write("", to: "release")
        XCTAssertTrue(ws.waitForLogLine { $0 == "end slow" })
        unlink(ws.log)

        // The lock died with the runner; the next run reruns the stage.
        let report = try ws.run("Pipelines/slow.yaml", RunOptions(wait: .refuse))
        XCTAssertTrue(report.succeeded)
        XCTAssertEqual(report.ran, ["slow"])
        XCTAssertEqual(ws.read("Artifacts/t/slow.txt")?.hasPrefix("label=slow\n"), true)
    }

    /// Starts `wsss run PIPELINE` in the workspace as a process of its own (to be signalled),
    /// its stdout and stderr going to wsss.out.
    func startWsssRun(_ pipeline: String) throws -> (Process, FileHandle) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: productsDirectory + "/wsss")
        process.arguments = ["run", pipeline, "--bin", productsDirectory]
        process.currentDirectoryURL = URL(fileURLWithPath: ws.root)
        XCTAssertTrue(FileManager.default.createFile(atPath: ws.path("wsss.out"), contents: nil))
        let output = try XCTUnwrap(FileHandle(forWritingAtPath: ws.path("wsss.out")))
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return (process, output)
    }

    func testInterruptStopsTheRunningStageAndRecordsNothing() throws {
        // The stage waits for a marker that never appears: only a signal ends it early.
        try ws.write(pipelineYAML("slow", [testStage("slow", inputs: ["a": "data/raw.txt"], params: "wait_for: \(ws.path("never"))")]), to: "Pipelines/slow.yaml")
        let (process, output) = try startWsssRun("Pipelines/slow.yaml")
        XCTAssertTrue(ws.waitForLogLine { $0 == "start slow" })
        process.interrupt() // SIGINT, as Ctrl-C sends it
        process.waitUntilExit()
        try output.close()
        XCTAssertEqual(process.terminationStatus, 130)
        let printed = ws.read("wsss.out") ?? ""
        XCTAssertTrue(printed.contains("was killed by signal 15"), "the waiting stage must have been stopped, not have given up: \(printed)")
        XCTAssertFalse(ws.read("stage.log")?.contains("end slow") ?? true)
        XCTAssertEqual(ws.entries(), [])
        XCTAssertNil(FileStamp.of(ws.path("Artifacts/t/slow.txt")))
    }

    func testSecondRunWaitsForOrRefusesTheLock() throws {
        var held: WorkspaceLock? = try WorkspaceLock(Workspace(root: ws.root), purpose: "test", wait: .refuse) { _ in }
        XCTAssertThrowsError(try ws.run("Pipelines/chain.yaml", RunOptions(wait: .refuse))) { error in
            XCTAssertTrue("\(error)".contains("is in use by wsss test (pid \(getpid())"), "\(error)")
        }
        XCTAssertEqual(ws.started(), [])

        let done = Shared<RunReport?>(nil)
        let runner = Thread { [ws] in done.value = try? ws!.run("Pipelines/chain.yaml") }
        runner.start()
        XCTAssertTrue(ws.waitForLine { $0.contains("workspace is in use by wsss test") && $0.contains("waiting") })
        XCTAssertNil(done.value, "the second run must wait while the lock is held")
        XCTAssertEqual(ws.started(), [])
        held = nil
        let deadline = Date().addingTimeInterval(30)
        while !runner.isFinished && Date() < deadline { usleep(20_000) }
        XCTAssertNil(held)
        XCTAssertEqual(done.value?.succeeded, true)
    }

    /// Ctrl-C while `wsss run` waits for another run's lock ends the wait: exit 130, nothing ran.
    func testInterruptWhileWaitingForTheLock() throws {
        let held = try WorkspaceLock(Workspace(root: ws.root), purpose: "test", wait: .refuse) { _ in }
        let (process, output) = try startWsssRun("Pipelines/chain.yaml")
        let deadline = Date().addingTimeInterval(60)
        while !(ws.read("wsss.out") ?? "").contains("waiting for it to finish"), Date() < deadline { usleep(20_000) }
        XCTAssertTrue(process.isRunning, ws.read("wsss.out") ?? "")
        process.interrupt()  // SIGINT, as Ctrl-C sends it
        let stopBy = Date().addingTimeInterval(30)
        while process.isRunning, Date() < stopBy { usleep(20_000) }
        if process.isRunning {
            XCTFail("wsss ignored Ctrl-C while waiting for the lock")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        try output.close()
        withExtendedLifetime(held) {}
        XCTAssertEqual(process.terminationStatus, 130, ws.read("wsss.out") ?? "")
        XCTAssertTrue((ws.read("wsss.out") ?? "").hasSuffix("wsss: interrupted while waiting for the workspace; nothing ran\n"), ws.read("wsss.out") ?? "")
        XCTAssertEqual(ws.started(), [])
        XCTAssertEqual(ws.entries(), [])
    }

    /// A mistyped --workspace is one error line, and no folder appears.
    func testMissingWorkspaceFolderCreatesNothing() throws {
        for command in [["run", "Pipelines/chain.yaml"], ["status", "Pipelines/chain.yaml"], ["export", "snakemake", "Pipelines/chain.yaml"]] {
            let (status, out, err) = try ws.wsss(command + ["--workspace", ws.path("typo/deeper")])
            XCTAssertEqual(status, 1, "\(command)")
            XCTAssertEqual(out, "")
            XCTAssertEqual(err, "error: --workspace \(ws.path("typo/deeper")): no such folder\n")
            XCTAssertNil(FileStamp.of(ws.path("typo")), "\(command)")
        }
        XCTAssertEqual(ws.started(), [])
    }

    // MARK: Running

    func testIndependentStagesRunInParallelUpToJobs() throws {
        // Each stage marks that it started and waits for the other's mark: both finish only
        // when they run at the same time.
        let (leftMark, rightMark) = (ws.path("marks/left"), ws.path("marks/right"))
        try FileManager.default.createDirectory(atPath: ws.path("marks"), withIntermediateDirectories: true)
        try ws.write(pipelineYAML("par", [
            testStage("left", inputs: ["a": "data/raw.txt"], params: "touch: \(leftMark), wait_for: \(rightMark), wait_ms: 30000"),
            testStage("right", inputs: ["a": "data/raw.txt"], params: "touch: \(rightMark), wait_for: \(leftMark), wait_ms: 30000"),
        ]), to: "Pipelines/par.yaml")
        let parallel = try ws.run("Pipelines/par.yaml", RunOptions(jobs: 2))
        XCTAssertTrue(parallel.succeeded, "\(parallel.stages.compactMap(\.message))")
        XCTAssertEqual(ws.logLines().map { $0.split(separator: " ")[0] }, ["start", "start", "end", "end"])
        XCTAssertTrue(ws.lines.contains { $0.hasPrefix("left  | ") && $0.contains("working on left") }, "stage output is streamed with its name")

        unlink(ws.log)
        try ws.write(pipelineYAML("seq", [
            testStage("left", inputs: ["a": "data/raw.txt"]),
            testStage("right", inputs: ["a": "data/raw.txt"]),
        ]), to: "Pipelines/seq.yaml")
        XCTAssertTrue(try ws.run("Pipelines/seq.yaml", RunOptions(jobs: 1)).succeeded)
        XCTAssertEqual(ws.logLines().map { $0.split(separator: " ")[0] }, ["start", "end", "start", "end"])
    }

    func testUntilAndForce() throws {
        let partial = try ws.run("Pipelines/chain.yaml", RunOptions(until: "second"))
        XCTAssertEqual(partial.stages.map(\.name), ["first", "second"])
        XCTAssertEqual(ws.started(), ["first", "second"])

        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        XCTAssertEqual(Set(ws.started()), ["third", "side"])

        let forced = try ws.run("Pipelines/chain.yaml", RunOptions(force: ["first"]))
        XCTAssertEqual(forced.outcome("first")?.reasons, ["forced (--force first)"])
        // The rerun wrote identical bytes, so nothing downstream of it reruns.
        XCTAssertEqual(ws.started(), ["first"])
        XCTAssertEqual(forced.ran, ["first"])
        XCTAssertThrowsError(try ws.run("Pipelines/chain.yaml", RunOptions(until: "fourth")))
    }

    /// Real stages write HDF5 artifacts with `created_at`: the runner's SOURCE_DATE_EPOCH makes a
    /// forced rerun write the same bytes, so what follows stays cached.
    func testForcedRealStagesWithUnchangedBytesLeaveDownstreamCached() throws {
        try ws.write("""
        name: real
        stages:
          - name: data
            run: prepare-data
            params: {image_size: 16, train_count: 16, val_count: 8}
            outputs: {dataset: Artifacts/r/dataset.h5, contact_sheet: Artifacts/r/sheet.png}
          - name: classifier
            run: classify-train
            inputs: {dataset: data.dataset}
            params: {stem: patch, image_size: 16, patch_size: 4, dim: 16, depth: 1, heads: 2, epochs: 1, batch_size: 8, threads: 1}
            outputs: {checkpoint: Artifacts/r/classifier.h5}
          - name: after
            run: wsss-test-stage
            inputs: {a: classifier.checkpoint}
            params: {label: after}
            outputs: {out: Artifacts/r/after.txt, metrics: Artifacts/r/after.json}

        """, to: "Pipelines/real.yaml")
        let first = try ws.run("Pipelines/real.yaml")
        XCTAssertTrue(first.succeeded, "\(first.stages.compactMap(\.message))")
        XCTAssertEqual(first.ran, ["data", "classifier", "after"])
        // No artifact input: the epoch itself; the classifier's newest input is the dataset.
        let dataset = try ArtifactReader(path: ws.path("Artifacts/r/dataset.h5"), kind: .dataset)
        XCTAssertEqual(dataset.provenance.createdAt, "1970-01-01T00:00:00Z")
        XCTAssertEqual(try ArtifactReader(path: ws.path("Artifacts/r/classifier.h5"), kind: .checkpoint).provenance.createdAt, "1970-01-01T00:00:00Z")
        let checkpointHash = try HashMemory.sha256(ofFile: ws.path("Artifacts/r/classifier.h5"))
        _ = ws.started()

        let forcedData = try ws.run("Pipelines/real.yaml", RunOptions(force: ["data"]))
        XCTAssertEqual(forcedData.ran, ["data"])
        XCTAssertEqual(forcedData.outcome("data")?.reasons, ["forced (--force data)"])
        XCTAssertEqual(forcedData.outcome("classifier")?.kind, .cached)
        XCTAssertEqual(forcedData.outcome("after")?.kind, .cached)

        ws.lines.removeAll()
        let forcedTraining = try ws.run("Pipelines/real.yaml", RunOptions(force: ["classifier"]))
        XCTAssertEqual(forcedTraining.ran, ["classifier"])
        XCTAssertEqual(forcedTraining.outcome("after")?.kind, .cached)
        XCTAssertTrue(ws.lines.contains { $0.hasPrefix("classifier  ran: forced (--force classifier)") }, "\(ws.lines)")
        XCTAssertTrue(ws.lines.contains { $0.hasPrefix("after       cached") }, "\(ws.lines)")
        XCTAssertEqual(ws.started(), [], "the stage after the retrained classifier must not run")
        XCTAssertEqual(try HashMemory.sha256(ofFile: ws.path("Artifacts/r/classifier.h5")), checkpointHash)
    }

    func testStageRefusesTwoOutputsAtOnePathAndWritesNothing() throws {
        let same = ws.path("out/same.txt")
        let result = try ProcessRunner.run(URL(fileURLWithPath: productsDirectory + "/wsss-test-stage"),
                                           ["--out", "out=\(same)", "--out", "metrics=\(same)"])
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: wsss-test-stage: outputs 'metrics' and 'out' are both given the path \(same): each output needs its own file\n")
        XCTAssertEqual(ws.started(), [], "the stage body never ran")
        XCTAssertNil(FileStamp.of(ws.path("out")), "nothing is written")
    }

    func testDryRunRunsNothing() throws {
        let (status, out, _) = try ws.wsss(["run", "--dry-run", "Pipelines/chain.yaml"])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(out.contains("first   would run: never run"), out)
        XCTAssertEqual(ws.started(), [])
        XCTAssertEqual(ws.entries(), [])
    }

    // MARK: The command line

    func testStatusJSONOfACopyMarksOnlyTheChangedStageAndDownstream() throws {
        let (ranStatus, _, _) = try ws.wsss(["run", "Pipelines/chain.yaml"])
        XCTAssertEqual(ranStatus, 0)
        try ws.write(chain.replacingOccurrences(of: "label: second\n      factor: 1", with: "label: second\n      factor: 4"), to: "Pipelines/chain-copy.yaml")
        let (status, out, err) = try ws.wsss(["status", "--json", "Pipelines/chain-copy.yaml"])
        XCTAssertEqual(status, 0, err)
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let stages = try XCTUnwrap(document["stages"] as? [[String: Any]])
        XCTAssertEqual(stages.map { $0["name"] as? String }, ["first", "second", "third", "side"])
        XCTAssertEqual(stages.map { $0["state"] as? String }, ["up-to-date", "stale", "stale", "up-to-date"])
        XCTAssertEqual(stages[1]["reasons"] as? [String], ["param 'factor' changed: 1 -> 4"])
        XCTAssertEqual(stages[0]["reasons"] as? [String], [])
    }

    /// Problems of the file (a key, a cycle) and of its stages against their executables (an
    /// unknown parameter, a fraction for a whole number, a value out of its declared range, a
    /// missing input file) are all reported by the first run, not in rounds.
    func testEveryPipelineProblemIsReportedInOnePass() throws {
        try ws.write("""
        name: bad
        stages:
          - name: a
            run: wsss-test-stage
            params: {factor: 2, colour: red, sleep_ms: 2.5, wait_ms: -1}
            inputs: {a: data/missing.txt}
            outputs: {out: A/a.txt, metrics: A/a.json}
          - name: b
            run: wsss-test-stage
            inputs: {a: c.out}
            outputs: {out: A/b.txt, metrics: A/b.json}
          - name: c
            run: wsss-test-stage
            inputs: {a: b.out}
            outputs: {out: A/c.txt, metrics: A/c.json}
          - name: d
            run: wsss-test-stage
            param: {factor: 2}
            outputs: {out: A/d.txt, metrics: A/d.json}

        """, to: "Pipelines/bad.yaml")
        let (status, out, err) = try ws.wsss(["run", "Pipelines/bad.yaml"])
        XCTAssertEqual(status, 2)
        XCTAssertEqual(out, "")
        XCTAssertEqual(err.split(separator: "\n").sorted(), [
            "Pipelines/bad.yaml:14:17: error: cycle between stages: b -> c -> b",
            "Pipelines/bad.yaml:18:5: error: unknown key 'param' in a stage (allowed: name, run, description, inputs, params, outputs, shards)",
            "Pipelines/bad.yaml:5:25: error: stage 'a': wsss-test-stage has no parameter 'colour' (its parameters: \(try testStageParameters()))",
            "Pipelines/bad.yaml:5:38: error: stage 'a': parameter 'sleep_ms' must be a whole number, got 2.5",
            "Pipelines/bad.yaml:5:53: error: stage 'a': parameter 'wait_ms' must be >= 0, got -1",
            "Pipelines/bad.yaml:6:17: error: stage 'a': input 'a': no such file or folder: data/missing.txt",
        ])
        XCTAssertEqual(ws.started(), [])
        XCTAssertNil(FileStamp.of(ws.path("A")))
    }

    /// wsss-test-stage's parameter names, as its --describe lists them.
    func testStageParameters() throws -> String {
        let described = try ProcessRunner.run(URL(fileURLWithPath: productsDirectory + "/wsss-test-stage"), ["--describe"])
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(described.stdout.utf8)) as? [String: Any])
        return try XCTUnwrap(object["params"] as? [String: Any]).keys.sorted().joined(separator: ", ")
    }

    func testMalformedPipelineFromTheCommandLine() throws {
        try ws.write("""
        name: bad
        stages:
          - name: a
            run: wsss-test-stage
            param: {factor: 2}
            outputs: {out: A/a.txt, metrics: A/a.json}

        """, to: "Pipelines/bad.yaml")
        let (status, out, err) = try ws.wsss(["run", "Pipelines/bad.yaml"])
        XCTAssertEqual(status, 2)
        XCTAssertEqual(out, "")
        XCTAssertEqual(err, "Pipelines/bad.yaml:5:5: error: unknown key 'param' in a stage (allowed: name, run, description, inputs, params, outputs, shards)\n")
        XCTAssertEqual(ws.started(), [])
        XCTAssertNil(FileStamp.of(ws.path("A")))
    }

    func testCompareShowsMetricsAndOnlyDifferingParameters() throws {
        for (name, factor) in [("lo", 1), ("hi", 3)] {
            try ws.write(pipelineYAML(name, [
                testStage("prep", inputs: ["a": "data/raw.txt"], outputs: "Artifacts/\(name)"),
                testStage("score", inputs: ["a": "prep.out"], params: "factor: \(factor)", outputs: "Artifacts/\(name)"),
            ]), to: "Pipelines/\(name).yaml")
            XCTAssertTrue(try ws.run("Pipelines/\(name).yaml").succeeded)
        }
        // A copy of "lo" writing elsewhere, never run: its stages are up to date through the shared
        // cache, so its metrics are known without running it.
        try ws.write(ws.read("Pipelines/lo.yaml")!.replacingOccurrences(of: "name: lo", with: "name: lo2")
            .replacingOccurrences(of: "Artifacts/lo", with: "Artifacts/lo2"), to: "Pipelines/lo2.yaml")
        let runner = ws.runner()
        let comparison = try runner.compare(try ["lo", "hi", "lo2"].map { try runner.load(ws.path("Pipelines/\($0).yaml")) })
        XCTAssertEqual(comparison.pipelines, ["lo", "hi", "lo2"])
        // miou = factor / (factor + 1): 1/2 and 3/4.
        let miou = try XCTUnwrap(comparison.metrics.first { $0.name == "score.miou" })
        XCTAssertEqual(miou.values.map { $0?.doubleValue }, [0.5, 0.75, 0.5])
        XCTAssertEqual(comparison.params.map(\.name), ["score.factor"])
        XCTAssertEqual(comparison.params[0].values, [.int(1), .int(3), .int(1)])
        XCTAssertEqual(comparison.notes, [])
        XCTAssertEqual(ws.started(), ["prep", "score", "score"], "comparing runs nothing")

        let (status, out, _) = try ws.wsss(["compare", "--json", "Pipelines/lo.yaml", "Pipelines/hi.yaml"])
        XCTAssertEqual(status, 0)
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let params = try XCTUnwrap(document["params"] as? [[String: Any]])
        XCTAssertEqual(params.map { $0["name"] as? String }, ["score.factor"])
        let (_, table, _) = try ws.wsss(["compare", "Pipelines/lo.yaml", "Pipelines/hi.yaml"])
        XCTAssertTrue(table.contains("score.miou") && table.contains("0.5000") && table.contains("0.7500"), table)
    }

    func testSummaryWritesDeclaredFieldsStageTimesAndBoundRatio() throws {
        for (name, factor) in [("weak", 1), ("fully-supervised", 3)] {
            let yaml = pipelineYAML(name, [
                testStage("prep", inputs: ["a": "data/raw.txt"], outputs: "Artifacts/\(name)"),
                testStage("score", inputs: ["a": "prep.out"], params: "factor: \(factor)", outputs: "Artifacts/\(name)"),
            ]) + "summary:\n  seg_val_miou: score.miou\n  missing_field: score.nothing\n"
            try ws.write(yaml, to: "Pipelines/\(name).yaml")
            XCTAssertTrue(try ws.run("Pipelines/\(name).yaml").succeeded)
        }
        let (status, table, errors) = try ws.wsss(["summary", "--out", ws.path("Artifacts/summary"), "Pipelines/weak.yaml", "Pipelines/fully-supervised.yaml"])
        XCTAssertEqual(status, 0, errors)
        // miou = factor / (factor + 1): 0.5 and 0.75; the weak row is 2/3 of the bound.
        XCTAssertTrue(table.contains("| weak | 0.500 | – | 0.67 |"), table)
        XCTAssertTrue(table.contains("| fully-supervised | 0.750 | – | 1.00 |"), table)
        XCTAssertTrue(errors.contains("note: weak: no value for summary field 'missing_field' (score.nothing)"), errors)
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ws.path("Artifacts/summary/summary.json")))) as? [String: Any])
        let rows = try XCTUnwrap(document["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["pipeline"] as? String }, ["weak", "fully-supervised"])
        XCTAssertEqual(rows[0]["seg_val_miou"] as? Double, 0.5)
        let seconds = try XCTUnwrap(rows[0]["stage_seconds"] as? [String: Any])
        XCTAssertEqual(Set(seconds.keys), ["prep", "score"])
        // No stage runs a training executable: training time 0, the stages' total >= 0.
        XCTAssertEqual(rows[0]["train_seconds"] as? Double, 0)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(rows[0]["total_seconds"] as? Double), 0)
        XCTAssertTrue(table.contains("| pipeline | seg_val_miou | missing_field | seg / fully supervised | train (s) | time (s) |"), table)
        XCTAssertTrue(FileManager.default.fileExists(atPath: ws.path("Artifacts/summary/summary.md")))
    }

    func testSummaryOfAStaleStageCountsTheRunItsMetricsComeFrom() throws {
        let stages = { (factor: Int) in pipelineYAML("weak", [
            testStage("prep", inputs: ["a": "data/raw.txt"], outputs: "Artifacts/weak"),
            testStage("score", inputs: ["a": "prep.out"], params: "factor: \(factor)", outputs: "Artifacts/weak"),
        ]) + "summary:\n  seg_val_miou: score.miou\n" }
        try ws.write(stages(1), to: "Pipelines/weak.yaml")
        XCTAssertTrue(try ws.run("Pipelines/weak.yaml").succeeded)
        // A changed parameter leaves 'score' stale, not rerun: its metrics and its time are both
        // those of its last run, with a note.
        try ws.write(stages(3), to: "Pipelines/weak.yaml")
        let (status, table, errors) = try ws.wsss(["summary", "--out", ws.path("Artifacts/summary"), "Pipelines/weak.yaml"])
        XCTAssertEqual(status, 0, errors)
        XCTAssertTrue(table.contains("| weak | 0.500 |"), table)
        XCTAssertTrue(errors.contains("stage 'score' is stale; its metrics are from its last run"), errors)
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ws.path("Artifacts/summary/summary.json")))) as? [String: Any])
        let row = try XCTUnwrap((document["rows"] as? [[String: Any]])?.first)
        let seconds = try XCTUnwrap(row["stage_seconds"] as? [String: Double])
        XCTAssertEqual(Set(seconds.keys), ["prep", "score"])
        XCTAssertEqual(try XCTUnwrap(row["total_seconds"] as? Double), seconds.values.reduce(0, +), accuracy: 0.02)
        XCTAssertEqual(ws.started(), ["prep", "score"], "summarising runs nothing")
    }

    func testCompareOfSummarisedPipelinesShowsTheirFieldsTimesAndDifferingParameters() throws {
        for (name, factor) in [("weak", 1), ("strong", 3)] {
            let yaml = pipelineYAML(name, [
                testStage("prep", inputs: ["a": "data/raw.txt"], outputs: "Artifacts/\(name)"),
                testStage("score", inputs: ["a": "prep.out"], params: "factor: \(factor)", outputs: "Artifacts/\(name)"),
            ]) + "summary:\n  seg_val_miou: score.miou\n"
            try ws.write(yaml, to: "Pipelines/\(name).yaml")
            XCTAssertTrue(try ws.run("Pipelines/\(name).yaml").succeeded)
        }
        let runner = ws.runner()
        let comparison = try runner.compareSummaries(try ["weak", "strong"].map { try runner.load(ws.path("Pipelines/\($0).yaml")) })
        XCTAssertEqual(comparison.metrics.map(\.name), ["seg_val_miou", "train_seconds", "total_seconds"])
        XCTAssertEqual(comparison.metrics[0].values.map { $0?.doubleValue }, [0.5, 0.75])
        // The test stage is no training executable: no training time, but the stages' total.
        XCTAssertEqual(comparison.metrics[1].values.map { $0?.doubleValue }, [0, 0])
        XCTAssertTrue(comparison.metrics[2].values.allSatisfy { ($0?.doubleValue ?? -1) >= 0 })
        XCTAssertEqual(comparison.params.map(\.name), ["score.factor"])

        let (status, table, errors) = try ws.wsss(["compare", "Pipelines/weak.yaml", "Pipelines/strong.yaml"])
        XCTAssertEqual(status, 0, errors)
        XCTAssertTrue(table.contains("seg_val_miou") && table.contains("train_seconds") && !table.contains("score.miou"), table)
        let (_, all, _) = try ws.wsss(["compare", "--all-metrics", "Pipelines/weak.yaml", "Pipelines/strong.yaml"])
        XCTAssertTrue(all.contains("score.miou") && !all.contains("train_seconds"), all)
    }

    func testSummaryCheckReportsFieldsOutsideTheTolerance() throws {
        let summary = try JSONValue.parse(Data(#"{"rows": [{"pipeline": "ci", "seed_miou": 0.50, "pseudo_miou": 0.30}]}"#.utf8))
        let expected = try JSONValue.parse(Data(#"{"tolerance": 0.02, "rows": {"ci": {"seed_miou": 0.51, "pseudo_miou": 0.25, "psa_miou": 0.4}, "other": {"x": 1}}}"#.utf8))
        XCTAssertEqual(Runner.checkSummary(summary, against: expected), [
            "ci.psa_miou: missing, expected 0.4",
            "ci.pseudo_miou: 0.3, expected 0.25 ± 0.02",
            "other: no such pipeline in the summary",
        ])
        XCTAssertEqual(Runner.checkSummary(summary, against: try JSONValue.parse(Data(#"{"rows": {}}"#.utf8))).count, 1)
    }

    func testSummaryFieldMustNameAStage() throws {
        try ws.write(pipelineYAML("bad", [testStage("prep", inputs: ["a": "data/raw.txt"], outputs: "Artifacts/bad")])
                     + "summary:\n  seed_miou: nosuch.miou\n", to: "Pipelines/bad.yaml")
        let (status, _, errors) = try ws.wsss(["status", "Pipelines/bad.yaml"])
        XCTAssertEqual(status, 2)
        XCTAssertTrue(errors.contains("error: summary field 'seed_miou' must name a metric as STAGE.KEY of a stage of this file, got 'nosuch.miou'"), errors)
    }

    /// An HDF5 file without our provenance (pretrained weights, h5py's) is listed; a damaged one is an error.
    func testShowListsAPlainHDF5FileAndRefusesADamagedOne() throws {
        let path = ws.path("plain.h5")
        let file = try HDF5File.create(path)
        try file.root.write("weights/w", [Float](repeating: 0.5, count: 6), shape: [2, 3])
        try file.root.setAttribute("kind", "pretrained")
        try file.closeChecked()
        let text = try ws.runner().show(path)
        for expected in ["not an artifact of this toolbox (no complete provenance)", "/weights/w", "[2, 3]", "    kind: pretrained"] {
            XCTAssertTrue(text.contains(expected), "missing '\(expected)' in:\n\(text)")
        }
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 10] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try ws.runner().show(path)) { error in
            XCTAssertTrue("\(error)".contains("\(path): HDF5 file is damaged: its bytes no longer match the checksum it was written with"), "\(error)")
        }
    }

    func testShowDescribesAnArtifact() throws {
        let path = ws.path("Artifacts/x/cams.h5")
        try FileManager.default.createDirectory(atPath: ws.path("Artifacts/x"), withIntermediateDirectories: true)
        let writer = try ArtifactWriter(path: path, provenance: Provenance(
            kind: .cams, formatVersion: 2, producer: "cam-refine 1.0",
            paramsJSON: "{\"alpha\":0.5,\"steps\":3}", inputs: ["attention": "sha256:\(helloDigest)"]))
        try writer.root.write("cams", [Float](repeating: 1, count: 24), shape: [2, 3, 4])
        try writer.root.write("meta/labels", [UInt8](repeating: 1, count: 2), shape: [2])
        try writer.root.setAttribute("num_classes", Int64(10))
        try writer.root.setAttribute("baseline_miou", 0.25)
        try writer.root.setAttribute("note", String(repeating: "n", count: 300))
        try writer.commit()

        let text = try ws.runner().show(path)
        for expected in ["kind: cams (format version 2)", "producer: cam-refine 1.0", "alpha: 0.5", "steps: 3",
                         "attention: sha256:\(helloDigest)", "/cams", "float32", "[2, 3, 4]", "/meta/labels", "uint8", "[2]"] {
            XCTAssertTrue(text.contains(expected), "missing '\(expected)' in:\n\(text)")
        }
        let lines = text.split(separator: "\n").map(String.init)
        for attribute in ["    num_classes: 10", "    baseline_miou: 0.25", "    note: " + String(repeating: "n", count: 157) + "..."] {
            XCTAssertTrue(lines.contains(attribute), "missing line '\(attribute)' in:\n\(text)")
        }
        XCTAssertTrue(text.contains("made by: (not in this workspace's cache)"), text)

        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        let stageOutput = try ws.runner().show(ws.path("Artifacts/t/first.json"))
        XCTAssertTrue(stageOutput.contains("made by: stage 'first' (wsss-test-stage) output 'metrics' of Pipelines/chain.yaml"), stageOutput)
        XCTAssertTrue(stageOutput.contains("\"miou\""), stageOutput)
    }

    func testGCRemovesOnlyEntriesNoPipelineUses() throws {
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        try ws.write(chain.replacingOccurrences(of: "label: second\n      factor: 1", with: "label: second\n      factor: 3"), to: "Pipelines/chain.yaml")
        XCTAssertTrue(try ws.run("Pipelines/chain.yaml").succeeded)
        XCTAssertEqual(ws.entries().count, 6)
        let objects = { (try? FileManager.default.subpathsOfDirectory(atPath: self.ws.path("Artifacts/.cache/objects")))?.filter { $0.contains("/") }.count ?? 0 }
        // 4 stages x 2 outputs, plus the new outputs of second and third: 'metrics' of 'third'
        // only depends on its label and input count, so it is the same bytes as before.
        XCTAssertEqual(objects(), 11)

        let dry = try ws.runner().gc(dryRun: true)
        XCTAssertEqual(dry.removedEntries.count, 2)
        XCTAssertEqual(ws.entries().count, 6, "a dry run removes nothing")
        let report = try ws.runner().gc(dryRun: false)
        XCTAssertEqual(report.removedEntries, dry.removedEntries)
        XCTAssertEqual(report.removedObjects.count, 3)
        XCTAssertEqual(ws.entries().count, 4)
        XCTAssertEqual(objects(), 8)
        XCTAssertEqual(try ws.status("Pipelines/chain.yaml").values.map(\.state), Array(repeating: .upToDate, count: 4))
        XCTAssertEqual(try ws.run("Pipelines/chain.yaml").ran, [])
    }
}
