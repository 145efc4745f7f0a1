import ArtifactStore
import Foundation
import TestSupport
import XCTest
@testable import Datasets
import Imaging

final class VOCImportTests: TemporaryFolderTestCase {
    /// A tiny VOC-layout folder: three train images (PNG, PNG, JPEG) and one val image, palette
    /// masks with a 255 border like VOC's.
    func makeFolder() throws -> (root: String, masks: [String: LabelMap], images: [String: RGBImage]) {
        let root = path("VOCtiny")
        for sub in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
            try FileManager.default.createDirectory(atPath: root + "/" + sub, withIntermediateDirectories: true)
        }
        var masks: [String: LabelMap] = [:], images: [String: RGBImage] = [:]
        let specs: [(String, Int, Int, [UInt8], String)] = [
            ("2007_000001", 12, 9, [15], "png"), ("2007_000002", 7, 11, [1, 20], "png"),
            ("2007_000003", 16, 16, [7, 12, 3], "jpg"), ("2008_000010", 10, 6, [2], "png"),
        ]
        for (id, w, h, classes, format) in specs {
            var image = RGBImage(width: w, height: h)
            for y in 0..<h { for x in 0..<w { image[x, y] = RGB(UInt8(x * 13), UInt8(y * 17), UInt8((x + y) * 5)) } }
            var mask = LabelMap(width: w, height: h)
            for y in 0..<h {
                for x in 0..<w {
                    if x == 0 || y == 0 { mask[x, y] = 255; continue }
                    mask[x, y] = x < w / 3 ? 0 : classes[(x + y) % classes.count]
                }
            }
            if format == "jpg" { try JPEG.write(image, to: "\(root)/JPEGImages/\(id).jpg", quality: 98) }
            else { try PNG.write(image, to: "\(root)/JPEGImages/\(id).png") }
            try PNG.write(mask, to: "\(root)/SegmentationClass/\(id).png")
            masks[id] = mask
            images[id] = image
        }
        try "2007_000001\n2007_000002\n\n2007_000003\n".write(toFile: "\(root)/ImageSets/Segmentation/train.txt", atomically: true, encoding: .utf8)
        try "2008_000010\n".write(toFile: "\(root)/ImageSets/Segmentation/val.txt", atomically: true, encoding: .utf8)
        return (root, masks, images)
    }

    func testImportRoundTripsThroughTheArtifact() throws {
        let (root, masks, images) = try makeFolder()
        let voc = try VOCFolder(root: root, lists: [("train", "train"), ("val", "val")])
        XCTAssertEqual(voc.count(of: "train"), 3)
        let artifact = try ArtifactWriter(path: path("voc.h5"), provenance: Provenance(kind: .dataset, formatVersion: 1, producer: "test"))
        let writer = try DatasetWriter(root: artifact.root, classNames: voc.classNames)
        let report = try DatasetBuilder.build(from: voc, into: writer, batchSize: 2)
        try artifact.commit()

        let reader = try DatasetReader(path: path("voc.h5"))
        XCTAssertEqual(reader.classNames.count, 20)
        XCTAssertEqual(reader.classNames[14], "person")
        let train = try reader.split("train")
        XCTAssertEqual(try train.allIDs(), ["2007_000001", "2007_000002", "2007_000003"])
        for i in 0..<train.count {
            let id = try train.id(i)
            XCTAssertEqual(try train.mask(i), masks[id]!, id)
            let classes = Set(masks[id]!.labels.filter { $0 != 0 && $0 != 255 })
            XCTAssertEqual(try train.labels(i), (1...20).map { classes.contains(UInt8($0)) ? 1 : 0 }, id)
            let image = try train.image(i)
            if id == "2007_000003" {
                let worst = zip(image.pixels, images[id]!.pixels).map { abs(Int($0) - Int($1)) }.max()!
                XCTAssertLessThan(worst, 16, "JPEG decodes close to the original")
            } else {
                XCTAssertEqual(image, images[id]!, id)
            }
        }
        XCTAssertEqual(try reader.split("val").labels(0), (1...20).map { $0 == 2 ? 1 : 0 })
        XCTAssertEqual(report.stats["train"]!.minWidth, 7)
        XCTAssertEqual(report.stats["train"]!.maxHeight, 16)
        // The first row and column of every mask are 255.
        let borders: Int = (12 + 9 - 1) + (7 + 11 - 1) + (16 + 16 - 1)
        XCTAssertEqual(report.stats["train"]!.ignorePixels, Int64(borders))
    }

    func testProblemsNameTheFile() throws {
        let (root, _, _) = try makeFolder()
        XCTAssertThrowsError(try VOCFolder(root: root, lists: [("train", "trainaug")])) { error in
            XCTAssertEqual("\(error)", "\(root)/ImageSets/Segmentation/trainaug.txt: no such image list")
        }
        XCTAssertThrowsError(try VOCFolder(root: path("nowhere"), lists: [("train", "train")]))

        try FileManager.default.removeItem(atPath: "\(root)/JPEGImages/2007_000002.png")
        try PNG.write(LabelMap(width: 12, height: 9, fill: 30), to: "\(root)/SegmentationClass/2007_000001.png")
        try PNG.write(LabelMap(width: 5, height: 5), to: "\(root)/SegmentationClass/2008_000010.png")
        let voc = try VOCFolder(root: root, lists: [("train", "train"), ("val", "val")])
        XCTAssertThrowsError(try voc.sample(split: "train", index: 0)) { error in
            XCTAssertEqual("\(error)", "\(root)/SegmentationClass/2007_000001.png: mask value 30 is neither a class (0...20) nor ignore (255)")
        }
        XCTAssertThrowsError(try voc.sample(split: "train", index: 1)) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(root)/JPEGImages/2007_000002.jpg: no image for id '2007_000002'"), "\(error)")
        }
        XCTAssertThrowsError(try voc.sample(split: "val", index: 0)) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(root)/SegmentationClass/2008_000010.png: mask is 5x5 but image"), "\(error)")
        }
        // A failing sample stops the build with that error.
        let artifact = try ArtifactWriter(path: path("voc.h5"), provenance: Provenance(kind: .dataset, formatVersion: 1, producer: "test"))
        let writer = try DatasetWriter(root: artifact.root, classNames: voc.classNames)
        XCTAssertThrowsError(try DatasetBuilder.build(from: voc, into: writer)) { error in
            XCTAssertTrue("\(error)".contains("2007_000001.png: mask value 30"), "\(error)")
        }
    }
}
