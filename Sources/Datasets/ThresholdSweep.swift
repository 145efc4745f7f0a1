/// Scores class maps against ground truth for a whole range of constant background scores at once.
///
/// With background score t appended to the class scores, a pixel is background exactly when
/// t >= its best class score (argmax takes the first maximum, and background comes first), so a
/// pixel is foreground for a prefix of the increasing thresholds and background after. Each pixel
/// is counted once under (prefix length, truth, best class); the confusion matrix of any threshold
/// is then a sum over prefix lengths. One pass over the pixels serves every threshold.
public struct ThresholdSweep: Sendable {
    public let thresholds: [Double]
    public let classCount: Int
    /// [(thresholds.count + 1) x classCount x classCount]
    private var counts: [Int64]

    public init(thresholds: [Double], classCount: Int) {
        precondition(!thresholds.isEmpty && zip(thresholds, thresholds.dropFirst()).allSatisfy { $0 < $1 }, "thresholds must increase")
        self.thresholds = thresholds
        self.classCount = classCount
        counts = [Int64](repeating: 0, count: (thresholds.count + 1) * classCount * classCount)
    }

    /// `start, start + step, ...` up to and including `stop` (within rounding).
    public static func range(start: Double, stop: Double, step: Double) -> [Double] {
        let n = Int(((stop - start) / step + 1e-9).rounded(.down)) + 1
        return (0..<max(n, 1)).map { start + Double($0) * step }
    }

    /// Adds one image: `scores` planar [classes.count, pixels] at ground-truth resolution.
    public mutating func add(scores: UnsafeBufferPointer<Float>, classes: [Int], truth: UnsafeBufferPointer<UInt8>) {
        let pixels = truth.count, k = classCount
        precondition(scores.count == classes.count * pixels, "scores for \(classes.count) classes do not cover \(pixels) pixels")
        precondition(classes.allSatisfy { $0 >= 1 && $0 < k }, "class ids \(classes) outside 1..<\(k)")
        // Compared in Float, as a stage appending a Float background score to Float maps does.
        let thresholds = self.thresholds.map { Float($0) }
        counts.withUnsafeMutableBufferPointer { counts in
            thresholds.withUnsafeBufferPointer { t in
                for p in 0..<pixels {
                    let truthClass = Int(truth[p])
                    if truthClass >= k { continue }
                    var best: Float = -.infinity, bestClass = 0
                    for (m, c) in classes.enumerated() where scores[m * pixels + p] > best {
                        best = scores[m * pixels + p]
                        bestClass = c
                    }
                    // Number of thresholds strictly below the best score.
                    var lo = 0, hi = t.count
                    while lo < hi {
                        let mid = (lo + hi) / 2
                        if t[mid] < best { lo = mid + 1 } else { hi = mid }
                    }
                    counts[(lo * k + truthClass) * k + bestClass] += 1
                }
            }
        }
    }

    /// Every count, [(thresholds.count + 1) x classCount x classCount]: what a shard stores so that
    /// a merge can add the sweeps of disjoint images (`init(thresholds:classCount:counts:)`, `merge`).
    public var rawCounts: [Int64] { counts }

    /// A sweep from counts stored by `rawCounts`; nil when they do not fit the thresholds and classes.
    public init?(thresholds: [Double], classCount: Int, counts: [Int64]) {
        self.init(thresholds: thresholds, classCount: classCount)
        guard counts.count == self.counts.count else { return nil }
        self.counts = counts
    }

    public mutating func merge(_ other: ThresholdSweep) {
        precondition(other.thresholds == thresholds && other.classCount == classCount)
        for i in counts.indices { counts[i] += other.counts[i] }
    }

    /// The confusion matrix at threshold index `j`.
    public func confusion(at j: Int) -> ConfusionMatrix {
        let k = classCount
        var matrix = [Int64](repeating: 0, count: k * k)
        for prefix in 0...thresholds.count {
            for truth in 0..<k {
                for predicted in 0..<k {
                    let n = counts[(prefix * k + truth) * k + predicted]
                    if n == 0 { continue }
                    // Foreground for thresholds 0..<prefix, background from `prefix` on.
                    matrix[truth * k + (j < prefix ? predicted : 0)] += n
                }
            }
        }
        return ConfusionMatrix(classCount: k, counts: matrix)
    }

    /// mIoU at every threshold.
    public var meanIoUs: [Double] { thresholds.indices.map { confusion(at: $0).meanIoU } }

    /// The threshold with the highest mIoU (the first on ties).
    public var best: (index: Int, threshold: Double, meanIoU: Double) {
        let scores = meanIoUs
        var index = 0
        for i in scores.indices where scores[i] > scores[index] || scores[index].isNaN { index = i }
        return (index, thresholds[index], scores[index])
    }
}
