import Foundation
import XCTest
@testable import ArtifactStore

/// The same content written twice must give the same bytes: the runner's cache compares outputs
/// by content hash, and a rerun that differs only in a timestamp would rerun everything after it.
final class ReproducibleBytesTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("reproducible-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Groups, nested dataset paths, a streamed dataset and attributes: every kind of object HDF5
    /// would otherwise stamp with its creation time (in whole seconds).
    func writeSample(_ name: String) throws {
        let writer = try ArtifactWriter(path: path(name), provenance: Provenance(
            kind: .cams, formatVersion: 1, producer: "test 1", paramsJSON: #"{"a":1}"#,
            inputs: ["dataset": "sha256:00"], createdAt: "2026-01-01T00:00:00Z"))
        let group = try writer.root.createGroup("weights")
        try group.write("m/blocks.0.weight", (0..<1000).map { Float($0) }, shape: [10, 100])
        try group.setAttribute("step", Int64(7))
        let rows = try AppendableDataset<Float>(in: writer.root, name: "rows", rowShape: [16])
        try rows.append((0..<64).map { Float($0) })
        try writer.root.setAttribute("note", "same every time")
        try writer.commit()
    }

    func testSameContentWrittenInDifferentSecondsHasTheSameBytes() throws {
        try writeSample("a.h5")
        // HDF5 object times have whole-second resolution: write the copy in a later second.
        let second = time(nil)
        while time(nil) == second { usleep(10_000) }
        try writeSample("b.h5")
        XCTAssertEqual(try ContentHash.ofFile(path("a.h5")), try ContentHash.ofFile(path("b.h5")))
    }

    func testCreatedAtComesFromSourceDateEpoch() throws {
        XCTAssertEqual(Provenance.creationTime(environment: ["SOURCE_DATE_EPOCH": "0"]), "1970-01-01T00:00:00Z")
        XCTAssertEqual(Provenance.creationTime(environment: ["SOURCE_DATE_EPOCH": "1767225600"]), "2026-01-01T00:00:00Z")
        let now = try XCTUnwrap(ISO8601DateFormatter().date(from: Provenance.creationTime(environment: [:])))
        XCTAssertLessThan(abs(now.timeIntervalSinceNow), 3600, "without SOURCE_DATE_EPOCH it is the current time")
        XCTAssertThrowsError(try Provenance.sourceDateEpoch(environment: ["SOURCE_DATE_EPOCH": "yesterday"])) { error in
            XCTAssertEqual("\(error)", "SOURCE_DATE_EPOCH: 'yesterday' is not a whole number of seconds since 1970")
        }
    }

    // MARK: Placing outputs together

    func write(_ text: String, _ file: PendingFile) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: file.temporaryPath))
    }

    func contents(_ name: String) -> String? {
        FileManager.default.contents(atPath: path(name)).map { String(decoding: $0, as: UTF8.self) }
    }

    func hiddenFiles() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasPrefix(".") }
    }

    func testAnOutputSetAppearsWhole() throws {
        try Data("old".utf8).write(to: URL(fileURLWithPath: path("first.txt")))
        let set = OutputSet()
        let first = PendingFile(destination: path("first.txt")), second = PendingFile(destination: path("second.txt"))
        set.adopt(first)
        set.adopt(second)
        try write("new", first)
        try write("two", second)
        try first.commit()  // only finishes it: the set places it
        XCTAssertEqual(contents("first.txt"), "old")
        try set.commit()
        XCTAssertEqual(contents("first.txt"), "new")
        XCTAssertEqual(contents("second.txt"), "two")
        XCTAssertEqual(try hiddenFiles(), [])
    }

    func testAFailureWhilePlacingPutsBackWhatWasThere() throws {
        try Data("old first".utf8).write(to: URL(fileURLWithPath: path("first.txt")))
        // The third output cannot be placed: a folder is in its way.
        try FileManager.default.createDirectory(atPath: path("third.txt"), withIntermediateDirectories: false)
        let files = ["first.txt", "second.txt", "third.txt"].map { PendingFile(destination: path($0)) }
        let set = OutputSet()
        for file in files {
            set.adopt(file)
            try write("new", file)
        }
        XCTAssertThrowsError(try set.commit()) { error in
            XCTAssertEqual("\(error)", "\(path("third.txt")): cannot move finished output into place: Is a directory; "
                           + "the outputs already placed were put back as they were")
        }
        XCTAssertEqual(contents("first.txt"), "old first", "the first output's previous content is back")
        XCTAssertNil(contents("second.txt"), "an output that did not exist before does not exist after")
        XCTAssertEqual(try hiddenFiles(), [], "no temporary or previous file is left")
    }

    func testOneDestinationForTwoFilesIsRefusedAndNothingIsWritten() throws {
        let set = OutputSet()
        let first = PendingFile(destination: path("same.txt")), second = PendingFile(destination: path("./same.txt"))
        set.adopt(first)
        try write("one", first)
        set.adopt(second)
        XCTAssertThrowsError(try set.commit()) { error in
            XCTAssertEqual("\(error)", "\(path("./same.txt")): is the destination of two outputs; each output needs its own file")
        }
        XCTAssertNil(contents("same.txt"))
        XCTAssertEqual(try hiddenFiles(), [])
    }
}
