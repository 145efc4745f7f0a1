import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The folder a pipeline's relative paths are resolved against, and its cache:
///
///     Artifacts/.cache/objects/ab/cdef...   content-addressed outputs (read-only)
///     Artifacts/.cache/entries/<key>.json   what one stage key produced, and from what
///     Artifacts/.cache/records/<pipeline>.json  per pipeline: the last key of each stage
///     Artifacts/.cache/describe/<hash>.json  `--describe` output per executable content
///     Artifacts/.cache/hashes.json          the hash memory
///     Artifacts/.cache/tmp/                 running stages' outputs before they are stored
///     Artifacts/.cache/lock                 held by a running `wsss run` or `wsss gc`
public struct Workspace: Sendable {
    public let root: String

    public init(root: String) {
        self.root = URL(fileURLWithPath: root).standardizedFileURL.path
    }

    /// `explicit` if given; else the nearest folder holding `Pipelines/` above the pipeline file,
    /// then above the current directory; else the current directory.
    public static func locate(explicit: String?, pipelineFile: String?, currentDirectory: String = FileManager.default.currentDirectoryPath) -> Workspace {
        if let explicit { return Workspace(root: absolute(explicit, base: currentDirectory)) }
        func search(from start: String) -> String? {
            var folder = URL(fileURLWithPath: start).standardizedFileURL
            while true {
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: folder.appendingPathComponent("Pipelines").path, isDirectory: &isDirectory), isDirectory.boolValue {
                    return folder.path
                }
                let parent = folder.deletingLastPathComponent()
                if parent.path == folder.path { return nil }
                folder = parent
            }
        }
        if let pipelineFile {
            let folder = (absolute(pipelineFile, base: currentDirectory) as NSString).deletingLastPathComponent
            if let found = search(from: folder) { return Workspace(root: found) }
        }
        return Workspace(root: search(from: currentDirectory) ?? currentDirectory)
    }

    public var cache: String { root + "/Artifacts/.cache" }
    var objectsDir: String { cache + "/objects" }
    var entriesDir: String { cache + "/entries" }
    var recordsDir: String { cache + "/records" }
    var describeDir: String { cache + "/describe" }
    var tmpDir: String { cache + "/tmp" }
    var hashMemoryFile: String { cache + "/hashes.json" }
    var lockFile: String { cache + "/lock" }

    public func path(_ relative: String) -> String {
        Self.absolute(relative, base: root)
    }

    /// A path as shown to the user: relative to the workspace when inside it.
    public func display(_ path: String) -> String {
        path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : path
    }

    static func absolute(_ path: String, base: String) -> String {
        let url = path.hasPrefix("/") ? URL(fileURLWithPath: path) : URL(fileURLWithPath: base).appendingPathComponent(path)
        return url.standardizedFileURL.path
    }

    func objectPath(_ hash: String) -> String {
        let hex = hash.hasPrefix("sha256:") ? String(hash.dropFirst(7)) : hash
        return objectsDir + "/" + hex.prefix(2) + "/" + hex.dropFirst(2)
    }

    func entryPath(_ key: String) -> String { entriesDir + "/" + key + ".json" }

    /// One records file per pipeline file, named after its path inside the workspace.
    func recordsPath(pipelineFile absolutePath: String) -> String {
        let shown = display(absolutePath)
        let escaped = shown.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." ? String($0) : "_" }.joined()
        return recordsDir + "/" + escaped + ".json"
    }
}

/// A wait for the workspace lock ended by `stopWaiting` (nothing was run or written).
public struct WorkspaceLockAbandoned: Error, CustomStringConvertible {
    public var description: String { "stopped while waiting for the workspace; nothing ran" }
}

/// An exclusive lock on a workspace's cache (flock: released by the kernel when the holder dies,
/// so a killed run never leaves a stale lock behind).
public final class WorkspaceLock {
    private let fd: Int32

    public enum Wait: Sendable { case wait, refuse }

    /// Takes the lock; when another run holds it, says who and then waits or refuses. While
    /// waiting it polls, so that `stopWaiting` (e.g. a Ctrl-C seen by a signal source, which
    /// leaves a blocking flock asleep) ends the wait with `WorkspaceLockAbandoned`.
    public init(_ workspace: Workspace, purpose: String, wait: Wait, stopWaiting: () -> Bool = { false },
                notify: (String) -> Void) throws {
        try FileManager.default.createDirectory(atPath: workspace.cache, withIntermediateDirectories: true)
        fd = open(workspace.lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RunnerError("\(workspace.lockFile): cannot open lock file: \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let holder = (try? String(contentsOfFile: workspace.lockFile, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            let who = holder.isEmpty ? "another wsss process" : holder
            switch wait {
            case .refuse:
                close(fd)
                throw RunnerError("workspace \(workspace.root) is in use by \(who); try again when it has finished")
            case .wait:
                notify("wsss: workspace is in use by \(who); waiting for it to finish (--no-wait refuses instead)")
                while flock(fd, LOCK_EX | LOCK_NB) != 0 {
                    guard errno == EWOULDBLOCK || errno == EINTR else {
                        close(fd)
                        throw RunnerError("\(workspace.lockFile): cannot lock: \(String(cString: strerror(errno)))")
                    }
                    if stopWaiting() {
                        close(fd)
                        throw WorkspaceLockAbandoned()
                    }
                    usleep(100_000)
                }
            }
        }
        let note = "wsss \(purpose) (pid \(getpid()), since \(ISO8601DateFormatter().string(from: Date())))\n"
        ftruncate(fd, 0)
        _ = note.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    deinit {
        ftruncate(fd, 0)
        flock(fd, LOCK_UN)
        close(fd)
    }
}
