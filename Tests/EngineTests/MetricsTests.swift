import TestSupport
import XCTest
@testable import Engine

final class MetricsTests: XCTestCase {
    /// Ranked positives at positions 1 and 3 of 4: AP = (1/2)(1/1) + (1/2)(2/3) = 5/6.
    func testAveragePrecisionByHand() {
        let ap = MultiLabelMetrics.averagePrecision([(0.9, true), (0.8, false), (0.7, true), (0.1, false)])
        XCTAssertEqual(ap, 5.0 / 6.0, accuracy: 1e-12)
        // Ties count together: both items at 0.5 (one positive) give precision 1/2 at recall 1.
        XCTAssertEqual(MultiLabelMetrics.averagePrecision([(0.5, false), (0.5, true)]), 0.5, accuracy: 1e-12)
        XCTAssert(MultiLabelMetrics.averagePrecision([(0.5, false)]).isNaN)
    }

    func testF1AndMAP() {
        // 3 images x 2 classes. Class 0: truth 1,0,1; predicted 1,1,0 -> TP 1, FP 1, FN 1: F1 = 0.5.
        // Class 1: truth 0,1,0; predicted 0,1,0 -> F1 = 1. Micro: TP 2, FP 1, FN 1 -> 4/6.
        let scores: [Float] = [0.9, 0.2, 0.6, 0.8, 0.4, 0.3]
        let labels: [Float] = [1, 0, 0, 1, 1, 0]
        let m = MultiLabelMetrics.compute(scores: scores, labels: labels, classes: 2)
        XCTAssertEqual(m.perClassF1[0], 0.5, accuracy: 1e-12)
        XCTAssertEqual(m.perClassF1[1], 1, accuracy: 1e-12)
        XCTAssertEqual(m.macroF1, 0.75, accuracy: 1e-12)
        XCTAssertEqual(m.microF1, 4.0 / 6.0, accuracy: 1e-12)
        // Class 0 ranking 0.9(+) 0.6(-) 0.4(+): AP = 1/2 + 1/2 * 2/3 = 5/6; class 1 ranked first: 1.
        XCTAssertEqual(m.perClassAP[0], 5.0 / 6.0, accuracy: 1e-12)
        XCTAssertEqual(m.mAP, (5.0 / 6.0 + 1) / 2, accuracy: 1e-12)
    }
}
