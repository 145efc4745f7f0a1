import Foundation

/// What an artifact holds. Stages open inputs by the kind they expect.
public struct ArtifactKind: RawRepresentable, Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { rawValue = value }
    public var description: String { rawValue }

    public static let dataset: ArtifactKind = "dataset"
    public static let checkpoint: ArtifactKind = "checkpoint"
    public static let attention: ArtifactKind = "attention"
    public static let cams: ArtifactKind = "cams"
    public static let labels: ArtifactKind = "labels"
    public static let predictions: ArtifactKind = "predictions"
    public static let metrics: ArtifactKind = "metrics"
}

/// Root attributes every artifact carries: what it is and exactly what made it.
public struct Provenance: Equatable, Sendable {
    public var kind: ArtifactKind
    public var formatVersion: Int
    /// Stage name and version, e.g. "prepare-data 0.1.0".
    public var producer: String
    /// Parameters as canonical JSON text (sorted keys).
    public var paramsJSON: String
    /// Input name -> content hash ("sha256:<hex>").
    public var inputs: [String: String]
    public var createdAt: String

    public init(kind: ArtifactKind, formatVersion: Int, producer: String, paramsJSON: String = "{}",
                inputs: [String: String] = [:], createdAt: String? = nil) {
        self.kind = kind
        self.formatVersion = formatVersion
        self.producer = producer
        self.paramsJSON = paramsJSON
        self.inputs = inputs
        self.createdAt = createdAt ?? Provenance.creationTime()
    }

    /// `created_at` for a new artifact: the time `SOURCE_DATE_EPOCH` names (whole seconds since
    /// 1970, the reproducible-builds convention; `wsss` sets it for every stage it runs, see
    /// `Runner.sourceDateEpoch`), so that a rerun with the same inputs writes the same bytes;
    /// else the current time (a stage run by hand).
    public static func creationTime(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let date = (try? sourceDateEpoch(environment: environment)).flatMap { $0 } ?? Date()
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    /// The date `SOURCE_DATE_EPOCH` names; nil when it is unset or empty; an error when it is not
    /// a whole number of seconds (the convention says to refuse rather than guess).
    public static func sourceDateEpoch(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Date? {
        guard let text = environment["SOURCE_DATE_EPOCH"], !text.isEmpty else { return nil }
        guard let seconds = Int64(text), seconds >= 0 else {
            throw StoreError(path: "SOURCE_DATE_EPOCH", "'\(text)' is not a whole number of seconds since 1970")
        }
        return Date(timeIntervalSince1970: TimeInterval(seconds))
    }

    public var inputsJSON: String {
        let data = try! JSONSerialization.data(withJSONObject: inputs, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    func write(to root: HDF5Group) throws {
        try root.setAttribute("kind", kind.rawValue)
        try root.setAttribute("format_version", Int64(formatVersion))
        try root.setAttribute("producer", producer)
        try root.setAttribute("params", paramsJSON)
        try root.setAttribute("inputs", inputsJSON)
        try root.setAttribute("created_at", createdAt)
    }

    static func read(from root: HDF5Group) throws -> Provenance {
        let path = root.file.path
        guard root.hasAttribute("kind") else { throw StoreError(path: path, "not an artifact (no 'kind' attribute)") }
        let inputsText = try root.stringAttribute("inputs")
        guard let inputs = try? JSONSerialization.jsonObject(with: Data(inputsText.utf8)) as? [String: String] else {
            throw StoreError(path: path, "attribute 'inputs' is not a JSON object of strings")
        }
        return Provenance(
            kind: ArtifactKind(rawValue: try root.stringAttribute("kind")),
            formatVersion: Int(try root.int64Attribute("format_version")),
            producer: try root.stringAttribute("producer"),
            paramsJSON: try root.stringAttribute("params"),
            inputs: inputs,
            createdAt: try root.stringAttribute("created_at"))
    }
}

/// A file written under a hidden temporary name beside its destination and renamed into place
/// on `commit()`; dropped without commit, the temporary file is deleted. Stages use it for every
/// output (artifacts and side files such as PNGs and JSON), so a failed or killed stage never
/// leaves something that looks like a result. A file adopted by an `OutputSet` is placed with the
/// set's other files, all or none.
public final class PendingFile {
    public let destination: String
    public let temporaryPath: String
    /// Where the file that was at `destination` waits while its replacement is placed, until the
    /// whole set is in place (then it is deleted) or a later file fails (then it is put back).
    let previousPath: String
    /// Completes the temporary file before it is placed (an artifact flushes and closes its HDF5 file).
    var finishing: (() throws -> Void)?
    fileprivate weak var set: OutputSet?
    private var state = State.writing

    enum State { case writing, placed(hadPrevious: Bool), done }

    public init(destination: String) {
        self.destination = destination
        let url = URL(fileURLWithPath: destination)
        let folder = url.deletingLastPathComponent()
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        temporaryPath = folder.appendingPathComponent(".\(url.lastPathComponent).partial-\(getpid())").path
        previousPath = folder.appendingPathComponent(".\(url.lastPathComponent).previous-\(getpid())").path
    }

    /// Moves the finished file into place (atomic within one file system). A file that belongs to
    /// an output set is only finished here: the set places it with the others (`OutputSet.commit`).
    public func commit() throws {
        if set != nil {
            try finish()
        } else {
            try OutputSet.place([self])
        }
    }

    func finish() throws {
        let work = finishing
        finishing = nil
        try work?()
    }

    /// Renames the temporary file over the destination, keeping what was there under
    /// `previousPath` (a hard link, so the destination never disappears) until `settle()` or `rollBack()`.
    fileprivate func place() throws {
        guard case .writing = state else { preconditionFailure("\(destination) committed twice") }
        var info = stat()
        guard lstat(temporaryPath, &info) == 0 else {
            throw StoreError(path: destination, "the output was never written (no \(temporaryPath))")
        }
        unlink(previousPath)
        var hadPrevious = false
        var movedAside = false
        if lstat(destination, &info) == 0, info.st_mode & S_IFMT != S_IFDIR {
            if link(destination, previousPath) == 0 {
                hadPrevious = true
            } else if rename(destination, previousPath) == 0 {  // no hard links on this file system
                hadPrevious = true
                movedAside = true
            }
        }
        guard rename(temporaryPath, destination) == 0 else {
            let reason = String(cString: strerror(errno))
            if movedAside { rename(previousPath, destination) } else if hadPrevious { unlink(previousPath) }
            throw StoreError(path: destination, "cannot move finished output into place: \(reason)")
        }
        state = .placed(hadPrevious: hadPrevious)
    }

    /// Puts back what was at the destination before `place()`.
    fileprivate func rollBack() {
        guard case .placed(let hadPrevious) = state else { return }
        if hadPrevious { rename(previousPath, destination) } else { unlink(destination) }
        state = .done
    }

    /// The set is complete: the previous file is no longer needed.
    fileprivate func settle() {
        guard case .placed(let hadPrevious) = state else { return }
        if hadPrevious { unlink(previousPath) }
        state = .done
    }

    public func abandon() {
        guard case .writing = state else { return }
        state = .done
        finishing = nil
        unlink(temporaryPath)
    }

    deinit { abandon() }
}

/// The outputs of one stage run, placed together: every file is finished first, then each is
/// renamed into place; when one cannot be, those already placed get their previous content back,
/// so a stage's outputs all change or none does.
public final class OutputSet {
    private var files: [PendingFile] = []
    private var committed = false

    public init() {}

    /// Makes `file` part of this set: its own `commit()` then only finishes it.
    public func adopt(_ file: PendingFile) {
        precondition(!committed, "\(file.destination) added after its output set was committed")
        file.set = self
        files.append(file)
    }

    public var destinations: [String] { files.map(\.destination) }

    /// Places every file (once; later calls do nothing).
    public func commit() throws {
        guard !committed else { return }
        committed = true
        do {
            for file in files { try file.finish() }
        } catch {
            abandon()
            throw error
        }
        try Self.place(files)
    }

    /// Deletes every temporary file not yet placed.
    public func abandon() {
        for file in files { file.abandon() }
    }

    /// All-or-none placement of finished files.
    static func place(_ files: [PendingFile]) throws {
        var seen: Set<String> = []
        for file in files where !seen.insert(URL(fileURLWithPath: file.destination).standardizedFileURL.path).inserted {
            files.forEach { $0.abandon() }
            throw StoreError(path: file.destination, "is the destination of two outputs; each output needs its own file")
        }
        var placed: [PendingFile] = []
        do {
            for file in files {
                try file.finish()
                try file.place()
                placed.append(file)
            }
        } catch {
            for file in placed.reversed() { file.rollBack() }
            files.forEach { $0.abandon() }
            guard let failure = error as? StoreError, !placed.isEmpty else { throw error }
            throw StoreError(path: failure.path, failure.problem + "; the outputs already placed were put back as they were")
        }
        for file in placed { file.settle() }
    }
}

/// An artifact being written. It lives under a hidden temporary name beside its destination and
/// appears at the destination only on `commit()`; dropped without commit, it is deleted, so a
/// failed or killed stage never leaves something that looks like a result.
public final class ArtifactWriter {
    public let file: HDF5File
    public let root: HDF5Group
    public let provenance: Provenance
    /// The file's temporary name and destination; a stage adds it to its outputs' `OutputSet`.
    public let pending: PendingFile

    public var destination: String { pending.destination }
    public var temporaryPath: String { pending.temporaryPath }

    public init(path: String, provenance: Provenance) throws {
        pending = PendingFile(destination: path)
        file = try HDF5File.create(pending.temporaryPath, displayAs: path)
        root = try file.root
        self.provenance = provenance
        try provenance.write(to: root)
        pending.finishing = { [file] in
            try file.flush()
            try file.closeChecked()
        }
    }

    /// Flushes, closes and renames the file into place (atomic within one file system); one that
    /// belongs to a stage's output set is placed with the stage's other outputs.
    public func commit() throws {
        try pending.commit()
    }

    /// Discards the partial file.
    public func abandon() {
        file.discard()
        pending.abandon()
    }
}

/// An artifact opened for reading, with its kind and format version checked.
public final class ArtifactReader {
    public let path: String
    public let file: HDF5File
    public let root: HDF5Group
    public let provenance: Provenance

    /// Opens `path` and checks it is of `kind` and of a format version in `versions`.
    public init(path: String, kind expected: ArtifactKind?, versions: ClosedRange<Int> = 1...1) throws {
        self.path = path
        file = try HDF5File.open(path)
        root = try file.root
        provenance = try Provenance.read(from: root)
        if let expected, provenance.kind != expected {
            throw StoreError(path: path, "expected an artifact of kind '\(expected)', found kind '\(provenance.kind)'")
        }
        if expected != nil, !versions.contains(provenance.formatVersion) {
            throw StoreError(path: path,
                "artifact of kind '\(provenance.kind)' has format version \(provenance.formatVersion); this build reads \(versions.lowerBound == versions.upperBound ? "version \(versions.lowerBound)" : "versions \(versions)")")
        }
    }

    /// Parameters as a JSON object.
    public var params: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(provenance.paramsJSON.utf8)) as? [String: Any]) ?? [:]
    }
}
