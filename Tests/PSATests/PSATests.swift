import Primitives
import Engine
@testable import PSA
import XCTest

final class ConfidentPairsTests: XCTestCase {
    func testOffsetsAreTheHalfDisc() {
        // radius 2: the half 8-neighbourhood; radius 3: dy 0 -> dx 1,2; dy 1 -> |dx| <= 2; dy 2 -> |dx| <= 2.
        XCTAssertEqual(AffinityPairs.offsets(radius: 2).map { [$0.dy, $0.dx] }, [[0, 1], [1, -1], [1, 0], [1, 1]])
        XCTAssertEqual(AffinityPairs.offsets(radius: 3).count, 2 + 5 + 5)
        XCTAssertEqual(AffinityPairs.offsets(radius: 1).count, 0)
    }

    func testPairsOnAHandCheckedGrid() {
        // 0   0   1
        // 255 1   1
        let pairs = AffinityPairs.extract(labels: [0, 0, 1, 255, 1, 1], height: 2, width: 3, radius: 2, base: 10)
        func shifted(_ list: [(Int32, Int32)]) -> [[Int32]] { list.map { [$0.0 - 10, $0.1 - 10] } }
        XCTAssertEqual(shifted(pairs.backgroundPositive), [[0, 1]])
        XCTAssertEqual(shifted(pairs.foregroundPositive), [[2, 4], [2, 5], [4, 5]])
        XCTAssertEqual(shifted(pairs.negative), [[0, 4], [1, 2], [1, 4], [1, 5]])
    }

    func testPowerLabelling() {
        // One class (id 3). max M: 0.9 and 0.3 beat (1-M)^4 (1e-4, 0.24); 0.2 and 0.1 lose to (1-M)^4 (0.41, 0.66)
        // but beat (1-M)^32 (7.9e-4, 0.034): uncertain; 0.05 and 0 lose to (1-M)^32 (0.19, 1): background.
        let maps: [Float] = [0.9, 0.3, 0.2, 0.1, 0.05, 0]
        let labels = maps.withUnsafeBufferPointer { TokenLabelling().labels(maps: $0, classes: [3], pixels: 6) }
        XCTAssertEqual(labels, [3, 3, 255, 255, 0, 0])
    }

    func testConstantLabellingPicksTheLargerClass() {
        var l = TokenLabelling()
        l.mode = .constant
        l.foregroundBackground = 0.6
        l.backgroundBackground = 0.3
        // Two classes (ids 1, 4), planar [2, 4].
        let maps: [Float] = [0.7, 0.2, 0.5, 0.1,
                             0.9, 0.1, 0.2, 0.3]
        let labels = maps.withUnsafeBufferPointer { l.labels(maps: $0, classes: [1, 4], pixels: 4) }
        XCTAssertEqual(labels, [4, 0, 255, 0])  // 0.3 ties the background score: background
    }
}

final class AffinityLossTests: XCTestCase {
    func testKnownAnswers() {
        // Identical features: a = 1, positive loss -log(1 + eps) ~ 0, negative loss -log(eps).
        let f = TensorOf<Double>(shape: [3, 2], values: [0.5, -1, 0.5, -1, 0.5, -1])
        var pairs = AffinityPairs()
        pairs.backgroundPositive = [(0, 1)]
        pairs.foregroundPositive = [(1, 2), (0, 2)]
        let g = TensorOf<Double>(shape: [3, 2])
        let parts = AffinityLoss.compute(features: f, pairs: pairs, gradient: g)
        XCTAssertEqual(parts.backgroundPositive, -log(1 + 1e-5), accuracy: 1e-12)
        XCTAssertEqual(parts.foregroundPositive, -log(1 + 1e-5), accuracy: 1e-12)
        XCTAssertEqual(parts.negative, 0)
        XCTAssertLessThan(abs(parts.total), 1e-5)
        XCTAssertEqual(g.toArray(), [Double](repeating: 0, count: 6))

        pairs.negative = [(0, 1)]
        XCTAssertEqual(AffinityLoss.compute(features: f, pairs: pairs, gradient: nil).negative, -log(1e-5), accuracy: 1e-9)

        // mean |[0, 1] - [1, 1]| = 0.5: a = exp(-0.5).
        let h = TensorOf<Double>(shape: [2, 2], values: [0, 1, 1, 1])
        var one = AffinityPairs()
        one.negative = [(0, 1)]
        XCTAssertEqual(AffinityLoss.compute(features: h, pairs: one, gradient: nil).negative, -log(1 + 1e-5 - exp(-0.5)), accuracy: 1e-12)
        one.negative = []
        one.foregroundPositive = [(0, 1)]
        XCTAssertEqual(AffinityLoss.compute(features: h, pairs: one, gradient: nil).total, -log(exp(-0.5) + 1e-5) / 4, accuracy: 1e-12)
    }

    /// Central differences in Double through the head and the loss, on every parameter and the input.
    func testGradientCheckThroughHeadAndLoss() {
        let rows = 6, d = 5
        let head = AffinityHeadOf<Double>(inFeatures: d, hidden: 7, outFeatures: 4, seed: 3)
        var rng = SplitMix64(seed: 11)
        let x = TensorOf<Double>(shape: [rows, d])
        x.fillNormal(std: 1, rng: &rng)
        for p in head.parameters where p.value.rank == 1 { p.value.fillNormal(std: 0.1, rng: &rng) }
        var pairs = AffinityPairs()
        pairs.backgroundPositive = [(0, 1), (1, 2)]
        pairs.foregroundPositive = [(3, 4), (3, 5), (4, 5)]
        pairs.negative = [(0, 3), (2, 5), (1, 4)]

        func loss() -> Double {
            let acts = head.forward(x)
            return AffinityLoss.compute(features: acts.output, pairs: pairs, gradient: nil).total
        }
        head.zeroGrad()
        let acts = head.forward(x)
        let dOut = TensorOf<Double>(shape: acts.output.shape)
        _ = AffinityLoss.compute(features: acts.output, pairs: pairs, gradient: dOut)
        let dx = head.backward(acts, dOut: dOut, inputGradient: true)!

        let h = 1e-6
        var checked = 0
        for (tensor, grad) in head.parameters.map({ ($0.value, $0.grad) }) + [(x, dx)] {
            for i in 0..<tensor.count {
                let saved = tensor.data[i]
                tensor.data[i] = saved + h; let up = loss()
                tensor.data[i] = saved - h; let down = loss()
                tensor.data[i] = saved
                let numeric = (up - down) / (2 * h)
                XCTAssertEqual(grad.data[i], numeric, accuracy: 1e-6 * max(1, abs(numeric)), "element \(i) of \(tensor.shape)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 7 * 5 + 7 + 4 * 7 + 4 + rows * d)
        XCTAssertGreaterThan(dx.toArray().map(abs).max()!, 1e-4)  // the check is not vacuous
    }

    func testAdamWLowersTheLoss() {
        let head = AffinityHead(inFeatures: 4, hidden: 8, outFeatures: 4, seed: 1)
        var rng = SplitMix64(seed: 2)
        let x = TensorOf<Float>(shape: [8, 4])
        x.fillNormal(std: 1, rng: &rng)
        var pairs = AffinityPairs()
        pairs.foregroundPositive = [(0, 1), (2, 3)]
        pairs.backgroundPositive = [(4, 5), (6, 7)]
        pairs.negative = [(0, 4), (1, 6), (3, 5), (2, 7)]
        let opt = head.makeOptimizer(lr: 0.01, weightDecay: 1e-4)
        var first = 0.0, last = 0.0
        for step in 0..<200 {
            head.zeroGrad()
            let acts = head.forward(x)
            let g = TensorOf<Float>(shape: acts.output.shape)
            let l = AffinityLoss.compute(features: acts.output, pairs: pairs, gradient: g).total
            if step == 0 { first = l }
            last = l
            head.backward(acts, dOut: g)
            head.step(opt)
        }
        XCTAssertLessThan(last, first * 0.5)
    }
}

final class RandomWalkTests: XCTestCase {
    func randomFeatures(_ n: Int, _ f: Int, seed: UInt64, std: Double = 0.3) -> [Float] {
        var rng = SplitMix64(seed: seed)
        let t = TensorOf<Float>(shape: [n, f])
        t.fillNormal(std: std, rng: &rng)
        return t.toArray()
    }

    func testColumnsSumToOneAndDenseMatchesSparse() {
        let f = randomFeatures(20, 3, seed: 1)
        let t = f.withUnsafeBufferPointer { RandomWalk.transition(features: $0.baseAddress!, featureDim: 3, height: 4, width: 5, radius: 2, beta: 8) }
        let m = RandomWalk.dense(t)
        for j in 0..<20 {
            var s: Float = 0
            for i in 0..<20 { s += m[i * 20 + j] }
            XCTAssertEqual(s, 1, accuracy: 1e-5)
        }
        // radius 2 is the 8-neighbourhood: a corner column has itself and 3 neighbours.
        XCTAssertEqual(t.columnStart[1] - t.columnStart[0], 4)
        XCTAssertEqual(t.columnStart[7] - t.columnStart[6], 9)  // interior (1, 1)
        XCTAssertEqual(m[2 * 20 + 0], 0)  // (0, 2) is outside the radius of (0, 0)
    }

    func testSquaringAndIteratedWalkAgree() {
        let (h, w, k) = (5, 6, 3)
        let f = randomFeatures(h * w, 4, seed: 7)
        let t = f.withUnsafeBufferPointer { RandomWalk.transition(features: $0.baseAddress!, featureDim: 4, height: h, width: w, radius: 3, beta: 8) }
        var rng = SplitMix64(seed: 9)
        let maps = TensorOf<Float>(shape: [k, h * w])
        maps.fillUniform(0, 1, rng: &rng)
        for logt in [0, 1, 4] {
            let a = RandomWalk.propagateBySquaring(maps: maps.toArray(), channels: k, transition: t, logt: logt)
            let b = RandomWalk.propagateIterated(maps: maps.toArray(), channels: k, transition: t, logt: logt)
            for i in 0..<a.count { XCTAssertEqual(a[i], b[i], accuracy: 1e-5 * max(1, abs(a[i])), "logt \(logt) element \(i)") }
            if logt == 4 { XCTAssertGreaterThan(zip(a, maps.toArray()).map { abs($0 - $1) }.max()!, 0.01) }  // the walk moved mass
        }
    }

    func testFarApartFeaturesLeaveMapsUnchanged() {
        // Features 10 apart per token: a = exp(-10)^8 ~ 1e-35, so T is the identity.
        let (h, w, k) = (3, 4, 2)
        let f = (0..<(h * w)).map { Float($0) * 10 }
        let t = f.withUnsafeBufferPointer { RandomWalk.transition(features: $0.baseAddress!, featureDim: 1, height: h, width: w, radius: 3, beta: 8) }
        let maps = (0..<(k * h * w)).map { Float(($0 * 7) % 5) / 4 }
        let out = RandomWalk.propagateIterated(maps: maps, channels: k, transition: t, logt: 6)
        for i in 0..<maps.count { XCTAssertEqual(out[i], maps[i], accuracy: 1e-6) }
        // Equal features: columns are averages, so a constant map stays constant.
        let same = [Float](repeating: 0.5, count: h * w)
        let u = same.withUnsafeBufferPointer { RandomWalk.transition(features: $0.baseAddress!, featureDim: 1, height: h, width: w, radius: 2, beta: 8) }
        let constant = RandomWalk.propagateBySquaring(maps: [Float](repeating: 0.7, count: h * w), channels: 1, transition: u, logt: 5)
        for v in constant { XCTAssertEqual(v, 0.7, accuracy: 1e-5) }
    }
}
