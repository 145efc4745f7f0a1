import ArtifactStore
import Engine
import TestSupport
import XCTest

/// The segmentation decoder against PyTorch (Fixtures/segdecoder_parity.h5, written by
/// Tests/Fixtures/make_segdecoder_fixtures.py with nn.Conv2d / F.interpolate and the same
/// weights), without and with the image detail branch: 5 x 6 grid, 28 x 36 image, dilations 1, 2.
/// Logits and gradients (of sum(logits * R), every parameter and the input features) within
/// 1e-5 relative to the largest entry (float32 against float64).
final class SegDecoderParityTests: XCTestCase {
    func testForwardAndBackwardMatchPyTorch() throws {
        let root = try openFixture("segdecoder_parity.h5")
        func int(_ name: String) throws -> Int { Int(try root.int64Attribute(name)) }
        let (B, h, w) = (try int("batch"), try int("grid_height"), try int("grid_width"))
        let features = try root.read("input/features", as: Float.self)
        let image = try root.read("input/image", as: Float.self)
        for variant in ["plain", "detail"] {
            let group = try root.group(variant)
            let config = SegDecoderConfig(inChannels: try int("in_channels"), channels: try int("channels"),
                                          dilations: try root.doublesAttribute("dilations").map { Int($0) },
                                          numClasses: try int("num_classes"), detailChannels: variant == "detail" ? try int("detail_channels") : 0)
            let decoder = try SegDecoder(config: config, seed: 3)
            let weights = try group.group("weights")
            XCTAssertEqual(Set(try weights.childNames()), Set(decoder.parameters.map(\.name)), variant)
            var state: [String: (shape: [Int], values: [Float])] = [:]
            for name in try weights.childNames() {
                let array = try weights.read(name, as: Float.self)
                state[name] = (array.shape, array.values)
            }
            try decoder.load(state)
            let input = Tensor(shape: features.shape, values: features.values)
            let acts = decoder.forward(features: input, image: config.hasDetail ? Tensor(shape: image.shape, values: image.values) : nil,
                                       batch: B, height: h, width: w)
            let expected = try group.read("logits", as: Double.self)
            XCTAssertEqual(acts.logits.shape, expected.shape, variant)
            assertRelativelyClose(acts.logits.data, expected.values, 1e-5, "\(variant) logits")
            let dLogits = try group.read("loss_weights", as: Float.self)
            let dFeatures = Tensor(shape: features.shape)
            decoder.zeroGrad()
            decoder.backward(acts, dLogits: Tensor(shape: dLogits.shape, values: dLogits.values), dFeatures: dFeatures)
            assertRelativelyClose(dFeatures.data, try group.read("grad_features", as: Double.self).values, 1e-5, "\(variant) feature gradient")
            let grads = try group.group("grads")
            for p in decoder.parameters {
                assertRelativelyClose(p.grad.data, try grads.read(p.name, as: Double.self).values, 1e-5, "\(variant) gradient of \(p.name)")
            }
        }
    }
}
