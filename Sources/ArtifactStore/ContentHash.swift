import Crypto
import Foundation

public enum ContentHash {
    /// SHA-256 of a file's bytes (from byte `offset` on) as "sha256:<hex>", read in 4 MiB blocks.
    public static func ofFile(_ path: String, from offset: UInt64 = 0) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw StoreError(path: path, FileManager.default.fileExists(atPath: path) ? "cannot read file to hash it" : "no such file")
        }
        defer { try? handle.close() }
        if offset > 0 { try handle.seek(toOffset: offset) }
        var hasher = SHA256()
        while true {
            let block = try handle.read(upToCount: 4 << 20) ?? Data()
            if block.isEmpty { break }
            hasher.update(data: block)
        }
        return "sha256:" + hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    public static func ofBytes(_ data: Data) -> String {
        "sha256:" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }
}
