import Foundation
import TestSupport
import XCTest

/// A stage whose output does not fit ends with one error line naming the output and the cause,
/// exit status 1 (not a signal: HDF5's exit handler no longer closes the file whose close failed),
/// and nothing at the destination.
final class FullDiskStageTests: XCTestCase {
    func prepareData(_ folder: URL, dataset: String, sheet: String, shell prefix: String = "") throws -> ProcessRunner.Result {
        let stage = StageHarness.binFolder.appendingPathComponent("prepare-data").path
        // SIGXFSZ ignored in the shell stays ignored across exec: a write past the limit fails with EFBIG.
        return try ProcessRunner.run(URL(fileURLWithPath: "/bin/sh"), ["-c", prefix + "exec \"$0\" \"$@\"", stage,
            "--out", "dataset=\(dataset)", "--out", "contact_sheet=\(sheet)",
            "--param", "image_size=16", "--param", "train_count=8", "--param", "val_count=6"])
    }

    func expectOneErrorLine(_ result: ProcessRunner.Result, naming path: String, cause: String, line: UInt = #line) {
        XCTAssertEqual(result.status, 1, result.output, line: line)
        let errors = result.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors, ["error: prepare-data: \(path): cannot flush file: \(cause)"], result.stderr, line: line)
        XCTAssertFalse(result.output.contains("Signal") || result.output.contains("HDF5-DIAG"), result.output, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), line: line)
    }

    func testFileSizeLimit() throws {
        let folder = try StageHarness.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let dataset = folder.appendingPathComponent("d.h5").path
        // 64 blocks of 512 bytes: the contact sheet fits, the dataset does not.
        let result = try prepareData(folder, dataset: dataset, sheet: folder.appendingPathComponent("d.png").path,
                                     shell: "trap '' XFSZ; ulimit -f 64; ")
        expectOneErrorLine(result, naming: dataset, cause: "file too large")
    }

    /// Needs mount(2); skipped where that is not permitted.
    func testFullTmpfs() throws {
        let folder = try StageHarness.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let small = folder.appendingPathComponent("small")
        try FileManager.default.createDirectory(at: small, withIntermediateDirectories: true)
        let mount = try ProcessRunner.run(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=64k", "tmpfs", small.path])
        guard mount.status == 0 else { throw XCTSkip("cannot mount a tmpfs here (needs root and mount permission): \(mount.stderr)") }
        defer { _ = try? ProcessRunner.run(URL(fileURLWithPath: "/bin/umount"), [small.path]) }
        let dataset = small.appendingPathComponent("d.h5").path
        let result = try prepareData(folder, dataset: dataset, sheet: folder.appendingPathComponent("d.png").path)
        expectOneErrorLine(result, naming: dataset, cause: "no space left on device")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: small.path), [], "the partial file is deleted")
    }
}
