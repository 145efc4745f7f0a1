import Dispatch
import Engine
import Foundation
import Localization

/// AReAM's online affinity labels for one training batch (paper sec. 4.3, eq. 7-9, 13-14), made
/// from the classifier's own forward: the present classes' CAMs are refined with the
/// entropy-weighted sum of every layer's patch attention, PAR and the two background thresholds
/// (`ConfidentLabels`) give labels {class, 0, 255} at image resolution, those are sampled to the
/// token grid, and token pairs become 1 (same label), 0 (different) or 255 (either is 255).
/// Everything here is plain arrays: no gradient flows through label making.
public struct AReAMTrainingLabels: Sendable {
    public var confident: ConfidentLabels
    public var weighting: AReAMWeighting

    /// `lowThreshold` (alpha1) < `highThreshold` (alpha2): background scores of `ConfidentLabels`.
    public init(lowThreshold: Float = 0.35, highThreshold: Float = 0.55, weighting: AReAMWeighting = .code) {
        confident = ConfidentLabels()
        confident.lowBackground = lowThreshold
        confident.highBackground = highThreshold
        self.weighting = weighting
    }

    /// One image of the batch, everything on a square token grid of `grid` x `grid` = n tokens.
    public struct Image {
        /// Label ids of the present classes (1-based; 0 is background).
        public var classes: [Int]
        /// [K, n]: the CAM head's raw patch scores of the present classes.
        public var cams: [Float]
        /// [L, n, n]: head-averaged post-softmax attention among the patch tokens, every layer.
        public var attention: [Float]
        /// Channels-last [size, size, 3] pixels, in any per-channel affine scale.
        public var pixels: [Float]
        public var size: Int

        public init(classes: [Int], cams: [Float], attention: [Float], pixels: [Float], size: Int) {
            self.classes = classes
            self.cams = cams
            self.attention = attention
            self.pixels = pixels
            self.size = size
        }
    }

    public struct Batch {
        /// [B, n] token labels {class id, 0, 255}.
        public var tokenLabels: [UInt8]
        /// [B, n, n] affinity labels {1, 0, 255}.
        public var affinity: [UInt8]
        /// Per image, the label-fusion weight of every layer (sums to 1).
        public var fusionWeights: [[Float]]
        /// Per layer (all L): the loss weight, 1 - w(l) of eq. 16 (paper) or the min-max normalised
        /// entropy (code); see `make`.
        public var lossWeights: [Float]
        /// Images with classes whose CAMs have no positive score anywhere; their tokens are all 255.
        public var blankCams: Int
    }

    /// Labels for a batch; images run concurrently. `layers` is the attention's layer count.
    ///
    /// Layer weights (`weighting`):
    /// - paper: per image w(l) = 1 - H(l) / log n (`AReAMWeights.paper`; equal weights where no
    ///   layer is preferred); loss weight of layer l = batch mean over images with classes of 1 - w(l).
    /// - code: H(l) / log n averaged over the batch's images with classes (the code averages over
    ///   the training set; online, the batch stands in for it), min-max normalised across the
    ///   layers (`AReAMWeights.code`); fusion weight = 1 - that, loss weight = that.
    /// Without any image with classes, or with equal entropies under `code`, every weight is equal
    /// (fusion) or 1 (loss).
    ///
    /// An image whose present classes have no positive CAM score anywhere (common while a classifier
    /// trained from scratch is young) carries no localisation: its tokens are all ignored and it
    /// does not enter the layer weights. (The reference code would label it all background; after
    /// its long warm-up on a pretrained backbone the case hardly arises there.)
    public func make(_ images: [Image], grid: Int, layers: Int) -> Batch {
        let B = images.count, n = grid * grid
        for image in images {
            precondition(image.cams.count == image.classes.count * n && image.attention.count == layers * n * n,
                         "CAMs or attention do not match \(image.classes.count) classes, \(layers) layers, \(n) tokens")
        }
        let all = Array(0..<layers)
        let equal = [Float](repeating: 1 / Float(layers), count: layers)
        let normalisedCams: [[Float]] = images.map { image in
            var maps = image.cams
            AffinityRefinement.normalise(&maps, count: image.classes.count, tokens: n)
            return maps
        }
        var fusion = [[Float]](repeating: equal, count: B)
        var lossWeights = [Float](repeating: 1, count: layers)
        // After ReLU + min-max, a map with any positive score has a maximum of 1.
        let withClasses = (0..<B).filter { !images[$0].classes.isEmpty && normalisedCams[$0].contains { $0 > 0 } }
        let blank = Set((0..<B).filter { !images[$0].classes.isEmpty }).subtracting(withClasses)
        switch weighting {
        case .paper:
            var complement = [Double](repeating: 0, count: layers)
            for b in withClasses {
                let w = AReAMWeights.paper(maps: normalisedCams[b], count: images[b].classes.count, tokens: n,
                                           attention: images[b].attention, layers: all) ?? [Float](repeating: 0, count: layers)
                let total = w.reduce(0, +)
                if total > 0 { fusion[b] = w.map { $0 / total } }
                for l in 0..<layers { complement[l] += Double(1 - w[l]) }
            }
            if !withClasses.isEmpty { lossWeights = complement.map { Float($0 / Double(withClasses.count)) } }
        case .code:
            var mean = [Double](repeating: 0, count: layers)
            for b in withClasses {
                for l in 0..<layers {
                    mean[l] += AffinityRefinement.normalisedRefinedEntropy(maps: normalisedCams[b], count: images[b].classes.count, tokens: n,
                                                                          stacked: images[b].attention, layer: l)
                }
            }
            if !withClasses.isEmpty {
                let w = AReAMWeights.code(meanEntropies: mean.map { $0 / Double(withClasses.count) })
                let total = w.reduce(0, +)
                for b in 0..<B { fusion[b] = w.map { $0 / total } }
                // Equal entropies (all weights 1, e.g. a single layer) prefer no layer: keep every
                // loss weight at 1 rather than switching the term off.
                if w.contains(where: { $0 != 1 }) { lossWeights = w.map { 1 - $0 } }
            }
        }

        var tokenLabels = [UInt8](repeating: 0, count: B * n)
        let confident = self.confident
        tokenLabels.withUnsafeMutableBufferPointer { out in
            let target = UncheckedLabels(pointer: out.baseAddress!)
            DispatchQueue.concurrentPerform(iterations: B) { b in
                let image = images[b], k = image.classes.count
                guard k > 0 else { return }  // no class: every token is background
                if blank.contains(b) {
                    for i in 0..<n { target.pointer[b * n + i] = ConfidentLabels.ignore }
                    return
                }
                let affinity = AffinityRefinement.combine(stacked: image.attention, tokens: n, layers: all, weights: fusion[b])
                var fused = AffinityRefinement.gather(maps: normalisedCams[b], count: k, tokens: n, affinity: affinity)
                AffinityRefinement.normalise(&fused, count: k, tokens: n)
                let pixelLabels = confident.labels(pixels: image.pixels, width: image.size, height: image.size,
                                                   maps: ClassMaps(classes: image.classes, height: grid, width: grid, values: fused))
                let tokens = Self.tokenLabels(pixelLabels: pixelLabels, size: image.size, grid: grid)
                for i in 0..<n { target.pointer[b * n + i] = tokens[i] }
            }
        }
        var affinity = [UInt8](repeating: 0, count: B * n * n)
        for b in 0..<B {
            let pairs = Self.affinityLabels(tokenLabels: Array(tokenLabels[b * n..<(b + 1) * n]))
            affinity.replaceSubrange(b * n * n..<(b + 1) * n * n, with: pairs)
        }
        return Batch(tokenLabels: tokenLabels, affinity: affinity, fusionWeights: fusion, lossWeights: lossWeights, blankCams: blank.count)
    }

    /// Nearest-neighbour sampling of a [size, size] label map to [grid, grid] (PyTorch
    /// `interpolate(mode="nearest")`: source index floor(i * size / grid)).
    public static func tokenLabels(pixelLabels: [UInt8], size: Int, grid: Int) -> [UInt8] {
        precondition(pixelLabels.count == size * size && grid > 0)
        var out = [UInt8](repeating: 0, count: grid * grid)
        for y in 0..<grid {
            let sy = y * size / grid
            for x in 0..<grid { out[y * grid + x] = pixelLabels[sy * size + x * size / grid] }
        }
        return out
    }

    /// Eq. 14: [n, n] with 1 where both tokens carry the same label, 0 where they differ, 255
    /// where either is 255 (the diagonal included, as the reference code does).
    public static func affinityLabels(tokenLabels: [UInt8]) -> [UInt8] {
        let n = tokenLabels.count
        var out = [UInt8](repeating: ConfidentLabels.ignore, count: n * n)
        for i in 0..<n where tokenLabels[i] != ConfidentLabels.ignore {
            for j in 0..<n where tokenLabels[j] != ConfidentLabels.ignore {
                out[i * n + j] = tokenLabels[i] == tokenLabels[j] ? 1 : 0
            }
        }
        return out
    }
}

/// Each concurrent task writes its own image's slice.
private struct UncheckedLabels: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt8>
}
