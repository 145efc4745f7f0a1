import ArtifactStore
import Datasets
import Localization
import Foundation
import Imaging
import Primitives
import TestSupport
import XCTest

/// Runs the real stage executables from the build folder, as the runner and users do.
enum StageHarness {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var binFolder: URL {
        if let bin = ProcessInfo.processInfo.environment["WSSS_BIN"] { return URL(fileURLWithPath: bin) }
        return packageRoot.appendingPathComponent(".build/debug")
    }

    @discardableResult
    /// The trainers' default backbone has a pretrained stem that needs a weights file; toy runs
    /// use the linear patch embedding unless they name a stem themselves.
    static func toyStem(_ stage: String, _ arguments: [String]) -> [String] {
        guard ["classify-train", "seg-train", "single-stage-train"].contains(stage), !arguments.contains(where: { $0.hasPrefix("stem=") }),
              !arguments.contains("--describe") else { return arguments }
        return arguments + ["--param", "stem=patch"]
    }

    static func run(_ stage: String, _ arguments: [String]) throws -> ProcessRunner.Result {
        try ProcessRunner.run(binFolder.appendingPathComponent(stage), toyStem(stage, arguments))
    }

    static func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("stage-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A tiny fashion-scenes dataset made by the real prepare-data stage.
    static func tinyDataset(in folder: URL, seed: Int = 0, name: String = "dataset.h5", trainCount: Int = 8, valCount: Int = 6,
                            extra: [String] = []) throws -> String {
        let path = folder.appendingPathComponent(name).path
        let result = try run("prepare-data", [
            "--out", "dataset=\(path)", "--out", "contact_sheet=\(folder.appendingPathComponent(name + ".png").path)",
            "--param", "image_size=32", "--param", "train_count=\(trainCount)", "--param", "val_count=\(valCount)", "--param", "seed=\(seed)",
        ] + extra)
        guard result.status == 0 else { throw StoreError(path: path, "prepare-data failed: \(result.stderr)") }
        return path
    }

    /// Writes a cams artifact whose maps are the ground-truth masks, shrunk by `factor`.
    static func writeMapsFromTruth(dataset: String, to destination: String, factor: Int = 1) throws {
        let reader = try DatasetReader(path: dataset)
        let split = try reader.split("val")
        let artifact = try ArtifactWriter(path: destination, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "test"))
        let writer = try ClassMapsWriter(artifact, context: MapContext(split: "val", classNames: reader.classNames, datasetHash: try ContentHash.ofFile(dataset)), description: "ground truth")
        for i in 0..<split.count {
            let mask = try split.mask(i)
            let classes = try split.labels(i).enumerated().filter { $0.element != 0 }.map { $0.offset + 1 }
            let (h, w) = (mask.height / factor, mask.width / factor)
            var values = [Float](repeating: 0, count: classes.count * h * w)
            for (k, c) in classes.enumerated() {
                for y in 0..<h { for x in 0..<w where Int(mask.labels[(y * factor) * mask.width + x * factor]) == c { values[(k * h + y) * w + x] = 1 } }
            }
            try writer.append(imageIndex: i, imageHeight: mask.height, imageWidth: mask.width, maps: ClassMaps(classes: classes, height: h, width: w, values: values))
        }
        try writer.finish()
    }


    /// The val mIoU that `evaluate` gives `subject` (predictions or labels of the val split).
    static func valMIoU(dataset: String, subject: String, in folder: URL) throws -> Double {
        func file(_ name: String) -> String { folder.appendingPathComponent("eval-\(UUID().uuidString)-\(name)").path }
        let json = file("m.json")
        let result = try run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(subject)", "--out", "metrics=\(file("m.h5"))",
                                          "--out", "metrics_json=\(json)", "--out", "panels=\(file("p.png"))", "--out", "confusion=\(file("c.svg"))"])
        guard result.status == 0 else { throw StoreError(path: subject, "evaluate failed: \(result.stderr)") }
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any]
        return try XCTUnwrap(metrics?["miou"] as? Double)
    }

    /// The val mIoU of the trivial predictor "background everywhere", as evaluate counts it: the
    /// background's IoU is its pixel share, every other class that occurs scores 0.
    static func allBackgroundMIoU(dataset: String) throws -> Double {
        let split = try DatasetReader(path: dataset).split("val")
        var background = 0, pixels = 0, occurring = Set<UInt8>()
        for i in 0..<split.count {
            let labels = try split.mask(i).labels.filter { $0 != 255 }
            background += labels.filter { $0 == 0 }.count
            pixels += labels.count
            occurring.formUnion(labels)
        }
        occurring.insert(0)
        return Double(background) / Double(pixels) / Double(occurring.count)
    }

    /// An easy two-class problem for the "does training learn?" tests: 32 px images of grey noise
    /// with one or two solid rectangles, red (class 1) or blue (class 2), a quarter to a half of
    /// the side each. Small enough for a from-scratch toy model to learn in a few epochs.
    static func rectanglesDataset(in folder: URL, trainCount: Int = 32, valCount: Int = 12, seed: UInt64 = 7) throws -> String {
        let path = folder.appendingPathComponent("rectangles.h5").path
        let size = 32, colours: [[Int]] = [[200, 40, 40], [40, 60, 200]]
        var rng = SplitMix64(seed: seed)
        func uniform(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        let artifact = try ArtifactWriter(path: path, provenance: Provenance(kind: .dataset, formatVersion: 1, producer: "test"))
        let writer = try DatasetWriter(root: artifact.root, classNames: ["red", "blue"])
        for (name, count) in [("train", trainCount), ("val", valCount)] {
            let split = try writer.beginSplit(name)
            for i in 0..<count {
                var pixels = (0..<(size * size * 3)).map { _ in UInt8(100 + uniform(56)) }
                var mask = [UInt8](repeating: 0, count: size * size)
                var present: [UInt8] = [0, 0]
                for _ in 0..<(1 + uniform(2)) {
                    let c = uniform(2), h = 8 + uniform(9), w = 8 + uniform(9), y0 = uniform(size - h), x0 = uniform(size - w)
                    present[c] = 1
                    for y in y0..<(y0 + h) {
                        for x in x0..<(x0 + w) {
                            mask[y * size + x] = UInt8(c + 1)
                            for ch in 0..<3 { pixels[(y * size + x) * 3 + ch] = UInt8(colours[c][ch] + uniform(20)) }
                        }
                    }
                }
                try split.append(id: "\(name)-\(i)", image: RGBImage(width: size, height: size, pixels: pixels),
                                 mask: LabelMap(width: size, height: size, labels: mask), labels: present)
            }
            try split.finish()
        }
        try artifact.commit()
        return path
    }
}
