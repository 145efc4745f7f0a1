import Crypto
import Foundation

/// What one stage key produced and what the key was made of. Written last, after the outputs are
/// safely in the object store, so its presence means the outputs are complete.
public struct CacheEntry: Codable, Sendable {
    public struct Output: Codable, Sendable {
        public var hash: String
        public var size: Int64
    }

    public struct Origin: Codable, Sendable {
        public var pipeline: String
        public var stage: String
    }

    public var format = 1
    public var key: String
    public var run: String
    /// Content hash of the stage executable.
    public var executable: String
    public var params: [String: JSONValue]
    /// Input name -> content hash.
    public var inputs: [String: String]
    public var outputs: [String: Output]
    public var createdAt: String
    public var seconds: Double
    /// The pipeline stage that first made this entry (others may share it).
    public var madeBy: Origin
}

/// The last state of one stage of one pipeline file: the key it had and what the key was made of,
/// so the next status can say which part changed.
public struct StageRecord: Codable, Sendable {
    public struct Input: Codable, Sendable {
        public var hash: String
        /// "stage.output" or the path as written.
        public var source: String
    }

    public struct Output: Codable, Sendable {
        public var hash: String
        public var path: String
    }

    public var pipeline: String
    public var stage: String
    public var run: String
    public var key: String
    public var executable: String
    public var executablePath: String
    public var params: [String: JSONValue]
    public var inputs: [String: Input]
    public var outputs: [String: Output]
    public var updatedAt: String
    public var updatedAtNs: Int64
    /// "shard I/N" or "merge N" for the jobs of a sharded stage; absent for a whole stage.
    public var mode: String? = nil
}

public struct PipelineRecords: Codable, Sendable {
    public var pipeline: String
    public var stages: [String: StageRecord]
}

/// The parts of a stage key. The key covers the executable's content, the effective parameters
/// (defaults from `--describe` with the pipeline's values over them), the inputs' content hashes
/// and the output names; not the output paths, so identical stages of different pipelines share
/// one entry.
public struct KeyParts: Sendable {
    public var executable: String
    public var params: [String: JSONValue]
    public var inputs: [String: String]
    public var outputNames: [String]
    /// A sharded stage's job: "shard I/N" or "merge N" (nil, and not in the key, for a whole stage).
    public var mode: String? = nil

    public var key: String {
        var members: [String: JSONValue] = [
            "v": .int(1),
            "executable": .string(executable),
            "params": .object(params),
            "inputs": .object(inputs.mapValues { .string($0) }),
            "outputs": .array(outputNames.sorted().map { .string($0) }),
        ]
        if let mode { members["mode"] = .string(mode) }
        let object: JSONValue = .object(members)
        return SHA256.hash(data: Data(object.canonical.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}

func shortHash(_ hash: String) -> String {
    let hex = hash.hasPrefix("sha256:") ? hash.dropFirst(7) : Substring(hash)
    return String(hex.prefix(12))
}

func isoNow() -> String { ISO8601DateFormatter().string(from: Date()) }

extension JSONDecoder {
    static func decodeFile<T: Decodable>(_ type: T.Type, at path: String) -> T? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(type, from: data)
    }
}

func encodePretty<T: Encodable>(_ value: T) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(value)
}
