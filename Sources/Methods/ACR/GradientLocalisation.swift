import Foundation
import Localization

/// ACR eq. 7-8 for one image.
public enum GradientLocalisation {
    /// Per class c of `attention.classes`: g_c = mean over `gradientLayers` of the stored gradient
    /// rows (ReLU'd again, in case a producer did not), optionally spread by `affinity` (ACR eq. 8:
    /// g_c x A_bar); then ReLU + per-class min-max. Planar [classes, tokens].
    public static func maps(_ attention: AttentionMaps, gradientLayers: [Int], affinity: [Float]?) -> [Float] {
        let k = attention.classes.count, n = attention.tokens, layers = attention.layers
        var g = [Float](repeating: 0, count: k * n)
        guard k > 0 else { return g }
        let scale = 1 / Float(gradientLayers.count)
        attention.gradients.withUnsafeBufferPointer { source in
            g.withUnsafeMutableBufferPointer { out in
                for c in 0..<k {
                    let row = out.baseAddress! + c * n
                    for l in gradientLayers {
                        let input = source.baseAddress! + (c * layers + l) * n
                        for i in 0..<n { row[i] += max(input[i], 0) * scale }
                    }
                }
            }
        }
        var result = affinity.map { AffinityRefinement.spread(maps: g, count: k, tokens: n, affinity: $0) } ?? g
        AffinityRefinement.normalise(&result, count: k, tokens: n)
        return result
    }
}

