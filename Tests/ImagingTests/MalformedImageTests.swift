import Foundation
import TestSupport
import XCTest
@testable import Imaging

/// Regression tests for inputs the fuzz targets (Fuzz/, `make fuzz`) found or that their review
/// turned up: each must end in one `ImageError` that names the file, never a crash.
final class MalformedImageTests: TemporaryFolderTestCase {
    func file(_ name: String, base64: String) throws -> String {
        let path = folder.appendingPathComponent(name).path
        try XCTUnwrap(Data(base64Encoded: base64)).write(to: URL(fileURLWithPath: path))
        return path
    }

    func expectError(_ path: String, _ fragment: String, _ read: (String) throws -> Void, line: UInt = #line) {
        XCTAssertThrowsError(try read(path), line: line) { error in
            let text = String(describing: error)
            XCTAssertTrue(error is ImageError && text.hasPrefix(path + ": ") && text.contains(fragment), text, line: line)
            XCTAssertFalse(text.contains("\n"), "one line: \(text)", line: line)
        }
    }

    /// FuzzPNG crash 1: a grey+alpha PNG whose IHDR CRC is wrong. libpng refuses the header; the
    /// reader freed its `png_image` in the failing initializer and again in `deinit` (double free).
    func testCorruptHeaderFreesOnce() throws {
        let path = try file("fuzz-png-1.png",
            base64: "iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAQAAACi1Ej+/wAADUlEQVR4nGPg+i/CAAADUgEe05Q9iAAAAABJRU5ErkJggg==")
        for _ in 0..<3 {  // repeated: a freed struct reused by the allocator would show here too
            expectError(path, "corrupt PNG") { _ = try PNG.readRGB($0) }
            expectError(path, "corrupt PNG") { _ = try PNG.readGray($0) }
            expectError(path, "corrupt PNG") { _ = try PNG.readLabels($0) }
            expectError(path, "corrupt PNG") { _ = try ImageFile.readRGB($0) }
        }
    }

    /// A valid header declaring 1,000,000 x 1,000,000 RGB pixels (libpng's own limit) is refused
    /// before anything of that size is allocated.
    func testPNGDeclaringAHugeImageIsRefused() throws {
        let path = try file("huge.png", base64: "iVBORw0KGgoAAAANSUhEUgAPQkAAD0JACAIAAADTD68qAAAAC0lEQVR4nGNgQAUAABAAATm9j2UAAAAASUVORK5CYII=")
        expectError(path, "1000000 x 1000000 pixels is larger than the reader's limit") { _ = try PNG.readRGB($0) }
        expectError(path, "larger than the reader's limit") { _ = try PNG.readLabels($0) }
    }

    /// The same for a JPEG whose frame header says 60,000 x 60,000 (the test's grey seed, patched).
    func testJPEGDeclaringAHugeImageIsRefused() throws {
        let path = try file("huge.jpg", base64: "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA0JCgsKCA0LCgsODg0PEyAVExISEyccHhcgLikxMC4pLSwzOko+MzZGNywtQFdBRkxOUlNSMj5aYVpQYEpRUk//wAALCOpg6mABAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/AK1tY2glYQ+H1aMMdjNdBSR2JG04Ptk1o/YoP+hdi/8AAwf/ABFf/9k=")
        expectError(path, "60000 x 60000 pixels is larger than the reader's limit") { _ = try JPEG.readRGB($0) }
    }

    /// libjpeg's error_exit (a longjmp back into the shim) on a header cut short: one error, and
    /// the shim's cleanup runs once (repeated reads would trip over a double free or a leaked FILE).
    func testTruncatedJPEGHeaderReportsLibjpegMessage() throws {
        let whole = try file("whole.jpg", base64: "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA0JCgsKCA0LCgsODg0PEyAVExISEyccHhcgLikxMC4pLSwzOko+MzZGNywtQFdBRkxOUlNSMj5aYVpQYEpRUk//wAALCOpg6mABAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/AK1tY2glYQ+H1aMMdjNdBSR2JG04Ptk1o/YoP+hdi/8AAwf/ABFf/9k=")
        let cut = folder.appendingPathComponent("cut.jpg").path
        try Data(try Data(contentsOf: URL(fileURLWithPath: whole)).prefix(40)).write(to: URL(fileURLWithPath: cut))
        for _ in 0..<50 {
            expectError(cut, "cannot decode JPEG (") { _ = try JPEG.readRGB($0) }
        }
    }
}
