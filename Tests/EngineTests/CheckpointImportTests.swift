import ArtifactStore
import Engine
import Foundation
import TestSupport
import XCTest

/// Scripts/import_checkpoint.py on the small random checkpoints of Fixtures/checkpoints (written by
/// Tests/Fixtures/make_checkpoint_fixtures.py: timm, DeiT, DINO, DINOv2 hub .pth files and
/// Hugging Face safetensors), run with the project's Python (no torch), read back by
/// PretrainedViTWeights: the engine's forward of each must match the float64 PyTorch forward
/// stored with it -- final tokens and every layer's attention within 1e-4 relative to the largest
/// reference value. Broken inputs must fail with one line naming the file and write nothing.
final class CheckpointImportTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/checkpoints")
    static let importer = Repository.root.appendingPathComponent("Scripts/import_checkpoint.py").path

    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("checkpoint-import-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func runImporter(_ checkpoint: String, _ out: String, _ extra: [String] = ["--heads", "2"]) throws -> ProcessRunner.Result {
        try ProcessRunner.run(URL(fileURLWithPath: try Repository.python), [Self.importer, checkpoint, "--out", out] + extra)
    }

    /// Imports `file`, checks the facts the importer inferred and the forward against the reference.
    func assertImportMatchesPyTorch(_ file: String, line: UInt = #line) throws {
        let out = folder.appendingPathComponent(file + ".h5").path
        let result = try runImporter(Self.fixtures.appendingPathComponent(file).path, out)
        XCTAssertEqual(result.status, 0, result.output, line: line)
        guard result.status == 0 else { return }

        let reference = try HDF5File.open(Self.fixtures.appendingPathComponent("references.h5").path).root.group(file)
        func int(_ key: String) throws -> Int { Int(try reference.int64Attribute(key)) }
        let weights = try PretrainedViTWeights(path: out)
        XCTAssertEqual(weights.patchSize, try int("patch_size"), file, line: line)
        XCTAssertEqual(weights.dim, try int("dim"), file, line: line)
        XCTAssertEqual(weights.depth, try int("depth"), file, line: line)
        XCTAssertEqual(weights.heads, try int("heads"), file, line: line)
        XCTAssertEqual(weights.posEmbedGrid, try int("pos_embed_grid"), file, line: line)
        XCTAssertEqual(weights.layerScale, try int("layer_scale") != 0, file, line: line)
        XCTAssertEqual(weights.layerNormEps, try reference.doubleAttribute("layernorm_eps"), file, line: line)
        XCTAssertEqual(weights.gelu, .erf, file, line: line)
        let root = try HDF5File.open(out).root
        XCTAssertEqual(try root.stringAttribute("format"), try reference.stringAttribute("format"), file, line: line)
        XCTAssertEqual(try root.stringAttribute("source"), file, line: line)
        XCTAssertEqual(try root.stringAttribute("licence"), "unknown (user-supplied checkpoint)", file, line: line)
        XCTAssertEqual(try root.stringAttribute("source_sha256").count, 64, file, line: line)
        XCTAssertFalse(root.contains("head.weight"), file, line: line)

        let image = try reference.read("image", as: Float.self)
        let model = try weights.makeModel(imageSize: try int("image_size"), numClasses: 3, seed: 0)
        let acts = model.forward(images: Tensor(shape: image.shape, values: image.values))
        func assertClose(_ ours: Tensor, _ path: String) throws {
            let theirs = try reference.read(path, as: Float.self)
            XCTAssertEqual(ours.shape, theirs.shape, "\(file) \(path)", line: line)
            guard ours.count == theirs.values.count else { return }
            var worst = 0.0, scale = 0.0
            for i in 0..<ours.count {
                worst = max(worst, abs(Double(ours.data[i]) - Double(theirs.values[i])))
                scale = max(scale, abs(Double(theirs.values[i])))
            }
            print("checkpoint import: \(file) \(path): max |ours - torch| / max |torch| = \(worst / scale)")
            XCTAssertLessThan(worst / scale, 1e-4, "\(file) \(path)", line: line)
        }
        try assertClose(acts.tokens, "tokens")
        for l in 0..<weights.depth {
            try assertClose(acts.attnProbs[l], "attention/\(l)")
        }
    }

    func testTimmStateDict() throws { try assertImportMatchesPyTorch("timm_p16.pth") }

    func testDeiTModelWrapper() throws { try assertImportMatchesPyTorch("deit_p16.pth") }

    func testDINOTrainingCheckpointTeacher() throws { try assertImportMatchesPyTorch("dino_p16.pth") }

    /// LayerScale, a [1, D] mask token, chunked block names, and a 3x3 stored grid resampled to 2x2.
    func testDINOv2HubChunkedWithResampledPositions() throws { try assertImportMatchesPyTorch("dinov2_hub_p14.pth") }

    func testHuggingFaceDinov2Safetensors() throws { try assertImportMatchesPyTorch("hf_dinov2_p14.safetensors") }

    /// float16 tensors under `vit.`, LayerNorm eps 1e-12 (transformers' ViTModel default).
    func testHuggingFaceViTFloat16Safetensors() throws { try assertImportMatchesPyTorch("hf_vit_p16.safetensors") }

    // MARK: errors: one line on stderr naming the file, a non-zero exit, no output file

    func assertFails(_ checkpoint: String, _ expected: String, _ extra: [String] = ["--heads", "2"], line: UInt = #line) throws {
        let out = folder.appendingPathComponent("out.h5").path
        let result = try runImporter(checkpoint, out, extra)
        XCTAssertNotEqual(result.status, 0, result.output, line: line)
        let lines = result.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, result.stderr, line: line)
        XCTAssertTrue(result.stderr.contains(checkpoint), "names the file: \(result.stderr)", line: line)
        XCTAssertTrue(result.stderr.contains(expected), "says '\(expected)': \(result.stderr)", line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "no output", line: line)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".h5") }
        XCTAssertEqual(leftovers, [], "no temporary file left", line: line)
    }

    func copy(_ data: Data, _ name: String) throws -> String {
        let path = folder.appendingPathComponent(name).path
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    func fixture(_ name: String) throws -> Data { try Data(contentsOf: Self.fixtures.appendingPathComponent(name)) }

    func testTruncatedFilesFail() throws {
        let pth = try fixture("timm_p16.pth"), safetensors = try fixture("hf_dinov2_p14.safetensors")
        try assertFails(try copy(pth.prefix(pth.count / 2), "truncated.pth"), "truncated")
        try assertFails(try copy(safetensors.prefix(safetensors.count - 100), "truncated.safetensors"), "truncated")
    }

    func testUnrecognisedFileFails() throws {
        try assertFails(try copy(Data("not a checkpoint\n".utf8), "notes.pth"), "not a recognised checkpoint")
        try assertFails(Self.fixtures.appendingPathComponent("references.h5").path, "not a recognised checkpoint")
    }

    func testUnsupportedPickleContentFails() throws {
        try assertFails(Self.fixtures.appendingPathComponent("unsupported_pickle.pth").path, "unsupported pickle content: global __main__.Trainer")
    }

    /// The Hugging Face safetensors fixture with its JSON header edited by `edit`; data untouched.
    func editedSafetensors(_ name: String, _ edit: (inout [String: Any], inout Data) throws -> Void) throws -> String {
        let data = try fixture("hf_dinov2_p14.safetensors")
        let length = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian)
        var header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as! [String: Any]
        var body = data.subdata(in: (8 + length)..<data.count)
        try edit(&header, &body)
        let json = try JSONSerialization.data(withJSONObject: header)
        var out = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        return try copy(out + json + body, name)
    }

    func testMissingTensorFails() throws {
        let path = try editedSafetensors("missing.safetensors") { header, _ in header["encoder.layer.1.mlp.fc2.bias"] = nil }
        try assertFails(path, "missing tensor encoder.layer.1.mlp.fc2.bias")
    }

    func testWrongShapeFails() throws {
        let path = try editedSafetensors("shape.safetensors") { header, _ in
            var entry = header["layernorm.weight"] as! [String: Any]
            entry["shape"] = [4, 4]  // same bytes, wrong shape
            header["layernorm.weight"] = entry
        }
        try assertFails(path, "inconsistent shapes: norm.weight is [4, 4], expected [16]")
    }

    func testNonFiniteValuesFail() throws {
        let path = try editedSafetensors("nan.safetensors") { header, body in
            let offsets = (header["encoder.layer.0.mlp.fc1.weight"] as! [String: Any])["data_offsets"] as! [Int]
            withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { body.replaceSubrange(offsets[0]..<(offsets[0] + 4), with: $0) }
        }
        try assertFails(path, "non-finite values in blocks.0.mlp.fc1.weight")
    }

    func testUnknownWidthNeedsHeads() throws {
        try assertFails(Self.fixtures.appendingPathComponent("timm_p16.pth").path, "--heads", [])
    }
}
