import Foundation
import TestSupport
import XCTest
@testable import ArtifactStore

/// Files we write open in h5py + hdf5plugin with identical values, and files h5py writes with
/// hdf5plugin's zstd open here. `make test` provides the Python (WSSS_PYTHON, a venv with h5py and
/// hdf5plugin); without it these tests fail rather than pass silently.
final class H5pyInteropTests: XCTestCase {
    static let packageRoot = Repository.root
    var python: String { get throws { try Repository.python } }

    func runScript(_ arguments: [String]) throws -> String {
        let result = try ProcessRunner.run(URL(fileURLWithPath: try python),
                                           [Self.packageRoot.appendingPathComponent("Scripts/h5_interop.py").path] + arguments)
        XCTAssertEqual(result.status, 0, result.output)
        return result.output
    }

    func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("interop-\(UUID().uuidString)-\(name)").path
    }

    /// The same arrays Scripts/h5_interop.py builds from the same formulas.
    static func expectedArrays() -> (u8: [UInt8], i32: [Int32], i64: [Int64], f32: [Float]) {
        ((0..<300_000).map { UInt8($0 * 7 % 256) },
         (0..<120_000).map { Int32($0) - 60_000 },
         (0..<70_000).map { Int64($0) * 1_000_000_007 },
         (0..<90_000).map { Float(sin(Double($0))) })
    }

    func testH5pyReadsWhatWeWrite() throws {
        let path = temporaryPath("ours.h5")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let arrays = Self.expectedArrays()
        let writer = try ArtifactWriter(path: path, provenance: Provenance(
            kind: .dataset, formatVersion: 1, producer: "interop-test",
            paramsJSON: #"{"name":"ümlaut","seed":7}"#, inputs: ["source": "sha256:00"]))
        try writer.root.write("u8", arrays.u8, shape: [300, 1000])
        try writer.root.write("i32", arrays.i32, shape: [2, 60, 1000])
        try writer.root.write("i64", arrays.i64)
        try writer.root.write("f32", arrays.f32, shape: [90, 1000], compression: .zstd(level: 9))
        try writer.root.write("f16", arrays.f32, shape: [90, 1000], storage: .float16)
        try writer.commit()
        XCTAssertTrue(try runScript(["check", path]).contains("h5py-check-ok"))
    }

    func testWeReadWhatH5pyWrites() throws {
        let path = temporaryPath("theirs.h5")
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertTrue(try runScript(["write", path]).contains("h5py-write-ok"))
        XCTAssertFalse(try Seal.verify(path))
        try checkWhatH5pyWrote(path)
    }

    /// Scripts/pretrained_files.py seals what it writes (the pretrained weights) as the store does.
    func testFilesH5pySealsVerifyHere() throws {
        let path = temporaryPath("sealed.h5")
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertTrue(try runScript(["write-sealed", path]).contains("h5py-write-ok"))
        XCTAssertTrue(try Seal.verify(path))
        try checkWhatH5pyWrote(path)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count / 2] ^= 0x40
        let damaged = temporaryPath("sealed-damaged.h5")
        defer { try? FileManager.default.removeItem(atPath: damaged) }
        try bytes.write(to: URL(fileURLWithPath: damaged))
        XCTAssertThrowsError(try ArtifactReader(path: damaged, kind: .dataset)) { error in
            XCTAssertEqual("\(error)", "\(damaged): HDF5 file is damaged: its bytes no longer match the checksum it was written with")
        }
    }

    func checkWhatH5pyWrote(_ path: String) throws {
        let reader = try ArtifactReader(path: path, kind: .dataset)
        let arrays = Self.expectedArrays()
        let root = reader.root
        XCTAssertEqual(try root.filters(of: "u8"), [zstdFilterID])
        XCTAssertEqual(try root.read("u8", as: UInt8.self).values, arrays.u8)
        XCTAssertEqual(try root.read("i32", as: Int32.self).shape, [2, 60, 1000])
        XCTAssertEqual(try root.read("i32", as: Int32.self).values, arrays.i32)
        XCTAssertEqual(try root.read("i64", as: Int64.self).values, arrays.i64)
        XCTAssertEqual(try root.read("f32", as: Float.self).values, arrays.f32)
        let half = try root.read("f16", as: Float.self).values
        XCTAssertEqual(half, arrays.f32.map { Float(Float16($0)) })
        XCTAssertEqual(reader.provenance.producer, "h5py")
        XCTAssertEqual(reader.params["seed"] as? Int, 7)
        XCTAssertEqual(try root.stringAttribute("fixed"), "fixed-length")
        XCTAssertEqual(try root.doublesAttribute("int_list"), [127, 127, 127])
        XCTAssertEqual(try root.doublesAttribute("float_list"), [0.5, 1.5])
        XCTAssertEqual(try root.doublesAttribute("int_scalar"), [8])
        XCTAssertThrowsError(try root.doublesAttribute("fixed"))
    }
}
