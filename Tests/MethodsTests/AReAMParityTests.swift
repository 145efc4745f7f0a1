import AReAM
import ArtifactStore
import Engine
import Localization
import TestSupport
import XCTest

/// AReAM's training term against an independent PyTorch reference (Fixtures/aream_parity.h5,
/// written by Tests/Fixtures/make_aream_fixtures.py from the paper, eq. 7-9 and 13-16, checked
/// against Jessie459/AReAM): a 4-layer ViT (32x32 images, patch 4, 64 tokens), two images with one
/// and two classes. The reference runs in float64; the fixture asserts every label decision is at
/// least 1e-4 from a tie, so labels must match exactly.
final class AReAMParityTests: XCTestCase {
    var root: HDF5Group!

    override func setUpWithError() throws {
        root = try openFixture("aream_parity.h5")
    }

    func doubles(_ name: String) throws -> [Double] { try root.read(name, as: Double.self).values }

    /// The label maker alone, from the reference's CAMs and attention: token labels exactly; the
    /// fusion and loss weights (continuous, float32 products of 64x64 matrices) within 1e-4.
    func testOnlineLabelsMatchReference() throws {
        let images = try root.read("input/images", as: Float.self)
        let labels = try root.read("input/labels", as: Float.self)
        let (B, S, C) = (images.shape[0], images.shape[1], labels.shape[1])
        let depth = Int(try root.group("config").int64Attribute("depth"))
        var batch: [AReAMTrainingLabels.Image] = []
        for b in 0..<B {
            let classes = (0..<C).filter { labels.values[b * C + $0] > 0.5 }.map { $0 + 1 }
            batch.append(.init(classes: classes, cams: try root.read("labeller/\(b)/cams_raw", as: Float.self).values,
                               attention: try root.read("labeller/\(b)/attention", as: Float.self).values,
                               pixels: Array(images.values[b * S * S * 3..<(b + 1) * S * S * 3]), size: S))
        }
        let made = AReAMTrainingLabels(lowThreshold: Float(try root.doubleAttribute("low_background")),
                                       highThreshold: Float(try root.doubleAttribute("high_background")), weighting: .code)
            .make(batch, grid: 8, layers: depth)
        let expected = try root.read("output/token_labels", as: UInt8.self).values
        XCTAssertEqual(made.tokenLabels, expected)
        // Every kind of label occurs, so a wrong threshold or class mapping cannot hide.
        XCTAssertEqual(Set(expected), [0, 1, 2, 3, 255])
        let fusion = try doubles("output/fusion_weights")
        for b in 0..<B { made.fusionWeights[b].withUnsafeBufferPointer { assertRelativelyClose($0.baseAddress!, fusion, 1e-4, "fusion weights") } }
        let lossWeights = try doubles("output/loss_weights")
        made.lossWeights.withUnsafeBufferPointer { assertRelativelyClose($0.baseAddress!, lossWeights, 1e-4, "loss weights") }
        XCTAssertEqual(made.blankCams, 0)
    }

    /// One step of the objective through the library: forward, AReAMObjective.contribute (labels
    /// from the step's own forward, eq. 15 on raw logits, eq. 16 layer weights, the term weight),
    /// backward. Term within 1e-4 relative, every parameter gradient within 1e-3 relative to the
    /// largest entry of that gradient (float32 forward and backward through 4 blocks).
    func testTrainingTermAndGradientsMatchReference() throws {
        let model = try fixtureViT(root)
        let images = try root.read("input/images", as: Float.self)
        let labels = try root.read("input/labels", as: Float.self).values
        let layers = try root.doublesAttribute("layers").map { Int($0) }
        XCTAssertEqual(layers, AReAMObjective.defaultLayers(depth: model.config.depth))
        let weight = try root.doubleAttribute("term_weight")
        let objective = AReAMObjective(labels: AReAMTrainingLabels(weighting: .code), layers: layers, lossWeight: weight, warmupSteps: 0)
        let input = Tensor(shape: images.shape, values: images.values)
        let acts = model.forward(images: input)
        var grads = ViTOutputGrads()
        let contribution = try labels.withUnsafeBufferPointer {
            try objective.contribute(model: model, images: input, labels: $0.baseAddress!, activations: acts, grads: &grads, step: 0)
        }
        let term = try doubles("output/term")[0]
        XCTAssertEqual(contribution.terms["aff_loss"]!, term, accuracy: 1e-4 * term)
        XCTAssertEqual(contribution.loss, weight * term, accuracy: 1e-4 * weight * term)
        // Pins the paper's eq. 15 against the released code's form (halves, count + 1; README).
        let released = try doubles("output/term_released_code")[0]
        XCTAssertGreaterThan(abs(contribution.terms["aff_loss"]! - released), 0.3 * term, "eq. 15 as the paper writes it, not losses.get_aff_loss")
        let pairs = Double(acts.batch * acts.patches * acts.patches)
        let positives = Double(try root.read("output/positives", as: Int64.self).values[0])
        let negatives = Double(try root.read("output/negatives", as: Int64.self).values[0])
        XCTAssertEqual(contribution.terms["aff_positive_fraction"]!, positives / pairs, accuracy: 1e-12)
        XCTAssertEqual(contribution.terms["aff_ignored_fraction"]!, 1 - (positives + negatives) / pairs, accuracy: 1e-12)

        model.zeroGrad()
        model.backward(acts, grads)
        let reference = try root.group("grads")
        for q in model.parameterList {
            let expected = try reference.read(q.name, as: Float.self).values.map(Double.init)
            if expected.allSatisfy({ $0 == 0 }) {
                // Parameters after the last supervised layer's logits (heads, final norm, the last
                // block's MLP) get nothing from this term.
                XCTAssertEqual(maxAbs(q.grad), 0, q.name)
            } else {
                assertRelativelyClose(q.grad.data, expected, 1e-3, q.name)
            }
        }
    }

    /// Warm-up: before `warmupSteps` the term is zero and leaves every gradient alone.
    func testTermIsOffDuringWarmUp() throws {
        let model = try fixtureViT(root)
        let images = try root.read("input/images", as: Float.self)
        let labels = try root.read("input/labels", as: Float.self).values
        let objective = AReAMObjective(labels: AReAMTrainingLabels(), layers: [2, 3], lossWeight: 0.1, warmupSteps: 5)
        let input = Tensor(shape: images.shape, values: images.values)
        var grads = ViTOutputGrads()
        let contribution = try labels.withUnsafeBufferPointer {
            try objective.contribute(model: model, images: input, labels: $0.baseAddress!, activations: model.forward(images: input), grads: &grads, step: 4)
        }
        XCTAssertEqual(contribution.loss, 0)
        XCTAssertTrue(grads.attnLogits.isEmpty)
    }
}
