import ArtifactStore
import Datasets
import Localization
import Foundation
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
    static func tinyDataset(in folder: URL, seed: Int = 0, name: String = "dataset.h5") throws -> String {
        let path = folder.appendingPathComponent(name).path
        let result = try run("prepare-data", [
            "--out", "dataset=\(path)", "--out", "contact_sheet=\(folder.appendingPathComponent(name + ".png").path)",
            "--param", "image_size=32", "--param", "train_count=8", "--param", "val_count=6", "--param", "seed=\(seed)",
        ])
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

}
