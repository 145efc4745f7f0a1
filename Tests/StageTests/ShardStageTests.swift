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
        let unshardable = try StageHarness.run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(path("l0.h5"))", "--shard", "0/2",
                                                          "--out", "metrics=\(path("m.h5"))", "--out", "metrics_json=\(path("m.json"))",
                                                          "--out", "panels=\(path("p.png"))", "--out", "confusion=\(path("c.svg"))"])
        XCTAssertNotEqual(unshardable.status, 0)
        XCTAssertTrue(unshardable.stderr.contains("does not split into shards"), unshardable.stderr)
    }
}
