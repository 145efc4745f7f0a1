// Map artifacts: what localisation stages hand each other
// ========================================================
//
// kind "cams" (format 1) -- per-class score maps of the present classes, e.g. CAM seeds from
// `extract-attention` or refined maps from `cam-refine`:
//     /                 split, class_names (JSON), num_classes, dataset_hash (content hash of the
//                       dataset the maps belong to), map_description (what the maps are)
//     /image_index      int64 [N]: index of entry n in the dataset split
//     /image_sizes      int32 [N, 2]: (height, width) of that image
//     /maps/            ragged float16: entry n is [K_n, h, w], scores in [0, 1], one per class
//     /classes/         ragged int32: entry n is [K_n], the class ids (1...C) of those maps
//
// kind "labels" and kind "predictions" (format 1) -- label maps at image resolution: 0 background,
// 1...C classes, 255 uncertain (labels) :
//     /                 split, class_names, num_classes, dataset_hash
//     /image_index      int64 [N]
//     /labels/          ragged uint8: entry n is [H, W]
//
// kind "attention" (format 1) -- what a classifier attends to, per image, from `extract-attention`:
//     /                 split, class_names, num_classes, dataset_hash, grid_height, grid_width (the
//                       patch-token grid h x w, n = h * w), layers (L)
//     /image_index      int64 [N];  /image_sizes  int32 [N, 2]
//     /patch_attention/ ragged float16: entry [L, n, n], per layer the head-averaged post-softmax
//                       attention among patch tokens (row i: how patch i attends to patch j; the
//                       class-token column is dropped, so rows sum to slightly less than 1)
//     /class_attention/ ragged float16: entry [L, n], per layer the class token's row to the patches
//     /gradients/       ragged float16: entry [K, L, n], ACR: per present class and layer, ReLU of
//                       the head-mean gradient of the class score w.r.t. the post-softmax attention,
//                       class-token row to the patches
//     /classes/         ragged int32: entry [K], the present classes of `gradients`
//
// Entries stream in image order, one hyperslab read each, like the dataset's own arrays.

import ArtifactStore
import Foundation

/// "nan", "inf" or "-inf", without the NaN payload that `description` adds (float16 NaNs read
/// back as "nan(0x1fffff)").
func nonFinite(_ value: Float) -> String { value.isNaN ? "nan" : "\(value)" }

/// Score maps of some classes of one image, planar [classes.count, height, width].
public struct ClassMaps: Equatable {
    public var classes: [Int]
    public var height: Int
    public var width: Int
    public var values: [Float]

    public init(classes: [Int], height: Int, width: Int, values: [Float]) {
        precondition(values.count == classes.count * height * width, "maps of \(classes.count) classes at \(height)x\(width) need \(classes.count * height * width) values, got \(values.count)")
        self.classes = classes
        self.height = height
        self.width = width
        self.values = values
    }
}

/// Identity shared by all map artifacts: which dataset split, which classes.
public struct MapContext: Equatable {
    public var split: String
    public var classNames: [String]
    public var datasetHash: String

    public init(split: String, classNames: [String], datasetHash: String) {
        self.split = split
        self.classNames = classNames
        self.datasetHash = datasetHash
    }

    func write(to root: HDF5Group) throws {
        try root.setAttribute("split", split)
        let names = try JSONSerialization.data(withJSONObject: classNames)
        try root.setAttribute("class_names", String(decoding: names, as: UTF8.self))
        try root.setAttribute("num_classes", Int64(classNames.count))
        try root.setAttribute("dataset_hash", datasetHash)
    }

    static func read(from root: HDF5Group) throws -> MapContext {
        let namesText = try root.stringAttribute("class_names")
        guard let names = try? JSONSerialization.jsonObject(with: Data(namesText.utf8)) as? [String] else {
            throw StoreError(path: root.file.path, "attribute 'class_names' is not a JSON array of strings")
        }
        return MapContext(split: try root.stringAttribute("split"), classNames: names,
                          datasetHash: try root.stringAttribute("dataset_hash"))
    }

    /// Refuses maps made from another dataset than the one at hand.
    public func check(againstDataset hash: String, datasetPath: String, mapsPath: String) throws {
        guard hash == datasetHash else {
            throw StoreError(path: mapsPath, "was made from another dataset (\(datasetHash.prefix(19))...) than \(datasetPath) (\(hash.prefix(19))...)")
        }
    }
}

public final class ClassMapsWriter {
    public let artifact: ArtifactWriter
    private let indices: AppendableDataset<Int64>
    private let sizes: AppendableDataset<Int32>
    private let maps: RaggedArrayWriter<Float>
    private let classes: RaggedArrayWriter<Int32>

    private let classCount: Int

    public init(_ artifact: ArtifactWriter, context: MapContext, description: String) throws {
        self.artifact = artifact
        classCount = context.classNames.count
        let root = artifact.root
        try context.write(to: root)
        try root.setAttribute("map_description", description)
        indices = try AppendableDataset<Int64>(in: root, name: "image_index", rowShape: [], chunkRows: 4096)
        sizes = try AppendableDataset<Int32>(in: root, name: "image_sizes", rowShape: [2], chunkRows: 4096)
        maps = try RaggedArrayWriter<Float>(in: root, name: "maps", rank: 3, storage: .float16)
        classes = try RaggedArrayWriter<Int32>(in: root, name: "classes", rank: 1, chunkElements: 4096)
    }

    /// Class maps are per-class normalised scores: every value in [0, 1] (min-max normalised by
    /// their producers, `AffinityRefinement.normalise`), class ids in 1...C of the context.
    public func append(imageIndex: Int, imageHeight: Int, imageWidth: Int, maps entry: ClassMaps) throws {
        if let bad = entry.values.first(where: { !$0.isFinite }) {
            throw StoreError(path: artifact.destination, "map of image \(imageIndex) contains \(nonFinite(bad))")
        }
        if let bad = entry.values.first(where: { !(0...1).contains($0) }) {
            throw StoreError(path: artifact.destination, "map of image \(imageIndex) holds \(bad); class maps are normalised to [0, 1]")
        }
        if let bad = entry.classes.first(where: { !(1...classCount).contains($0) }) {
            throw StoreError(path: artifact.destination, "map of image \(imageIndex) names class \(bad); the classes are 1...\(classCount)")
        }
        try indices.append([Int64(imageIndex)])
        try sizes.append([Int32(imageHeight), Int32(imageWidth)])
        try maps.append(entry.values, shape: [entry.classes.count, entry.height, entry.width])
        try classes.append(entry.classes.map(Int32.init), shape: [entry.classes.count])
    }

    public func finish() throws {
        try maps.finish()
        try classes.finish()
        try artifact.commit()
    }
}

public final class ClassMapsReader {
    public let artifact: ArtifactReader
    public let context: MapContext
    public let description: String
    public let imageIndices: [Int]
    public let imageSizes: [(height: Int, width: Int)]
    private let maps: RaggedArrayReader<Float>
    private let classes: RaggedArrayReader<Int32>

    public init(path: String) throws {
        artifact = try ArtifactReader(path: path, kind: .cams)
        let root = artifact.root
        context = try MapContext.read(from: root)
        description = (try? root.stringAttribute("map_description")) ?? ""
        imageIndices = try root.read("image_index", as: Int64.self).values.map { Int($0) }
        let sizes = try root.read("image_sizes", as: Int32.self).values
        guard sizes.count % 2 == 0 else {
            throw StoreError(path: path, "image_sizes holds \(sizes.count) values, not (height, width) pairs")
        }
        imageSizes = stride(from: 0, to: sizes.count, by: 2).map { (Int(sizes[$0]), Int(sizes[$0 + 1])) }
        maps = try RaggedArrayReader<Float>(root, name: "maps")
        classes = try RaggedArrayReader<Int32>(root, name: "classes")
        guard maps.count == imageIndices.count, classes.count == imageIndices.count, imageSizes.count == imageIndices.count else {
            throw StoreError(path: path, "map artifact is inconsistent: \(imageIndices.count) indices, \(maps.count) maps, \(classes.count) class lists")
        }
    }

    public var count: Int { imageIndices.count }

    public func maps(_ n: Int) throws -> ClassMaps {
        let array = try maps.item(n)
        let ids = try classes.item(n).values.map { Int($0) }
        guard array.shape.count == 3, array.shape[0] == ids.count else {
            throw StoreError(path: artifact.path, "entry \(n): maps of shape \(array.shape) for \(ids.count) classes")
        }
        if let bad = array.values.first(where: { !$0.isFinite }) {
            throw StoreError(path: artifact.path, "entry \(n) (image \(imageIndices[n])) contains \(nonFinite(bad))")
        }
        if let bad = ids.first(where: { !(1...context.classNames.count).contains($0) }) {
            throw StoreError(path: artifact.path, "entry \(n) (image \(imageIndices[n])) names class \(bad); the artifact's classes are 1...\(context.classNames.count)")
        }
        return ClassMaps(classes: ids, height: array.shape[1], width: array.shape[2], values: array.values)
    }
}

public final class LabelMapsWriter {
    public let artifact: ArtifactWriter
    private let indices: AppendableDataset<Int64>
    private let labels: RaggedArrayWriter<UInt8>

    public init(_ artifact: ArtifactWriter, context: MapContext) throws {
        self.artifact = artifact
        try context.write(to: artifact.root)
        indices = try AppendableDataset<Int64>(in: artifact.root, name: "image_index", rowShape: [], chunkRows: 4096)
        labels = try RaggedArrayWriter<UInt8>(in: artifact.root, name: "labels", rank: 2)
    }

    public func append(imageIndex: Int, height: Int, width: Int, labels values: [UInt8]) throws {
        try indices.append([Int64(imageIndex)])
        try labels.append(values, shape: [height, width])
    }

    public func finish() throws {
        try labels.finish()
        try artifact.commit()
    }
}

public final class LabelMapsReader {
    public let artifact: ArtifactReader
    public let context: MapContext
    public let imageIndices: [Int]
    private let labels: RaggedArrayReader<UInt8>

    /// Opens a `labels` or `predictions` artifact.
    public init(path: String, kind: ArtifactKind) throws {
        precondition(kind == .labels || kind == .predictions)
        artifact = try ArtifactReader(path: path, kind: kind)
        context = try MapContext.read(from: artifact.root)
        imageIndices = try artifact.root.read("image_index", as: Int64.self).values.map { Int($0) }
        labels = try RaggedArrayReader<UInt8>(artifact.root, name: "labels")
        guard labels.rank == 2 else {
            throw StoreError(path: path, "labels must be a ragged array of rank 2 (height x width), found rank \(labels.rank)")
        }
        guard labels.count == imageIndices.count else {
            throw StoreError(path: path, "label artifact is inconsistent: \(imageIndices.count) indices, \(labels.count) maps")
        }
    }

    public var count: Int { imageIndices.count }

    public func labels(_ n: Int) throws -> (height: Int, width: Int, values: [UInt8]) {
        let array = try labels.item(n)
        return (array.shape[0], array.shape[1], array.values)
    }
}

/// One image's attention record (see the layout above).
public struct AttentionMaps: Equatable {
    public var layers: Int
    public var tokens: Int
    /// [layers, tokens, tokens]
    public var patchAttention: [Float]
    /// [layers, tokens]
    public var classAttention: [Float]
    /// Class ids of `gradients`.
    public var classes: [Int]
    /// [classes.count, layers, tokens]
    public var gradients: [Float]

    public init(layers: Int, tokens: Int, patchAttention: [Float], classAttention: [Float], classes: [Int], gradients: [Float]) {
        precondition(patchAttention.count == layers * tokens * tokens && classAttention.count == layers * tokens
                     && gradients.count == classes.count * layers * tokens, "attention record sizes do not match \(layers) layers of \(tokens) tokens")
        self.layers = layers
        self.tokens = tokens
        self.patchAttention = patchAttention
        self.classAttention = classAttention
        self.classes = classes
        self.gradients = gradients
    }

    /// Layer l's patch-to-patch attention [tokens, tokens].
    public func patchAttention(layer l: Int) -> [Float] {
        Array(patchAttention[l * tokens * tokens..<(l + 1) * tokens * tokens])
    }
}

public final class AttentionMapsWriter {
    public let artifact: ArtifactWriter
    public let gridHeight: Int, gridWidth: Int, layers: Int
    private let indices: AppendableDataset<Int64>
    private let sizes: AppendableDataset<Int32>
    private let patch: RaggedArrayWriter<Float>
    private let classRows: RaggedArrayWriter<Float>
    private let gradients: RaggedArrayWriter<Float>
    private let classes: RaggedArrayWriter<Int32>

    public init(_ artifact: ArtifactWriter, context: MapContext, gridHeight: Int, gridWidth: Int, layers: Int) throws {
        self.artifact = artifact
        self.gridHeight = gridHeight
        self.gridWidth = gridWidth
        self.layers = layers
        let root = artifact.root
        try context.write(to: root)
        try root.setAttribute("grid_height", Int64(gridHeight))
        try root.setAttribute("grid_width", Int64(gridWidth))
        try root.setAttribute("layers", Int64(layers))
        let n = gridHeight * gridWidth
        indices = try AppendableDataset<Int64>(in: root, name: "image_index", rowShape: [], chunkRows: 4096)
        sizes = try AppendableDataset<Int32>(in: root, name: "image_sizes", rowShape: [2], chunkRows: 4096)
        patch = try RaggedArrayWriter<Float>(in: root, name: "patch_attention", rank: 3, chunkElements: layers * n * n, storage: .float16)
        classRows = try RaggedArrayWriter<Float>(in: root, name: "class_attention", rank: 2, chunkElements: 16 * layers * n, storage: .float16)
        gradients = try RaggedArrayWriter<Float>(in: root, name: "gradients", rank: 3, chunkElements: 16 * layers * n, storage: .float16)
        classes = try RaggedArrayWriter<Int32>(in: root, name: "classes", rank: 1, chunkElements: 4096)
    }

    public func append(imageIndex: Int, imageHeight: Int, imageWidth: Int, _ record: AttentionMaps) throws {
        precondition(record.layers == layers && record.tokens == gridHeight * gridWidth, "attention record does not match the artifact's grid")
        for values in [record.patchAttention, record.classAttention, record.gradients] {
            if let bad = values.first(where: { !$0.isFinite }) {
                throw StoreError(path: artifact.destination, "attention of image \(imageIndex) contains \(nonFinite(bad))")
            }
        }
        try indices.append([Int64(imageIndex)])
        try sizes.append([Int32(imageHeight), Int32(imageWidth)])
        try patch.append(record.patchAttention, shape: [layers, record.tokens, record.tokens])
        try classRows.append(record.classAttention, shape: [layers, record.tokens])
        try gradients.append(record.gradients, shape: [record.classes.count, layers, record.tokens])
        try classes.append(record.classes.map(Int32.init), shape: [record.classes.count])
    }

    public func finish() throws {
        try patch.finish()
        try classRows.finish()
        try gradients.finish()
        try classes.finish()
        try artifact.commit()
    }
}

public final class AttentionMapsReader {
    public let artifact: ArtifactReader
    public let context: MapContext
    public let gridHeight: Int, gridWidth: Int, layers: Int
    public let imageIndices: [Int]
    public let imageSizes: [(height: Int, width: Int)]
    private let patch: RaggedArrayReader<Float>
    private let classRows: RaggedArrayReader<Float>
    private let gradients: RaggedArrayReader<Float>
    private let classes: RaggedArrayReader<Int32>
    /// The class score whose attention gradients the file holds ("cls", "cam"), or "none" where
    /// extract-attention skipped them (the gradient rows are then 0).
    public let gradientScore: String

    public init(path: String) throws {
        artifact = try ArtifactReader(path: path, kind: .attention)
        let root = artifact.root
        gradientScore = root.hasAttribute("gradient_score") ? try root.stringAttribute("gradient_score") : "cls"
        context = try MapContext.read(from: root)
        gridHeight = Int(try root.int64Attribute("grid_height"))
        gridWidth = Int(try root.int64Attribute("grid_width"))
        layers = Int(try root.int64Attribute("layers"))
        imageIndices = try root.read("image_index", as: Int64.self).values.map { Int($0) }
        let sizes = try root.read("image_sizes", as: Int32.self).values
        imageSizes = stride(from: 0, to: sizes.count, by: 2).map { (Int(sizes[$0]), Int(sizes[$0 + 1])) }
        patch = try RaggedArrayReader<Float>(root, name: "patch_attention")
        classRows = try RaggedArrayReader<Float>(root, name: "class_attention")
        gradients = try RaggedArrayReader<Float>(root, name: "gradients")
        classes = try RaggedArrayReader<Int32>(root, name: "classes")
        guard [patch.count, classRows.count, gradients.count, classes.count, imageSizes.count].allSatisfy({ $0 == imageIndices.count }) else {
            throw StoreError(path: path, "attention artifact is inconsistent: entry counts differ between its arrays")
        }
    }

    public var count: Int { imageIndices.count }
    public var tokens: Int { gridHeight * gridWidth }

    public func record(_ n: Int) throws -> AttentionMaps {
        let p = try patch.item(n), c = try classRows.item(n), g = try gradients.item(n)
        let ids = try classes.item(n).values.map { Int($0) }
        guard p.shape == [layers, tokens, tokens], c.shape == [layers, tokens], g.shape == [ids.count, layers, tokens] else {
            throw StoreError(path: artifact.path, "entry \(n) has shapes \(p.shape), \(c.shape), \(g.shape) for \(layers) layers of \(tokens) tokens")
        }
        for values in [p.values, c.values, g.values] {
            if let bad = values.first(where: { !$0.isFinite }) {
                throw StoreError(path: artifact.path, "entry \(n) (image \(imageIndices[n])) contains \(nonFinite(bad))")
            }
        }
        return AttentionMaps(layers: layers, tokens: tokens, patchAttention: p.values, classAttention: c.values, classes: ids, gradients: g.values)
    }
}

extension ClassMapsWriter {
    /// Maps rounded as a cams artifact stores them (float16), so that the analysis scores exactly what
    /// `evaluate` would score on a written artifact.
    public static func asStored(_ maps: ClassMaps) -> ClassMaps {
        var rounded = maps
        rounded.values = maps.values.map { Float(Float16($0)) }
        return rounded
    }
}
