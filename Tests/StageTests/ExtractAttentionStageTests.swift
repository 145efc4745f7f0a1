import ArtifactStore
import Datasets
import Engine
import Foundation
import Localization
import TestSupport
import Training
import CAM
import XCTest

final class ExtractAttentionStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    let config0 = ViTConfig(imageSize: 16, patchSize: 4, depth: 2, dim: 16, heads: 2, mlpRatio: 2, numClasses: 1)
    let norm = Normalization(mean: [0.45, 0.45, 0.45], std: [0.25, 0.25, 0.25])

    /// A randomly initialised classifier checkpoint for `classNames`, written with the Checkpoint API.
    func writeCheckpoint(classNames: [String], to destination: String, poisonCAMHead: Bool = false) throws -> ViT {
        var config = config0
        config.numClasses = classNames.count
        let model = try ViT(config: config, seed: 11)
        if poisonCAMHead { model.parameter(named: "cam_head.weight")!.value.data[0] = .nan }
        let artifact = try ArtifactWriter(path: destination, provenance: Provenance(kind: .checkpoint, formatVersion: 1, producer: "test"))
        var contents = Checkpoint.Contents(modelConfig: config, normalization: norm, classNames: classNames, optimizer: .text("{}"),
                                           augmentation: AugmentationSettings(), seed: 11, epochsCompleted: 0, stepsCompleted: 0)
        contents.groups["weights"] = model.parameters.map { StoredTensor(name: $0.name, tensor: $0.value) }
        try Checkpoint.write(contents, to: artifact.root)
        try artifact.commit()
        return model
    }

    func run(_ dataset: String, _ checkpoint: String, _ params: [String] = []) throws -> ProcessRunner.Result {
        try StageHarness.run("extract-attention", ["--in", "dataset=\(dataset)", "--in", "checkpoint=\(checkpoint)",
            "--out", "cams=\(path("cams.h5"))", "--out", "attention=\(path("attention.h5"))", "--out", "samples=\(path("samples.png"))"]
            + params.flatMap { ["--param", $0] })
    }

    func testOutputsHaveTheRightShapesAndMatchADirectComputation() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let reader = try DatasetReader(path: dataset)
        let model = try writeCheckpoint(classNames: reader.classNames, to: path("ckpt.h5"))
        let result = try run(dataset, path("ckpt.h5"), ["split=val", "batch_size=4"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("images/s"), result.stdout)
        let split = try reader.split("val")
        let hash = try ContentHash.ofFile(dataset)

        let cams = try ClassMapsReader(path: path("cams.h5"))
        let attention = try AttentionMapsReader(path: path("attention.h5"))
        XCTAssertEqual(cams.count, split.count)
        XCTAssertEqual(attention.count, split.count)
        for context in [cams.context, attention.context] {
            XCTAssertEqual(context, MapContext(split: "val", classNames: reader.classNames, datasetHash: hash))
        }
        XCTAssertTrue(cams.description.contains("flip false"), cams.description)
        XCTAssertEqual([attention.gridHeight, attention.gridWidth, attention.layers], [4, 4, 2])
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("samples.png")))

        let C = reader.numClasses
        var mapsSeen = 0
        for n in 0..<split.count {
            XCTAssertEqual(cams.imageIndices[n], n)
            let labels = try split.labels(n)
            let present = (0..<C).filter { labels[$0] != 0 }.map { $0 + 1 }
            let maps = try cams.maps(n)
            XCTAssertEqual(maps.classes, present, "CAM classes are the image-level labels")
            XCTAssertEqual([maps.height, maps.width], [4, 4])
            let image = try split.image(n)
            XCTAssertEqual(cams.imageSizes[n].height, image.height)
            XCTAssertEqual(cams.imageSizes[n].width, image.width)
            for k in 0..<present.count {
                let map = maps.values[k * 16..<(k + 1) * 16]
                XCTAssertGreaterThanOrEqual(map.min()!, 0)
                XCTAssertEqual(map.max()!, 1, "each map is min-max normalised")
                mapsSeen += 1
            }
            let record = try attention.record(n)
            XCTAssertEqual(record.classes, present)
            XCTAssertEqual(record.patchAttention.count, 2 * 16 * 16)
            // Patch rows sum to 1 minus the class-token column, so to less than 1.
            let rowSum = record.patchAttention[0..<16].reduce(0, +)
            XCTAssertLessThan(rowSum, 1.0001)
            XCTAssertGreaterThan(rowSum, 0.5)

            // Direct computation for this image with the same weights (stored as float16).
            let input = ExtractionInput(pixels: image.pixels, width: image.width, height: image.height, classes: present.map { $0 - 1 })
            let prepared = try AttentionExtractor(model: model, normalization: norm, options: ExtractionOptions()).prepare([input], size: 16, flipped: false)
            let acts = model.forward(images: prepared)
            var directCams: [Float] = []
            for c in present { for i in 0..<16 { directCams.append(acts.patchScores[0, i, c - 1]) } }
            AffinityRefinement.normalise(&directCams, count: present.count, tokens: 16)
            for (a, b) in zip(maps.values, directCams) { XCTAssertEqual(a, b, accuracy: 2e-3) }
            for (k, c) in present.enumerated() {
                let seed = Tensor(shape: [1, C])
                seed[0, c - 1] = 1
                model.backward(acts, ViTOutputGrads(clsLogits: seed, recordAttentionGrads: true, parameterGrads: false))
                for l in 0..<2 {
                    for j in 0..<16 {
                        let expected = max(0, (acts.attnProbsGrad[l][0, 0, 0, 1 + j] + acts.attnProbsGrad[l][0, 1, 0, 1 + j]) / 2)
                        let stored = record.gradients[(k * 2 + l) * 16 + j]
                        XCTAssertEqual(stored, expected, accuracy: 2e-3 * max(abs(expected), 1e-3) + 1e-7)
                    }
                }
                for l in 0..<2 {
                    for j in 0..<16 {
                        let expected = (acts.attnProbs[l][0, 0, 0, 1 + j] + acts.attnProbs[l][0, 1, 0, 1 + j]) / 2
                        XCTAssertEqual(record.classAttention[l * 16 + j], expected, accuracy: 1e-3)
                    }
                }
            }
        }
        XCTAssertGreaterThan(mapsSeen, 0)
    }

    func testFlipAndLimit() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let reader = try DatasetReader(path: dataset)
        _ = try writeCheckpoint(classNames: reader.classNames, to: path("ckpt.h5"))
        let result = try run(dataset, path("ckpt.h5"), ["limit=3", "flip=true", "scales=[1, 1.5]"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let cams = try ClassMapsReader(path: path("cams.h5"))
        XCTAssertEqual(cams.count, 3)
        XCTAssertEqual(cams.context.split, "train")
        XCTAssertTrue(cams.description.contains("flip true"), cams.description)
        XCTAssertTrue(cams.artifact.provenance.paramsJSON.contains(#""scales":[1,1.5]"#), cams.artifact.provenance.paramsJSON)
        for n in 0..<3 { let m = try cams.maps(n); if !m.classes.isEmpty { XCTAssertEqual(m.values.max()!, 1) } }
    }

    /// gradient_score=none: the same seeds and attention as with gradients, the gradient rows 0,
    /// and the file says so.
    func testWithoutGradientsSeedsAndAttentionAreUnchanged() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let reader = try DatasetReader(path: dataset)
        _ = try writeCheckpoint(classNames: reader.classNames, to: path("ckpt.h5"))
        XCTAssertEqual(try run(dataset, path("ckpt.h5"), ["limit=5"]).status, 0)
        for name in ["cams.h5", "attention.h5"] {
            try FileManager.default.moveItem(atPath: path(name), toPath: path("with-" + name))
        }
        let result = try run(dataset, path("ckpt.h5"), ["limit=5", "gradient_score=none"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let (withCams, cams) = (try ClassMapsReader(path: path("with-cams.h5")), try ClassMapsReader(path: path("cams.h5")))
        let (withAttention, attention) = (try AttentionMapsReader(path: path("with-attention.h5")), try AttentionMapsReader(path: path("attention.h5")))
        XCTAssertEqual(withAttention.gradientScore, "cls")
        XCTAssertEqual(attention.gradientScore, "none")
        var gradientsSeen = 0
        for n in 0..<5 {
            XCTAssertEqual(try cams.maps(n).values, try withCams.maps(n).values)
            let (a, b) = (try attention.record(n), try withAttention.record(n))
            XCTAssertEqual(a.patchAttention, b.patchAttention)
            XCTAssertEqual(a.classes, b.classes)
            XCTAssertTrue(a.gradients.allSatisfy { $0 == 0 })
            gradientsSeen += b.gradients.filter { $0 != 0 }.count
        }
        XCTAssertGreaterThan(gradientsSeen, 0, "the default run stores gradients")
    }

    /// A checkpoint made by the real classify-train stage (EMA weights included) is accepted.
    func testRunsOnAClassifyTrainCheckpoint() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let train = try StageHarness.run("classify-train", ["--in", "dataset=\(dataset)", "--out", "checkpoint=\(path("trained.h5"))",
            "--param", "image_size=32", "--param", "dim=16", "--param", "depth=1", "--param", "heads=2", "--param", "epochs=1",
            "--param", "batch_size=4", "--param", "ema_decay=0.9"])
        XCTAssertEqual(train.status, 0, train.stderr)
        let result = try run(dataset, path("trained.h5"), ["use_ema=true", "split=val", "scales=[1, 0.5]"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let attention = try AttentionMapsReader(path: path("attention.h5"))
        XCTAssertEqual([attention.count, attention.gridHeight, attention.layers], [6, 4, 1])
        XCTAssertTrue(try attention.artifact.root.stringAttribute("map_description").contains("scale 1 unflipped"))
    }

    func testClassCountMismatchIsRefusedWithoutOutputs() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let reader = try DatasetReader(path: dataset)
        _ = try writeCheckpoint(classNames: Array(reader.classNames.prefix(3)), to: path("ckpt.h5"))
        let result = try run(dataset, path("ckpt.h5"))
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: extract-attention: checkpoint \(path("ckpt.h5")) does not fit dataset \(dataset): "
                       + "the classifier has 3 classes, the dataset \(reader.numClasses)\n")
        for name in ["cams.h5", "attention.h5", "samples.png"] { XCTAssertFalse(FileManager.default.fileExists(atPath: path(name)), name) }
    }

    /// A checkpoint with a non-finite weight is refused when loaded, as every stage that loads
    /// checkpoints refuses it (Checkpoint.tensors), before any map is computed.
    func testNonFiniteWeightIsRefusedWhenLoaded() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let reader = try DatasetReader(path: dataset)
        _ = try writeCheckpoint(classNames: reader.classNames, to: path("ckpt.h5"), poisonCAMHead: true)
        let result = try run(dataset, path("ckpt.h5"), ["split=val"])
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: extract-attention: \(path("ckpt.h5")): weight 'weights/cam_head.weight' holds a non-finite value (nan): the training that wrote it diverged\n")
        for name in ["cams.h5", "attention.h5", "samples.png"] { XCTAssertFalse(FileManager.default.fileExists(atPath: path(name)), name) }
        // The same file as the starting point of segmentation training: the same refusal.
        let seg = try StageHarness.run("seg-train", ["--in", "dataset=\(dataset)", "--in", "init=\(path("ckpt.h5"))", "--param", "supervision=ground_truth",
            "--out", "checkpoint=\(path("s.h5"))", "--out", "predictions=\(path("p.h5"))", "--out", "samples=\(path("s.png"))"])
        XCTAssertEqual(seg.status, 1)
        XCTAssertTrue(seg.stderr.hasSuffix("\(path("ckpt.h5")): weight 'weights/cam_head.weight' holds a non-finite value (nan): the training that wrote it diverged\n"), seg.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("s.h5")))
    }

    func testBadParametersAreRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let reader = try DatasetReader(path: dataset)
        _ = try writeCheckpoint(classNames: reader.classNames, to: path("ckpt.h5"))
        let score = try run(dataset, path("ckpt.h5"), ["gradient_score=logit"])
        XCTAssertEqual(score.stderr, "error: extract-attention: parameter 'gradient_score' is invalid: 'logit' is not one of cls, cam, none\n")
        let ema = try run(dataset, path("ckpt.h5"), ["use_ema=true"])
        XCTAssertEqual(ema.status, 1)
        XCTAssertTrue(ema.stderr.contains("use_ema is set but the checkpoint has no EMA weights"), ema.stderr)
        let split = try run(dataset, path("ckpt.h5"), ["split=test"])
        XCTAssertEqual(split.status, 1)
        XCTAssertTrue(split.stderr.contains("no split 'test'"), split.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("cams.h5")))
    }
}
