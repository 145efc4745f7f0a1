import ArtifactStore
import Datasets
import Imaging

/// Scoring class maps against a dataset's ground truth, shared by `evaluate` and `cam-refine`.
extension ThresholdSweep {
    /// Adds one image: the maps (at any grid) are upsampled bilinearly to the mask's size, then
    /// counted for every background threshold. Returns the upsampled scores, planar
    /// [classes, mask pixels].
    @discardableResult
    public mutating func add(_ maps: ClassMaps, truth: LabelMap) -> [Float] {
        let scores = resizePlanes(maps.values, count: maps.classes.count, width: maps.width, height: maps.height,
                                  toWidth: truth.width, toHeight: truth.height)
        scores.withUnsafeBufferPointer { s in
            truth.labels.withUnsafeBufferPointer { t in add(scores: s, classes: maps.classes, truth: t) }
        }
        return scores
    }
}

extension DatasetReader {
    /// The split a map artifact refers to, after checking that the artifact was made from this
    /// dataset (content hash), names the same classes, and refers only to images the split has.
    public func split(for context: MapContext, datasetHash: String, artifactPath: String, imageIndices: [Int] = []) throws -> DatasetSplit {
        try context.check(againstDataset: datasetHash, datasetPath: path, mapsPath: artifactPath)
        guard context.classNames == classNames else {
            throw StoreError(path: artifactPath, "has classes \(context.classNames), the dataset \(path) has \(classNames)")
        }
        let split = try split(context.split)
        for index in imageIndices { try split.checkIndex(index, artifactPath: artifactPath) }
        return split
    }

    /// The one way stages open class maps (CAMs, refined maps): the reader and its checked split.
    public func classMaps(at mapsPath: String, datasetHash: String) throws -> (maps: ClassMapsReader, split: DatasetSplit) {
        let maps = try ClassMapsReader(path: mapsPath)
        return (maps, try split(for: maps.context, datasetHash: datasetHash, artifactPath: mapsPath, imageIndices: maps.imageIndices))
    }

    /// The one way stages open label maps (pseudo labels, predictions): the reader and its checked split.
    public func labelMaps(at mapsPath: String, kind: ArtifactKind, datasetHash: String) throws -> (maps: LabelMapsReader, split: DatasetSplit) {
        let maps = try LabelMapsReader(path: mapsPath, kind: kind)
        return (maps, try split(for: maps.context, datasetHash: datasetHash, artifactPath: mapsPath, imageIndices: maps.imageIndices))
    }
}

extension DatasetSplit {
    /// Refuses an image index of an artifact that the split does not have.
    public func checkIndex(_ index: Int, artifactPath: String) throws {
        guard index >= 0 && index < count else {
            throw StoreError(path: artifactPath, "refers to image \(index), but split '\(name)' has \(count) images")
        }
    }
}

extension AttentionMapsReader {
    /// The seeds and the attention must describe the same images of the same dataset split.
    public func checkPairing(with seeds: ClassMapsReader) throws {
        let attention = self
        let s = seeds.artifact.path, a = attention.artifact.path
        guard attention.context.datasetHash == seeds.context.datasetHash else {
            throw StoreError(path: a, "was extracted from another dataset (\(attention.context.datasetHash.prefix(19))...) than the seeds \(s) (\(seeds.context.datasetHash.prefix(19))...)")
        }
        guard attention.context.split == seeds.context.split else {
            throw StoreError(path: a, "covers split '\(attention.context.split)', the seeds \(s) cover split '\(seeds.context.split)'")
        }
        guard attention.context.classNames == seeds.context.classNames else {
            throw StoreError(path: a, "has classes \(attention.context.classNames), the seeds \(s) have \(seeds.context.classNames)")
        }
        if attention.imageIndices != seeds.imageIndices {
            let inAttention = Set(attention.imageIndices), inSeeds = Set(seeds.imageIndices)
            if let missing = seeds.imageIndices.first(where: { !inAttention.contains($0) }) {
                throw StoreError(path: a, "has no entry for image \(missing) of the seeds \(s)")
            }
            if let missing = attention.imageIndices.first(where: { !inSeeds.contains($0) }) {
                throw StoreError(path: s, "has no entry for image \(missing) of the attention \(a)")
            }
            guard attention.count == seeds.count else {
                throw StoreError(path: a, "has \(attention.count) entries for the \(inSeeds.count) images of the seeds \(s) (\(seeds.count) entries): an image is listed twice")
            }
            let n = attention.imageIndices.indices.first { attention.imageIndices[$0] != seeds.imageIndices[$0] }!
            throw StoreError(path: a, "lists the images in another order than the seeds \(s): entry \(n) is image \(attention.imageIndices[n]) here, image \(seeds.imageIndices[n]) there")
        }
        for n in 0..<seeds.count where seeds.imageSizes[n] != attention.imageSizes[n] {
            throw StoreError(path: a, "entry \(n): image \(seeds.imageIndices[n]) is \(attention.imageSizes[n].width)x\(attention.imageSizes[n].height) here, \(seeds.imageSizes[n].width)x\(seeds.imageSizes[n].height) in the seeds \(s)")
        }
    }

    /// Per entry: seeds on the attention's token grid, gradients for exactly the seeds' classes.
    public func checkEntry(_ n: Int, _ maps: ClassMaps, _ record: AttentionMaps, seeds: ClassMapsReader) throws {
        let attention = self
        let image = seeds.imageIndices[n]
        guard maps.height == attention.gridHeight && maps.width == attention.gridWidth else {
            throw StoreError(path: seeds.artifact.path, "entry \(n) (image \(image)): maps are \(maps.height)x\(maps.width), the token grid of the attention \(attention.artifact.path) is \(attention.gridHeight)x\(attention.gridWidth)")
        }
        let classCount = seeds.context.classNames.count
        if let bad = maps.classes.first(where: { $0 < 1 || $0 > classCount }) {
            throw StoreError(path: seeds.artifact.path, "entry \(n) (image \(image)): class id \(bad) outside 1...\(classCount)")
        }
        guard maps.classes.count == record.classes.count && Set(maps.classes) == Set(record.classes) else {
            throw StoreError(path: attention.artifact.path, "entry \(n) (image \(image)): gradients for classes \(record.classes), the seeds \(seeds.artifact.path) have classes \(maps.classes)")
        }
    }
}
