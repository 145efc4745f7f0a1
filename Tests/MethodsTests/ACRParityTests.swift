import ACR
import ArtifactStore
import CAM
import Engine
import Localization
import TestSupport
import XCTest

/// ACR against an independent PyTorch reference (Fixtures/acr_parity.h5, written by
/// Tests/Fixtures/make_acr_fixtures.py from the paper, eq. 1-2 and 6-8, checked against
/// OpenNLPLab/ACR_WSSS): a 3-layer ViT (16x16 images, patch 4), two images, alpha 0.7, beta 1.3.
/// The reference derives the views' token permutations from the grid geometry on its own.
final class ACRParityTests: XCTestCase {
    var root: HDF5Group!

    override func setUpWithError() throws {
        root = try openFixture("acr_parity.h5")
    }

    /// ACRObjective.contribute for both views (flip, rot90), then the backward of the first view's
    /// attention gradients: L_act, L_aff and the view's classification loss within 1e-5 relative;
    /// the gradient of L_cls(view) + alpha L_act + beta L_aff with respect to every parameter
    /// within 1e-3 relative to its largest entry (float32 through two forwards and backwards).
    func testObjectiveMatchesReferenceForBothViews() throws {
        let images = try root.read("input/images", as: Float.self)
        let labels = try root.read("input/labels", as: Float.self).values
        let alpha = try root.doubleAttribute("alpha"), beta = try root.doubleAttribute("beta")
        for view in [ConsistencyView.flip, .rot90] {
            let model = try fixtureViT(root)
            let reference = try root.group(view.rawValue)
            func scalar(_ name: String) throws -> Double { try reference.read(name, as: Double.self).values[0] }
            let objective = ACRObjective(view: view, alpha: alpha, beta: beta)
            let input = Tensor(shape: images.shape, values: images.values)
            let acts = model.forward(images: input, training: true)
            var grads = ViTOutputGrads()
            model.zeroGrad()
            let contribution = try labels.withUnsafeBufferPointer {
                try objective.contribute(model: model, images: input, labels: $0.baseAddress!, activations: acts, grads: &grads, step: 0)
            }
            for (term, name) in [("acr_act", "act"), ("acr_aff", "aff"), ("acr_view2_cls", "view_cls")] {
                let expected = try scalar(name)
                XCTAssertEqual(contribution.terms[term]!, expected, accuracy: 1e-5 * expected, "\(view) \(term)")
            }
            let total = try scalar("view_cls") + alpha * scalar("act") + beta * scalar("aff")
            XCTAssertEqual(contribution.loss, total, accuracy: 1e-5 * total, "\(view) loss")
            // The objective already back-propagated the view; the trainer adds the first view's.
            model.backward(acts, grads)
            let expectedGrads = try reference.group("grads")
            for q in model.parameterList {
                let expected = try expectedGrads.read(q.name, as: Double.self).values
                assertRelativelyClose(q.grad.data, expected, 1e-3, "\(view) \(q.name)")
            }
        }
    }

    /// Eq. 7-8 through the library: AttentionExtractor's attention gradients (ReLU of the head-mean
    /// class-token row of d y_c / d A_l) within 1e-4 relative, and GradientLocalisation.maps from
    /// the start layer with the mean patch attention (M x A_bar) within 1e-4 absolute (maps in [0, 1]),
    /// and clearly apart from the released code's A_bar x M.
    func testGradientLocalisationMatchesReference() throws {
        let model = try fixtureViT(root)
        let pixels = try root.read("input/pixels", as: UInt8.self)
        let labels = try root.read("input/labels", as: Float.self)
        let (B, S, C, L) = (pixels.shape[0], pixels.shape[1], labels.shape[1], model.config.depth)
        let inputs = (0..<B).map { b in
            ExtractionInput(pixels: Array(pixels.values[b * S * S * 3..<(b + 1) * S * S * 3]), width: S, height: S,
                            classes: (0..<C).filter { labels.values[b * C + $0] > 0.5 })
        }
        let extractor = try AttentionExtractor(model: model, normalization: .imageNet, options: ExtractionOptions(gradientScore: .cls))
        // The reference normalised the same pixels itself.
        let prepared = extractor.prepare(inputs, size: S, flipped: false)
        assertRelativelyClose(prepared.data, try root.read("input/images", as: Float.self).values.map(Double.init), 1e-6, "normalised images")
        let start = Int(try root.doubleAttribute("start_layer"))
        for (b, result) in try extractor.extract(inputs).enumerated() {
            let n = result.gridHeight * result.gridWidth
            let expected = try root.read("localisation/\(b)/gradients", as: Double.self).values
            result.gradients.withUnsafeBufferPointer { assertRelativelyClose($0.baseAddress!, expected, 1e-4, "gradients of image \(b)") }
            let attention = AttentionMaps(layers: L, tokens: n, patchAttention: result.patchAttention, classAttention: result.classAttention,
                                          classes: result.classes, gradients: result.gradients)
            let mean = AffinityRefinement.combine(stacked: result.patchAttention, tokens: n, layers: Array(0..<L),
                                                  weights: [Float](repeating: 1, count: L))
            let maps = GradientLocalisation.maps(attention, gradientLayers: Array(start..<L), affinity: mean)
            let reference = try root.read("localisation/\(b)/maps", as: Double.self).values
            XCTAssertEqual(maps.count, reference.count)
            for i in 0..<maps.count { XCTAssertEqual(Double(maps[i]), reference[i], accuracy: 1e-4, "map \(b) entry \(i)") }
            // Pins eq. 8's M x A against infer_cam.py's A x M (README): the fixture tells them apart.
            let released = try root.read("localisation/\(b)/maps_released_code", as: Double.self).values
            XCTAssertGreaterThan(zip(maps, released).map { abs(Double($0) - $1) }.max()!, 0.05, "eq. 8's M x A, not A x M")
        }
    }
}
