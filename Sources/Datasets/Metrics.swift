import Imaging

/// Pixel confusion counts for segmentation scoring, classes 0...C (0 = background).
///
/// Rows are the truth, columns the prediction. Truth 255 (ignore) is skipped. A prediction
/// outside 0...C (e.g. 255 left in a pseudo label) counts as a miss of the true class: it adds to
/// that class's false negatives and to no class's false positives. Counts are 64-bit.
public struct ConfusionMatrix: Equatable, Sendable {
    /// Number of classes including background (C + 1).
    public let classCount: Int
    /// `classCount x classCount`, row-major [truth][prediction].
    public private(set) var counts: [Int64]
    /// Per true class: pixels whose prediction was not a valid class.
    public private(set) var invalidPredictions: [Int64]

    public init(classCount: Int) {
        precondition(classCount >= 1 && classCount <= 255, "confusion matrix needs 1...255 classes")
        self.classCount = classCount
        counts = [Int64](repeating: 0, count: classCount * classCount)
        invalidPredictions = [Int64](repeating: 0, count: classCount)
    }

    /// A matrix from counts already accumulated elsewhere (row-major [truth][prediction]).
    public init(classCount: Int, counts: [Int64], invalidPredictions: [Int64]? = nil) {
        precondition(counts.count == classCount * classCount, "\(counts.count) counts for \(classCount) classes")
        self.classCount = classCount
        self.counts = counts
        self.invalidPredictions = invalidPredictions ?? [Int64](repeating: 0, count: classCount)
    }

    public subscript(truth: Int, prediction: Int) -> Int64 { counts[truth * classCount + prediction] }

    public mutating func add(prediction: UnsafeBufferPointer<UInt8>, truth: UnsafeBufferPointer<UInt8>) {
        precondition(prediction.count == truth.count, "prediction has \(prediction.count) pixels, truth \(truth.count)")
        let k = classCount
        counts.withUnsafeMutableBufferPointer { counts in
            invalidPredictions.withUnsafeMutableBufferPointer { invalid in
                for i in 0..<truth.count {
                    let t = Int(truth[i])
                    if t >= k { continue }  // ignore (255), and any other out-of-range truth
                    let p = Int(prediction[i])
                    if p < k { counts[t * k + p] += 1 } else { invalid[t] += 1 }
                }
            }
        }
    }

    public mutating func add(prediction: LabelMap, truth: LabelMap) {
        precondition(prediction.width == truth.width && prediction.height == truth.height,
                     "prediction \(prediction.width)x\(prediction.height) does not match truth \(truth.width)x\(truth.height)")
        prediction.labels.withUnsafeBufferPointer { p in truth.labels.withUnsafeBufferPointer { t in add(prediction: p, truth: t) } }
    }

    public mutating func merge(_ other: ConfusionMatrix) {
        precondition(other.classCount == classCount, "merging confusion matrices of \(other.classCount) and \(classCount) classes")
        for i in counts.indices { counts[i] += other.counts[i] }
        for i in invalidPredictions.indices { invalidPredictions[i] += other.invalidPredictions[i] }
    }

    /// IoU per class, TP / (TP + FP + FN); NaN for a class absent from both truth and prediction.
    public var iou: [Double] {
        (0..<classCount).map { c in
            let tp = self[c, c]
            var fn = invalidPredictions[c], fp: Int64 = 0
            for other in 0..<classCount where other != c {
                fn += self[c, other]
                fp += self[other, c]
            }
            let union = tp + fp + fn
            return union == 0 ? .nan : Double(tp) / Double(union)
        }
    }

    /// Mean IoU over the classes that occur (NaN entries skipped); NaN if none does.
    public var meanIoU: Double {
        let present = iou.filter { !$0.isNaN }
        return present.isEmpty ? .nan : present.reduce(0, +) / Double(present.count)
    }

    /// Class-agnostic IoU of foreground (every class but 0, background) against background: how
    /// well objects are found, whatever class they are given. NaN when neither has foreground.
    public var foregroundIoU: Double {
        var tp: Int64 = 0, fp: Int64 = 0, fn: Int64 = 0
        for t in 1..<classCount {
            fn += self[t, 0] + invalidPredictions[t]
            for p in 1..<classCount { tp += self[t, p] }
        }
        for p in 1..<classCount { fp += self[0, p] }
        let union = tp + fp + fn
        return union == 0 ? .nan : Double(tp) / Double(union)
    }

    /// Of the foreground pixels predicted as foreground, the fraction given their true class:
    /// low values mean class confusion rather than poor localisation. NaN when there are none.
    public var foregroundClassAccuracy: Double {
        var found: Int64 = 0, right: Int64 = 0
        for t in 1..<classCount {
            right += self[t, t]
            for p in 1..<classCount { found += self[t, p] }
        }
        return found == 0 ? .nan : Double(right) / Double(found)
    }

    /// True foreground pixels (classes 1...C; `foreground: false`, background 0) predicted as
    /// background (0).
    public func predictedBackground(foreground: Bool) -> Int64 {
        foreground ? (1..<classCount).reduce(Int64(0)) { $0 + self[$1, 0] } : self[0, 0]
    }

    /// True foreground (or background) pixels scored, invalid predictions included.
    public func total(foreground: Bool) -> Int64 {
        (foreground ? 1..<classCount : 0..<1).reduce(Int64(0)) { sum, t in
            sum + (0..<classCount).reduce(Int64(0)) { $0 + self[t, $1] } + invalidPredictions[t]
        }
    }

    /// Of the true foreground pixels, the fraction predicted background: the object pixels a map
    /// misses outright. NaN when there is no foreground.
    public var foregroundAsBackground: Double {
        let all = total(foreground: true)
        return all == 0 ? .nan : Double(predictedBackground(foreground: true)) / Double(all)
    }

    /// Of the true background pixels, the fraction predicted as some object class. NaN when there
    /// is no background.
    public var backgroundAsForeground: Double {
        let all = total(foreground: false)
        return all == 0 ? .nan : Double((1..<classCount).reduce(Int64(0)) { $0 + self[0, $1] }) / Double(all)
    }

    /// Each truth row divided by its total (invalid predictions included in the total): row t,
    /// column p is the fraction of class-t pixels predicted as p. NaN rows for absent classes.
    public var rowNormalized: [[Double]] {
        (0..<classCount).map { t in
            let row = (0..<classCount).map { self[t, $0] }
            let total = row.reduce(0, +) + invalidPredictions[t]
            return row.map { total == 0 ? .nan : Double($0) / Double(total) }
        }
    }

    /// Scored (non-ignore) pixels.
    public var total: Int64 { counts.reduce(0, +) + invalidPredictions.reduce(0, +) }

    /// Fraction of scored pixels predicted correctly.
    public var pixelAccuracy: Double {
        let correct = (0..<classCount).reduce(Int64(0)) { $0 + self[$1, $1] }
        return total == 0 ? .nan : Double(correct) / Double(total)
    }
}

/// The naive segmentation the benchmark's backgrounds are built to defeat: grey-level Otsu
/// thresholding. Per image, the grey histogram is split at Otsu's threshold; the side with fewer
/// pixels (brighter side on a tie) is called foreground and labelled with the image's largest
/// present class (the labelled class with the most mask pixels; it uses the true mask only to
/// pick that one class, which favours the baseline). Everything else is background.
public enum OtsuBaseline {
    public static let summary = "Otsu threshold on grey level per image; minority side = foreground, labelled with the image's largest present class"

    /// Otsu's threshold t over a 256-bin histogram: values <= t form the first class.
    public static func threshold(histogram: [Int]) -> Int {
        let total = histogram.reduce(0, +)
        guard total > 0 else { return 127 }
        let sumAll = histogram.enumerated().reduce(0.0) { $0 + Double($1.offset) * Double($1.element) }
        var weightBelow = 0.0, sumBelow = 0.0
        var best = 0, bestVariance = -1.0
        for t in 0..<255 {
            weightBelow += Double(histogram[t])
            sumBelow += Double(t) * Double(histogram[t])
            let weightAbove = Double(total) - weightBelow
            if weightBelow == 0 || weightAbove == 0 { continue }
            let difference = sumBelow / weightBelow - (sumAll - sumBelow) / weightAbove
            let variance = weightBelow * weightAbove * difference * difference
            if variance > bestVariance {
                bestVariance = variance
                best = t
            }
        }
        return best
    }

    /// The class (1...C) among `labels` with the most pixels in `mask`, or nil when none is labelled.
    public static func largestPresentClass(mask: LabelMap, labels: [UInt8]) -> UInt8? {
        let histogram = mask.histogram()
        var best: UInt8? = nil, bestCount = -1
        for (index, flag) in labels.enumerated() where flag != 0 && histogram[index + 1] > bestCount {
            best = UInt8(index + 1)
            bestCount = histogram[index + 1]
        }
        return best
    }

    public static func predict(image: RGBImage, mask: LabelMap, labels: [UInt8]) -> LabelMap {
        guard let label = largestPresentClass(mask: mask, labels: labels) else {
            return LabelMap(width: image.width, height: image.height)
        }
        let grey = image.luminance()
        var histogram = [Int](repeating: 0, count: 256)
        for value in grey { histogram[Int(value)] += 1 }
        let t = threshold(histogram: histogram)
        let above = histogram[(t + 1)...].reduce(0, +)
        let foregroundIsBright = above * 2 <= grey.count
        let prediction = grey.map { ($0 > t) == foregroundIsBright ? label : 0 }
        return LabelMap(width: image.width, height: image.height, labels: prediction)
    }
}
