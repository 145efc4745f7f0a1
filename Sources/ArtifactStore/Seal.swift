import Foundation

/// Every HDF5 file this project writes starts with a 512-byte user block (HDF5 skips it: h5py and
/// the HDF5 tools read the file as usual) that records the file's length and the SHA-256 of the
/// bytes after the block. Opening a sealed file checks both before libhdf5 reads a byte of it:
/// HDF5 1.10 can crash inside itself on damaged metadata (README "Fuzzing"), so a truncated,
/// bit-flipped or overwritten artifact must be refused before it gets there. A file without a
/// seal (written by h5py, or by an older build) is opened as before. The seal guards against
/// damage, not against a file crafted to carry a valid seal.
public enum Seal {
    /// The user block's size; HDF5 requires a power of two of at least 512.
    public static let blockSize = 512
    public static let magic = "WSSS sealed HDF5 v1\n"

    struct Record: Equatable {
        var length: UInt64
        var digest: String
    }

    /// Writes the seal of the finished (closed) HDF5 file at `path`, created with the user block.
    public static func write(_ path: String, displayAs: String? = nil) throws {
        let shown = displayAs ?? path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              let length = (attributes[.size] as? NSNumber)?.uint64Value, length >= UInt64(blockSize) else {
            throw StoreError(path: shown, "cannot seal: the file is missing or shorter than its \(blockSize)-byte user block")
        }
        let digest = try ContentHash.ofFile(path, from: UInt64(blockSize))
        var block = Array("\(magic)length \(length)\n\(digest)\n".utf8)
        block += [UInt8](repeating: 0, count: blockSize - block.count)
        let descriptor = Foundation.open(path, O_WRONLY)
        guard descriptor >= 0 else { throw StoreError(path: shown, "cannot seal: \(String(cString: strerror(errno)))") }
        defer { Foundation.close(descriptor) }
        let written = block.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, blockSize, 0) }
        guard written == blockSize else {
            throw StoreError(path: shown, "cannot seal: \(written < 0 ? String(cString: strerror(errno)) : "short write")")
        }
        remember(path)
    }

    /// Whether `path` carries a seal; throws when it does and the file does not match it.
    @discardableResult
    public static func verify(_ path: String) throws -> Bool {
        guard let record = try read(path) else { return false }
        if isRemembered(path) { return true }
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              let length = (attributes[.size] as? NSNumber)?.uint64Value else {
            throw StoreError(path: path, "cannot read the file's size")
        }
        if length < record.length {
            throw StoreError(path: path, "HDF5 file is truncated: \(length) of the \(record.length) bytes it was written with")
        }
        if length > record.length {
            throw StoreError(path: path, "HDF5 file is damaged: \(length - record.length) bytes were appended after it was written")
        }
        guard try ContentHash.ofFile(path, from: UInt64(blockSize)) == record.digest else {
            throw StoreError(path: path, "HDF5 file is damaged: its bytes no longer match the checksum it was written with")
        }
        remember(path)
        return true
    }

    /// The seal at the start of `path`, nil when the file has none; throws for a damaged seal.
    static func read(_ path: String) throws -> Record? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let head = try? handle.read(upToCount: blockSize), head.count == blockSize,
              head.starts(with: Data(magic.utf8)) else { return nil }
        let text = String(decoding: head.prefix { $0 != 0 }, as: UTF8.self)
        let lines = text.dropFirst(magic.count).split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 2, lines[0].hasPrefix("length "), let length = UInt64(lines[0].dropFirst(7)),
              lines[1].hasPrefix("sha256:"), lines[1].count == 71,
              lines[1].dropFirst(7).allSatisfy({ $0.isHexDigit && !$0.isUppercase }),
              head.dropFirst(text.utf8.count).allSatisfy({ $0 == 0 }) else {
            throw StoreError(path: path, "HDF5 file is damaged: its seal (the checksum block at its start) is unreadable")
        }
        return Record(length: length, digest: String(lines[1]))
    }

    /// Files sealed or verified by this process, by identity (device, inode, size, modification
    /// time): a stage or the runner opening one artifact many times hashes it once; a file changed
    /// since is checked again. Off where one file is rewritten faster than the clock that stamps it
    /// ticks (the fuzz targets).
    nonisolated(unsafe) public static var remembersVerifiedFiles = true
    nonisolated(unsafe) private static var checked: Set<String> = []
    private static let lock = NSLock()

    private static func identity(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return "\(info.st_dev):\(info.st_ino):\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
    }

    private static func remember(_ path: String) {
        guard remembersVerifiedFiles, let key = identity(path) else { return }
        lock.withLock { _ = checked.insert(key) }
    }

    private static func isRemembered(_ path: String) -> Bool {
        guard remembersVerifiedFiles, let key = identity(path) else { return false }
        return lock.withLock { checked.contains(key) }
    }
}
