import Primitives
import ArtifactStore
import TestSupport
import Training
import XCTest
@testable import Engine

/// End-to-end checks of the classify-train executable at toy size (built by `swift build
/// --build-tests` next to the test bundle): checkpoint contents, fine-tune and resume from
/// `init`, and the divergence guard that leaves nothing behind.
final class ClassifyTrainStageTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("classify-train-test-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let (status, output) = try run("prepare-data", ["--out", "dataset=\(path("data.h5"))", "--out", "contact_sheet=\(path("sheet.png"))",
                                                        "--param", "image_size=16", "--param", "train_count=24", "--param", "val_count=8"])
        XCTAssertEqual(status, 0, output)
    }

    override func tearDownWithError() throws {
        if let folder { try? FileManager.default.removeItem(at: folder) }
    }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    func run(_ tool: String, _ arguments: [String]) throws -> (Int32, String) {
        let result = try StageHarness.run(tool, arguments)
        return (result.status, result.output)
    }

    let tiny = ["image_size=16", "patch_size=4", "dim=16", "depth=1", "heads=2", "batch_size=8", "threads=1"]

    func train(_ out: String, _ extra: [String], initFrom: String? = nil) throws -> (Int32, String) {
        var args = ["--in", "dataset=\(path("data.h5"))", "--out", "checkpoint=\(path(out))"]
        if let initFrom { args += ["--in", "init=\(path(initFrom))"] }
        let overridden = Set(extra.map { $0.split(separator: "=")[0] })
        for p in tiny.filter({ !overridden.contains($0.split(separator: "=")[0]) }) + extra { args += ["--param", p] }
        return try run("classify-train", args)
    }

    /// A stage started on narrower kernels than the CPU runs (here pinned to Prescott, as Debian's
    /// OpenBLAS 0.3.21 detects CPUs it does not know) re-executes itself on kernels as wide as the CPU.
    func testStageRunsBLASKernelsAsWideAsTheCPU() throws {
        var args = ["--in", "dataset=\(path("data.h5"))", "--out", "checkpoint=\(path("k.h5"))"]
        for p in tiny + ["epochs=1"] { args += ["--param", p] }
        let result = try ProcessRunner.run(StageHarness.binFolder.appendingPathComponent("classify-train"), StageHarness.toyStem("classify-train", args),
                                           environment: ["OPENBLAS_CORETYPE": "Prescott", "WSSS_BLAS_CORE": "auto"])
        XCTAssertEqual(result.status, 0, result.output)
        let line = try XCTUnwrap(result.output.split(separator: "\n").first { $0.contains("OpenBLAS core ") }, result.output)
        let core = try XCTUnwrap(line.components(separatedBy: "OpenBLAS core ").last?.split(separator: " ").first.map(String.init))
        XCTAssertEqual(BLASCorePolicy.tier(ofCore: core), BLASCorePolicy.cpuTier, String(line))
        XCTAssertTrue(line.contains("CPU \(BLASCorePolicy.cpuTier)"), String(line))
    }

    func testCheckpointContentsFineTuneAndResume() throws {
        var (status, output) = try train("a.h5", ["epochs=2", "ema_decay=0.5", "seed=3"])
        XCTAssertEqual(status, 0, output)
        // BLASCorePolicy sets OpenBLAS's thread timeout before the library loads (re-exec), unless given.
        let timeout = ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] ?? "4"
        XCTAssertTrue(output.contains("thread timeout 2^\(timeout)"), output)
        let a = try Checkpoint(path: path("a.h5"))
        XCTAssertEqual(a.config.dim, 16)
        XCTAssertEqual(a.config.numClasses, 10)
        XCTAssertEqual(a.classNames.count, 10)
        XCTAssertEqual(try a.int("epochs_completed"), 2)
        XCTAssertEqual(try a.int("steps_completed"), 6)   // 24 images / batch 8, 2 epochs
        XCTAssertEqual(try a.reader.root.int64Attribute("seed"), 3)
        let log = try a.reader.root.group("log")
        for name in ["epoch_loss", "train_map", "train_f1", "val_map", "val_f1", "ema_val_f1", "lr"] {
            XCTAssertEqual(try log.shape(of: name), [2], name)
        }
        XCTAssertEqual(try log.shape(of: "step_loss"), [6])
        XCTAssertTrue(a.hasEMAWeights)
        let weights = try a.tensors()
        XCTAssertEqual(weights["blocks.0.attn.qkv.weight"]?.shape, [48, 16])
        XCTAssertEqual(weights["cam_head.weight"]?.shape, [10, 16])
        XCTAssertNotEqual(try a.tensors("ema_weights")["cls_head.weight"]!.values, weights["cls_head.weight"]!.values)
        let settings = try Checkpoint.readJSON(a.reader.root, "optimizer", as: OptimizerSettings.self)
        XCTAssertEqual(settings.totalSteps, 6)
        XCTAssertEqual(settings.emaDecay, 0.5)
        // The stage reads image-level labels only: the params record nothing about masks, and
        // the model loads back with the weights as written.
        let model = try a.makeModel()
        XCTAssertEqual(Array(UnsafeBufferPointer(start: model.parameter(named: "pos_embed")!.value.data, count: 17 * 16)),
                       weights["pos_embed"]!.values)

        // Resume to 3 epochs: step count, log and EMA continue.
        (status, output) = try train("b.h5", ["epochs=3", "ema_decay=0.5", "seed=3", "resume=true"], initFrom: "a.h5")
        XCTAssertEqual(status, 0, output)
        let b = try Checkpoint(path: path("b.h5"))
        XCTAssertEqual(try b.int("epochs_completed"), 3)
        XCTAssertEqual(try b.int("steps_completed"), 9)
        let stepLoss = try b.reader.root.read("log/step_loss", as: Double.self).values
        XCTAssertEqual(stepLoss.count, 9)
        XCTAssertEqual(Array(stepLoss.prefix(6)), try log.read("step_loss", as: Double.self).values)

        // Fine-tuning starts a fresh optimiser and log from a's weights.
        (status, output) = try train("c.h5", ["epochs=1"], initFrom: "a.h5")
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(try Checkpoint(path: path("c.h5")).int("steps_completed"), 3)

        // A model that does not match the init checkpoint is refused with the file named.
        (status, output) = try train("d.h5", ["epochs=1", "dim=32"], initFrom: "a.h5")
        XCTAssertEqual(status, 1)
        XCTAssertTrue(output.contains(path("a.h5")) && output.contains("differs"), output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("d.h5")))
    }

    /// stem=efficientnet_lite0 with the random-weight fixture: the stem is stored in both weight
    /// groups, stays frozen, and the checkpoint rebuilds the same model; a missing or wrong
    /// stem_weights file is refused with the file named and nothing written.
    func testPretrainedStemCheckpointAndErrors() throws {
        let stemPath = StemFixture.path
        let hybrid = ["patch_size=8", "stem=efficientnet_lite0", "epochs=1", "ema_decay=0.5"]
        var (status, output) = try run("classify-train", ["--in", "dataset=\(path("data.h5"))", "--in", "stem_weights=\(stemPath)",
                                                          "--out", "checkpoint=\(path("s.h5"))"]
                                                         + (tiny.filter { !$0.hasPrefix("patch_size") } + hybrid).flatMap { ["--param", $0] })
        XCTAssertEqual(status, 0, output)
        let checkpoint = try Checkpoint(path: path("s.h5"))
        XCTAssertEqual(checkpoint.config.stem, "efficientnet_lite0")
        XCTAssertEqual(checkpoint.config.grid, 2)
        let fixture = try StemFixture.tensors()
        for group in ["weights", "ema_weights"] {
            let stored = try checkpoint.tensors(group)
            XCTAssertEqual(stored["patch_embed.proj.weight"]?.shape, [16, 10, 1, 1], group)
            for (name, value) in fixture {
                XCTAssertEqual(stored["stem." + name]?.shape, value.shape, "\(group) \(name)")
                XCTAssertEqual(stored["stem." + name]?.values, value.values, "\(group) \(name): the stem must stay frozen")
            }
            XCTAssertEqual(stored["stem.input_mean"]?.values, [127, 127, 127])
        }
        // The checkpoint's model is the stem + the trained weights, for the EMA weights too.
        let stem = try PretrainedStem.load(path: stemPath, inputNormalization: checkpoint.normalization)
        var rng = SplitMix64(seed: 1)
        let images = Tensor(shape: [2, 16, 16, 3])
        images.fillNormal(std: 1, rng: &rng)
        for useEMA in [false, true] {
            let direct = try ViT(config: checkpoint.config, seed: 0, stem: stem)
            try direct.load(try checkpoint.tensors(useEMA ? "ema_weights" : "weights"))
            let rebuilt = try checkpoint.makeModel(useEMA: useEMA)
            XCTAssertEqual(rebuilt.forward(images: images).camLogits.toArray(), direct.forward(images: images).camLogits.toArray())
        }
        // Fine-tuning from it needs no stem file.
        (status, output) = try run("classify-train", ["--in", "dataset=\(path("data.h5"))", "--in", "init=\(path("s.h5"))",
                                                      "--out", "checkpoint=\(path("t.h5"))"]
                                                     + (tiny.filter { !$0.hasPrefix("patch_size") } + hybrid).flatMap { ["--param", $0] })
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(try Checkpoint(path: path("t.h5")).tensors()["stem.stem.conv.weight"]?.values, fixture["stem.conv.weight"]?.values)

        // Missing and wrong stem files.
        (status, output) = try run("classify-train", ["--in", "dataset=\(path("data.h5"))", "--out", "checkpoint=\(path("u.h5"))"]
                                                     + (tiny.filter { !$0.hasPrefix("patch_size") } + hybrid).flatMap { ["--param", $0] })
        XCTAssertEqual(status, 1, output)
        XCTAssertTrue(output.contains("stem_weights"), output)
        (status, output) = try run("classify-train", ["--in", "dataset=\(path("data.h5"))", "--in", "stem_weights=\(path("data.h5"))",
                                                      "--out", "checkpoint=\(path("u.h5"))"]
                                                     + (tiny.filter { !$0.hasPrefix("patch_size") } + hybrid).flatMap { ["--param", $0] })
        XCTAssertEqual(status, 1, output)
        XCTAssertTrue(output.contains(path("data.h5")) && output.contains("pretrained_stem"), output)
        (status, output) = try train("u.h5", ["stem=efficientnet_lite0", "epochs=1"])  // patch_size 4 != stride 8
        XCTAssertEqual(status, 1, output)
        XCTAssertTrue(output.contains("patch_size must be 8"), output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("u.h5")))
    }

    func testDivergenceNamesTheStepAndLeavesNoCheckpoint() throws {
        let (status, output) = try train("nan.h5", ["epochs=3", "lr=1e30", "warmup_epochs=0", "clip_grad_norm=0"])
        XCTAssertEqual(status, 1, output)
        XCTAssertTrue(output.contains("error: classify-train: training diverged"), output)
        XCTAssertTrue(output.contains("optimiser step"), output)
        XCTAssertTrue(output.contains("NaN") || output.contains("infinite"), output)
        let left = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.contains("nan.h5") }
        XCTAssertEqual(left, [], "no checkpoint or partial file may remain")
    }
}

final class TrainerGuardTests: XCTestCase {
    /// A huge learning rate blows the weights up after step 1; step 2's loss is not finite and
    /// the trainer throws naming step 2 without touching the weights.
    func testNonFiniteLossThrowsAndKeepsWeights() throws {
        let model = try ViT(config: ViTConfig(imageSize: 8, patchSize: 4, depth: 1, dim: 8, heads: 2, numClasses: 3), seed: 1)
        var settings = OptimizerSettings()
        settings.lr = 1e30
        settings.clipGradNorm = 0
        settings.totalSteps = 10
        let trainer = ClassifierTrainer(model: model, settings: settings)
        let images = Tensor(shape: [2, 8, 8, 3])
        var rng = SplitMix64(seed: 5)
        for i in 0..<images.count { images.data[i] = Float(rng.normal()) }
        let labels: [Float] = [1, 0, 1, 0, 1, 0]
        var thrown: Error?
        var snapshot: [[Float]] = []
        for _ in 0..<3 {
            snapshot = model.parameters.map { Array(UnsafeBufferPointer(start: $0.value.data, count: $0.value.count)) }
            do { try trainer.trainStep(images: images, labels: labels) } catch { thrown = error; break }
        }
        let message = String(describing: try XCTUnwrap(thrown))
        XCTAssertTrue(message.contains("at optimiser step 2"), message)
        XCTAssertEqual(trainer.step, 1)
        XCTAssertEqual(model.parameters.map { Array(UnsafeBufferPointer(start: $0.value.data, count: $0.value.count)) }, snapshot)
    }
}
