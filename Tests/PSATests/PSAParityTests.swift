import ArtifactStore
import Engine
import PSA
import TestSupport
import XCTest

/// PSA / AffinityNet against an independent PyTorch reference (Fixtures/psa_parity.h5, written by
/// Tests/Fixtures/make_psa_fixtures.py from the paper, checked against jiwoon-ahn/psa): a 6 x 7
/// token grid with background, two classes and ignored tokens, radius 3, beta 8, logt 3.
final class PSAParityTests: XCTestCase {
    var root: HDF5Group!

    override func setUpWithError() throws {
        root = try openFixture("psa_parity.h5")
    }

    func int(_ name: String) throws -> Int { Int(try root.doubleAttributeOrInt(name)) }

    func referencePairs(_ kind: String) throws -> Set<[Int32]> {
        let a = try root.read("pairs/\(kind)", as: Int32.self)
        return Set((0..<a.shape[0]).map { [a.values[2 * $0], a.values[2 * $0 + 1]] })
    }

    /// The pair sets (each unordered pair once, ends as the reference orders them) are identical.
    func testPairsMatchReference() throws {
        let labels = try root.read("input/labels", as: UInt8.self).values
        let pairs = AffinityPairs.extract(labels: labels, height: try int("height"), width: try int("width"), radius: try int("radius"))
        func set(_ list: [(Int32, Int32)]) -> Set<[Int32]> { Set(list.map { [$0.0, $0.1] }) }
        XCTAssertEqual(set(pairs.backgroundPositive), try referencePairs("background_positive"))
        XCTAssertEqual(set(pairs.foregroundPositive), try referencePairs("foreground_positive"))
        XCTAssertEqual(set(pairs.negative), try referencePairs("negative"))
        XCTAssertEqual(pairs.count, try referencePairs("background_positive").count + referencePairs("foreground_positive").count
                       + referencePairs("negative").count, "no pair twice")
    }

    /// Head forward, the three loss parts and the head's gradients: 1e-5 relative (float32).
    func testHeadLossAndGradientsMatchReference() throws {
        let labels = try root.read("input/labels", as: UInt8.self).values
        let pairs = AffinityPairs.extract(labels: labels, height: try int("height"), width: try int("width"), radius: try int("radius"))
        let x = try root.read("input/features", as: Float.self)
        let head = try fixtureHead(root)
        let acts = head.forward(Tensor(shape: x.shape, values: x.values))
        assertRelativelyClose(acts.output.data, try root.read("output/affinity_features", as: Double.self).values, 1e-5, "affinity features")
        let dF = Tensor(shape: acts.output.shape)
        let parts = AffinityLoss.compute(features: acts.output, pairs: pairs, gradient: dF)
        func scalar(_ name: String) throws -> Double { try root.read("loss/\(name)", as: Double.self).values[0] }
        XCTAssertEqual(parts.backgroundPositive, try scalar("background_positive"), accuracy: 1e-5)
        XCTAssertEqual(parts.foregroundPositive, try scalar("foreground_positive"), accuracy: 1e-5)
        XCTAssertEqual(parts.negative, try scalar("negative"), accuracy: 1e-5)
        XCTAssertEqual(parts.total, try scalar("total"), accuracy: 1e-5)
        head.zeroGrad()
        head.backward(acts, dOut: dF)
        let grads = try root.group("grads")
        for p in head.parameters {
            assertHeadGradient(p.name, p.grad, try grads.read(p.name, as: Double.self).values)
        }
    }

    /// Background, transition and both propagations against the reference's dense walk: 1e-4
    /// relative (T^8 of a 42-token float32 matrix).
    func testRandomWalkMatchesReference() throws {
        let (h, w) = (try int("height"), try int("width"))
        let f = try root.read("output/affinity_features", as: Double.self)
        let features = f.values.map(Float.init)
        let maps = try root.read("input/maps", as: Float.self)
        let k = maps.shape[0], n = h * w
        let input = RandomWalk.withBackground(maps.values, classes: k, tokens: n, alpha: Float(try root.doubleAttribute("alpha")))
        let (radius, beta) = (try int("radius"), Float(try root.doubleAttribute("beta")))
        let transition = features.withUnsafeBufferPointer {
            RandomWalk.transition(features: $0.baseAddress!, featureDim: f.shape[1], height: h, width: w, radius: radius, beta: beta)
        }
        let logt = try int("logt")
        let expected = try root.read("output/walked", as: Double.self).values
        for walked in [RandomWalk.propagateBySquaring(maps: input, channels: k + 1, transition: transition, logt: logt),
                       RandomWalk.propagateIterated(maps: input, channels: k + 1, transition: transition, logt: logt)] {
            walked.withUnsafeBufferPointer { assertRelativelyClose($0.baseAddress!, expected, 1e-4, "walked maps") }
        }
    }
}

/// One step of psa-refine's training through the library (AffinityHead.trainStep, what the stage
/// runs for every batch) against PyTorch (Fixtures/psa_step.h5, written by
/// Tests/Fixtures/make_psa_step_fixtures.py with make_psa_fixtures.py's pairs, head and loss): a
/// batch of two images' features (6 x 7 grids, the second one mirrored with its classes swapped),
/// pairs per image at the image's row offset, the loss over the batch's pairs, backward, AdamW with
/// the head's groups (decay 0.1 on the matrices only).
final class PSAStepParityTests: XCTestCase {
    func testTrainStepMatchesReference() throws {
        let root = try openFixture("psa_step.h5")
        let (h, w, radius) = (Int(try root.doubleAttributeOrInt("height")), Int(try root.doubleAttributeOrInt("width")),
                              Int(try root.doubleAttributeOrInt("radius")))
        let labels = try root.read("input/labels", as: UInt8.self)
        var pairs = AffinityPairs()
        for image in 0..<labels.shape[0] {  // as psa-refine assembles a batch
            pairs.append(AffinityPairs.extract(labels: Array(labels.values[(image * h * w)..<((image + 1) * h * w)]), height: h, width: w,
                                               radius: radius, base: image * h * w))
        }
        let x = try root.read("input/features", as: Float.self)
        let head = try fixtureHead(root)
        let lr = try root.doubleAttribute("lr")
        let optimizer = head.makeOptimizer(lr: lr, weightDecay: try root.doubleAttribute("weight_decay"))
        let parts = try head.trainStep(features: Tensor(shape: x.shape, values: x.values), pairs: pairs, optimizer: optimizer)
        // Loss parts: 1e-5 relative (float32 sums over a few hundred pairs).
        func scalar(_ name: String) throws -> Double { try root.read("loss/\(name)", as: Double.self).values[0] }
        for (ours, name) in [(parts.backgroundPositive, "background_positive"), (parts.foregroundPositive, "foreground_positive"),
                             (parts.negative, "negative"), (parts.total, "total")] {
            let expected = try scalar(name)
            XCTAssertEqual(ours, expected, accuracy: 1e-5 * abs(expected), name)
        }
        // Gradients (left in place) as assertHeadGradient. Updated weights: 1e-6 absolute
        // (assertUpdatedWeightsClose; b2 falls under its |g| < 1e-6 bound), against a step of about
        // lr = 1e-3 per weight.
        let grads = try root.group("grads"), updated = try root.group("updated")
        for p in head.parameters {
            let expected = try grads.read(p.name, as: Double.self).values
            assertHeadGradient(p.name, p.grad, expected)
            assertUpdatedWeightsClose(p.value.data, try updated.read(p.name, as: Double.self).values, gradients: expected, lr: lr, p.name)
        }
    }
}

/// A head gradient within 1e-4 relative to its largest entry; b2's is zero (rounding only):
/// affinities see only differences f_i - f_j, so the last bias cancels.
private func assertHeadGradient(_ name: String, _ grad: Tensor, _ expected: [Double], file: StaticString = #filePath, line: UInt = #line) {
    if name == "b2" {
        XCTAssertLessThan(expected.map(abs).max()!, 1e-12, file: file, line: line)
        XCTAssertLessThan(maxAbs(grad), 1e-6, file: file, line: line)
    } else {
        assertRelativelyClose(grad.data, expected, 1e-4, "gradient of \(name)", file: file, line: line)
    }
}

/// An affinity head with a fixture's `weights` group.
private func fixtureHead(_ root: HDF5Group) throws -> AffinityHead {
    let weights = try root.group("weights")
    let w1 = try weights.read("w1", as: Float.self), w2 = try weights.read("w2", as: Float.self)
    let head = AffinityHead(inFeatures: w1.shape[1], hidden: w1.shape[0], outFeatures: w2.shape[0], seed: 0)
    for p in head.parameters {
        let values = try weights.read(p.name, as: Float.self).values
        XCTAssertEqual(values.count, p.value.count, p.name)
        for i in 0..<values.count { p.value.data[i] = values[i] }
    }
    return head
}

private extension HDF5Group {
    /// h5py writes Python ints as int64 and floats as float64 attributes.
    func doubleAttributeOrInt(_ name: String) throws -> Double {
        if let value = try? int64Attribute(name) { return Double(value) }
        return try doubleAttribute(name)
    }
}
