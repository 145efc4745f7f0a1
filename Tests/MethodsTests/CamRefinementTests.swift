import Datasets
import Foundation
import Imaging
@testable import AReAM
@testable import CAMRefinement
import TestSupport
import XCTest
@testable import Localization

final class CamRefinementTests: XCTestCase {
    // Attention over a 1 x 4 token chain, rows are distributions (row i: how token i attends).
    static let n = 4
    static var identity: [Float] { (0..<n * n).map { $0 / n == $0 % n ? 1 : 0 } }
    static var uniform: [Float] { [Float](repeating: 1 / Float(n), count: n * n) }
    /// Token i attends equally to itself and its neighbours on the chain.
    static var chain: [Float] {
        var a = [Float](repeating: 0, count: n * n)
        for i in 0..<n {
            let neighbours = (max(0, i - 1)...min(n - 1, i + 1))
            for j in neighbours { a[i * n + j] = 1 / Float(neighbours.count) }
        }
        return a
    }

    func record(_ layers: [[Float]], classes: [Int] = [], gradients: [Float] = []) -> AttentionMaps {
        AttentionMaps(layers: layers.count, tokens: Self.n, patchAttention: layers.flatMap { $0 },
                      classAttention: [Float](repeating: 0, count: layers.count * Self.n), classes: classes,
                      gradients: gradients.isEmpty ? [Float](repeating: 0, count: classes.count * layers.count * Self.n) : gradients)
    }

    func seeds(_ values: [Float], classes: [Int] = [1]) -> ClassMaps {
        ClassMaps(classes: classes, height: 1, width: Self.n, values: values)
    }

    func assertEqual(_ a: [Float], _ b: [Float], accuracy: Float = 1e-6, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, file: file, line: line) }
    }

    func testLayerSelection() throws {
        XCTAssertEqual(try LayerSelection.resolve([], layers: 6), [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(try LayerSelection.resolve([3, 0, -1], layers: 6), [3, 0, 5])
        XCTAssertThrowsError(try LayerSelection.resolve([6], layers: 6)) { error in
            XCTAssertEqual("\(error)", "layers: layer 6 does not exist (the attention has 6 layers: 0...5, or -6...-1 from the end)")
        }
        XCTAssertThrowsError(try LayerSelection.resolve([-7], layers: 6))
        XCTAssertThrowsError(try LayerSelection.resolve([1, -5], layers: 6)) { error in
            XCTAssertEqual("\(error)", "layers: layer 1 is selected twice ([1, -5])")
        }
    }

    func testNoneOnlyRenormalises() throws {
        let out = try CamRefiner(method: .none, layers: [0]).refine(seeds: seeds([0.2, 0.6, -1, 1.0]), attention: record([Self.chain]))
        assertEqual(out.maps.values, [0.2, 0.6, 0, 1])
        XCTAssertNil(out.weights)
    }

    /// Identity attention: every token gathers only itself, the seeds come back (normalised).
    func testMeanWithIdentityAttentionKeepsTheSeeds() throws {
        let values: [Float] = [0, 0.25, 1, 0.5, 1, 0, 0, 0.75]
        let out = try CamRefiner(method: .mean, layers: [0, 1]).refine(seeds: seeds(values, classes: [2, 5]),
                                                                     attention: record([Self.identity, Self.identity]))
        assertEqual(out.maps.values, values)
        XCTAssertEqual(out.maps.classes, [2, 5])
        XCTAssertEqual(out.weights, [0.5, 0.5])
    }

    /// Seed [0, 1, 0, 0] on the chain: token i gathers A[i][1]: [1/2, 1/3, 1/3, 0] -> min-max [1, 2/3, 2/3, 0].
    /// With identity as a second layer, mean = (chain + I) / 2 -> [1/4, 2/3, 1/6, 0] -> [3/8, 1, 1/4, 0].
    func testMeanSpreadsAlongTheAttention() throws {
        let seed = seeds([0, 1, 0, 0])
        let one = try CamRefiner(method: .mean, layers: [0]).refine(seeds: seed, attention: record([Self.chain, Self.identity]))
        assertEqual(one.maps.values, [1, 2.0 / 3, 2.0 / 3, 0])
        let both = try CamRefiner(method: .mean, layers: [0, 1]).refine(seeds: seed, attention: record([Self.chain, Self.identity]))
        assertEqual(both.maps.values, [0.375, 1, 0.25, 0])
        // Uniform attention gives every token the same value: nothing left after min-max.
        let flat = try CamRefiner(method: .mean, layers: [0]).refine(seeds: seed, attention: record([Self.uniform]))
        assertEqual(flat.maps.values, [0, 0, 0, 0])
    }

    /// Shannon entropy (nats) of softmax(v), computed directly.
    func entropyOfSoftmax(_ v: [Double]) -> Double {
        let z = v.map(exp).reduce(0, +)
        return -v.reduce(0) { acc, x in let p = exp(x) / z; return acc + p * log(p) }
    }

    /// Paper weighting: w = 1 - H / log n per layer; the uniform layer (maximal entropy) gets 0,
    /// the sharper layer gets the rest.
    func testAReAMPaperWeightsFavourTheLowEntropyLayer() throws {
        let seed = seeds([0, 1, 0, 0])
        let identityWeight = 1 - entropyOfSoftmax([0, 1, 0, 0]) / log(4)
        let chainWeight = 1 - entropyOfSoftmax([0.5, 1.0 / 3, 1.0 / 3, 0]) / log(4)
        XCTAssertGreaterThan(identityWeight, chainWeight)
        let weights = try XCTUnwrap(AReAMWeights.paper(maps: seed.values, count: 1, tokens: 4,
                                                       attention: [Self.identity, Self.chain, Self.uniform].flatMap { $0 }, layers: [0, 1, 2]))
        XCTAssertEqual(Double(weights[0]), identityWeight, accuracy: 1e-6)
        XCTAssertEqual(Double(weights[1]), chainWeight, accuracy: 1e-6)
        XCTAssertEqual(weights[2], 0, accuracy: 1e-6)

        let out = try CamRefiner(method: .areaM, layers: [0, 2], weighting: .paper).refine(seeds: seed, attention: record([Self.identity, Self.chain, Self.uniform]))
        assertEqual(try XCTUnwrap(out.weights), [1, 0])
        assertEqual(out.maps.values, [0, 1, 0, 0])
        XCTAssertFalse(out.equalWeightsFallback)

        // Identity and chain: Y = seed x (a I + b chain)^T with a, b the normalised weights.
        let mixed = try CamRefiner(method: .areaM, layers: [0, 1], weighting: .paper).refine(seeds: seed, attention: record([Self.identity, Self.chain]))
        let a = identityWeight / (identityWeight + chainWeight), b = 1 - a
        let raw = [b / 2, a + b / 3, b / 3, 0]
        assertEqual(mixed.maps.values, raw.map { Float($0 / raw.max()!) }, accuracy: 1e-5)
    }

    /// An image whose refined maps are uniform for every layer has no preferred layer.
    func testAReAMPaperFallsBackToEqualWeights() throws {
        let out = try CamRefiner(method: .areaM, layers: [0, 1], weighting: .paper).refine(seeds: seeds([0, 0, 0, 0]), attention: record([Self.uniform, Self.chain]))
        XCTAssertTrue(out.equalWeightsFallback)
        XCTAssertEqual(out.weights, [0.5, 0.5])
    }

    func testAReAMCodeWeightsAreOneMinusMinMaxEntropy() throws {
        assertEqual(AReAMWeights.code(meanEntropies: [0.9, 0.95, 0.925]), [1, 0, 0.5])
        assertEqual(AReAMWeights.code(meanEntropies: [0.5, 0.5]), [1, 1])
        // Weights [1, 0, 0.5] over all three layers -> 2/3 identity + 1/3 chain.
        let refiner = CamRefiner(method: .areaM, layers: [0, 1, 2], weighting: .code, codeWeights: [1, 0, 0.5])
        let out = try refiner.refine(seeds: seeds([0, 1, 0, 0]), attention: record([Self.identity, Self.uniform, Self.chain]))
        assertEqual(try XCTUnwrap(out.weights), [2.0 / 3, 0, 1.0 / 3])
        let raw: [Float] = [1.0 / 6, 2.0 / 3 + 1.0 / 9, 1.0 / 9, 0]
        assertEqual(out.maps.values, raw.map { $0 / raw.max()! }, accuracy: 1e-5)
        // Only the zero-weight layer selected: refused rather than an all-zero map.
        XCTAssertThrowsError(try CamRefiner(method: .areaM, layers: [1], weighting: .code, codeWeights: [1, 0, 0.5])
            .refine(seeds: seeds([0, 1, 0, 0]), attention: record([Self.identity, Self.uniform, Self.chain])))
    }

    /// One-hot gradient rows: class 1 points at token l in layer l, class 3 at token 3 - l.
    /// Start layer 2 keeps only the last layer: class 1 -> token 2, class 3 -> token 1.
    /// ACR spreads with maps x A (out_j = sum_i g_i A[i][j]): token 2 reaches the tokens that it
    /// attends to (1, 2, 3), token 1 reaches (0, 1, 2).
    func testACRWithOneHotGradients() throws {
        let layers = 3
        var gradients = [Float](repeating: 0, count: 2 * layers * 4)
        for l in 0..<layers {
            gradients[(0 * layers + l) * 4 + l] = 1
            gradients[(1 * layers + l) * 4 + (3 - l)] = 1
        }
        gradients[(0 * layers + 2) * 4 + 0] = -5 // negative gradient: ReLU'd away
        let attention = record([Self.identity, Self.identity, Self.chain], classes: [1, 3], gradients: gradients)
        // Seeds list class 3 first: the output follows the seeds' order.
        let seed = seeds([Float](repeating: 0.5, count: 8), classes: [3, 1])

        let plain = try CamRefiner(method: .acr, layers: [0, 1, 2], gradientLayers: [2], useAffinity: false).refine(seeds: seed, attention: attention)
        XCTAssertEqual(plain.maps.classes, [3, 1])
        assertEqual(plain.maps.values, [0, 1, 0, 0, /* class 1 */ 0, 0, 1, 0])

        let spread = try CamRefiner(method: .acr, layers: [2], gradientLayers: [2], useAffinity: true).refine(seeds: seed, attention: attention)
        assertEqual(spread.maps.values, [1, 1, 1, 0, /* class 1 */ 0, 1, 1, 1])

        // Layers 1 and 2 averaged: class 1 has 1/2 at tokens 1 and 2, class 3 at tokens 2 and 1.
        let two = try CamRefiner(method: .acr, layers: [0], gradientLayers: [1, 2], useAffinity: false).refine(seeds: seed, attention: attention)
        assertEqual(two.maps.values, [0, 1, 1, 0, 0, 1, 1, 0])
    }

    /// A 1 x 1 map of 0.6 upsampled to 2 x 2 against truth [1, 1, 1, 0]: at background 0.5 every
    /// pixel is class 1 (IoU 3/4 and 0), at 0.7 every pixel is background (IoU 0 and 1/4).
    func testSweepAddsMapsAtMaskResolution() {
        var sweep = ThresholdSweep(thresholds: [0.5, 0.7], classCount: 2)
        let scores = sweep.add(ClassMaps(classes: [1], height: 1, width: 1, values: [0.6]), truth: LabelMap(width: 2, height: 2, labels: [1, 1, 1, 0]))
        XCTAssertEqual(scores, [0.6, 0.6, 0.6, 0.6])
        XCTAssertEqual(sweep.meanIoUs[0], 0.375, accuracy: 1e-12)
        XCTAssertEqual(sweep.meanIoUs[1], 0.125, accuracy: 1e-12)
    }
}
