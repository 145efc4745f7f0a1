import ArtifactStore
import Datasets
import Foundation
import Imaging
import Localization
import TestSupport
import XCTest

final class EvaluateStageTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try StageHarness.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    func evaluate(dataset: String, subject: String, extra: [String] = []) throws -> ProcessRunner.Result {
        try StageHarness.run("evaluate", ["--in", "dataset=\(dataset)", "--in", "subject=\(subject)",
                                          "--out", "metrics=\(path("metrics.h5"))", "--out", "metrics_json=\(path("metrics.json"))",
                                          "--out", "panels=\(path("panels.png"))", "--out", "confusion=\(path("confusion.svg"))"] + extra)
    }

    /// Writes `labels.h5`, label maps of the val split: each image's true mask edited by `edit`.
    func writeLabels(dataset: String, _ edit: (LabelMap, inout [UInt8]) -> Void) throws {
        let reader = try DatasetReader(path: dataset)
        let split = try reader.split("val")
        let artifact = try ArtifactWriter(path: path("labels.h5"), provenance: Provenance(kind: .labels, formatVersion: 1, producer: "test"))
        let writer = try LabelMapsWriter(artifact, context: MapContext(split: "val", classNames: reader.classNames, datasetHash: try ContentHash.ofFile(dataset)))
        for i in 0..<split.count {
            let mask = try split.mask(i)
            var labels = mask.labels
            edit(mask, &labels)
            try writer.append(imageIndex: i, height: mask.height, width: mask.width, labels: labels)
        }
        try writer.finish()
    }

    func metricsJSON() throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("metrics.json")))) as? [String: Any])
    }

    func testPerfectMapsScoreOneAndWriteEverything() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"))
        let result = try evaluate(dataset: dataset, subject: path("cams.h5"))
        XCTAssertEqual(result.status, 0, result.stderr)
        // Every stage ends with its peak resident memory (StageMain).
        let last = try XCTUnwrap(result.stdout.split(separator: "\n").last.map(String.init))
        XCTAssertTrue(last.hasPrefix("evaluate: peak resident memory ") && last.hasSuffix(" MB"), last)
        XCTAssertGreaterThan(Double(last.split(separator: " ")[4]) ?? 0, 1)
        let json = try metricsJSON()
        XCTAssertEqual(json["miou"] as? Double, 1.0)
        XCTAssertEqual(json["subject"] as? String, "cams")
        XCTAssertEqual(json["images"] as? Int, 6)
        // Any background score in [0, 1) separates maps of 0 and 1 perfectly.
        XCTAssertEqual(json["best_threshold"] as? Double, 0.0)
        let metrics = try ArtifactReader(path: path("metrics.h5"), kind: .metrics)
        XCTAssertEqual(try metrics.root.read("sweep_miou", as: Double.self).count, 81)
        XCTAssertNotNil(try? PNG.readRGB(path("panels.png")))
        XCTAssertEqual(json["foreground_iou"] as? Double, 1.0)
        XCTAssertEqual(json["foreground_class_accuracy"] as? Double, 1.0)
        XCTAssertEqual(json["object_pixels_as_background"] as? Double, 0.0)
        XCTAssertEqual(json["background_pixels_as_object"] as? Double, 0.0)
        XCTAssertNil(json["object_pixels_uncertain"])
        // The confusion picture: one cell per (truth, prediction) pair, the diagonal at 100 %.
        let svg = try String(contentsOfFile: path("confusion.svg"), encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<?xml") && svg.hasSuffix("</svg>\n"))
        let classes = try DatasetReader(path: dataset).classNames
        let k = classes.count + 1
        XCTAssertEqual(svg.components(separatedBy: "<rect x=").count - 2, k * k)  // minus the background and the first piece
        for name in ["background"] + classes { XCTAssertTrue(svg.contains(">\(SVGChart.escape(name))</text>"), name) }
        XCTAssertTrue(svg.contains("background -> background: 1.0000"))
    }

    func testCoarseMapsAreUpsampledAndScoreBelowOne() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"), factor: 4)
        XCTAssertEqual(try evaluate(dataset: dataset, subject: path("cams.h5")).status, 0)
        let miou = try XCTUnwrap(try metricsJSON()["miou"] as? Double)
        XCTAssertGreaterThan(miou, 0.3)
        XCTAssertLessThan(miou, 0.99)
    }

    /// Uncertain pixels are left out of mIoU, counted in coverage, and scored as background in the
    /// second figure.
    func testLabelMapsReportCoverage() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        var scored = 0, kept = 0
        try writeLabels(dataset: dataset) { mask, labels in
            for p in labels.indices {
                if mask.labels[p] != 255 { scored += 1 }
                if p % 3 == 0 { labels[p] = 255 } else if mask.labels[p] != 255 { kept += 1 }
            }
        }
        let result = try evaluate(dataset: dataset, subject: path("labels.h5"))
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try metricsJSON()
        XCTAssertEqual(json["miou"] as? Double, 1.0)
        XCTAssertEqual(try XCTUnwrap(json["coverage"] as? Double), Double(kept) / Double(scored), accuracy: 1e-12)
        XCTAssertLessThan(try XCTUnwrap(json["miou_ignore_as_background"] as? Double), 1.0)
    }

    /// Where the labels put the true object and background pixels, as shares of all of them:
    /// called background / an object, or left uncertain; the matrix itself leaves uncertain out.
    func testLabelMapsSplitObjectAndBackgroundPixels() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        var objects = 0, objectsAsBackground = 0, objectsUncertain = 0
        var background = 0, backgroundAsObject = 0, backgroundUncertain = 0
        try writeLabels(dataset: dataset) { mask, labels in
            for p in labels.indices where mask.labels[p] != 255 {
                let isObject = mask.labels[p] != 0
                switch (p % 5, isObject) {
                case (0, true): labels[p] = 255; objectsUncertain += 1
                case (1, true), (2, true): labels[p] = 0; objectsAsBackground += 1
                case (0, false), (1, false): labels[p] = 255; backgroundUncertain += 1
                case (2, false): labels[p] = 1; backgroundAsObject += 1
                default: break
                }
                if isObject { objects += 1 } else { background += 1 }
            }
        }
        XCTAssertGreaterThan(objects, 100)
        let result = try evaluate(dataset: dataset, subject: path("labels.h5"))
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try metricsJSON()
        XCTAssertEqual(try XCTUnwrap(json["object_pixels_as_background"] as? Double), Double(objectsAsBackground) / Double(objects), accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(json["object_pixels_uncertain"] as? Double), Double(objectsUncertain) / Double(objects), accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(json["background_pixels_as_object"] as? Double), Double(backgroundAsObject) / Double(background), accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(json["background_pixels_uncertain"] as? Double), Double(backgroundUncertain) / Double(background), accuracy: 1e-12)
        XCTAssertTrue(result.stdout.contains(String(format: "object pixels called background %.3f (uncertain %.3f)",
                                                    Double(objectsAsBackground) / Double(objects), Double(objectsUncertain) / Double(objects))), result.stdout)
        let svg = try String(contentsOfFile: path("confusion.svg"), encoding: .utf8)
        XCTAssertTrue(svg.contains(String(format: "(%.1f %% of the object pixels)", 100 * Double(objectsUncertain) / Double(objects))))
    }

    func testMapsOfAnotherDatasetAreRefusedAndNothingIsWritten() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let other = try StageHarness.tinyDataset(in: folder, seed: 5, name: "other.h5")
        try StageHarness.writeMapsFromTruth(dataset: dataset, to: path("cams.h5"))
        let result = try evaluate(dataset: other, subject: path("cams.h5"))
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("error: evaluate: \(path("cams.h5")): was made from another dataset"), result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1)
        for output in ["metrics.h5", "metrics.json", "panels.png", "confusion.svg"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: path(output)), output)
        }
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: folder.path).contains { $0.contains("partial") })
    }

    func testWrongSubjectKindIsNamed() throws {
        let dataset = try StageHarness.tinyDataset(in: folder)
        let result = try evaluate(dataset: dataset, subject: dataset)
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: evaluate: \(dataset): evaluate scores artifacts of kind 'cams', 'labels' or 'predictions', found kind 'dataset'\n")
    }
}
