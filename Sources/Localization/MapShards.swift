import ArtifactStore
import Foundation

/// Joins the parts of a sharded per-image stage (`--shard 0/N` ... `N-1/N`, each a contiguous
/// block of the images) into the artifact the unsharded run writes: the same provenance (kind,
/// producer, parameters, inputs, created_at) and entry for entry the same arrays, plus a `shards`
/// attribute listing the parts' content hashes. Map artifacts of kind cams, labels and predictions.
public enum MapShards {
    /// Merges `parts` (any order) into a new artifact at `destination` (written to a temporary
    /// name, renamed into place when complete).
    public static func merge(_ parts: [String], to destination: String) throws {
        guard let first = parts.first else { throw StoreError(path: destination, "no shard artifacts to merge") }
        var byIndex: [Int: ArtifactReader] = [:]
        var count: Int?
        let base = try ArtifactReader(path: first, kind: nil).provenance
        for path in parts {
            let reader = try ArtifactReader(path: path, kind: nil)
            guard reader.root.hasAttribute("shard") else { throw StoreError(path: path, "is not a shard (no 'shard' attribute)") }
            let text = try reader.root.stringAttribute("shard")
            let pieces = text.split(separator: "/")
            guard pieces.count == 2, let index = Int(pieces[0]), let total = Int(pieces[1]) else {
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
        let missing = (0..<count!).filter { byIndex[$0] == nil }
        guard missing.isEmpty else {
            throw StoreError(path: destination, "shards \(missing.map { "\($0)/\(count!)" }.joined(separator: ", ")) are missing")
        }
        let ordered = (0..<count!).map { byIndex[$0]! }

        let artifact = try ArtifactWriter(path: destination, provenance: base)
        do {
            let hashes = try ordered.map { try ContentHash.ofFile($0.path) }
            let listing = try JSONSerialization.data(withJSONObject: hashes, options: [.withoutEscapingSlashes])
            try artifact.root.setAttribute("shards", String(decoding: listing, as: UTF8.self))
            switch base.kind {
            case .cams: try mergeClassMaps(ordered.map(\.path), into: artifact)
            case .labels, .predictions: try mergeLabelMaps(ordered.map(\.path), kind: base.kind, into: artifact)
            default: throw StoreError(path: first, "shards of kind '\(base.kind)' cannot be merged (cams, labels, predictions can)")
            }
        } catch {
            artifact.abandon()
            throw error
        }
    }

    static func mergeClassMaps(_ parts: [String], into artifact: ArtifactWriter) throws {
        let readers = try parts.map(ClassMapsReader.init(path:))
        try checkSame(readers.map(\.context), readers.map(\.description), parts)
        let writer = try ClassMapsWriter(artifact, context: readers[0].context, description: readers[0].description)
        for reader in readers {
            for n in 0..<reader.count {
                let size = reader.imageSizes[n]
                try writer.append(imageIndex: reader.imageIndices[n], imageHeight: size.height, imageWidth: size.width, maps: try reader.maps(n))
            }
        }
        try writer.finish()
    }

    static func mergeLabelMaps(_ parts: [String], kind: ArtifactKind, into artifact: ArtifactWriter) throws {
        let readers = try parts.map { try LabelMapsReader(path: $0, kind: kind) }
        try checkSame(readers.map(\.context), readers.map { _ in "" }, parts)
        let writer = try LabelMapsWriter(artifact, context: readers[0].context)
        for reader in readers {
            for n in 0..<reader.count {
                let entry = try reader.labels(n)
                try writer.append(imageIndex: reader.imageIndices[n], height: entry.height, width: entry.width, labels: entry.values)
            }
        }
        try writer.finish()
    }

    static func checkSame(_ contexts: [MapContext], _ descriptions: [String], _ parts: [String]) throws {
        for k in 1..<max(1, parts.count) where contexts[k] != contexts[0] || descriptions[k] != descriptions[0] {
            throw StoreError(path: parts[k], "maps of another split, class list, dataset or description than \(parts[0])")
        }
    }
}
