import ArtifactStore
import Datasets
import Foundation
import Imaging
import Localization
import TestSupport
import XCTest

/// cam-refine end to end on the tiny dataset (32 px images) with seeds and attention on a 4 x 4
/// token grid (factor 8) written by the test.
final class CamRefineStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    static let factor = 8, grid = 4, tokens = 16

    /// One val image at grid resolution: its present classes and the label of every token (the
    /// mask at the token's centre, where bilinear upsampling puts the token's value).
    struct GridImage {
        var index: Int
        var height: Int, width: Int
        var classes: [Int]
        var labels: [UInt8]
        /// [classes, tokens]: 1 where the token has the class.
        var truthMaps: [Float] { classes.flatMap { c in labels.map { Int($0) == c ? Float(1) : 0 } } }
    }

    func gridImages(_ dataset: String) throws -> [GridImage] {
        let split = try DatasetReader(path: dataset).split("val")
        return try (0..<split.count).map { i in
            let mask = try split.mask(i)
            let classes = try split.labels(i).enumerated().filter { $0.element != 0 }.map { $0.offset + 1 }
            var labels = [UInt8](repeating: 0, count: Self.tokens)
            for y in 0..<Self.grid { for x in 0..<Self.grid { labels[y * Self.grid + x] = mask.labels[(y * Self.factor + Self.factor / 2) * mask.width + x * Self.factor + Self.factor / 2] } }
            return GridImage(index: i, height: mask.height, width: mask.width, classes: classes, labels: labels)
        }
    }

    // Attention layers over the token grid, [tokens, tokens], rows are distributions.
    static var identity: [Float] { (0..<tokens * tokens).map { $0 / tokens == $0 % tokens ? 1 : 0 } }
    static var uniform: [Float] { [Float](repeating: 1 / Float(tokens), count: tokens * tokens) }
    /// Each token attends uniformly to the tokens that carry its label: an ideal affinity.
    static func semantic(_ image: GridImage) -> [Float] {
        var a = [Float](repeating: 0, count: tokens * tokens)
        for i in 0..<tokens {
            let same = (0..<tokens).filter { image.labels[$0] == image.labels[i] }
            for j in same { a[i * tokens + j] = 1 / Float(same.count) }
        }
        return a
    }
    /// Deterministic pseudo-random rows.
    static func noisy(seed: Int) -> [Float] {
        var state = UInt64(seed + 1) &* 0x9E3779B97F4A7C15
        var a = [Float](repeating: 0, count: tokens * tokens)
        for i in 0..<tokens {
            let row = (0..<tokens).map { _ -> Double in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return exp(3 * Double(state >> 11) / Double(1 << 53))
            }
            let total = row.reduce(0, +)
            for j in 0..<tokens { a[i * tokens + j] = Float(row[j] / total) }
        }
        return a
    }

    /// Seeds that only mark the first token of each present class (weak, incomplete seeds).
    static func pointSeeds(_ image: GridImage) -> [Float] {
        image.classes.flatMap { c -> [Float] in
            var map = [Float](repeating: 0, count: tokens)
            if let first = image.labels.firstIndex(where: { Int($0) == c }) { map[first] = 1 }
            return map
        }
    }

    func context(_ dataset: String, split: String = "val", hash: String? = nil) throws -> MapContext {
        MapContext(split: split, classNames: try DatasetReader(path: dataset).classNames, datasetHash: try hash ?? ContentHash.ofFile(dataset))
    }

    func writeSeeds(_ images: [GridImage], context: MapContext, to name: String = "seeds.h5", values: (GridImage) -> [Float]) throws {
        let artifact = try ArtifactWriter(path: path(name), provenance: Provenance(kind: .cams, formatVersion: 1, producer: "test"))
        let writer = try ClassMapsWriter(artifact, context: context, description: "test seeds")
        for image in images {
            try writer.append(imageIndex: image.index, imageHeight: image.height, imageWidth: image.width,
                              maps: ClassMaps(classes: image.classes, height: Self.grid, width: Self.grid, values: values(image)))
        }
        try writer.finish()
    }

    /// `layers(image)` gives the [L][tokens * tokens] attention, `gradients(image)` the [K, L, tokens] rows.
    func writeAttention(_ images: [GridImage], context: MapContext, layerCount: Int, to name: String = "attention.h5",
                        layers: (GridImage) -> [[Float]], gradients: ((GridImage) -> [Float])? = nil) throws {
        let artifact = try ArtifactWriter(path: path(name), provenance: Provenance(kind: .attention, formatVersion: 1, producer: "test"))
        let writer = try AttentionMapsWriter(artifact, context: context, gridHeight: Self.grid, gridWidth: Self.grid, layers: layerCount)
        for image in images {
            let record = AttentionMaps(layers: layerCount, tokens: Self.tokens, patchAttention: layers(image).flatMap { $0 },
                                       classAttention: [Float](repeating: 1 / Float(Self.tokens), count: layerCount * Self.tokens), classes: image.classes,
                                       gradients: gradients?(image) ?? [Float](repeating: 0, count: image.classes.count * layerCount * Self.tokens))
            try writer.append(imageIndex: image.index, imageHeight: image.height, imageWidth: image.width, record)
        }
        try writer.finish()
    }

    func refine(_ extra: [String], dataset: String? = nil, seeds: String = "seeds.h5", attention: String = "attention.h5") throws -> ProcessRunner.Result {
        try StageHarness.run("cam-refine", ["--in", "cams=\(path(seeds))", "--in", "attention=\(path(attention))"]
            + (dataset.map { ["--in", "dataset=\($0)"] } ?? [])
            + ["--out", "cams=\(path("refined.h5"))", "--out", "report=\(path("report.json"))", "--out", "chart=\(path("chart.svg"))"] + extra)
    }

    func report() throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("report.json")))) as? [String: Any])
    }

    func evaluate(dataset: String, cams: String) throws -> [String: Any] {
        let result = try StageHarness.run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(cams)", "--out", "metrics=\(path("m.h5"))",
                                                       "--out", "metrics_json=\(path("m.json"))", "--out", "panels=\(path("p.png"))", "--out", "confusion=\(path("confusion.svg"))"])
        XCTAssertEqual(result.status, 0, result.stderr)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("m.json")))) as? [String: Any])
    }

    func refinedMaps() throws -> [ClassMaps] {
        let reader = try ClassMapsReader(path: path("refined.h5"))
        return try (0..<reader.count).map { try reader.maps($0) }
    }

    func count(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    // MARK: methods

    func testMeanWithIdentityAttentionReturnsTheSeeds() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        try writeSeeds(images, context: try context(dataset)) { $0.truthMaps }
        try writeAttention(images, context: try context(dataset), layerCount: 2) { _ in [Self.identity, Self.identity] }
        let result = try refine(["--param", "method=mean"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let maps = try refinedMaps()
        XCTAssertEqual(maps.count, images.count)
        for (image, map) in zip(images, maps) {
            XCTAssertEqual(map.classes, image.classes)
            XCTAssertEqual(map.values, image.truthMaps)
        }
        let reader = try ClassMapsReader(path: path("refined.h5"))
        XCTAssertEqual(reader.imageIndices, images.map(\.index))
        XCTAssertEqual(reader.context, try context(dataset))
        XCTAssertTrue(reader.description.hasPrefix("cam-refine mean affinity of layers [0, 1] applied to: test seeds"), reader.description)
        XCTAssertTrue(reader.artifact.provenance.paramsJSON.contains(#""method":"mean""#))
        let json = try report()
        XCTAssertEqual(json["method"] as? String, "mean")
        XCTAssertEqual(json["layers"] as? [Int], [0, 1])
        let weights = try XCTUnwrap(json["layer_weights"] as? [[String: Any]])
        XCTAssertEqual(weights.compactMap { $0["mean"] as? Double }, [0.5, 0.5])
        let svg = try String(contentsOfFile: path("chart.svg"), encoding: .utf8)
        XCTAssertEqual(count(#"class="bar""#, in: svg), 2)
    }

    /// Point seeds (one token per class) and four layers: identity keeps the points, uniform erases
    /// them, the semantic layer restores whole objects, a noisy layer is in between. Every per-layer
    /// number of the analysis must match a direct computation: Hellinger from the stored attention,
    /// mIoU from a single-layer run of the stage scored by `evaluate`.
    func testAnalyseMatchesSingleLayerRunsAndEvaluate() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        try writeSeeds(images, context: try context(dataset), values: Self.pointSeeds)
        try writeAttention(images, context: try context(dataset), layerCount: 4) { image in
            [Self.identity, Self.uniform, Self.semantic(image), Self.noisy(seed: image.index)]
        }
        let result = try refine(["--param", "method=mean", "--param", "analyse=true"], dataset: dataset)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("single-layer mIoU"), result.stdout)
        // Two series of four layers, one reference level per method row.
        let svg = try String(contentsOfFile: path("chart.svg"), encoding: .utf8)
        XCTAssertEqual(count(#"class="point""#, in: svg), 8)
        XCTAssertEqual(count(#"class="level""#, in: svg), 5)
        let json = try report()
        let perLayer = try XCTUnwrap(json["per_layer"] as? [[String: Any]])
        XCTAssertEqual(perLayer.count, 4)
        let methods = try XCTUnwrap(json["methods"] as? [[String: Any]])
        XCTAssertEqual(methods.compactMap { $0["method"] as? String }, ["none", "mean", "areaM paper", "areaM code", "acr"])
        let methodMIoU = Dictionary(uniqueKeysWithValues: methods.map { ($0["method"] as! String, $0["miou"] as! Double) })

        // Hellinger from the attention as stored (float16), by the definition.
        let attention = try AttentionMapsReader(path: path("attention.h5"))
        let n = Self.tokens
        for l in 0..<4 {
            var total = 0.0
            for e in 0..<attention.count {
                let a = try attention.record(e).patchAttention(layer: l)
                var sum = 0.0
                for i in 0..<n {
                    for j in 0..<n where j != i {
                        let s = (0..<n).reduce(0.0) { acc, k in
                            let d = Double(a[i * n + k]).squareRoot() - Double(a[j * n + k]).squareRoot()
                            return acc + d * d
                        }
                        sum += (s / 2).squareRoot()
                    }
                }
                total += sum / Double(n * (n - 1))
            }
            XCTAssertEqual(try XCTUnwrap(perLayer[l]["hellinger"] as? Double), total / Double(attention.count), accuracy: 1e-4, "layer \(l)")
        }
        XCTAssertEqual(try XCTUnwrap(perLayer[0]["hellinger"] as? Double), 1, accuracy: 1e-6)
        XCTAssertEqual(try XCTUnwrap(perLayer[1]["hellinger"] as? Double), 0, accuracy: 1e-6)

        // Single-layer mIoU: the same number as evaluate on a run refining with that layer alone.
        var single: [Double] = []
        for l in 0..<4 {
            let run = try refine(["--param", "method=mean", "--param", "layers=[\(l)]"])
            XCTAssertEqual(run.status, 0, run.stderr)
            let metrics = try evaluate(dataset: dataset, cams: path("refined.h5"))
            let miou = try XCTUnwrap(metrics["miou"] as? Double)
            XCTAssertEqual(try XCTUnwrap(perLayer[l]["miou"] as? Double), miou, accuracy: 1e-12, "layer \(l)")
            XCTAssertEqual(try XCTUnwrap(perLayer[l]["best_threshold"] as? Double), try XCTUnwrap(metrics["best_threshold"] as? Double), accuracy: 1e-12)
            single.append(miou)
        }
        // The seeds themselves (row none) are what identity refinement gives back.
        let seedMetrics = try evaluate(dataset: dataset, cams: path("seeds.h5"))
        XCTAssertEqual(methodMIoU["none"]!, try XCTUnwrap(seedMetrics["miou"] as? Double), accuracy: 1e-12)
        XCTAssertEqual(single[0], methodMIoU["none"]!, accuracy: 1e-12)
        // The semantic layer turns point seeds into whole objects: the truth at grid resolution.
        try writeSeeds(images, context: try context(dataset), to: "truth.h5") { $0.truthMaps }
        XCTAssertEqual(single[2], try XCTUnwrap(try evaluate(dataset: dataset, cams: path("truth.h5"))["miou"] as? Double), accuracy: 1e-12)
        XCTAssertGreaterThan(single[2], single[0] + 0.1)

    }

    /// Identity (sharp) and uniform (maximal entropy) layers: both weightings put all the weight on
    /// the identity layer, so the refined maps are the seeds.
    func testAReAMWeightsGoToTheLowEntropyLayer() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        try writeSeeds(images, context: try context(dataset), values: Self.pointSeeds)
        try writeAttention(images, context: try context(dataset), layerCount: 2) { _ in [Self.uniform, Self.identity] }
        for weighting in ["paper", "code"] {
            let result = try refine(["--param", "method=areaM", "--param", "aream_weighting=\(weighting)"])
            XCTAssertEqual(result.status, 0, result.stderr)
            let json = try report()
            XCTAssertEqual(json["aream_weighting"] as? String, weighting)
            let weights = try XCTUnwrap(json["layer_weights"] as? [[String: Any]])
            XCTAssertEqual(try XCTUnwrap(weights[0]["mean"] as? Double), 0, accuracy: 1e-6, weighting)
            XCTAssertEqual(try XCTUnwrap(weights[1]["mean"] as? Double), 1, accuracy: 1e-6, weighting)
            for (image, map) in zip(images, try refinedMaps()) { XCTAssertEqual(map.values, Self.pointSeeds(image), weighting) }
            if weighting == "code" {
                let entropy = try XCTUnwrap(json["split_mean_entropy"] as? [String: Any])
                XCTAssertEqual(entropy["code_weights"] as? [Double], [0, 1])
                let normalised = try XCTUnwrap(entropy["normalised_entropy"] as? [Double])
                XCTAssertEqual(normalised[0], 1, accuracy: 1e-9)
                XCTAssertLessThan(normalised[1], normalised[0])
            } else {
                XCTAssertEqual(json["equal_weight_fallbacks"] as? Int, 0)
            }
        }
    }

    /// Gradient rows: layer 0 points at token 0 (noise), layer 1 holds the true object of the class.
    /// Starting at the last layer gives the objects; starting at 0 mixes the noise in.
    func testACRAveragesTheGradientRowsFromTheStartLayer() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        try writeSeeds(images, context: try context(dataset), values: Self.pointSeeds)
        try writeAttention(images, context: try context(dataset), layerCount: 2, layers: { _ in [Self.identity, Self.identity] }) { image in
            let truth = image.truthMaps
            return (0..<image.classes.count).flatMap { k -> [Float] in
                var noise = [Float](repeating: 0, count: Self.tokens)
                noise[0] = 1
                return noise + Array(truth[k * Self.tokens..<(k + 1) * Self.tokens])
            }
        }
        for useAffinity in [false, true] {
            let result = try refine(["--param", "method=acr", "--param", "acr_start_layer=-1", "--param", "acr_use_affinity=\(useAffinity)"])
            XCTAssertEqual(result.status, 0, result.stderr)
            for (image, map) in zip(images, try refinedMaps()) { XCTAssertEqual(map.values, image.truthMaps) }
            let acr = try XCTUnwrap(try report()["acr"] as? [String: Any])
            XCTAssertEqual(acr["gradient_layers"] as? [Int], [1])
        }
        XCTAssertEqual(try refine(["--param", "method=acr", "--param", "acr_start_layer=0", "--param", "acr_use_affinity=false"]).status, 0)
        let mixed = try refinedMaps()
        XCTAssertTrue(zip(images, mixed).contains { image, map in map.values != image.truthMaps })
    }

    /// The real producers upstream: classify-train (one tiny epoch) and extract-attention give
    /// seeds and attention that every method refines and the analysis scores.
    func testRefinesWhatExtractAttentionWrites() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let train = try StageHarness.run("classify-train", ["--in", "dataset=\(dataset)", "--out", "checkpoint=\(path("classifier.h5"))",
            "--param", "image_size=32", "--param", "patch_size=8", "--param", "dim=16", "--param", "depth=2", "--param", "heads=2",
            "--param", "epochs=1", "--param", "batch_size=4"])
        XCTAssertEqual(train.status, 0, train.stderr)
        let extract = try StageHarness.run("extract-attention", ["--in", "dataset=\(dataset)", "--in", "checkpoint=\(path("classifier.h5"))",
            "--out", "cams=\(path("seeds.h5"))", "--out", "attention=\(path("attention.h5"))", "--out", "samples=\(path("samples.png"))",
            "--param", "split=val"])
        XCTAssertEqual(extract.status, 0, extract.stderr)
        let seeds = try ClassMapsReader(path: path("seeds.h5"))
        for method in ["none", "mean", "areaM", "acr"] {
            let result = try refine(["--param", "method=\(method)"])
            XCTAssertEqual(result.status, 0, result.stderr)
            let refined = try ClassMapsReader(path: path("refined.h5"))
            XCTAssertEqual(refined.imageIndices, seeds.imageIndices)
            for e in 0..<refined.count {
                let (map, seed) = (try refined.maps(e), try seeds.maps(e))
                XCTAssertEqual([map.height, map.width], [seed.height, seed.width])
                XCTAssertEqual(map.classes, seed.classes)
                // Every map is normalised: within [0, 1], and reaching 1 unless it is all zero.
                for k in 0..<map.classes.count {
                    let plane = map.values[k * map.height * map.width..<(k + 1) * map.height * map.width]
                    XCTAssertTrue(plane.allSatisfy { $0 >= 0 && $0 <= 1 })
                    XCTAssertTrue(plane.max() == 1 || plane.allSatisfy { $0 == 0 }, "\(method) entry \(e) class \(map.classes[k])")
                }
            }
        }
        let result = try refine(["--param", "analyse=true"], dataset: dataset)
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try report()
        XCTAssertEqual((json["per_layer"] as? [[String: Any]])?.count, 2)
        let methods = try XCTUnwrap(json["methods"] as? [[String: Any]])
        let none = try XCTUnwrap(methods.first { $0["method"] as? String == "none" }?["miou"] as? Double)
        XCTAssertEqual(none, try XCTUnwrap(try evaluate(dataset: dataset, cams: path("seeds.h5"))["miou"] as? Double), accuracy: 1e-12)
        // Attention without gradients serves every method but ACR's, which names the cause.
        for name in ["refined.h5", "report.json", "chart.svg"] { try FileManager.default.removeItem(atPath: path(name)) }
        let plain = try StageHarness.run("extract-attention", ["--in", "dataset=\(dataset)", "--in", "checkpoint=\(path("classifier.h5"))",
            "--out", "cams=\(path("seeds.h5"))", "--out", "attention=\(path("attention.h5"))", "--out", "samples=\(path("samples.png"))",
            "--param", "split=val", "--param", "gradient_score=none"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertEqual(try refine(["--param", "method=mean", "--param", "analyse=true"], dataset: dataset).status, 0)
        let variants = try XCTUnwrap(try report()["methods"] as? [[String: Any]]).compactMap { $0["method"] as? String }
        XCTAssertTrue(variants.contains("mean") && !variants.contains("acr"), "no ACR variant without gradients: \(variants)")
        for name in ["refined.h5", "report.json", "chart.svg"] { try FileManager.default.removeItem(atPath: path(name)) }
        try assertRefused(try refine(["--param", "method=acr"]),
            "\(path("attention.h5")): holds no attention gradients (extract-attention ran with gradient_score=none); method acr needs them: rerun it with gradient_score=cls")
    }

    // MARK: bad input

    func assertRefused(_ result: ProcessRunner.Result, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(result.status, 1, file: file, line: line)
        // Progress lines may come first; the error is the one last line.
        let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.last, "", file: file, line: line)
        XCTAssertEqual(lines.dropLast().last.map(String.init), "error: cam-refine: \(message)", file: file, line: line)
        XCTAssertEqual(lines.filter { $0.hasPrefix("error:") }.count, 1, file: file, line: line)
        for output in ["refined.h5", "report.json", "chart.svg"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: path(output)), output, file: file, line: line)
        }
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: folder.path).contains { $0.contains("partial") }, file: file, line: line)
    }

    func testAttentionOfAnotherDatasetSplitOrImageListIsRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        let hash = try ContentHash.ofFile(dataset)
        try writeSeeds(images, context: try context(dataset)) { $0.truthMaps }
        let layers: (GridImage) -> [[Float]] = { _ in [Self.identity] }
        let seeds = path("seeds.h5"), attention = path("attention.h5")

        let otherHash = "sha256:" + String(repeating: "0", count: 64)
        try writeAttention(images, context: try context(dataset, hash: otherHash), layerCount: 1, layers: layers)
        try assertRefused(try refine([]), "\(attention): was extracted from another dataset (sha256:000000000000...) than the seeds \(seeds) (\(hash.prefix(19))...)")

        try writeAttention(images, context: try context(dataset, split: "train"), layerCount: 1, layers: layers)
        try assertRefused(try refine([]), "\(attention): covers split 'train', the seeds \(seeds) cover split 'val'")

        try writeAttention(images.reversed(), context: try context(dataset), layerCount: 1, layers: layers)
        try assertRefused(try refine([]), "\(attention): lists the images in another order than the seeds \(seeds): entry 0 is image 5 here, image 0 there")

        try writeAttention(Array(images.prefix(5)), context: try context(dataset), layerCount: 1, layers: layers)
        try assertRefused(try refine([]), "\(attention): has no entry for image 5 of the seeds \(seeds)")

        // Both from this dataset, but refined against another one.
        try writeAttention(images, context: try context(dataset), layerCount: 1, layers: layers)
        let other = try StageHarness.tinyDataset(in: folder, seed: 5, name: "other.h5")
        let otherDatasetHash = try ContentHash.ofFile(other)
        try assertRefused(try refine(["--param", "analyse=true"], dataset: other),
                          "\(seeds): was made from another dataset (\(hash.prefix(19))...) than \(other) (\(otherDatasetHash.prefix(19))...)")
        // The same pair refines fine.
        XCTAssertEqual(try refine(["--param", "analyse=true"], dataset: dataset).status, 0)
    }

    func testBadParametersAreRefused() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        try writeSeeds(images, context: try context(dataset)) { $0.truthMaps }
        try writeAttention(images, context: try context(dataset), layerCount: 2) { _ in [Self.identity, Self.uniform] }
        try assertRefused(try refine(["--param", "method=aream"]), "parameter 'method' is invalid: 'aream' is not one of none, mean, areaM, acr")
        try assertRefused(try refine(["--param", "layers=[0,2]"]), "layers: layer 2 does not exist (the attention has 2 layers: 0...1, or -2...-1 from the end)")
        try assertRefused(try refine(["--param", "analyse=true"]), "analyse scores against ground truth: pass the optional input --in dataset=PATH")
        // Code weighting with only the highest-entropy layer selected would weigh everything 0.
        try assertRefused(try refine(["--param", "layers=[1]"]),
                          "areaM code weighting gives every selected layer [1] weight 0 (the highest split-mean entropy); select more layers")
    }

    /// A NaN in the third entry is found while the refined maps are being written: nothing stays.
    func testNaNInAttentionOrSeedsIsRefusedMidStream() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let images = try gridImages(dataset)
        let ctx = try context(dataset)
        try writeSeeds(images, context: ctx) { $0.truthMaps }
        try writeRawAttention(images, context: ctx, nanAt: 2)
        try assertRefused(try refine(["--param", "method=mean"]), "\(path("attention.h5")): entry 2 (image 2) contains nan")

        try writeAttention(images, context: ctx, layerCount: 1) { _ in [Self.identity] }
        try writeRawSeeds(images, context: ctx, nanAt: 1)
        try assertRefused(try refine(["--param", "method=mean"]), "\(path("seeds.h5")): entry 1 (image 1) contains nan")
    }

    // The artifact writers refuse non-finite values, so the broken files are written by hand in
    // the documented layout (MapArtifacts.swift).
    func writeContext(_ context: MapContext, to root: HDF5Group) throws {
        try root.setAttribute("split", context.split)
        try root.setAttribute("class_names", String(decoding: try JSONSerialization.data(withJSONObject: context.classNames), as: UTF8.self))
        try root.setAttribute("num_classes", Int64(context.classNames.count))
        try root.setAttribute("dataset_hash", context.datasetHash)
    }

    func writeIndex(_ images: [GridImage], to root: HDF5Group) throws {
        let indices = try AppendableDataset<Int64>(in: root, name: "image_index", rowShape: [], chunkRows: 16)
        let sizes = try AppendableDataset<Int32>(in: root, name: "image_sizes", rowShape: [2], chunkRows: 16)
        for image in images {
            try indices.append([Int64(image.index)])
            try sizes.append([Int32(image.height), Int32(image.width)])
        }
    }

    func writeRawAttention(_ images: [GridImage], context: MapContext, nanAt bad: Int) throws {
        let artifact = try ArtifactWriter(path: path("attention.h5"), provenance: Provenance(kind: .attention, formatVersion: 1, producer: "test"))
        let root = artifact.root
        try writeContext(context, to: root)
        try root.setAttribute("grid_height", Int64(Self.grid))
        try root.setAttribute("grid_width", Int64(Self.grid))
        try root.setAttribute("layers", Int64(1))
        try writeIndex(images, to: root)
        let patch = try RaggedArrayWriter<Float>(in: root, name: "patch_attention", rank: 3, storage: .float16)
        let classRows = try RaggedArrayWriter<Float>(in: root, name: "class_attention", rank: 2, storage: .float16)
        let gradients = try RaggedArrayWriter<Float>(in: root, name: "gradients", rank: 3, storage: .float16)
        let classes = try RaggedArrayWriter<Int32>(in: root, name: "classes", rank: 1)
        for (e, image) in images.enumerated() {
            var a = Self.identity
            if e == bad { a[5] = .nan }
            try patch.append(a, shape: [1, Self.tokens, Self.tokens])
            try classRows.append([Float](repeating: 0, count: Self.tokens), shape: [1, Self.tokens])
            try gradients.append([Float](repeating: 0, count: image.classes.count * Self.tokens), shape: [image.classes.count, 1, Self.tokens])
            try classes.append(image.classes.map(Int32.init), shape: [image.classes.count])
        }
        for writer in [patch, classRows, gradients] { try writer.finish() }
        try classes.finish()
        try artifact.commit()
    }

    func writeRawSeeds(_ images: [GridImage], context: MapContext, nanAt bad: Int) throws {
        let artifact = try ArtifactWriter(path: path("seeds.h5"), provenance: Provenance(kind: .cams, formatVersion: 1, producer: "test"))
        let root = artifact.root
        try writeContext(context, to: root)
        try root.setAttribute("map_description", "broken seeds")
        try writeIndex(images, to: root)
        let maps = try RaggedArrayWriter<Float>(in: root, name: "maps", rank: 3, storage: .float16)
        let classes = try RaggedArrayWriter<Int32>(in: root, name: "classes", rank: 1)
        for (e, image) in images.enumerated() {
            var values = image.truthMaps
            if e == bad { values[0] = .nan }
            try maps.append(values, shape: [image.classes.count, Self.grid, Self.grid])
            try classes.append(image.classes.map(Int32.init), shape: [image.classes.count])
        }
        try maps.finish()
        try classes.finish()
        try artifact.commit()
    }
}
