import CHDF5
import Foundation

/// The N parts of one sharded artifact (`--shard 0/N` ... `N-1/N`, each with a `shard` attribute),
/// checked to belong together, in shard order. Kind-specific merges (`MapShards`, evaluate's
/// metrics) read the parts from here and write the joined artifact with `createMerged`.
public struct ShardParts {
    /// The parts in shard order (part I is `--shard I/N`).
    public let readers: [ArtifactReader]
    /// The provenance the unsharded run writes: every part's, which must agree.
    public let provenance: Provenance

    public var count: Int { readers.count }
    public var paths: [String] { readers.map(\.path) }

    /// Opens `paths` (any order): each must be a shard of the same run (kind, producer, parameters,
    /// inputs), every index 0..<N exactly once. Errors name the offending file.
    public init(_ paths: [String], destination: String) throws {
        guard let first = paths.first else { throw StoreError(path: destination, "no shard artifacts to merge") }
        var byIndex: [Int: ArtifactReader] = [:]
        var count: Int?
        let base = try ArtifactReader(path: first, kind: nil).provenance
        for path in paths {
            let reader = try ArtifactReader(path: path, kind: nil)
            guard reader.root.hasAttribute("shard") else { throw StoreError(path: path, "is not a shard (no 'shard' attribute)") }
            let text = try reader.root.stringAttribute("shard")
            let pieces = text.split(separator: "/")
            guard pieces.count == 2, let index = Int(pieces[0]), let total = Int(pieces[1]), total >= 1, (0..<total).contains(index) else {
                throw StoreError(path: path, "attribute 'shard' is '\(text)', not I/N")
            }
            if let count, count != total { throw StoreError(path: path, "is shard \(text), but \(first) is a shard of \(count)") }
            count = total
            if let other = byIndex[index] { throw StoreError(path: path, "is shard \(text) again (also \(other.path))") }
            var provenance = reader.provenance
            provenance.createdAt = base.createdAt
            guard provenance == base else {
                throw StoreError(path: path, "was made by another run than \(first) (producer, parameters or inputs differ)")
            }
            byIndex[index] = reader
        }
        let total = count!
        let missing = (0..<total).filter { byIndex[$0] == nil }
        guard missing.isEmpty else {
            throw StoreError(path: destination, "shards \(missing.map { "\($0)/\(total)" }.joined(separator: ", ")) are missing")
        }
        readers = (0..<total).map { byIndex[$0]! }
        provenance = base
    }

    /// Starts the joined artifact at `destination`: the parts' provenance and a `shards` attribute
    /// listing their content hashes in shard order. Finish it with `copyRemainingAttributes`.
    public func createMerged(at destination: String) throws -> ArtifactWriter {
        let artifact = try ArtifactWriter(path: destination, provenance: provenance)
        do {
            let hashes = try paths.map { try ContentHash.ofFile($0) }
            let listing = try JSONSerialization.data(withJSONObject: hashes, options: [.withoutEscapingSlashes])
            try artifact.root.setAttribute("shards", String(decoding: listing, as: UTF8.self))
        } catch {
            artifact.abandon()
            throw error
        }
        return artifact
    }

    /// Copies the root attributes of part 0 that the joined artifact does not have yet (a stage's
    /// own notes such as `map_description` or `blas`), leaving out the part's `shard` and the
    /// `shard_*` state a stage keeps for its merge.
    public func copyRemainingAttributes(to artifact: ArtifactWriter) throws {
        let source = readers[0].root
        for name in source.attributeNames() where !name.hasPrefix("shard") && !artifact.root.hasAttribute(name) {
            try source.copyAttribute(name, to: artifact.root)
        }
    }
}

extension HDF5Group {
    /// Copies a scalar attribute (text, integer or floating point) to `destination`.
    public func copyAttribute(_ name: String, to destination: HDF5Group) throws {
        guard hasAttribute(name) else { throw StoreError(path: file.path, "missing attribute '\(name)' on '\(path)'") }
        let attribute = H5Aopen(id, name, wsss_H5P_DEFAULT())
        guard attribute >= 0 else { throw StoreError(path: file.path, "cannot open attribute '\(name)' on '\(path)'") }
        let type = H5Aget_type(attribute)
        let typeClass = H5Tget_class(type)
        H5Tclose(type)
        H5Aclose(attribute)
        switch typeClass {
        case H5T_STRING: try destination.setAttribute(name, try stringAttribute(name))
        case H5T_INTEGER: try destination.setAttribute(name, try int64Attribute(name))
        case H5T_FLOAT:
            let values = try doublesAttribute(name)
            guard values.count == 1 else { throw StoreError(path: file.path, "attribute '\(name)' on '\(path)' is an array; only scalars are copied") }
            try destination.setAttribute(name, values[0])
        default:
            throw StoreError(path: file.path, "attribute '\(name)' on '\(path)' has a type that cannot be copied")
        }
    }
}
