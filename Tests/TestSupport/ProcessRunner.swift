import ArtifactStore
import Foundation

/// The one process runner of the test suites: runs an executable to completion and returns its
/// exit status, stdout and stderr (stderr is drained on its own thread so that neither pipe can
/// fill up and stall the child).
public enum ProcessRunner {
    public struct Result {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        /// stdout then stderr, for assertion messages.
        public var output: String { stdout + stderr }
    }

    private final class Box: @unchecked Sendable { var data = Data() }

    public static func run(_ executable: URL, _ arguments: [String], in folder: URL? = nil,
                           environment extra: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let folder { process.currentDirectoryURL = folder }
        if !extra.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 } }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let errors = Box()
        let reader = Thread { errors.data = err.fileHandleForReading.readDataToEndOfFile() }
        reader.start()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !reader.isFinished { usleep(1000) }
        return Result(status: process.terminationStatus, stdout: String(decoding: output, as: UTF8.self),
                      stderr: String(decoding: errors.data, as: UTF8.self))
    }
}

/// The random-weight EfficientNet-Lite0 stem fixture (Tests/Fixtures/make_stem_fixture.py).
public enum StemFixture {
    public static var path: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../EngineTests/Fixtures/stem.h5").standardized.path
    }

    /// The fixture's weights under the stem's tensor names ("stem.conv.weight", "blocks.0...").
    public static func tensors() throws -> [String: (shape: [Int], values: [Float])] {
        let root = try HDF5File.open(path).root
        var d: [String: (shape: [Int], values: [Float])] = [:]
        for group in ["stem"] + (0..<5).map({ "blocks/\($0)" }) {
            for name in try root.group(group).childNames() {
                let a = try root.read("\(group)/\(name)", as: Float.self)
                d["\(group)/\(name)".replacingOccurrences(of: "/", with: ".")] = (a.shape, a.values)
            }
        }
        return d
    }
}

/// The repository and the Python the tests run their reference scripts with: WSSS_PYTHON (which
/// `make test` sets to its venv), else the repository's .venv. Missing, the calling test fails
/// rather than passes silently.
public enum Repository {
    public static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    public static var python: String {
        get throws {
            let candidates: [String?] = [ProcessInfo.processInfo.environment["WSSS_PYTHON"], root.appendingPathComponent(".venv/bin/python").path]
            guard let found = candidates.compactMap({ $0 }).first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                throw StoreError(path: ".venv/bin/python", "no Python for the reference scripts: run `make test` (it creates the venv) or set WSSS_PYTHON")
            }
            return found
        }
    }
}
