import Foundation
import XCTest
@testable import ArtifactStore

final class StoreRoundTripTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("store-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    func testEveryDTypeRoundTripsAcrossManyChunks() throws {
        let file = try HDF5File.create(path("types.h5"))
        let root = try file.root
        let u8 = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let i32 = (0..<120_000).map { Int32($0) - 60_000 }
        let i64 = (0..<70_000).map { Int64($0) * 1_000_000_007 }
        let f32 = (0..<90_000).map { Float(sin(Double($0))) }
        try root.write("u8", u8, shape: [300, 1000])
        try root.write("deep/i32", i32, shape: [2, 60, 1000], chunk: [1, 7, 100])
        try root.write("i64", i64)
        try root.write("f32", f32, shape: [90, 1000])
        try root.write("f16", f32, shape: [90, 1000], storage: .float16)
        let streamed = try AppendableDataset<Float>(in: root, name: "f16rows", rowShape: [1000], storage: .float16)
        try streamed.append(f32)
        file.close()

        let reopened = try HDF5File.open(path("types.h5"))
        let r = try reopened.root
        XCTAssertEqual(try r.read("u8", as: UInt8.self).values, u8)
        XCTAssertEqual(try r.read("u8", as: UInt8.self).shape, [300, 1000])
        XCTAssertEqual(try r.read("deep/i32", as: Int32.self).values, i32)
        XCTAssertEqual(try r.read("i64", as: Int64.self).values, i64)
        XCTAssertEqual(try r.read("f32", as: Float.self).values, f32)
        let half = try r.read("f16", as: Float.self).values
        let worst = zip(half, f32).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-3)
        XCTAssertGreaterThan(worst, 0, "float16 storage should round")
        XCTAssertEqual(try r.read("f16rows", as: Float.self).values, half)
        XCTAssertEqual(try r.filters(of: "f32"), [H5Z_FILTER_SHUFFLE_ID, zstdFilterID])
        XCTAssertEqual(try r.shape(of: "deep/i32"), [2, 60, 1000])
    }

    /// Half datasets are widened in Swift, not by HDF5: every one of the 65536 half values must come
    /// back exactly (NaNs as NaN), through whole reads and row reads alike.
    func testEveryHalfValueReadsBackExactly() throws {
        let file = try HDF5File.create(path("halves.h5"))
        let values = (0..<65536).map { Float(Float16(bitPattern: UInt16($0))) }
        try file.root.write("all", values, shape: [256, 256], storage: .float16)
        file.close()
        let root = try HDF5File.open(path("halves.h5")).root
        var rows = [Float](repeating: 0, count: 3 * 256)
        try rows.withUnsafeMutableBufferPointer { try root.readRows("all", start: 124, count: 3, into: $0) }
        for (read, offset) in [(try root.read("all", as: Float.self).values, 0), (rows, 124 * 256)] {
            for (i, value) in read.enumerated() {
                let expected = values[offset + i]
                if expected.isNaN { XCTAssertTrue(value.isNaN, "\(offset + i)") } else { XCTAssertEqual(value.bitPattern, expected.bitPattern, "\(offset + i)") }
            }
        }
        // Other element types of a half dataset still go through HDF5's conversion.
        XCTAssertEqual(try root.read("all", as: Double.self).values[15360], 1.0)
    }

    func testAttributes() throws {
        let file = try HDF5File.create(path("attrs.h5"))
        let root = try file.root
        try root.setAttribute("text", "ümlaut ✓")
        try root.setAttribute("count", Int64(-42))
        try root.setAttribute("ratio", 0.125)
        let group = try root.createGroup("g")
        try group.setAttribute("text", "inner")
        file.close()
        let r = try HDF5File.open(path("attrs.h5")).root
        XCTAssertEqual(try r.stringAttribute("text"), "ümlaut ✓")
        XCTAssertEqual(try r.int64Attribute("count"), -42)
        XCTAssertEqual(try r.doubleAttribute("ratio"), 0.125)
        XCTAssertEqual(try r.group("g").stringAttribute("text"), "inner")
        XCTAssertEqual(Set(r.attributeNames()), ["text", "count", "ratio"])
        XCTAssertEqual(try r.childNames(), ["g"])
    }

    func testRaggedArrays() throws {
        let file = try HDF5File.create(path("ragged.h5"))
        let writer = try RaggedArrayWriter<Float>(in: try file.root, name: "maps", rank: 2, chunkElements: 100)
        var expected: [[Float]] = []
        for i in 0..<50 {
            let shape = [1 + i % 7, 3 + i % 5]
            let values = (0..<shape[0] * shape[1]).map { Float(i * 1000 + $0) }
            expected.append(values)
            try writer.append(values, shape: shape)
        }
        try writer.finish()
        file.close()
        let reader = try RaggedArrayReader<Float>(try HDF5File.open(path("ragged.h5")).root, name: "maps")
        XCTAssertEqual(reader.count, 50)
        for i in [0, 1, 17, 49] {
            let item = try reader.item(i)
            XCTAssertEqual(item.shape, [1 + i % 7, 3 + i % 5])
            XCTAssertEqual(item.values, expected[i])
        }
        XCTAssertThrowsError(try reader.item(50))
    }

    func testAppendableDatasetReadsRows() throws {
        let file = try HDF5File.create(path("append.h5"))
        let root = try file.root
        let rows = try AppendableDataset<Int32>(in: root, name: "rows", rowShape: [4, 3])
        for i in 0..<10 { try rows.append((0..<12).map { Int32(i * 100 + $0) }) }
        XCTAssertEqual(rows.rows, 10)
        var slice = [Int32](repeating: 0, count: 24)
        try slice.withUnsafeMutableBufferPointer { try root.readRows("rows", start: 3, count: 2, into: $0) }
        XCTAssertEqual(slice, (0..<12).map { Int32(300 + $0) } + (0..<12).map { Int32(400 + $0) })
        XCTAssertEqual(try root.shape(of: "rows"), [10, 4, 3])
    }

    func testArtifactAppearsOnlyOnCommitAndCarriesProvenance() throws {
        let destination = path("a.h5")
        let provenance = Provenance(kind: .dataset, formatVersion: 1, producer: "test 1.0",
                                    paramsJSON: #"{"seed":3}"#, inputs: ["source": "sha256:abc"])
        do {
            let writer = try ArtifactWriter(path: destination, provenance: provenance)
            try writer.root.write("x", [Int32(1), 2, 3])
            XCTAssertFalse(FileManager.default.fileExists(atPath: destination))
            // Dropped without commit: nothing remains.
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: destination))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), [])

        let writer = try ArtifactWriter(path: destination, provenance: provenance)
        try writer.root.write("x", [Int32(1), 2, 3])
        try writer.commit()
        let reader = try ArtifactReader(path: destination, kind: .dataset)
        XCTAssertEqual(reader.provenance, provenance)
        XCTAssertEqual(reader.params["seed"] as? Int, 3)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), ["a.h5"])
    }

    func testErrorsNameTheFileAndTheProblem() throws {
        let good = path("good.h5")
        let writer = try ArtifactWriter(path: good, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "t"))
        try writer.root.write("maps", [Float(1)])
        try writer.commit()

        XCTAssertThrowsError(try ArtifactReader(path: good, kind: .dataset)) { error in
            XCTAssertEqual("\(error)", "\(good): expected an artifact of kind 'dataset', found kind 'cams'")
        }
        XCTAssertThrowsError(try ArtifactReader(path: good, kind: .cams).root.read("images", as: UInt8.self)) { error in
            XCTAssertEqual("\(error)", "\(good): missing dataset '/images'")
        }

        let future = path("future.h5")
        let w2 = try ArtifactWriter(path: future, provenance: Provenance(kind: .cams, formatVersion: 9, producer: "t"))
        try w2.commit()
        XCTAssertThrowsError(try ArtifactReader(path: future, kind: .cams)) { error in
            XCTAssertEqual("\(error)", "\(future): artifact of kind 'cams' has format version 9; this build reads version 1")
        }

        let text = path("text.h5")
        try Data("hello, not hdf5".utf8).write(to: URL(fileURLWithPath: text))
        XCTAssertThrowsError(try ArtifactReader(path: text, kind: .cams)) { error in
            XCTAssertEqual("\(error)", "\(text): not an HDF5 file")
        }

        let truncated = path("truncated.h5")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
        XCTAssertThrowsError(try ArtifactReader(path: truncated, kind: .cams)) { error in
            XCTAssertEqual("\(error)", "\(truncated): HDF5 file is truncated: \(bytes.count / 2) of the \(bytes.count) bytes it was written with")
        }

        let missing = path("missing.h5")
        XCTAssertThrowsError(try ArtifactReader(path: missing, kind: .cams)) { error in
            XCTAssertEqual("\(error)", "\(missing): no such file")
        }
    }
}

private let H5Z_FILTER_SHUFFLE_ID: Int32 = 2
