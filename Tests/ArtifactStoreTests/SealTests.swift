import Foundation
import TestSupport
import XCTest
@testable import ArtifactStore

/// Every file this project writes is sealed (length and SHA-256 in its user block); damage of any
/// kind is refused by `HDF5File.open` with one message naming the file, before libhdf5 reads it.
final class SealTests: TemporaryFolderTestCase {
    func writeArtifact(_ name: String) throws -> Data {
        let writer = try ArtifactWriter(path: path(name), provenance: Provenance(kind: .cams, formatVersion: 1, producer: "seal test"))
        try writer.root.write("maps", (0..<4096).map { Float($0) }, shape: [64, 64])
        try writer.root.setAttribute("note", "sealed")
        try writer.commit()
        return try Data(contentsOf: URL(fileURLWithPath: path(name)))
    }

    func expectRefused(_ bytes: Data, _ name: String, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try bytes.write(to: URL(fileURLWithPath: path(name)))
        XCTAssertThrowsError(try HDF5File.open(path(name)), file: file, line: line) { error in
            XCTAssertEqual("\(error)", "\(self.path(name)): \(message)", file: file, line: line)
        }
    }

    func testAWrittenArtifactIsSealedAndReadsBack() throws {
        let bytes = try writeArtifact("a.h5")
        XCTAssertTrue(bytes.starts(with: Data(Seal.magic.utf8)))
        let record = try XCTUnwrap(try Seal.read(path("a.h5")))
        XCTAssertEqual(record.length, UInt64(bytes.count))
        XCTAssertEqual(record.digest, ContentHash.ofBytes(bytes.dropFirst(Seal.blockSize)))
        XCTAssertTrue(try Seal.verify(path("a.h5")))
        let reader = try ArtifactReader(path: path("a.h5"), kind: .cams)
        XCTAssertEqual(try reader.root.read("maps", as: Float.self).values.last, 4095)
    }

    func testEveryChangedByteIsRefused() throws {
        let bytes = try writeArtifact("a.h5")
        // Bytes across the whole file after the seal: superblock, object headers, heaps, chunk data.
        let step = max(1, (bytes.count - Seal.blockSize) / 97)
        for offset in stride(from: Seal.blockSize, to: bytes.count, by: step) {
            var damaged = bytes
            damaged[offset] ^= 0x01
            try expectRefused(damaged, "flip-\(offset).h5", "HDF5 file is damaged: its bytes no longer match the checksum it was written with")
        }
    }

    func testTruncatedExtendedAndBadSealAreNamed() throws {
        let bytes = try writeArtifact("a.h5")
        try expectRefused(bytes.prefix(bytes.count - 1), "short.h5", "HDF5 file is truncated: \(bytes.count - 1) of the \(bytes.count) bytes it was written with")
        try expectRefused(bytes.prefix(Seal.blockSize), "block.h5", "HDF5 file is truncated: \(Seal.blockSize) of the \(bytes.count) bytes it was written with")
        try expectRefused(bytes + Data([0, 1, 2]), "long.h5", "HDF5 file is damaged: 3 bytes were appended after it was written")
        for offset in [Seal.magic.utf8.count + 8, Seal.magic.utf8.count + 30, 200, Seal.blockSize - 1] {
            var damaged = bytes
            damaged[offset] = UInt8(ascii: "Z")
            try expectRefused(damaged, "seal-\(offset).h5", "HDF5 file is damaged: its seal (the checksum block at its start) is unreadable")
        }
    }

    /// Files without a seal (h5py's, older builds') open as before.
    func testUnsealedFilesStillOpen() throws {
        let file = try HDF5File.create(path("plain.h5"))
        try file.root.write("x", [Float(1), 2, 3], shape: [3])
        try file.flush()
        file.discard()
        XCTAssertFalse(try Seal.verify(path("plain.h5")))
        XCTAssertEqual(try HDF5File.open(path("plain.h5")).root.read("x", as: Float.self).values, [1, 2, 3])
    }

    /// A sealed file opened for writing and changed is sealed again when closed.
    func testChangedInPlaceIsResealed() throws {
        let before = try writeArtifact("a.h5")
        let file = try HDF5File.open(path("a.h5"), writable: true)
        try file.root.setAttribute("note", "changed")
        try file.closeChecked()
        let after = try Data(contentsOf: URL(fileURLWithPath: path("a.h5")))
        XCTAssertNotEqual(before, after)
        XCTAssertEqual(try Seal.read(path("a.h5"))?.digest, ContentHash.ofBytes(after.dropFirst(Seal.blockSize)))
        XCTAssertEqual(try HDF5File.open(path("a.h5")).root.stringAttribute("note"), "changed")
    }
}
