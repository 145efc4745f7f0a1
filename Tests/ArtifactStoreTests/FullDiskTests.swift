import Foundation
import TestSupport
import XCTest
@testable import ArtifactStore

/// An artifact write that runs out of room ends in one error line naming the file and the cause
/// (issue 15: "no space left on device"), and the process goes on using HDF5 afterwards without
/// touching the handles the failed write gave up.
final class FullDiskTests: TemporaryFolderTestCase {
    /// 1 MiB that does not compress, written uncompressed: far more than the room the tests leave.
    func writeLargeArtifact(to path: String) throws {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let bytes = (0..<(1 << 20)).map { _ -> UInt8 in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        let writer = try ArtifactWriter(path: path, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "full-disk test"))
        do {
            try writer.root.write("data", bytes, compression: .none)
            try writer.commit()
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// The message names the artifact's destination (not the temporary file it was written as).
    func expectOneLine(_ error: Error, naming path: String, cause: String, line: UInt = #line) {
        let text = String(describing: error)
        XCTAssertTrue(error is StoreError, "\(type(of: error)): \(text)", line: line)
        XCTAssertTrue(text.hasPrefix(path + ": "), "names the file: \(text)", line: line)
        XCTAssertTrue(text.hasSuffix(": " + cause), "ends with the cause: \(text)", line: line)
        XCTAssertFalse(text.contains("\n"), "one line: \(text)", line: line)
    }

    /// HDF5 still works after the failure: a new artifact elsewhere writes and reads back.
    func expectHDF5StillWorks(line: UInt = #line) throws {
        let path = folder.appendingPathComponent("after.h5").path
        let writer = try ArtifactWriter(path: path, provenance: Provenance(kind: .cams, formatVersion: 1, producer: "t"))
        try writer.root.write("x", [Int32(1), 2, 3])
        try writer.commit()
        XCTAssertEqual(try ArtifactReader(path: path, kind: .cams).root.read("x", as: Int32.self).values, [1, 2, 3], line: line)
    }

    /// A real full disk: a 256 KiB tmpfs. Needs mount(2) (root outside a restricted container);
    /// skipped where that is not permitted. The file-size-limit test below runs everywhere.
    func testFullTmpfsSaysNoSpaceLeftOnDevice() throws {
        let mountPoint = folder.appendingPathComponent("small")
        try FileManager.default.createDirectory(at: mountPoint, withIntermediateDirectories: true)
        guard run("/bin/mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", mountPoint.path]) == 0 else {
            throw XCTSkip("cannot mount a tmpfs here (needs root and mount permission)")
        }
        defer { _ = run("/bin/umount", [mountPoint.path]) }
        let destination = mountPoint.appendingPathComponent("a.h5").path
        XCTAssertThrowsError(try writeLargeArtifact(to: destination)) { error in
            expectOneLine(error, naming: destination, cause: "no space left on device")
        }
        // Nothing is left behind that looks like a result, and the partial file is gone.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: mountPoint.path), [])
        try expectHDF5StillWorks()
    }

    /// The same failure through a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it
    /// fail with EFBIG), which needs no privileges; the limit is restored afterwards.
    func testFileSizeLimitSaysFileTooLarge() throws {
        var saved = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved)
        let previousHandler = signal(SIGXFSZ, SIG_IGN)
        var limited = saved
        limited.rlim_cur = 128 << 10
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &limited), 0)
        var failure: Error?
        do { try writeLargeArtifact(to: folder.appendingPathComponent("b.h5").path) } catch { failure = error }
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved)
        signal(SIGXFSZ, previousHandler)
        let error = try XCTUnwrap(failure, "the write should have failed")
        expectOneLine(error, naming: folder.appendingPathComponent("b.h5").path, cause: "file too large")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder.appendingPathComponent("b.h5").path))
        try expectHDF5StillWorks()
    }

    func run(_ tool: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
