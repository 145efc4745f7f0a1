import ArtifactStore
import Foundation

/// Joins the parts of a sharded per-image stage (`--shard 0/N` ... `N-1/N`, each a contiguous
/// block of the images) into the artifact the unsharded run writes: the same provenance (kind,
/// producer, parameters, inputs, created_at), the same stage notes (root attributes of part 0) and
/// entry for entry the same arrays, plus a `shards` attribute listing the parts' content hashes
/// (`ShardParts`). Map artifacts of kind cams, attention, labels and predictions.
public enum MapShards {
    /// Merges `parts` (any order) into a new artifact at `destination` (written to a temporary
    /// name, renamed into place when complete).
    public static func merge(_ parts: [String], to destination: String) throws {
        let shards = try ShardParts(parts, destination: destination)
        let artifact = try shards.createMerged(at: destination)
        do {
            let paths = shards.paths
            switch shards.provenance.kind {
            case .cams: try mergeClassMaps(paths, into: artifact, shards: shards)
            case .attention: try mergeAttentionMaps(paths, into: artifact, shards: shards)
            case .labels, .predictions: try mergeLabelMaps(paths, kind: shards.provenance.kind, into: artifact, shards: shards)
            default:
                throw StoreError(path: paths[0], "shards of kind '\(shards.provenance.kind)' cannot be merged here (cams, attention, labels, predictions can)")
            }
        } catch {
            artifact.abandon()
            throw error
        }
    }

    static func mergeClassMaps(_ parts: [String], into artifact: ArtifactWriter, shards: ShardParts) throws {
        let readers = try parts.map(ClassMapsReader.init(path:))
        try checkSame(readers.map(\.context), readers.map(\.description), parts)
        let writer = try ClassMapsWriter(artifact, context: readers[0].context, description: readers[0].description)
        try shards.copyRemainingAttributes(to: artifact)
        for reader in readers {
            for n in 0..<reader.count {
                let size = reader.imageSizes[n]
                try writer.append(imageIndex: reader.imageIndices[n], imageHeight: size.height, imageWidth: size.width, maps: try reader.maps(n))
            }
        }
        try writer.finish()
    }

    static func mergeAttentionMaps(_ parts: [String], into artifact: ArtifactWriter, shards: ShardParts) throws {
        let readers = try parts.map(AttentionMapsReader.init(path:))
        try checkSame(readers.map(\.context), readers.map { "\($0.gridHeight)x\($0.gridWidth)x\($0.layers) \($0.gradientScore)" }, parts)
        let first = readers[0]
        let writer = try AttentionMapsWriter(artifact, context: first.context, gridHeight: first.gridHeight, gridWidth: first.gridWidth, layers: first.layers)
        try shards.copyRemainingAttributes(to: artifact)
        for reader in readers {
            for n in 0..<reader.count {
                let size = reader.imageSizes[n]
                try writer.append(imageIndex: reader.imageIndices[n], imageHeight: size.height, imageWidth: size.width, try reader.record(n))
            }
        }
        try writer.finish()
    }

    static func mergeLabelMaps(_ parts: [String], kind: ArtifactKind, into artifact: ArtifactWriter, shards: ShardParts) throws {
        let readers = try parts.map { try LabelMapsReader(path: $0, kind: kind) }
        try checkSame(readers.map(\.context), readers.map { _ in "" }, parts)
        let writer = try LabelMapsWriter(artifact, context: readers[0].context)
        try shards.copyRemainingAttributes(to: artifact)
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
            throw StoreError(path: parts[k], "maps of another split, class list, dataset, grid or description than \(parts[0])")
        }
    }
}
