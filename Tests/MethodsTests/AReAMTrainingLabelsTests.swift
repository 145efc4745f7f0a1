import Foundation
@testable import AReAM
import TestSupport
import XCTest
@testable import Localization

/// AReAM's online labels: affinity pairs (eq. 14), token sampling, layer weights (eq. 8, 16 and
/// the code's variant) and the whole chain CAM -> fused refinement -> PAR -> thresholds.
final class AReAMTrainingLabelsTests: XCTestCase {
    func counts(_ affinity: [UInt8]) -> (positive: Int, negative: Int, ignored: Int) {
        (affinity.filter { $0 == 1 }.count, affinity.filter { $0 == 0 }.count, affinity.filter { $0 == 255 }.count)
    }

    func testAffinityPairCountsFromATokenMap() {
        // 3 x 3 tokens: class 2 on three, background on five, one ignored.
        let tokens: [UInt8] = [2, 2, 0,
                               2, 255, 0,
                               0, 0, 0]
        let affinity = AReAMTrainingLabels.affinityLabels(tokenLabels: tokens)
        let c = counts(affinity)
        XCTAssertEqual(c.positive, 3 * 3 + 5 * 5)   // ordered pairs within each label, diagonal included
        XCTAssertEqual(c.negative, 2 * 3 * 5)       // class-background pairs, both orders
        XCTAssertEqual(c.ignored, 81 - 34 - 30)     // every pair touching the ignored token: 9 + 9 - 1
        XCTAssertEqual(affinity[0 * 9 + 3], 1)
        XCTAssertEqual(affinity[0 * 9 + 2], 0)
        XCTAssertEqual(affinity[4 * 9 + 4], 255)
        XCTAssertEqual(affinity[8 * 9 + 4], 255)
        for i in 0..<9 { for j in 0..<9 { XCTAssertEqual(affinity[i * 9 + j], affinity[j * 9 + i]) } }
        // Two classes differ from each other as well as from background.
        let two = counts(AReAMTrainingLabels.affinityLabels(tokenLabels: [1, 3, 0, 1]))
        XCTAssertEqual(two.positive, 4 + 1 + 1)
        XCTAssertEqual(two.negative, 16 - 6)
        XCTAssertEqual(two.ignored, 0)
    }

    func testTokenLabelsSampleTheTopLeftPixelOfEachPatch() {
        // Nearest with scale 4: token (y, x) reads pixel (4y, 4x).
        let pixels = (0..<64).map { UInt8($0) }
        XCTAssertEqual(AReAMTrainingLabels.tokenLabels(pixelLabels: pixels, size: 8, grid: 2), [0, 4, 32, 36])
        XCTAssertEqual(AReAMTrainingLabels.tokenLabels(pixelLabels: pixels, size: 8, grid: 8), pixels)
    }

    // A 16 x 16 image on a 4 x 4 token grid: the left half bright, the right half dark.
    static let grid = 4, size = 16, n = 16
    static var halves: [Float] {
        var p = [Float](repeating: 0, count: size * size * 3)
        for y in 0..<size { for x in 0..<size { for c in 0..<3 { p[(y * size + x) * 3 + c] = x < size / 2 ? 200 + Float(c) : 20 } } }
        return p
    }
    static var identity: [Float] { (0..<n * n).map { $0 / n == $0 % n ? 1 : 0 } }
    static var uniform: [Float] { [Float](repeating: 1 / Float(n), count: n * n) }
    static func column(_ i: Int) -> Int { i % grid }

    func testObjectOnTheLeftBecomesClassTokensAndTheRightBackground() {
        // Raw CAM scores: high on token columns 0-1, negative on 2-3 (ReLU + min-max -> 1 / 0).
        let cam = (0..<Self.n).map { Self.column($0) < 2 ? Float(5) : -1 }
        let image = AReAMTrainingLabels.Image(classes: [3], cams: cam, attention: Self.identity + Self.identity,
                                              pixels: Self.halves, size: Self.size)
        let empty = AReAMTrainingLabels.Image(classes: [], cams: [], attention: Self.identity + Self.identity,
                                              pixels: Self.halves, size: Self.size)
        // A class whose CAM has no positive score anywhere: no localisation to learn from.
        let blank = AReAMTrainingLabels.Image(classes: [2], cams: [Float](repeating: -1, count: Self.n), attention: Self.identity + Self.identity,
                                              pixels: Self.halves, size: Self.size)
        let batch = AReAMTrainingLabels().make([image, empty, blank], grid: Self.grid, layers: 2)
        for i in 0..<Self.n {
            switch Self.column(i) {
            case 0, 1: XCTAssertEqual(batch.tokenLabels[i], 3, "token \(i)")
            case 2: XCTAssertNotEqual(batch.tokenLabels[i], 3, "token \(i)")  // the object's edge: background or ignored
            default: XCTAssertEqual(batch.tokenLabels[i], 0, "token \(i)")
            }
        }
        // An image without classes is all background: every pair positive.
        XCTAssertEqual(Array(batch.tokenLabels[Self.n..<(2 * Self.n)]), [UInt8](repeating: 0, count: Self.n))
        XCTAssertEqual(Array(batch.affinity[(Self.n * Self.n)..<(2 * Self.n * Self.n)]), [UInt8](repeating: 1, count: Self.n * Self.n))
        // The blank CAM's image is ignored throughout.
        XCTAssertEqual(batch.blankCams, 1)
        XCTAssertEqual(Array(batch.tokenLabels[(2 * Self.n)...]), [UInt8](repeating: 255, count: Self.n))
        XCTAssertEqual(Array(batch.affinity[(2 * Self.n * Self.n)...]), [UInt8](repeating: 255, count: Self.n * Self.n))
        XCTAssertEqual(Array(batch.affinity[0..<(Self.n * Self.n)]),
                       AReAMTrainingLabels.affinityLabels(tokenLabels: Array(batch.tokenLabels[0..<Self.n])))
    }

    func testFusedAttentionSpreadsTheCamBeforeThresholds() {
        // The CAM fires on token 0 only; an attention where every left-half token looks at token 0
        // (and right-half tokens at themselves) re-activates the whole left half (eq. 9).
        var cam = [Float](repeating: 0, count: Self.n)
        cam[0] = 1
        var spreading = [Float](repeating: 0, count: Self.n * Self.n)
        for i in 0..<Self.n { spreading[i * Self.n + (Self.column(i) < 2 ? 0 : i)] = 1 }
        func labels(_ attention: [Float]) -> [UInt8] {
            AReAMTrainingLabels(weighting: .paper).make([.init(classes: [1], cams: cam, attention: attention, pixels: Self.halves, size: Self.size)],
                                                        grid: Self.grid, layers: 1).tokenLabels
        }
        let spread = labels(spreading), plain = labels(Self.identity)
        let farLeft = 3 * Self.grid + 1  // row 3, column 1: left half, away from token 0
        XCTAssertEqual(spread[farLeft], 1)
        XCTAssertNotEqual(plain[farLeft], 1)
        XCTAssertEqual(spread[Self.grid - 1], 0)
    }

    func testLayerWeights() {
        // Layer 0 identity (a peaked refined map), layer 1 uniform (a flat one: maximal entropy).
        let cam = (0..<Self.n).map { Self.column($0) < 2 ? Float(1) : 0 }
        let image = AReAMTrainingLabels.Image(classes: [1], cams: cam, attention: Self.identity + Self.uniform, pixels: Self.halves, size: Self.size)
        // Independent entropy of the identity layer: softmax of the map (8 ones, 8 zeros).
        let e = exp(1.0), z = 8 * e + 8
        let entropy = -(8 * (e / z) * log(e / z) + 8 * (1 / z) * log(1 / z)) / log(16.0)

        let code = AReAMTrainingLabels(weighting: .code).make([image], grid: Self.grid, layers: 2)
        XCTAssertEqual(code.fusionWeights[0], [1, 0])   // min-max: the flat layer weighs nothing
        XCTAssertEqual(code.lossWeights, [0, 1])         // and is the one supervised
        // One layer (or equal entropies): nothing to normalise, the term stays on.
        let single = AReAMTrainingLabels.Image(classes: [1], cams: cam, attention: Self.identity, pixels: Self.halves, size: Self.size)
        let one = AReAMTrainingLabels(weighting: .code).make([single], grid: Self.grid, layers: 1)
        XCTAssertEqual(one.fusionWeights[0], [1])
        XCTAssertEqual(one.lossWeights, [1])

        let paper = AReAMTrainingLabels(weighting: .paper).make([image, image], grid: Self.grid, layers: 2)
        XCTAssertEqual(paper.fusionWeights[0], [1, 0])   // w(uniform) = 1 - 1 = 0, normalised to sum 1
        XCTAssertEqual(Double(paper.lossWeights[0]), entropy, accuracy: 1e-5)  // 1 - w(l) = H(l) / log n
        XCTAssertEqual(Double(paper.lossWeights[1]), 1, accuracy: 1e-5)
        // A blank CAM adds nothing to the weights.
        let blank = AReAMTrainingLabels.Image(classes: [1], cams: [Float](repeating: -2, count: Self.n), attention: Self.uniform + Self.identity,
                                              pixels: Self.halves, size: Self.size)
        let mixed = AReAMTrainingLabels(weighting: .paper).make([image, blank], grid: Self.grid, layers: 2)
        XCTAssertEqual(mixed.lossWeights, paper.lossWeights)
        XCTAssertEqual(mixed.fusionWeights[0], paper.fusionWeights[0])
    }
}
