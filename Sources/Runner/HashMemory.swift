import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What `stat` says about a file, as far as change detection needs it.
public struct FileStamp: Codable, Equatable, Sendable {
    public var size: Int64
    public var mtimeNs: Int64
    public var ctimeNs: Int64
    public var inode: UInt64
    public var device: UInt64
    public var isRegular: Bool
    public var isDirectory: Bool

    public static func of(_ path: String) -> FileStamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let kind = info.st_mode & S_IFMT
        return FileStamp(
            size: Int64(info.st_size),
            mtimeNs: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
            ctimeNs: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec),
            inode: UInt64(info.st_ino), device: UInt64(info.st_dev),
            isRegular: kind == S_IFREG, isDirectory: kind == S_IFDIR)
    }

    /// Same file object (hard links of one inode).
    public func sameFile(as other: FileStamp) -> Bool { inode == other.inode && device == other.device }
}

public func nowNanoseconds() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
}

/// Content hashes of files, remembered by (path, size, mtime, ctime, inode, device) so unchanged
/// large files are not read again. A memory is trusted only when every one of those still matches
/// and the file's last change was at least `racyMargin` before the hash was taken: a file written
/// in the same timestamp tick as our hashing could change again without its stamp changing (the
/// "racy clean" problem git solves the same way). ctime cannot be set from user space, so
/// restoring an mtime after an edit (`touch -r`, `cp -p`) does not fool it either.
public final class HashMemory {
    struct Entry: Codable {
        var stamp: FileStamp
        var hash: String
        var hashedAtNs: Int64
    }

    public static let defaultRacyMarginNs: Int64 = 1_000_000_000
    /// How long after a file's last change its hash is trusted (tests shorten it to stay quick).
    public var racyMarginNs = HashMemory.defaultRacyMarginNs

    let file: String
    private var entries: [String: Entry] = [:]
    private var dirty = false
    private let lock = NSLock()
    /// Files actually read, and bytes hashed, during this process (for the closing report).
    public private(set) var filesHashed = 0
    public private(set) var bytesHashed: Int64 = 0
    public private(set) var secondsHashing = 0.0

    public init(file: String) {
        self.file = file
        if let data = FileManager.default.contents(atPath: file),
           let loaded = try? JSONDecoder().decode([String: Entry].self, from: data) {
            entries = loaded
        }
    }

    /// Content hash ("sha256:<hex>") of a regular file at an absolute path.
    public func hash(of path: String) throws -> String {
        guard let before = FileStamp.of(path) else { throw RunnerError("\(path): no such file") }
        if before.isDirectory { return try hashDirectory(path) }
        guard before.isRegular else { throw RunnerError("\(path): not a regular file") }
        lock.lock()
        if let entry = entries[path], entry.stamp == before,
           entry.hashedAtNs - max(before.mtimeNs, before.ctimeNs) >= racyMarginNs {
            lock.unlock()
            return entry.hash
        }
        lock.unlock()
        let startedAt = nowNanoseconds()
        let clock = Date()
        let hash = try Self.sha256(ofFile: path)
        let seconds = Date().timeIntervalSince(clock)
        lock.lock()
        defer { lock.unlock() }
        filesHashed += 1
        bytesHashed += before.size
        secondsHashing += seconds
        // Remember only if nothing changed while we read it.
        if FileStamp.of(path) == before {
            entries[path] = Entry(stamp: before, hash: hash, hashedAtNs: startedAt)
            dirty = true
        }
        return hash
    }

    /// A folder's hash: over its files' relative paths and content hashes, in path order.
    func hashDirectory(_ path: String) throws -> String {
        guard let walker = FileManager.default.enumerator(atPath: path) else { throw RunnerError("\(path): cannot list folder") }
        var files: [String] = []
        while let relative = walker.nextObject() as? String {
            if FileStamp.of(path + "/" + relative)?.isRegular == true { files.append(relative) }
        }
        var hasher = SHA256()
        for relative in files.sorted() {
            hasher.update(data: Data("\(relative)\0\(try hash(of: path + "/" + relative))\n".utf8))
        }
        return "sha256:" + hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Records a hash the caller has just computed from the bytes (e.g. while storing an output).
    func remember(_ path: String, hash: String, stamp: FileStamp, hashedAtNs: Int64) {
        lock.lock()
        defer { lock.unlock() }
        entries[path] = Entry(stamp: stamp, hash: hash, hashedAtNs: hashedAtNs)
        dirty = true
    }

    func forget(_ path: String) {
        lock.lock()
        defer { lock.unlock() }
        if entries.removeValue(forKey: path) != nil { dirty = true }
    }

    /// Drops memories of files that are gone; returns how many.
    func prune() -> Int {
        lock.lock()
        defer { lock.unlock() }
        let gone = entries.keys.filter { FileStamp.of($0) == nil }
        for path in gone { entries.removeValue(forKey: path) }
        if !gone.isEmpty { dirty = true }
        return gone.count
    }

    public func save() throws {
        lock.lock()
        defer { lock.unlock() }
        guard dirty else { return }
        try writeAtomically(try JSONEncoder().encode(entries), to: file)
        dirty = false
    }

    /// SHA-256 of a file, read with read(2) into one reused buffer. (Not mmap: a file truncated
    /// by someone else while mapped would kill the process with SIGBUS.)
    public static func sha256(ofFile path: String) throws -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw RunnerError("\(path): cannot open to hash it: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let capacity = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
        defer { buffer.deallocate() }
        var hasher = SHA256()
        while true {
            let count = read(fd, buffer.baseAddress, capacity)
            if count < 0 {
                if errno == EINTR { continue }
                throw RunnerError("\(path): read failed while hashing: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return "sha256:" + hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

/// A runner failure that is not a pipeline-file problem: one line, naming the file concerned.
public struct RunnerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Writes `data` beside `path` and renames it into place, so readers see the old or the new file.
func writeAtomically(_ data: Data, to path: String) throws {
    let folder = (path as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let temporary = folder + "/." + (path as NSString).lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    guard FileManager.default.createFile(atPath: temporary, contents: data) else {
        throw RunnerError("\(temporary): cannot write")
    }
    guard rename(temporary, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(temporary)
        throw RunnerError("\(path): cannot move into place: \(reason)")
    }
}
