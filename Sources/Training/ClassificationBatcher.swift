import Datasets
import Dispatch
import Engine
import Primitives

/// Reads, augments and batches images of one split. HDF5 reads stay on the calling thread;
/// augmentation runs on the cores. Each image's randomness comes from (seed, epoch, image).
public final class ClassificationBatcher {
    public let split: DatasetSplit
    public let indices: [Int]
    public let labels: [Float]      // [indices.count, C], in `indices` order
    public let classes: Int
    public let size: Int
    public let normalization: Normalization

    public init(split: DatasetSplit, limit: Int, size: Int, normalization: Normalization) throws {
        self.split = split
        let count = limit > 0 ? min(limit, split.count) : split.count
        indices = Array(0..<count)
        classes = split.numClasses
        let all = try split.allLabels()
        labels = (0..<(count * classes)).map { Float(all[$0]) }
        self.size = size
        self.normalization = normalization
    }

    public var count: Int { indices.count }

    /// Fills `images` [B, S, S, 3] and `batchLabels` [B, C] with items `positions` of `order`.
    public func fill(_ positions: ArraySlice<Int>, order: [Int], images: Tensor, batchLabels: UnsafeMutablePointer<Float>,
              augmentation: AugmentationSettings?, seed: UInt64, epoch: Int) throws {
        let sources = try positions.map { try split.image(indices[order[$0]]) }
        let items = Array(positions)
        for (b, position) in items.enumerated() {
            let item = order[position]
            for c in 0..<classes { batchLabels[b * classes + c] = labels[item * classes + c] }
        }
        let plane = size * size * 3
        let out = SendablePointer(images.data)
        DispatchQueue.concurrentPerform(iterations: items.count) { b in
            let image = sources[b]
            image.pixels.withUnsafeBufferPointer { pixels in
                let target = out.p + b * plane
                if let augmentation {
                    var rng = SplitMix64(seed: seed, stream: UInt64(epoch), index: UInt64(indices[order[items[b]]]))
                    ImageAugmenter.augment(pixels.baseAddress!, width: image.width, height: image.height, into: target, size: size,
                                           settings: augmentation, normalization: normalization, using: &rng)
                } else {
                    ImageAugmenter.resize(pixels.baseAddress!, width: image.width, height: image.height, into: target, size: size,
                                          normalization: normalization)
                }
            }
        }
    }
}

