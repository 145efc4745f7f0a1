import ArtifactStore
import Foundation
import Localization
import TestSupport
import XCTest

/// `--shard I/N` on a per-image stage, and `MapShards.merge` joining the parts into the artifact
/// the unsharded run writes.
final class ShardStageTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { if let folder { try? FileManager.default.removeItem(at: folder) } }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    func pseudoLabel(cams: String, dataset: String, labels: String, shard: String? = nil) throws -> ProcessRunner.Result {
        var arguments = ["--in", "dataset=\(dataset)", "--in", "cams=\(cams)", "--out", "labels=\(labels)", "--out", "samples=\(labels).png"]
        if let shard { arguments += ["--shard", shard] }
        return try ProcessRunner.run(StageHarness.binFolder.appendingPathComponent("pseudo-label"), arguments,
                                     environment: ["SOURCE_DATE_EPOCH": "1767225600"])
    }

    func testThreeShardsMergeIntoTheUnshardedLabels() throws {
        let dataset = try StageHarness.tinyDataset(in: folder, valCount: 7)
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"), factor: 2)
        let whole = try pseudoLabel(cams: path("cams.h5"), dataset: dataset, labels: path("labels.h5"))
        XCTAssertEqual(whole.status, 0, whole.output)
        var parts: [String] = []
        for index in [2, 0, 1] {  // any order
            let part = path("labels-\(index).h5")
            let result = try pseudoLabel(cams: path("cams.h5"), dataset: dataset, labels: part, shard: "\(index)/3")
            XCTAssertEqual(result.status, 0, result.output)
            parts.append(part)
        }
        XCTAssertEqual(try LabelMapsReader(path: path("labels-0.h5"), kind: .labels).imageIndices, [0, 1])
        try MapShards.merge(parts, to: path("merged.h5"))

        let expected = try LabelMapsReader(path: path("labels.h5"), kind: .labels)
        let merged = try LabelMapsReader(path: path("merged.h5"), kind: .labels)
        XCTAssertEqual(merged.artifact.provenance, expected.artifact.provenance)
        XCTAssertEqual(merged.context, expected.context)
        XCTAssertEqual(merged.imageIndices, expected.imageIndices)
        XCTAssertEqual(merged.count, 7)
        for n in 0..<expected.count {
            let (a, b) = (try merged.labels(n), try expected.labels(n))
            XCTAssertEqual(a.height, b.height)
            XCTAssertEqual(a.width, b.width)
            XCTAssertEqual(a.values, b.values, "entry \(n)")
        }
        XCTAssertEqual(try merged.artifact.root.stringAttribute("shards").components(separatedBy: "sha256:").count, 4)

        // Class maps merge the same way (the parts cut from the truth maps by hand here).
        let cams = try ClassMapsReader(path: path("cams.h5"))
        var camParts: [String] = []
        for index in 0..<3 {
            let part = path("cams-\(index).h5")
            let artifact = try ArtifactWriter(path: part, provenance: cams.artifact.provenance)
            try artifact.root.setAttribute("shard", "\(index)/3")
            let writer = try ClassMapsWriter(artifact, context: cams.context, description: cams.description)
            for n in cams.count * index / 3..<cams.count * (index + 1) / 3 {
                try writer.append(imageIndex: cams.imageIndices[n], imageHeight: cams.imageSizes[n].height,
                                  imageWidth: cams.imageSizes[n].width, maps: try cams.maps(n))
            }
            try writer.finish()
            camParts.append(part)
        }
        try MapShards.merge(camParts, to: path("cams-merged.h5"))
        let camsMerged = try ClassMapsReader(path: path("cams-merged.h5"))
        XCTAssertEqual(camsMerged.imageIndices, cams.imageIndices)
        for n in 0..<cams.count { XCTAssertEqual(try camsMerged.maps(n), try cams.maps(n)) }
    }

    func testMissingShardAndUnshardableStageAreClearErrors() throws {
        let dataset = try StageHarness.tinyDataset(in: folder, valCount: 4)
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"))
        XCTAssertEqual(try pseudoLabel(cams: path("cams.h5"), dataset: dataset, labels: path("l0.h5"), shard: "0/2").status, 0)
        XCTAssertThrowsError(try MapShards.merge([path("l0.h5")], to: path("merged.h5"))) { error in
            XCTAssertTrue("\(error)".contains("shards 1/2 are missing"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("merged.h5")))
        let bad = try pseudoLabel(cams: path("cams.h5"), dataset: dataset, labels: path("l.h5"), shard: "2/2")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--shard expects I/N"), bad.stderr)
        let unshardable = try StageHarness.run("prepare-data", ["--shard", "0/2", "--out", "dataset=\(path("d.h5"))", "--out", "contact_sheet=\(path("d.png"))"])
        XCTAssertNotEqual(unshardable.status, 0)
        XCTAssertTrue(unshardable.stderr.contains("does not split into shards"), unshardable.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("d.h5")))

        // A merge without every part of every output is refused before anything is written.
        let stage = StageHarness.binFolder.appendingPathComponent("pseudo-label")
        let merge = try ProcessRunner.run(stage, ["--merge-shards", "2", "--in", "dataset=\(dataset)", "--in", "cams=\(path("cams.h5"))",
                                                  "--part", "labels.0=\(path("l0.h5"))", "--part", "samples.0=\(path("l0.h5.png"))",
                                                  "--out", "labels=\(path("m.h5"))", "--out", "samples=\(path("m.png"))"])
        XCTAssertNotEqual(merge.status, 0)
        XCTAssertEqual(merge.stderr, "error: pseudo-label: missing part: pass --part labels.1=PATH (output 'labels' of shard 1/2)\n")
        // A part that is not a shard of the same run: the merge names it and writes nothing.
        XCTAssertEqual(try pseudoLabel(cams: path("cams.h5"), dataset: dataset, labels: path("l1.h5"), shard: "1/2").status, 0)
        let foreign = try ProcessRunner.run(stage, ["--merge-shards", "2", "--in", "dataset=\(dataset)", "--in", "cams=\(path("cams.h5"))",
                                                    "--part", "labels.0=\(path("l0.h5"))", "--part", "labels.1=\(path("cams.h5"))",
                                                    "--part", "samples.0=\(path("l0.h5.png"))", "--part", "samples.1=\(path("l1.h5.png"))",
                                                    "--out", "labels=\(path("m.h5"))", "--out", "samples=\(path("m.png"))"])
        XCTAssertNotEqual(foreign.status, 0)
        XCTAssertTrue(foreign.stderr.contains(path("cams.h5") + ": is not a shard"), foreign.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("m.h5")))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("m.png")))
    }

    // MARK: Every shardable stage, whole and in 3 shards

    /// Runs `stage` whole and as `shards` shards joined by `--merge-shards`, on the same inputs:
    /// every output must come out the same, HDF5 artifacts array for array and attribute for
    /// attribute (but the merge's `shards` listing), other files byte for byte. Returns the whole
    /// run's output paths.
    @discardableResult
    func checkShardsMergeToWhole(_ stage: String, inputs: [String: String], outputs: [String: String], params: [String] = [],
                                 shards: Int = 3) throws -> [String: String] {
        let executable = StageHarness.binFolder.appendingPathComponent(stage)
        let common = inputs.keys.sorted().flatMap { ["--in", "\($0)=\(inputs[$0]!)"] } + params.flatMap { ["--param", $0] }
        func paths(_ tag: String) -> [String: String] {
            Dictionary(uniqueKeysWithValues: outputs.map { ($0.key, path("\(stage)-\(tag)-\($0.key).\($0.value)")) })
        }
        func outs(_ paths: [String: String]) -> [String] { paths.keys.sorted().flatMap { ["--out", "\($0)=\(paths[$0]!)"] } }
        let environment = ["SOURCE_DATE_EPOCH": "1767225600"]
        let whole = paths("whole"), merged = paths("merged")
        let run = try ProcessRunner.run(executable, common + outs(whole), environment: environment)
        XCTAssertEqual(run.status, 0, run.output)
        var partArguments: [String] = []
        for index in 0..<shards {
            let part = paths("shard\(index)")
            let result = try ProcessRunner.run(executable, common + outs(part) + ["--shard", "\(index)/\(shards)"], environment: environment)
            XCTAssertEqual(result.status, 0, result.output)
            partArguments += part.keys.sorted().flatMap { ["--part", "\($0).\(index)=\(part[$0]!)"] }
        }
        let merge = try ProcessRunner.run(executable, common + outs(merged) + partArguments + ["--merge-shards", "\(shards)"], environment: environment)
        XCTAssertEqual(merge.status, 0, merge.output)

        var pairs: [String] = []
        for name in outputs.keys.sorted() {
            if outputs[name] == "h5" {
                pairs += [merged[name]!, whole[name]!]
                XCTAssertEqual(try ArtifactReader(path: merged[name]!, kind: nil).root.stringAttribute("shards").components(separatedBy: "sha256:").count,
                               shards + 1, "\(stage).\(name) lists its shards")
            } else {
                XCTAssertTrue(FileManager.default.contents(atPath: merged[name]!) == FileManager.default.contents(atPath: whole[name]!),
                              "\(stage) output '\(name)': the merged file differs from the unsharded one")
            }
        }
        let script = Repository.root.appendingPathComponent("Tests/Fixtures/compare_artifacts.py").path
        let compared = try ProcessRunner.run(URL(fileURLWithPath: try Repository.python), [script] + pairs)
        XCTAssertEqual(compared.status, 0, "\(stage): " + compared.output)
        return whole
    }

    /// extract-attention (batches of 4 cut across the shard boundaries), cam-refine (areaM with
    /// the analysis), pseudo-label, and evaluate of class maps and of label maps: 3 shards and
    /// their merge give what one run gives. The pictures draw the first 2 images, which shard 0 holds.
    func testEveryShardableStageMergesToItsUnshardedOutputs() throws {
        let dataset = try StageHarness.tinyDataset(in: folder, valCount: 13)
        let train = try StageHarness.run("classify-train", ["--in", "dataset=\(dataset)", "--out", "checkpoint=\(path("classifier.h5"))",
            "--param", "image_size=32", "--param", "dim=16", "--param", "depth=2", "--param", "heads=2", "--param", "epochs=1", "--param", "batch_size=4"])
        XCTAssertEqual(train.status, 0, train.output)
        let seeds = try checkShardsMergeToWhole("extract-attention", inputs: ["dataset": dataset, "checkpoint": path("classifier.h5")],
                                                outputs: ["cams": "h5", "attention": "h5", "samples": "png"],
                                                params: ["split=val", "batch_size=4", "samples=2"])
        let refined = try checkShardsMergeToWhole("cam-refine", inputs: ["cams": seeds["cams"]!, "attention": seeds["attention"]!, "dataset": dataset],
                                                  outputs: ["cams": "h5", "report": "json", "chart": "svg"], params: ["method=areaM", "analyse=true"])
        let labels = try checkShardsMergeToWhole("pseudo-label", inputs: ["dataset": dataset, "cams": refined["cams"]!],
                                                 outputs: ["labels": "h5", "samples": "png"], params: ["samples=2"])
        for subject in [seeds["cams"]!, labels["labels"]!] {
            try checkShardsMergeToWhole("evaluate", inputs: ["dataset": dataset, "subject": subject],
                                        outputs: ["metrics": "h5", "metrics_json": "json", "panels": "png", "confusion": "svg"], params: ["panels=2"])
            // (each call overwrites the previous subject's files: the comparison is done by then)
        }
    }
}
