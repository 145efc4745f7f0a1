import Foundation
import StageKit
import XCTest

private enum Colour: String, Codable, CaseIterable { case red, blue }

private struct Ranged: StageParameters {
    var epochs = 3
    var lr = 0.001
    var ratio = 1.0  // a Double whose default is whole: still a number, not an integer
    var scales = [1.0]
    var dilations = [1, 2]
    var layers: [Int] = []
    var flip = true
    var name = "x"
    var colour = Colour.red
    static let rules: [String: ParameterRule] = ["epochs": .atLeast(1), "lr": .positive, "ratio": .probability, "scales": .between(0.1, 8)]
}

final class ParameterRulesTests: XCTestCase {
    func testKindsComeFromTheParameterTypes() throws {
        XCTAssertEqual(try ParameterMerge.kinds(Ranged.self), [
            "epochs": .integer, "lr": .number, "ratio": .number, "scales": .number, "dilations": .integer, "layers": .integer,
        ])
    }

    func testRangesInWordsAndBounds() {
        XCTAssertEqual(ParameterRule.probability.range, "in [0, 1]")
        XCTAssertEqual(ParameterRule.fraction.range, "in (0, 1]")
        XCTAssertEqual(ParameterRule.positive.range, "> 0")
        XCTAssertEqual(ParameterRule.atLeast(1).range, ">= 1")
        XCTAssertEqual(ParameterRule(max: 2, maxInclusive: false).range, "< 2")
        XCTAssertTrue(ParameterRule.probability.accepts(0) && ParameterRule.probability.accepts(1))
        XCTAssertFalse(ParameterRule.fraction.accepts(0))
        XCTAssertFalse(ParameterRule.positive.accepts(.nan))
        XCTAssertFalse(ParameterRule.nonNegative.accepts(.infinity))
    }

    func testMergeRefusesFractionsForIntegersAndValuesOutOfRange() throws {
        func refusal(_ layer: [String: Any]) -> String? {
            do {
                _ = try ParameterMerge.merge(Ranged.self, layers: [layer])
                return nil
            } catch {
                return "\(error)"
            }
        }
        XCTAssertEqual(refusal(["epochs": 2.5]), "parameter 'epochs' must be a whole number, got 2.5")
        XCTAssertEqual(refusal(["dilations": [1, 1.5]]), "parameter 'dilations' must be a whole number, got [1,1.5] (1.5)")
        XCTAssertEqual(refusal(["epochs": 0]), "parameter 'epochs' must be >= 1, got 0")
        XCTAssertEqual(refusal(["lr": -0.1]), "parameter 'lr' must be > 0, got -0.1")
        XCTAssertEqual(refusal(["ratio": 1.5]), "parameter 'ratio' must be in [0, 1], got 1.5")
        XCTAssertEqual(refusal(["scales": [1, 100]]), "parameter 'scales' must be in [0.1, 8] (each element), got [1,100]")
        XCTAssertEqual(refusal(["lr": "NaN"]), "parameter 'lr' must be a finite number, got NaN")
        XCTAssertEqual(refusal(["lr": "1e400"]), "parameter 'lr' must be a finite number, got 1e400")
        // Whole numbers written as decimals are whole; booleans and strings are not numbers.
        XCTAssertNil(refusal(["epochs": 2.0, "ratio": 1, "flip": false, "name": "7", "layers": [0, 3]]))
        let (params, _) = try ParameterMerge.merge(Ranged.self, layers: [["epochs": 2.0]])
        XCTAssertEqual(params.epochs, 2)
    }
}
