import ArtifactStore
import Foundation
import TestSupport
import XCTest
@testable import Datasets
import Imaging

final class DatasetArtifactTests: TemporaryFolderTestCase {
    func makeImage(_ width: Int, _ height: Int, salt: Int) -> RGBImage {
        RGBImage(width: width, height: height, pixels: (0..<(width * height * 3)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ salt) })
    }

    func makeMask(_ width: Int, _ height: Int, classes: Int, salt: Int) -> LabelMap {
        LabelMap(width: width, height: height, labels: (0..<(width * height)).map { i in
            (i + salt) % 17 == 0 ? 255 : UInt8((i / 3 + salt) % (classes + 1))
        })
    }

    func testRoundTripOfSplitsWithVaryingSizes() throws {
        let names = ["cat", "dog/wolf", "ünïcode"]
        let artifact = try ArtifactWriter(path: path("d.h5"), provenance: Provenance(kind: .dataset, formatVersion: 1, producer: "test"))
        let writer = try DatasetWriter(root: artifact.root, classNames: names)
        var expected: [String: [(String, RGBImage, LabelMap, [UInt8])]] = [:]
        for (split, count) in [("train", 7), ("val", 3)] {
            let out = try writer.beginSplit(split)
            for i in 0..<count {
                let (w, h) = (5 + i * 3, 4 + (i * 7) % 5)
                let item = ("\(split)_\(i)_ïd", makeImage(w, h, salt: i), makeMask(w, h, classes: 3, salt: i),
                            [UInt8(i % 2), UInt8((i / 2) % 2), 1])
                try out.append(id: item.0, image: item.1, mask: item.2, labels: item.3)
                expected[split, default: []].append(item)
            }
            try out.finish()
        }
        try artifact.commit()

        let reader = try DatasetReader(path: path("d.h5"))
        XCTAssertEqual(reader.classNames, names)
        XCTAssertEqual(reader.numClasses, 3)
        XCTAssertEqual(reader.splitNames, ["train", "val"])
        for (split, items) in expected {
            let data = try reader.split(split)
            XCTAssertEqual(data.count, items.count)
            for (i, item) in items.enumerated() {
                XCTAssertEqual(try data.id(i), item.0)
                XCTAssertEqual(try data.image(i), item.1)
                XCTAssertEqual(try data.mask(i), item.2)
                XCTAssertEqual(try data.labels(i), item.3)
                let size = try data.size(i)
                XCTAssertEqual([size.width, size.height], [item.1.width, item.1.height])
            }
            XCTAssertEqual(try data.allLabels(), items.flatMap(\.3))
            XCTAssertEqual(try data.allIDs(), items.map(\.0))
            XCTAssertThrowsError(try data.image(items.count)) { error in
                XCTAssertEqual("\(error)", "\(path("d.h5")): image index \(items.count) is outside split '\(split)' of \(items.count) images")
            }
            XCTAssertThrowsError(try data.mask(-1))
        }
        XCTAssertThrowsError(try reader.split("test")) { error in
            XCTAssertEqual("\(error)", "\(path("d.h5")): no split 'test' in this dataset (it has: train, val)")
        }
        // Stored compressed with zstd (filter 32015).
        let group = try reader.artifact.root.group("train/images")
        XCTAssertTrue(try group.filters(of: "data").contains(32015))
        XCTAssertTrue(try reader.artifact.root.group("train").filters(of: "labels").contains(32015))
    }

    func testWriterRejectsBadItems() throws {
        let artifact = try ArtifactWriter(path: path("bad.h5"), provenance: Provenance(kind: .dataset, formatVersion: 1, producer: "test"))
        let writer = try DatasetWriter(root: artifact.root, classNames: ["a", "b"])
        XCTAssertThrowsError(try writer.beginSplit("a/b"))
        XCTAssertThrowsError(try DatasetWriter(root: artifact.root, classNames: []))
        let split = try writer.beginSplit("train")
        let image = makeImage(4, 4, salt: 0)
        XCTAssertThrowsError(try split.append(id: "x", image: image, mask: LabelMap(width: 4, height: 3), labels: [0, 1])) { error in
            XCTAssertTrue("\(error)".contains("mask is 4x3 but image is 4x4"), "\(error)")
        }
        XCTAssertThrowsError(try split.append(id: "x", image: image, mask: LabelMap(width: 4, height: 4, fill: 3), labels: [0, 1])) { error in
            XCTAssertTrue("\(error)".contains("mask value 3 is neither a class (0...2) nor ignore (255)"), "\(error)")
        }
        XCTAssertThrowsError(try split.append(id: "x", image: image, mask: LabelMap(width: 4, height: 4), labels: [0, 1, 0]))
        XCTAssertThrowsError(try split.append(id: "x", image: image, mask: LabelMap(width: 4, height: 4), labels: [0, 2]))
        XCTAssertThrowsError(try split.finish()) { error in XCTAssertTrue("\(error)".contains("has no images")) }
    }

    func testReaderRefusesOtherKindsNamingTheFile() throws {
        let artifact = try ArtifactWriter(path: path("cams.h5"), provenance: Provenance(kind: .cams, formatVersion: 1, producer: "test"))
        try artifact.commit()
        XCTAssertThrowsError(try DatasetReader(path: path("cams.h5"))) { error in
            XCTAssertTrue("\(error)".hasPrefix(path("cams.h5")) && "\(error)".contains("kind 'cams'"), "\(error)")
        }
        XCTAssertThrowsError(try DatasetReader(path: path("none.h5"))) { error in
            XCTAssertEqual("\(error)", "\(path("none.h5")): no such file")
        }
    }

    func testComposedScenesBuildWithStatsObjectsAndBaseline() throws {
        let train = Synthetic.objectSource(family: 0, name: "train")
        let val = Synthetic.objectSource(family: 1, name: "val")
        let source = try ComposedScenes(splits: [("train", train, 30), ("val", val, 20)], config: Synthetic.config(), seed: 4)
        let artifact = try ArtifactWriter(path: path("s.h5"), provenance: Provenance(kind: .dataset, formatVersion: 1, producer: "test"))
        let writer = try DatasetWriter(root: artifact.root, classNames: source.classNames)
        var progress: [String: Int] = [:]
        let report = try DatasetBuilder.build(from: source, into: writer, batchSize: 7, sheetSamples: 5) { split, done, _ in
            XCTAssertGreaterThanOrEqual(done, progress[split] ?? 0)
            progress[split] = done
        }
        try artifact.commit()
        XCTAssertEqual(progress, ["train": 30, "val": 20])
        XCTAssertEqual(report.sheetSamples.map(\.id), (0..<5).map { String(format: "val-%06d", $0) })

        let reader = try DatasetReader(path: path("s.h5"))
        for (name, objects) in [("train", train), ("val", val)] {
            let split = try reader.split(name)
            let stats = report.stats[name]!
            var confusion = ConfusionMatrix(classCount: 4)
            var foreground: Int64 = 0
            var rows: [[Int32]] = []
            let table = try split.group.read("objects", as: Int32.self)
            XCTAssertEqual(table.shape[1], DatasetBuilder.objectColumns.count)
            for r in 0..<table.shape[0] { rows.append(Array(table.values[(r * 12)..<(r * 12 + 12)])) }
            for i in 0..<split.count {
                let sample = try source.sample(split: name, index: i)
                XCTAssertEqual(try split.image(i), sample.image)
                XCTAssertEqual(try split.mask(i), sample.mask)
                XCTAssertEqual(try split.labels(i), sample.labels)
                confusion.add(prediction: OtsuBaseline.predict(image: sample.image, mask: sample.mask, labels: sample.labels), truth: sample.mask)
                foreground += Int64(sample.mask.labels.filter { $0 >= 1 && $0 <= 3 }.count)
                // The stored object table lists this image's objects, in paste order.
                let mine = rows.filter { $0[0] == i }.map { Array($0[1...]) }
                XCTAssertEqual(mine, sample.objects.map { o in
                    [o.classID, o.sourceIndex, o.x, o.y, o.width, o.height, o.pastedPixels, o.visiblePixels,
                     Int(o.tint.r), Int(o.tint.g), Int(o.tint.b)].map { Int32($0) }
                })
                XCTAssertTrue(sample.objects.allSatisfy { objects.indicesByClass[$0.classID - 1].contains($0.sourceIndex) })
            }
            XCTAssertEqual(stats.images, split.count)
            XCTAssertEqual(stats.objects, rows.count)
            XCTAssertEqual(stats.foregroundPixels, foreground)
            XCTAssertEqual(stats.baselineMIoU!, confusion.meanIoU, accuracy: 1e-12)
            XCTAssertEqual(stats.imagesByClassCount.reduce(0, +), split.count)
            let labels = try split.allLabels()
            for c in 0..<3 {
                XCTAssertEqual(stats.classImageCounts[c], stride(from: c, to: labels.count, by: 3).filter { labels[$0] == 1 }.count)
            }
            XCTAssertEqual(try split.group.doubleAttribute("baseline_otsu_miou"), confusion.meanIoU, accuracy: 1e-12)
        }
        let json = try JSONSerialization.jsonObject(with: Data(try report.statsJSON().utf8)) as! [String: [String: Any]]
        XCTAssertEqual(json["val"]?["images"] as? Int, 20)
        XCTAssertEqual(json["train"]?["baseline_otsu_miou"] as? Double, report.stats["train"]!.baselineMIoU)
    }
}
