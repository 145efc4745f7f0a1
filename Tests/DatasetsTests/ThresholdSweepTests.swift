import Primitives
import Imaging
import XCTest
@testable import Datasets

final class ThresholdSweepTests: XCTestCase {
    /// Every threshold's confusion matrix equals the one from labelling each pixel directly.
    func testMatchesDirectArgmaxAtEveryThreshold() {
        var rng = SplitMix64(seed: 11)
        let classCount = 5, pixels = 300
        let thresholds = ThresholdSweep.range(start: 0, stop: 0.8, step: 0.05)
        XCTAssertEqual(thresholds.count, 17)
        var sweep = ThresholdSweep(thresholds: thresholds, classCount: classCount)
        var direct = [ConfusionMatrix](repeating: ConfusionMatrix(classCount: classCount), count: thresholds.count)
        for image in 0..<4 {
            let classes = image == 3 ? [] : [1 + image, 4]  // one image with no class maps at all
            // Scores on a 0.05 grid hit thresholds exactly: ties must go to background.
            let scores = (0..<classes.count * pixels).map { _ in Float(Int(rng.next() % 21)) * 0.05 }
            let truth = (0..<pixels).map { _ -> UInt8 in let r = rng.next() % 7; return r == 6 ? 255 : UInt8(r % 5) }
            scores.withUnsafeBufferPointer { s in truth.withUnsafeBufferPointer { t in sweep.add(scores: s, classes: classes, truth: t) } }
            for (j, t) in thresholds.enumerated() {
                var labels = [UInt8](repeating: 0, count: pixels)
                for p in 0..<pixels {
                    var best = Float(t)
                    for (k, c) in classes.enumerated() where scores[k * pixels + p] > best {
                        best = scores[k * pixels + p]
                        labels[p] = UInt8(c)
                    }
                }
                direct[j].add(prediction: LabelMap(width: pixels, height: 1, labels: labels), truth: LabelMap(width: pixels, height: 1, labels: truth))
            }
        }
        for j in thresholds.indices { XCTAssertEqual(sweep.confusion(at: j), direct[j], "threshold \(thresholds[j])") }
        let best = sweep.best
        XCTAssertEqual(best.meanIoU, direct.map(\.meanIoU).max()!, accuracy: 1e-12)
    }
}
