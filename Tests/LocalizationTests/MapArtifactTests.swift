import ArtifactStore
import Foundation
import XCTest
@testable import Localization

final class MapArtifactTests: XCTestCase {
    func temporary(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("maps-\(UUID().uuidString)-\(name)").path
    }

    func testAttentionRoundTripInHalfPrecision() throws {
        let path = temporary("attention.h5")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let context = MapContext(split: "train", classNames: ["a", "b", "c"], datasetHash: "sha256:00")
        let writer = try AttentionMapsWriter(try ArtifactWriter(path: path, provenance: Provenance(kind: .attention, formatVersion: 1, producer: "t")),
                                             context: context, gridHeight: 2, gridWidth: 3, layers: 2)
        var records: [AttentionMaps] = []
        for i in 0..<3 {
            let classes = Array([1, 3].prefix(i))
            let record = AttentionMaps(
                layers: 2, tokens: 6,
                patchAttention: (0..<72).map { Float(($0 * 7 + i) % 13) / 13 },
                classAttention: (0..<12).map { Float($0) / 12 },
                classes: classes, gradients: (0..<classes.count * 12).map { Float($0) / 64 })
            records.append(record)
            try writer.append(imageIndex: 10 + i, imageHeight: 16, imageWidth: 24, record)
        }
        try writer.finish()
        let reader = try AttentionMapsReader(path: path)
        XCTAssertEqual(reader.context, context)
        XCTAssertEqual(reader.imageIndices, [10, 11, 12])
        XCTAssertEqual(reader.layers, 2)
        for i in 0..<3 {
            let back = try reader.record(i)
            XCTAssertEqual(back.classes, records[i].classes)
            XCTAssertEqual(back.patchAttention, records[i].patchAttention.map { Float(Float16($0)) })
            XCTAssertEqual(back.gradients, records[i].gradients.map { Float(Float16($0)) })
        }
        XCTAssertEqual(try reader.record(1).patchAttention(layer: 1).count, 36)
    }

    func testNonFiniteMapsAreRefusedWithTheFile() throws {
        let path = temporary("cams.h5")
        let writer = try ClassMapsWriter(try ArtifactWriter(path: path, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "t")),
                                         context: MapContext(split: "val", classNames: ["a"], datasetHash: "x"), description: "t")
        XCTAssertThrowsError(try writer.append(imageIndex: 4, imageHeight: 2, imageWidth: 2,
                                               maps: ClassMaps(classes: [1], height: 1, width: 2, values: [0.5, .nan]))) { error in
            XCTAssertEqual("\(error)", "\(path): map of image 4 contains nan")
        }
    }

    /// The writer owns the class maps' invariants: values in [0, 1], class ids in 1...C.
    func testUnnormalisedMapsAndUnknownClassesAreRefusedWithTheFile() throws {
        let path = temporary("cams.h5")
        let writer = try ClassMapsWriter(try ArtifactWriter(path: path, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "t")),
                                         context: MapContext(split: "val", classNames: ["a", "b"], datasetHash: "x"), description: "t")
        for (maps, message) in [
            (ClassMaps(classes: [1], height: 1, width: 2, values: [0.5, 1.25]), "map of image 4 holds 1.25; class maps are normalised to [0, 1]"),
            (ClassMaps(classes: [2], height: 1, width: 2, values: [-0.5, 1]), "map of image 4 holds -0.5; class maps are normalised to [0, 1]"),
            (ClassMaps(classes: [3], height: 1, width: 2, values: [0, 1]), "map of image 4 names class 3; the classes are 1...2"),
            (ClassMaps(classes: [0], height: 1, width: 2, values: [0, 1]), "map of image 4 names class 0; the classes are 1...2"),
        ] {
            XCTAssertThrowsError(try writer.append(imageIndex: 4, imageHeight: 2, imageWidth: 2, maps: maps)) { error in
                XCTAssertEqual("\(error)", "\(path): \(message)")
            }
        }
        // The bounds themselves are valid.
        XCTAssertNoThrow(try writer.append(imageIndex: 4, imageHeight: 2, imageWidth: 2,
                                           maps: ClassMaps(classes: [1, 2], height: 1, width: 2, values: [0, 1, 1, 0])))
    }

    /// Damaged map artifacts end in an error naming the file (found reviewing the artifact fuzz
    /// target): an odd number of image_sizes values used to index past the array, and a labels
    /// array of rank 1 past its shape.
    func testDamagedMapIndexesAreErrors() throws {
        let context = MapContext(split: "val", classNames: ["a"], datasetHash: "sha256:00")
        let cams = temporary("odd-sizes.h5")
        defer { try? FileManager.default.removeItem(atPath: cams) }
        let camsWriter = try ArtifactWriter(path: cams, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "t"))
        try context.write(to: camsWriter.root)
        try camsWriter.root.write("image_index", [Int64(0)])
        try camsWriter.root.write("image_sizes", [Int32(4), 4, 4])
        try camsWriter.commit()
        XCTAssertThrowsError(try ClassMapsReader(path: cams)) { error in
            XCTAssertEqual("\(error)", "\(cams): image_sizes holds 3 values, not (height, width) pairs")
        }

        let labels = temporary("rank-1-labels.h5")
        defer { try? FileManager.default.removeItem(atPath: labels) }
        let labelsWriter = try ArtifactWriter(path: labels, provenance: Provenance(kind: .labels, formatVersion: 1, producer: "t"))
        try context.write(to: labelsWriter.root)
        try labelsWriter.root.write("image_index", [Int64(0)])
        let ragged = try RaggedArrayWriter<UInt8>(in: labelsWriter.root, name: "labels", rank: 1)
        try ragged.append([1, 2, 3], shape: [3])
        try ragged.finish()
        try labelsWriter.commit()
        XCTAssertThrowsError(try LabelMapsReader(path: labels, kind: .labels)) { error in
            XCTAssertEqual("\(error)", "\(labels): labels must be a ragged array of rank 2 (height x width), found rank 1")
        }
    }
}
