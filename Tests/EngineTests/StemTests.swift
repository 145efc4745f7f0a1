import Primitives
import ArtifactStore
import TestSupport
import XCTest
@testable import Engine

/// The frozen pretrained stem (hybrid ViT) against PyTorch: Fixtures/stem.h5, written by
/// Tests/Fixtures/make_stem_fixture.py (random weights in the import_pretrained layout, reduced channel
/// counts 8 -> 4 -> 6 -> 6 -> 10 -> 10, a raw-RGB batch [2, 24, 16, 3] and the reference output
/// of the PyTorch forward in Tests/Fixtures/make_stem_fixture.py, in float64).
final class StemTests: XCTestCase {
    static var fixturePath: String { StemFixture.path }

    static func fixtureTensors() throws -> [String: (shape: [Int], values: [Float])] { try StemFixture.tensors() }

    static func doubleStem(_ normalization: Normalization = .imageNet) throws -> PretrainedStemOf<Double> {
        try PretrainedStemOf<Double>(architecture: "efficientnet_lite0", tensors: fixtureTensors(),
                                     inputMean: [127, 127, 127], inputStd: [128, 128, 128], inputNormalization: normalization)
    }

    /// Raw RGB [B, H, W, 3] -> the ViT's input (rgb/255 - mean) / std.
    static func normalise(_ rgb: [Float], _ n: Normalization) -> [Float] {
        rgb.indices.map { i in (rgb[i] / 255 - n.mean[i % 3]) / n.std[i % 3] }
    }

    func relativeError(_ ours: TensorOf<Float>, _ reference: [Float]) -> Double {
        var worst = 0.0, scale = 0.0
        for i in 0..<reference.count {
            worst = max(worst, abs(Double(ours.data[i]) - Double(reference[i])))
            scale = max(scale, abs(Double(reference[i])))
        }
        return worst / scale
    }

    func testParityWithPyTorchUnderTwoInputNormalisations() throws {
        let root = try HDF5File.open(Self.fixturePath).root
        let rgb = try root.read("parity/input_rgb", as: Float.self)
        let reference = try root.read("parity/output", as: Float.self)
        XCTAssertEqual(reference.shape, [2, 3, 2, 10])
        // The reference is not degenerate: ReLU6 neither zeroes nor clamps everything.
        XCTAssertGreaterThan(Set(reference.values).count, reference.values.count / 2)
        for n in [Normalization.imageNet, Normalization(mean: [0.5, 0.25, 0.75], std: [0.5, 0.3, 0.1])] {
            let stem = try PretrainedStem.load(path: Self.fixturePath, inputNormalization: n)
            XCTAssertEqual(stem.outChannels, 10)
            XCTAssertEqual(stem.stemChannels, 8)
            XCTAssertEqual(stem.architecture.stride, 8)
            let out = stem.forward(images: Tensor(shape: rgb.shape, values: Self.normalise(rgb.values, n)))
            XCTAssertEqual(out.shape, reference.shape)
            let error = relativeError(out, reference.values)
            XCTAssertLessThan(error, 1e-4, "normalisation \(n): relative error \(error)")
        }
    }

    func testDepthwiseConvolutionEqualsGroupedDenseConvolution() {
        // A depthwise convolution is a dense one whose weight is zero across channels.
        var rng = SplitMix64(seed: 3)
        for (k, s, H, W) in [(3, 1, 5, 4), (5, 2, 7, 6), (3, 2, 4, 4)] {
            let B = 2, C = 5
            let x = randomTensor([B, H, W, C], &rng), w = randomTensor([C, 1, k, k], &rng), b = randomTensor([C], &rng)
            let dense = DTensor(shape: [C, C, k, k])
            for c in 0..<C { for t in 0..<(k * k) { dense.data[(c * C + c) * k * k + t] = w.data[c * k * k + t] } }
            let g = Conv2dGeometry(batch: B, height: H, width: W, inChannels: C, outChannels: C, kernel: k, stride: s, padding: k / 2)
            let ours = DTensor(shape: [B, g.outHeight, g.outWidth, C]), expected = DTensor(shape: ours.shape)
            Kernels.depthwiseConv2dForward(out: ours.data, inp: x.data, weight: w.data, bias: b.data, g)
            Kernels.conv2dForward(out: expected.data, inp: x.data, weight: dense.data, bias: b.data, g)
            for i in 0..<ours.count { XCTAssertEqual(ours.data[i], expected.data[i], accuracy: 1e-12, "k \(k) s \(s) [\(i)]") }
        }
    }

    func testLoadErrorsNameTheProblem() throws {
        var tensors = try Self.fixtureTensors()
        func build(_ t: [String: (shape: [Int], values: [Float])], architecture: String = "efficientnet_lite0") throws {
            _ = try PretrainedStem(architecture: architecture, tensors: t, inputMean: [127, 127, 127], inputStd: [128, 128, 128],
                                   inputNormalization: .imageNet)
        }
        XCTAssertNoThrow(try build(tensors))
        XCTAssertThrowsError(try build(tensors, architecture: "resnet")) { XCTAssertTrue("\($0)".contains("unknown stem architecture")) }
        var missing = tensors
        missing["blocks.2.project.bias"] = nil
        XCTAssertThrowsError(try build(missing)) { XCTAssertTrue("\($0)".contains("blocks.2.project.bias"), "\($0)") }
        var wrongKernel = tensors
        let dw = tensors["blocks.3.depthwise.weight"]!
        wrongKernel["blocks.3.depthwise.weight"] = ([dw.shape[0], 1, 3, 3], Array(repeating: 0, count: dw.shape[0] * 9))
        XCTAssertThrowsError(try build(wrongKernel)) { XCTAssertTrue("\($0)".contains("blocks.3.depthwise.weight"), "\($0)") }
        tensors["blocks.5.project.bias"] = ([1], [0])
        XCTAssertThrowsError(try build(tensors)) { XCTAssertTrue("\($0)".contains("blocks.5.project.bias"), "\($0)") }
        // A file that is not a stem file.
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("not-a-stem-\(getpid()).h5").path
        defer { try? FileManager.default.removeItem(atPath: other) }
        let f = try HDF5File.create(other)
        try f.root.setAttribute("kind", "dataset")
        f.close()
        XCTAssertThrowsError(try PretrainedStem.load(path: other, inputNormalization: .imageNet)) {
            XCTAssertTrue("\($0)".contains(other) && "\($0)".contains("pretrained_stem"), "\($0)")
        }
        // A stem file with a misshapen tensor: the message uses the file's dataset path.
        let bad = try HDF5File.create(other)
        let root = try bad.root
        try root.setAttribute("kind", "pretrained_stem")
        try root.setAttribute("architecture", "efficientnet_lite0")
        try root.setAttribute("blocks", Int64(5))
        try root.setAttribute("stride", Int64(8))
        try root.setAttribute("out_channels", Int64(40))
        let fixture = try Self.fixtureTensors()
        for (name, t) in fixture {
            let parts = name.split(separator: ".", maxSplits: name.hasPrefix("blocks") ? 2 : 1).map(String.init)
            let group = parts.dropLast().joined(separator: "/"), leaf = parts.last!
            if !root.contains(group) {
                var prefix = ""
                for part in group.split(separator: "/") {
                    let next = prefix.isEmpty ? String(part) : prefix + "/" + part
                    if !root.contains(next) { _ = try (prefix.isEmpty ? root : root.group(prefix)).createGroup(String(part)) }
                    prefix = next
                }
            }
            let shape = name == "blocks.1.depthwise.weight" ? [t.shape[0], 1, 5, 5] : t.shape
            try root.group(group).write(leaf, [Float](repeating: 0, count: shape.reduce(1, *)), shape: shape)
        }
        bad.close()
        XCTAssertThrowsError(try PretrainedStem.load(path: other, inputNormalization: .imageNet)) {
            XCTAssertTrue("\($0)".contains(other) && "\($0)".contains("'blocks/1/depthwise.weight' has shape"), "\($0)")
        }
    }

    static let hybrid = ViTConfig(imageSize: 16, patchSize: 8, depth: 1, dim: 8, heads: 2, mlpRatio: 2, numClasses: 3,
                                  stem: "efficientnet_lite0")

    func randomisedHybrid(seed: UInt64 = 1) throws -> ViTOf<Double> {
        let m = try ViTOf<Double>(config: Self.hybrid, seed: seed, stem: try Self.doubleStem())
        var rng = SplitMix64(seed: seed + 100)
        for p in m.parameterList {
            if p.value.rank == 1 || p.name == "cls_token" || p.name == "pos_embed" {
                p.value.fillNormal(std: p.name.hasSuffix("norm1.weight") || p.name == "norm.weight" ? 0.3 : 0.2, rng: &rng)
                if p.name.hasSuffix("weight") { for i in 0..<p.value.count { p.value.data[i] += 1 } }
            } else {
                p.value.fillNormal(std: 1 / Double(p.value.count / p.value.shape[0]).squareRoot(), rng: &rng)
            }
        }
        return m
    }

    func testHybridViTShapesAndConfigRules() throws {
        let m = try randomisedHybrid()
        XCTAssertEqual(m.parameter(named: "patch_embed.proj.weight")?.value.shape, [8, 10, 1, 1])
        XCTAssertFalse(m.parameters.contains { $0.name.hasPrefix("stem.") }, "the stem must not be a parameter")
        XCTAssertTrue(m.stateDict().keys.contains("stem.blocks.4.project.weight"))
        XCTAssertEqual(m.stateDict()["stem.input_std"]?.values, [128, 128, 128])
        let images = DTensor(shape: [2, 16, 24, 3])
        var rng = SplitMix64(seed: 9)
        images.fillNormal(std: 1, rng: &rng)
        let a = m.forward(images: images)
        XCTAssertEqual(a.gridH, 2); XCTAssertEqual(a.gridW, 3)
        XCTAssertEqual(a.patchScores.shape, [2, 6, 3])
        // The patch embedding reads exactly the stem's features.
        let features = m.stem!.forward(images: images)
        for i in 0..<features.count { XCTAssertEqual(a.patchMatrix.data[i], features.data[i]) }
        // Config rules.
        var c = Self.hybrid
        c.patchSize = 4
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("patch_size must be 8"), "\($0)") }
        c = Self.hybrid
        c.stem = "vgg"
        XCTAssertThrowsError(try c.validate())
        XCTAssertThrowsError(try ViTOf<Double>(config: Self.hybrid, seed: 0)) { XCTAssertTrue("\($0)".contains("needs the stem")) }
        XCTAssertThrowsError(try ViTOf<Double>(config: ViTTests.tiny, seed: 0, stem: try Self.doubleStem()))
        // Old configs (no "stem" key) are patch ViTs; the key round-trips.
        let old = try JSONDecoder().decode(ViTConfig.self, from: Data(#"{"image_size":16,"patch_size":4,"depth":1,"dim":8,"heads":2,"num_classes":3}"#.utf8))
        XCTAssertEqual(old.stem, "patch")
        XCTAssertEqual(try JSONDecoder().decode(ViTConfig.self, from: JSONEncoder().encode(Self.hybrid)), Self.hybrid)
        // FLOPs include the stem: more than the same transformer over 10 features alone.
        XCTAssertGreaterThan(m.forwardFLOPs(), Self.hybrid.transformerFLOPs(gridH: 2, gridW: 2, patchFeatures: 10)
                                                + m.stem!.forwardFLOPs(height: 16, width: 16) - 1)
        let stemFLOPs = m.stem!.forwardFLOPs(height: 16, width: 16)
        // By hand for the fixture's counts on 16 x 16: stem conv 8x8x8 outputs x 27 taps; block 0
        // depthwise 8x8x8 x 9 + project 8x8 x 4x8; block 1 expand 8x8 x 12x4, depthwise (stride 2)
        // 4x4x12 x 9, project 4x4 x 6x12; block 2 expand 4x4 x 18x6, depthwise 4x4x18 x 9, project
        // 4x4 x 6x18; block 3 expand 4x4 x 18x6, depthwise (stride 2) 2x2x18 x 25, project 2x2 x 10x18;
        // block 4 expand 2x2 x 30x10, depthwise 2x2x30 x 25, project 2x2 x 10x30.
        let macs = 512 * 27 + 512 * 9 + 64 * 32 + 64 * 48 + 192 * 9 + 16 * 72 + 16 * 108 + 288 * 9 + 16 * 108
            + 16 * 108 + 72 * 25 + 4 * 180 + 4 * 300 + 120 * 25 + 4 * 300
        XCTAssertEqual(stemFLOPs, 2 * Double(macs))
        XCTAssertEqual(m.trainingFLOPs(), 3 * Self.hybrid.transformerFLOPs(gridH: 2, gridW: 2, patchFeatures: 10) + stemFLOPs)
        // The config alone counts the canonical EfficientNet-Lite0 stem (40 channels).
        XCTAssertEqual(Self.hybrid.forwardFLOPs(), Self.hybrid.transformerFLOPs(gridH: 2, gridW: 2, patchFeatures: 40)
                       + StemArchitecture.efficientNetLite0.canonicalFLOPs(height: 16, width: 16))
    }

    /// Gradients of every trainable parameter (patch embedding included) against central
    /// differences in Double; the stem gets none.
    func testHybridGradientsAndFrozenStem() throws {
        let m = try randomisedHybrid(seed: 2)
        var rng = SplitMix64(seed: 77)
        let B = 2, N = 4, C = 3
        let images = randomTensor([B, 16, 16, 3], &rng)
        let rs = randomTensor([B, N, C], &rng), rc = randomTensor([B, C], &rng), rl = randomTensor([B, C], &rng)
        let rf = randomTensor([B, N, 8], &rng, std: 0.1)
        func run() -> (ViTActivationsOf<Double>, Double) {
            let a = m.forward(images: images)
            return (a, dot(a.patchScores, rs) + dot(a.camLogits, rc) + dot(a.clsLogits, rl) + dot(a.features, rf))
        }
        let stemBefore = m.stem!.stateDict()
        let (a, _) = run()
        m.zeroGrad()
        m.backward(a, ViTOutputGradsOf(camLogits: rc, clsLogits: rl, patchScores: rs, features: rf))
        let patchGrad = m.parameter(named: "patch_embed.proj.weight")!.grad
        XCTAssertGreaterThan(patchGrad.sumOfSquares(), 0)
        var sample = SplitMix64(seed: 5)
        for p in m.parameterList {
            checkGradient(p.name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 6, &sample),
                          rtol: 1e-5, atol: 1e-8) { run().1 }
        }
        // Every entry of the patch embedding's gradient, since it is the layer the stem feeds.
        let pw = m.parameter(named: "patch_embed.proj.weight")!
        checkGradient("patch_embed.proj.weight (all)", input: pw.value, analytic: pw.grad, rtol: 1e-5, atol: 1e-8) { run().1 }
        for (name, t) in m.stem!.stateDict() { XCTAssertEqual(t.values, stemBefore[name]!.values, name) }
    }

    func testAdamWStepLeavesTheStemAlone() throws {
        let stem = try PretrainedStem.load(path: Self.fixturePath, inputNormalization: .imageNet)
        let m = try ViT(config: Self.hybrid, seed: 4, stem: stem)
        let before = m.stateDict()
        var settings = OptimizerSettings()
        settings.lr = 1e-2
        settings.warmupSteps = 0
        settings.totalSteps = 1
        settings.emaDecay = 0.9
        let trainer = ClassifierTrainer(model: m, settings: settings)
        XCTAssertFalse(trainer.ema!.names.contains { $0.hasPrefix("stem.") })
        var rng = SplitMix64(seed: 1)
        let images = Tensor(shape: [2, 16, 16, 3])
        images.fillNormal(std: 1, rng: &rng)
        _ = try trainer.trainStep(images: images, labels: [1, 0, 1, 0, 1, 0])
        let after = m.stateDict()
        XCTAssertNotEqual(after["patch_embed.proj.weight"]!.values, before["patch_embed.proj.weight"]!.values)
        XCTAssertNotEqual(after["blocks.0.attn.qkv.weight"]!.values, before["blocks.0.attn.qkv.weight"]!.values)
        for name in before.keys where name.hasPrefix("stem.") { XCTAssertEqual(after[name]!.values, before[name]!.values, name) }
    }

    func testStateDictRoundTripRebuildsTheStem() throws {
        let stem = try PretrainedStem.load(path: Self.fixturePath, inputNormalization: .imageNet)
        let m = try ViT(config: Self.hybrid, seed: 4, stem: stem)
        let state = m.stateDict()
        let rebuilt = try ViT(config: Self.hybrid, seed: 9,
                              stem: try PretrainedStem(architecture: "efficientnet_lite0", stateDict: state, inputNormalization: .imageNet))
        try rebuilt.load(state)
        var rng = SplitMix64(seed: 2)
        let images = Tensor(shape: [1, 16, 16, 3])
        images.fillNormal(std: 1, rng: &rng)
        XCTAssertEqual(rebuilt.forward(images: images).clsLogits.toArray(), m.forward(images: images).clsLogits.toArray())
        // A patch ViT refuses stem tensors; a hybrid one refuses weights without them.
        var patchState = try ViT(config: ViTTests.tiny, seed: 1).stateDict()
        patchState["stem.conv.weight"] = state["stem.stem.conv.weight"]
        XCTAssertThrowsError(try ViT(config: ViTTests.tiny, seed: 1).load(patchState)) { XCTAssertTrue("\($0)".contains("stem"), "\($0)") }
        var noStem = state
        noStem["stem.blocks.1.depthwise.weight"] = nil
        XCTAssertThrowsError(try m.load(noStem)) { XCTAssertTrue("\($0)".contains("stem.blocks.1.depthwise.weight"), "\($0)") }
    }
}
