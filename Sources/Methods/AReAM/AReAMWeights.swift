import Foundation
import Primitives
import Localization

/// Where AReAM's layer weights come from (paper eq. 8 versus the released code).
public enum AReAMWeighting: String, ParameterChoice, Sendable {
    /// Per image: w(l) = 1 - H(l) / log n. Eq. 8 prints w = 1 - H with H in nats (or bits) over n
    /// positions, which is negative as soon as H > 1 (log 64 = 4.16); dividing by log n, the
    /// entropy's maximum, keeps the intent (low entropy -> high weight) with w in [0, 1].
    case paper
    /// Over the split: H(l) averaged over all images, min-max normalised across all layers, w = 1 - that
    /// (Jessie459/AReAM ent_voc_*.py + camutils.gen_msf_cam). The log base drops out of the min-max.
    case code
}

/// AReAM layer weights.
public enum AReAMWeights {
    /// Paper variant for one image: w(l) = 1 - H(l) / log n for each selected layer (n = tokens).
    /// Returns nil when every weight is 0 (all refined maps uniform, e.g. an image without classes),
    /// where no layer is preferred.
    public static func paper(maps: [Float], count: Int, tokens: Int, attention: [Float], layers: [Int]) -> [Float]? {
        let weights = layers.map { l -> Float in
            Float(max(0, 1 - AffinityRefinement.normalisedRefinedEntropy(maps: maps, count: count, tokens: tokens, stacked: attention, layer: l)))
        }
        return weights.contains(where: { $0 > 0 }) ? weights : nil
    }

    /// Code variant: split-mean entropies of all layers, min-max normalised across the layers;
    /// weight = 1 - normalised entropy, so the highest-entropy layer weighs 0, the lowest 1.
    /// Equal entropies give equal weights.
    public static func code(meanEntropies: [Double]) -> [Float] {
        guard let low = meanEntropies.min(), let high = meanEntropies.max(), high > low else {
            return [Float](repeating: 1, count: meanEntropies.count)
        }
        return meanEntropies.map { Float(1 - ($0 - low) / (high - low)) }
    }
}

