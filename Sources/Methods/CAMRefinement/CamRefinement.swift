import ACR
import AReAM
import Foundation
import Primitives
import Localization

/// How `cam-refine` turns CAM seeds and a classifier's attention into refined class maps.
public enum RefinementMethod: String, ParameterChoice, Sendable {
    /// The seeds, re-normalised.
    case none
    /// AReAM eq. 5 / MCTformer: seeds x (mean of the selected layers' affinity)^T.
    case mean
    /// AReAM eq. 7-9: seeds x (entropy-weighted sum of the selected layers' affinity)^T.
    case areaM
    /// ACR eq. 7-8: mean class-to-patch gradient rows of the later layers, spread by the mean affinity.
    case acr
}

/// One configured refinement, applied image by image.
public struct CamRefiner {
    public var method: RefinementMethod
    /// Affinity layers (resolved indices) for mean, areaM and ACR's affinity.
    public var layers: [Int]
    public var weighting: AReAMWeighting
    /// areaM with code weighting: the weight of every attention layer (index = layer), from a first
    /// pass over the split (`AReAMWeights.code`).
    public var codeWeights: [Float]?
    /// ACR: the layers whose gradient rows are averaged.
    public var gradientLayers: [Int]
    /// ACR: spread the gradient map by the mean affinity of `layers` (eq. 8) or not (eq. 7).
    public var useAffinity: Bool

    public init(method: RefinementMethod, layers: [Int], weighting: AReAMWeighting = .code, codeWeights: [Float]? = nil,
                gradientLayers: [Int] = [], useAffinity: Bool = true) {
        self.method = method
        self.layers = layers
        self.weighting = weighting
        self.codeWeights = codeWeights
        self.gradientLayers = gradientLayers
        self.useAffinity = useAffinity
    }

    public struct Output {
        public var maps: ClassMaps
        /// Layer weights applied to `layers`, normalised to sum 1 (nil for none and ACR without affinity).
        public var weights: [Float]?
        /// areaM paper weighting found no preferred layer for this image and used equal weights.
        public var equalWeightsFallback = false
    }

    /// Refines one image. `seeds` and `attention` must describe the same image: the seeds' grid is
    /// the attention's token grid and, for ACR, the classes agree (the caller checks and names files).
    public func refine(seeds: ClassMaps, attention: AttentionMaps) throws -> Output {
        let k = seeds.classes.count, n = attention.tokens
        precondition(seeds.height * seeds.width == n, "seeds at \(seeds.height)x\(seeds.width) for \(n) tokens")
        func finish(_ values: [Float], weights: [Float]?, fallback: Bool = false) -> Output {
            var values = values
            AffinityRefinement.normalise(&values, count: k, tokens: n)
            return Output(maps: ClassMaps(classes: seeds.classes, height: seeds.height, width: seeds.width, values: values),
                          weights: weights, equalWeightsFallback: fallback)
        }
        let equal = [Float](repeating: 1 / Float(layers.count), count: layers.count)
        switch method {
        case .none:
            return finish(seeds.values, weights: nil)
        case .mean:
            return finish(gather(seeds, attention, weights: equal), weights: equal)
        case .areaM:
            var weights: [Float], fallback = false
            switch weighting {
            case .paper:
                if let w = AReAMWeights.paper(maps: seeds.values, count: k, tokens: n, attention: attention.patchAttention, layers: layers) {
                    weights = w
                } else {
                    weights = equal
                    fallback = true
                }
            case .code:
                guard let all = codeWeights, all.count == attention.layers else {
                    preconditionFailure("areaM code weighting needs the split's layer weights (one per attention layer)")
                }
                weights = layers.map { all[$0] }
                guard weights.contains(where: { $0 > 0 }) else {
                    throw RefinementError("areaM code weighting gives every selected layer \(layers) weight 0 (the highest split-mean entropy); select more layers")
                }
            }
            let total = weights.reduce(0, +)
            weights = weights.map { $0 / total }
            return finish(gather(seeds, attention, weights: weights), weights: weights, fallback: fallback)
        case .acr:
            let affinity = useAffinity ? AffinityRefinement.combine(stacked: attention.patchAttention, tokens: n, layers: layers, weights: equal) : nil
            // Gradient maps are in the attention record's class order; reorder to the seeds'.
            let maps = GradientLocalisation.maps(attention, gradientLayers: gradientLayers, affinity: affinity)
            var values = [Float](repeating: 0, count: k * n)
            for (m, c) in seeds.classes.enumerated() {
                guard let source = attention.classes.firstIndex(of: c) else {
                    preconditionFailure("class \(c) has no gradient row")
                }
                values.replaceSubrange(m * n..<(m + 1) * n, with: maps[source * n..<(source + 1) * n])
            }
            return finish(values, weights: useAffinity ? equal : nil)
        }
    }

    /// Seeds x (weighted affinity of `layers`)^T.
    func gather(_ seeds: ClassMaps, _ attention: AttentionMaps, weights: [Float]) -> [Float] {
        let k = seeds.classes.count, n = attention.tokens
        guard k > 0 else { return [] }
        let affinity = AffinityRefinement.combine(stacked: attention.patchAttention, tokens: n, layers: layers, weights: weights)
        return AffinityRefinement.gather(maps: seeds.values, count: k, tokens: n, affinity: affinity)
    }
}

/// Running per-layer statistics of the weights actually applied.
public struct WeightStatistics {
    public var sum: [Double], low: [Double], high: [Double], images = 0
    public init(layers: Int) {
        sum = [Double](repeating: 0, count: layers)
        low = [Double](repeating: .infinity, count: layers)
        high = [Double](repeating: -.infinity, count: layers)
    }
    public mutating func add(_ weights: [Float]) {
        for (i, w) in weights.enumerated() {
            sum[i] += Double(w); low[i] = min(low[i], Double(w)); high[i] = max(high[i], Double(w))
        }
        images += 1
    }
    public var mean: [Double] { sum.map { images > 0 ? $0 / Double(images) : .nan } }
}
