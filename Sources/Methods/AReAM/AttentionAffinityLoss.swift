import Engine
import Foundation

/// AReAM's attention-affinity loss (paper eq. 15) on one layer's raw attention logits.
///
/// With a(i, j) the head mean of the pre-softmax logits (the engine's `attnLogits`, i.e. scaled
/// q k^T) between patch tokens i and j, and affinity labels y(i, j) in {1, 0, 255 = ignore}:
///
///     L = mean over y = 1 of (1 - sigmoid(a))  +  mean over y = 0 of sigmoid(a)
///
/// Both means run over all pairs of the batch (as the reference code sums the whole batch before
/// dividing); an empty set contributes 0. The class token's row and column get no gradient.
public enum AttentionAffinityLoss {
    public static let ignore: UInt8 = 255

    public struct Result: Equatable, Sendable {
        /// The unweighted loss.
        public var loss: Double
        public var positives: Int
        public var negatives: Int
    }

    /// Pairs labelled 1 and 0 in `labels` [count].
    public static func counts(labels: UnsafePointer<UInt8>, count: Int) -> (positives: Int, negatives: Int) {
        var positives = 0, negatives = 0
        for i in 0..<count {
            if labels[i] == 1 { positives += 1 } else if labels[i] == 0 { negatives += 1 }
        }
        return (positives, negatives)
    }

    /// `logits` [B, H, T, T] (token 0 is the class token), `labels` [B, n, n] with n = T - 1.
    /// Returns the unweighted loss and ADDS `weight * dL/dlogits` into `gradient` [B, H, T, T]
    /// when given.
    @_specialize(where S == Float)
    public static func compute<S: EngineScalar>(
        logits: UnsafePointer<S>, labels: UnsafePointer<UInt8>, batch: Int, heads: Int, tokens: Int,
        gradient: UnsafeMutablePointer<S>? = nil, weight: S = 1
    ) -> Result {
        let T = tokens, n = T - 1
        precondition(n >= 1 && heads >= 1 && batch >= 0)
        let (positives, negatives) = counts(labels: labels, count: batch * n * n)
        if positives == 0 && negatives == 0 { return Result(loss: 0, positives: 0, negatives: 0) }
        let invH = 1 / S(heads)
        // d/da of each term, then spread evenly over the heads (a is their mean).
        let positiveScale = positives > 0 ? 1 / S(positives) : 0
        let negativeScale = negatives > 0 ? 1 / S(negatives) : 0
        var positiveSum = 0.0, negativeSum = 0.0
        let mean = UnsafeMutablePointer<S>.allocate(capacity: n)
        let slope = UnsafeMutablePointer<S>.allocate(capacity: n)
        defer { mean.deallocate(); slope.deallocate() }
        for b in 0..<batch {
            for i in 0..<n {
                let row = labels + (b * n + i) * n
                for j in 0..<n { mean[j] = 0 }
                for h in 0..<heads {
                    let src = logits + ((b * heads + h) * T + 1 + i) * T + 1
                    for j in 0..<n { mean[j] += src[j] }
                }
                var anyLabelled = false
                for j in 0..<n {
                    let y = row[j]
                    guard y <= 1 else { slope[j] = 0; continue }
                    anyLabelled = true
                    let a = mean[j] * invH
                    let s = 1 / (1 + S.engineExp(-a))
                    let ds = s * (1 - s)
                    if y == 1 {
                        positiveSum += Double(1 - s)
                        slope[j] = -ds * positiveScale
                    } else {
                        negativeSum += Double(s)
                        slope[j] = ds * negativeScale
                    }
                }
                guard let gradient, anyLabelled else { continue }
                let g = weight * invH
                for h in 0..<heads {
                    let dst = gradient + ((b * heads + h) * T + 1 + i) * T + 1
                    for j in 0..<n { dst[j] += g * slope[j] }
                }
            }
        }
        let loss = (positives > 0 ? positiveSum / Double(positives) : 0) + (negatives > 0 ? negativeSum / Double(negatives) : 0)
        return Result(loss: loss, positives: positives, negatives: negatives)
    }
}
