import Foundation
import TestSupport
import XCTest
@testable import ArtifactStore

/// A damaged ragged-array index or a dataset declaring more than a reader may allocate ends in an
/// error naming the file (the artifact fuzz target's review: these used to trap on a negative
/// array size, trip a precondition, or allocate whatever the file said).
final class CorruptIndexTests: TemporaryFolderTestCase {
    /// A ragged array written by hand: `offsets`, `shapes` (rank 2) and 9 floats of data.
    func raggedFile(offsets: [Int64], shapes: [Int64]) throws -> String {
        let path = folder.appendingPathComponent("ragged-\(UUID().uuidString).h5").path
        let file = try HDF5File.create(path)
        let group = try file.root.createGroup("maps")
        try group.write("offsets", offsets)
        try group.write("shapes", shapes, shape: [shapes.count / 2, 2])
        try group.write("data", (0..<9).map(Float.init))
        file.close()
        return path
    }

    func expectError(_ path: String, item: Int, _ fragment: String, line: UInt = #line) throws {
        let reader = try RaggedArrayReader<Float>(try HDF5File.open(path).root, name: "maps")
        XCTAssertThrowsError(try reader.item(item), line: line) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.hasPrefix(path + ": ") && text.contains(fragment), text, line: line)
        }
    }

    func testOffsetsGoingBackwardsAreAnError() throws {
        let path = try raggedFile(offsets: [0, 6, 3], shapes: [2, 3, 1, 1])
        XCTAssertEqual(try RaggedArrayReader<Float>(try HDF5File.open(path).root, name: "maps").item(0).values, [0, 1, 2, 3, 4, 5])
        try expectError(path, item: 1, "corrupt index")
    }

    func testShapeDisagreeingWithOffsetsIsAnError() throws {
        try expectError(try raggedFile(offsets: [0, 4, 9], shapes: [2, 3, 5, 1]), item: 0, "do not hold its shape [2, 3]")
    }

    func testHugeShapeIsRefusedBeforeAllocating() throws {
        try expectError(try raggedFile(offsets: [0, 9], shapes: [1 << 40, 1 << 40]), item: 0, "larger than this reader's limit")
    }

    func testDatasetAboveTheReadLimitIsRefused() throws {
        let path = folder.appendingPathComponent("big.h5").path
        let file = try HDF5File.create(path)
        try file.root.write("x", [Float](repeating: 1, count: 1000))
        file.close()
        let saved = HDF5Limits.maxReadBytes
        HDF5Limits.maxReadBytes = 1000
        defer { HDF5Limits.maxReadBytes = saved }
        XCTAssertThrowsError(try HDF5File.open(path).root.read("x", as: Float.self)) { error in
            XCTAssertEqual("\(error)", "\(path): dataset '/x' of shape [1000] is larger than this reader's limit of 1000 bytes (corrupt file?)")
        }
    }
}
