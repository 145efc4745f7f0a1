import TestSupport
import XCTest
import Foundation
import Primitives
@testable import Engine

final class ViTTests: XCTestCase {
    static let tiny = ViTConfig(imageSize: 16, patchSize: 4, depth: 2, dim: 16, heads: 2, mlpRatio: 4, numClasses: 3)

    func randomisedModel(_ config: ViTConfig = tiny, seed: UInt64 = 1) -> ViTOf<Double> { randomisedViT(config, seed: seed) }

    /// The whole model against central differences on a sample of every parameter, with
    /// gradients entering through every output the backward accepts.
    func checkModel(_ m: ViTOf<Double>, imageSize: Int, training: Bool, masked: Bool = false,
                    file: StaticString = #filePath, line: UInt = #line) {
        let c = m.config
        var rng = SplitMix64(seed: 77)
        let B = 2, grid = imageSize / c.patchSize, N = grid * grid, T = N + 1
        let images = randomTensor([B, imageSize, imageSize, 3], &rng)
        let labels = DTensor(shape: [B, c.numClasses], values: [1, 0, 1, 0, 1, 0])
        let rs = randomTensor([B, N, c.numClasses], &rng, std: 0.1), rf = randomTensor([B, N, c.dim], &rng, std: 0.1)
        let rc = randomTensor([B, c.dim], &rng, std: 0.1)
        let rp = randomTensor([B, c.heads, T, T], &rng), rl = randomTensor([B, c.heads, T, T], &rng, std: 0.1)
        let rh = randomTensor([B, T, c.dim], &rng, std: 0.1)
        var mask: DTensor? = nil
        if masked {
            let mk = DTensor(shape: [B, N])
            for i in 0..<mk.count { mk.data[i] = i % 3 == 1 ? 1 : 0 }
            mask = mk
        }
        let rngState = m.rng
        func run() -> (ViTActivationsOf<Double>, Double) {
            m.rng = rngState  // the same drop-path masks for every evaluation
            let a = m.forward(images: images, training: training, patchMask: mask)
            let loss = softMargin(a.camLogits, labels).0 + softMargin(a.clsLogits, labels).0 + dot(a.patchScores, rs)
                + dot(a.features, rf) + dot(a.classTokens, rc) + dot(a.attnProbs[c.depth - 1], rp) + dot(a.attnLogits[0], rl)
                + dot(a.hiddenStates[1], rh)
            return (a, loss)
        }
        let (a, _) = run()
        if training {
            XCTAssertTrue(a.dropScales.contains { s in s.map { t in (0..<t.count).contains { t.data[$0] == 0 } } ?? false },
                          "drop-path dropped nothing; the check would not cover it", file: file, line: line)
        }
        m.zeroGrad()
        m.backward(a, ViTOutputGradsOf(camLogits: softMargin(a.camLogits, labels).1, clsLogits: softMargin(a.clsLogits, labels).1,
                                       patchScores: rs, features: rf, classTokens: rc,
                                       attnProbs: [c.depth - 1: rp], attnLogits: [0: rl], hiddenStates: [1: rh]))
        var sample = SplitMix64(seed: 5)
        for p in m.parameterList {
            checkGradient(p.name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 6, &sample),
                          rtol: 1e-5, atol: 1e-8, file: file, line: line) { run().1 }
        }
    }

    func testWholeModelGradients() {
        checkModel(randomisedModel(), imageSize: 16, training: false)
    }

    func testWholeModelGradientsWithInterpolatedPositionEmbedding() {
        checkModel(randomisedModel(seed: 2), imageSize: 24, training: false)
    }

    func testWholeModelGradientsWithDropPath() {
        var c = Self.tiny
        c.dropPathRate = 0.5
        checkModel(randomisedModel(c, seed: 3), imageSize: 16, training: true)
    }

    /// DINOv2's block: LayerScale gammas on both branches and the exact GELU, with drop-path.
    func testWholeModelGradientsWithLayerScaleAndExactGelu() {
        var c = Self.tiny
        c.layerScale = true
        c.gelu = .erf
        checkModel(randomisedModel(c, seed: 6), imageSize: 16, training: false)
        c.dropPathRate = 0.5
        checkModel(randomisedModel(c, seed: 3), imageSize: 16, training: true)
        let m = randomisedModel(c, seed: 6)
        XCTAssertEqual(m.parameterList.map(\.name).filter { $0.hasPrefix("blocks.0.") },
                       ["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                        "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias", "blocks.0.ls1.gamma", "blocks.0.norm2.weight",
                        "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight",
                        "blocks.0.mlp.fc2.bias", "blocks.0.ls2.gamma"])
    }

    func testWholeModelGradientsWithMaskToken() {
        var c = Self.tiny
        c.maskToken = true
        checkModel(randomisedModel(c, seed: 4), imageSize: 16, training: false, masked: true)
    }

    func testMaskTokenReplacesPatchEmbeddings() {
        var c = Self.tiny
        c.maskToken = true
        let m = randomisedModel(c, seed: 5)
        XCTAssertEqual(m.parameters.map(\.name)[2], "mask_token")
        var rng = SplitMix64(seed: 6)
        let x1 = randomTensor([1, 16, 16, 3], &rng), x2 = randomTensor([1, 16, 16, 3], &rng)
        let mask = DTensor(shape: [1, 16])
        mask[0, 5] = 1
        let a1 = m.forward(images: x1, patchMask: mask), a2 = m.forward(images: x2, patchMask: mask)
        let pos = m.parameter(named: "pos_embed")!.value, mt = m.parameter(named: "mask_token")!.value
        for d in 0..<16 {
            // Token 6 (patch 5) is mask token + position in both images, whatever the pixels.
            XCTAssertEqual(a1.hiddenStates[0][0, 6, d], mt[0, 0, d] + pos[0, 6, d], accuracy: 1e-14)
            XCTAssertEqual(a2.hiddenStates[0][0, 6, d], a1.hiddenStates[0][0, 6, d])
        }
        XCTAssertGreaterThan(Swift.abs(a1.hiddenStates[0][0, 5, 0] - a2.hiddenStates[0][0, 5, 0]), 0)
    }

    func testOutputsShapesAndHeadDefinitions() {
        let m = randomisedModel()
        var rng = SplitMix64(seed: 8)
        let images = randomTensor([3, 16, 16, 3], &rng)
        let a = m.forward(images: images)
        XCTAssertEqual(a.camLogits.shape, [3, 3])
        XCTAssertEqual(a.patchScores.shape, [3, 16, 3])
        XCTAssertEqual(a.attnProbs.count, 2)
        XCTAssertEqual(a.attnProbs[0].shape, [3, 2, 17, 17])
        XCTAssertEqual(a.features.shape, [3, 16, 16])
        // cam logits = mean over patches of the patch scores; scores = features @ cam_head^T.
        let w = m.parameter(named: "cam_head.weight")!.value
        for b in 0..<3 {
            for k in 0..<3 {
                var mean = 0.0
                for n in 0..<16 {
                    var s = 0.0
                    for d in 0..<16 { s += a.features[b, n, d] * w[k, d] }
                    XCTAssertEqual(a.patchScores[b, n, k], s, accuracy: 1e-12)
                    mean += s / 16
                }
                XCTAssertEqual(a.camLogits[b, k], mean, accuracy: 1e-12)
            }
            // Attention rows are distributions; features are the normalised tokens.
            for i in 0..<17 {
                var s = 0.0
                for j in 0..<17 { s += a.attnProbs[1][b, 1, i, j] }
                XCTAssertEqual(s, 1, accuracy: 1e-12)
            }
            for n in 0..<16 { for d in 0..<16 { XCTAssertEqual(a.features[b, n, d], a.tokens[b, n + 1, d]) } }
        }
        XCTAssertEqual(a.hiddenStates.count, 3)
        XCTAssertEqual(a.hiddenStates[2].shape, [3, 17, 16])
        // Rectangular inputs: a 4 x 6 patch grid with the position embedding resized to it.
        let rect = m.forward(images: randomTensor([1, 16, 24, 3], &rng))
        XCTAssertEqual(rect.patchScores.shape, [1, 24, 3])
        let pos = m.positionEmbedding(gridH: 4, gridW: 6), pos0 = m.parameter(named: "pos_embed")!.value
        XCTAssertEqual(pos.shape, [1, 25, 16])
        for d in 0..<16 {
            XCTAssertEqual(pos[0, 0, d], pos0[0, 0, d])
            // Row 0, column 0 of the 6-wide grid samples source column max((0.5) * 4/6 - 0.5, 0) = 0.
            XCTAssertEqual(pos[0, 1, d], pos0[0, 1, d], accuracy: 1e-15)
        }
        XCTAssertEqual(maxAbsDiff(m.positionEmbedding(gridH: 4, gridW: 4), pos0), 0)
        // Samples are independent: a batch of one gives the same outputs as row 0 of the batch.
        let single = m.forward(images: images.slice(0..<1).clone())
        XCTAssertLessThan(maxAbsDiff(single.clsLogits, a.clsLogits.slice(0..<1)), 1e-12)
    }

    /// The patch embedding reads channels-last images in PyTorch's (c, ky, kx) weight order:
    /// an image that is zero except one pixel/channel selects one weight column.
    func testPatchEmbeddingLayout() {
        let m = randomisedModel()
        let images = DTensor(shape: [1, 16, 16, 3])
        // Pixel (y 5, x 10), channel 2: patch (1, 2) = token 1 + 1*4 + 2 = 7, in-patch (ky 1, kx 2).
        images[0, 5, 10, 2] = 1
        let a = m.forward(images: images)
        let zero = m.forward(images: DTensor(shape: [1, 16, 16, 3]))
        let w = m.parameter(named: "patch_embed.proj.weight")!.value  // [D, 3, 4, 4]
        // Block input 0 differs from the zero image's only at token 7 by the weight column.
        for t in 0..<17 {
            for d in 0..<16 {
                let diff = a.xs[0][t, d] - zero.xs[0][t, d]
                XCTAssertEqual(diff, t == 7 ? w[d, 2, 1, 2] : 0, accuracy: 1e-12)
            }
        }
    }

    func testFloatModelMatchesDouble() {
        let md = randomisedModel()
        let mf = try! ViT(config: Self.tiny, seed: 0)
        try! mf.load(md.stateDict())
        var rng = SplitMix64(seed: 9)
        let images = randomTensor([2, 16, 16, 3], &rng)
        let ad = md.forward(images: images), af = mf.forward(images: images.converted())
        XCTAssertLessThan(maxAbsDiff(ad.camLogits, af.camLogits), 1e-4)
        XCTAssertLessThan(maxAbsDiff(ad.clsLogits, af.clsLogits), 1e-4)
        XCTAssertLessThan(maxAbsDiff(ad.attnProbs[1], af.attnProbs[1]), 1e-5)
        let gd = DTensor(shape: [2, 3], repeating: 0.1), gf = Tensor(shape: [2, 3], repeating: 0.1)
        md.zeroGrad()
        md.backward(ad, ViTOutputGradsOf(camLogits: gd, clsLogits: gd))
        mf.backward(af, ViTOutputGrads(camLogits: gf, clsLogits: gf))
        for (pd, pf) in zip(md.parameterList, mf.parameterList) {
            let scale = max(maxAbs(pd.grad), 1e-3)
            XCTAssertLessThan(maxAbsDiff(pd.grad, pf.grad) / scale, 1e-4, pd.name)
        }
    }

    func testRecordedAttentionGradientsAndPropagationOnly() {
        let m = randomisedModel()
        var rng = SplitMix64(seed: 12)
        let images = randomTensor([2, 16, 16, 3], &rng)
        let a = m.forward(images: images)
        let g = DTensor(shape: [2, 3])
        g[1, 2] = 1  // back-propagate one class score (ACR localisation)
        m.zeroGrad()
        m.backward(a, ViTOutputGradsOf(clsLogits: g, recordAttentionGrads: true))
        let withParams = a.attnProbsGrad.map { $0.clone() }
        XCTAssertEqual(withParams.count, 2)
        XCTAssertGreaterThan(maxAbs(withParams[0]), 0)
        // Sample 0 has no gradient: its attention gradient must be exactly zero.
        XCTAssertEqual(maxAbs(withParams[0].slice(0..<1)), 0)
        m.zeroGrad()
        m.backward(a, ViTOutputGradsOf(clsLogits: g, recordAttentionGrads: true, parameterGrads: false))
        for p in m.parameterList { XCTAssertEqual(maxAbs(p.grad), 0, p.name) }
        for l in 0..<2 { XCTAssertEqual(maxAbsDiff(withParams[l], a.attnProbsGrad[l]), 0) }
        // The last layer's gradient: only the class-token row is read by the cls head.
        let last = a.attnProbsGrad[1]
        for h in 0..<2 { for i in 1..<17 { for j in 0..<17 { XCTAssertEqual(last[1, h, i, j], 0) } } }
    }

    func testTwoLiveActivationsAndReuse() {
        let m = randomisedModel()
        var rng = SplitMix64(seed: 13)
        let x1 = randomTensor([2, 16, 16, 3], &rng), x2 = randomTensor([2, 16, 16, 3], &rng)
        let a1 = m.forward(images: x1)
        let c1 = a1.clsLogits.clone()
        let a2 = m.forward(images: x2)
        XCTAssertEqual(maxAbsDiff(a1.clsLogits, c1), 0)
        XCTAssertGreaterThan(maxAbsDiff(a1.clsLogits, a2.clsLogits), 1e-6)
        let a3 = m.forward(images: x1, reuse: a2)
        XCTAssertTrue(a3 === a2)
        XCTAssertEqual(maxAbsDiff(a3.clsLogits, c1), 0)
        let a4 = m.forward(images: randomTensor([1, 16, 16, 3], &rng), reuse: a1)
        XCTAssertFalse(a4 === a1)  // another batch size gets fresh buffers
    }

    func testInitialisation() {
        let m = try! ViT(config: ViTConfig(imageSize: 32, patchSize: 8, depth: 2, dim: 64, heads: 4, numClasses: 5), seed: 42)
        let m2 = try! ViT(config: m.config, seed: 42)
        let m3 = try! ViT(config: m.config, seed: 43)
        let w = m.parameter(named: "blocks.1.mlp.fc1.weight")!.value
        var s = 0.0, s2 = 0.0
        for i in 0..<w.count { s += Double(w.data[i]); s2 += Double(w.data[i] * w.data[i]) }
        let n = Double(w.count)
        XCTAssertEqual(s / n, 0, accuracy: 0.002)
        XCTAssertEqual((s2 / n).squareRoot(), 0.02, accuracy: 0.001)
        XCTAssertEqual(maxAbs(m.parameter(named: "blocks.0.attn.qkv.bias")!.value), 0)
        XCTAssertEqual(m.parameter(named: "norm.weight")!.value.toArray(), [Float](repeating: 1, count: 64))
        XCTAssertGreaterThan(maxAbs(m.parameter(named: "pos_embed")!.value), 0)
        for (p, q) in zip(m.parameterList, m2.parameterList) { XCTAssertEqual(p.value.toArray(), q.value.toArray()) }
        XCTAssertNotEqual(m.parameter(named: "cls_token")!.value.toArray(), m3.parameter(named: "cls_token")!.value.toArray())
    }

    func testParameterNamesAndShapesFollowPyTorch() {
        let m = try! ViT(config: Self.tiny, seed: 0)
        var expected: [(String, [Int])] = [("cls_token", [1, 1, 16]), ("pos_embed", [1, 17, 16]),
                                           ("patch_embed.proj.weight", [16, 3, 4, 4]), ("patch_embed.proj.bias", [16])]
        for i in 0..<2 {
            expected += [("blocks.\(i).norm1.weight", [16]), ("blocks.\(i).norm1.bias", [16]),
                         ("blocks.\(i).attn.qkv.weight", [48, 16]), ("blocks.\(i).attn.qkv.bias", [48]),
                         ("blocks.\(i).attn.proj.weight", [16, 16]), ("blocks.\(i).attn.proj.bias", [16]),
                         ("blocks.\(i).norm2.weight", [16]), ("blocks.\(i).norm2.bias", [16]),
                         ("blocks.\(i).mlp.fc1.weight", [64, 16]), ("blocks.\(i).mlp.fc1.bias", [64]),
                         ("blocks.\(i).mlp.fc2.weight", [16, 64]), ("blocks.\(i).mlp.fc2.bias", [16])]
        }
        expected += [("norm.weight", [16]), ("norm.bias", [16]), ("cam_head.weight", [3, 16]),
                     ("cls_head.weight", [3, 16]), ("cls_head.bias", [3])]
        XCTAssertEqual(m.parameters.map(\.name), expected.map(\.0))
        XCTAssertEqual(m.parameters.map(\.value.shape), expected.map(\.1))
        XCTAssertEqual(m.parameters.map(\.grad.shape), expected.map(\.1))
    }

    func testStateDictRoundTripAndLoadErrors() throws {
        let a = try ViT(config: Self.tiny, seed: 1), b = try ViT(config: Self.tiny, seed: 2)
        try b.load(a.stateDict())
        for (p, q) in zip(a.parameterList, b.parameterList) { XCTAssertEqual(p.value.toArray(), q.value.toArray()) }
        var d = a.stateDict()
        d["cam_head.weight"] = ([3, 16, 1, 1], d["cam_head.weight"]!.values)  // PyTorch conv shape
        XCTAssertNoThrow(try b.load(d))
        var missing = a.stateDict()
        missing["norm.bias"] = nil
        XCTAssertThrowsError(try b.load(missing)) { XCTAssertTrue("\($0)".contains("norm.bias")) }
        var wrong = a.stateDict()
        wrong["blocks.1.attn.qkv.weight"] = ([16, 48], wrong["blocks.1.attn.qkv.weight"]!.values)
        XCTAssertThrowsError(try b.load(wrong)) { XCTAssertTrue("\($0)".contains("blocks.1.attn.qkv.weight")) }
        var extra = a.stateDict()
        extra["head.weight"] = ([1], [0])
        let before = b.parameterList[0].value.toArray()
        XCTAssertThrowsError(try b.load(extra)) { XCTAssertTrue("\($0)".contains("head.weight")) }
        XCTAssertEqual(b.parameterList[0].value.toArray(), before)
    }

    func testConfigJSONAndValidation() throws {
        let c = ViTConfig(imageSize: 64, patchSize: 8, depth: 6, dim: 192, heads: 3, numClasses: 10)
        let json = String(decoding: try JSONEncoder().encode(c), as: UTF8.self)
        for key in ["image_size", "patch_size", "in_channels", "depth", "dim", "heads", "mlp_ratio", "num_classes"] {
            XCTAssertTrue(json.contains("\"\(key)\""), key)
        }
        XCTAssertEqual(try JSONDecoder().decode(ViTConfig.self, from: Data(json.utf8)), c)
        let minimal = #"{"image_size": 32, "patch_size": 4, "depth": 2, "dim": 8, "heads": 2, "num_classes": 4}"#
        let m = try JSONDecoder().decode(ViTConfig.self, from: Data(minimal.utf8))
        XCTAssertEqual(m.mlpRatio, 4)
        XCTAssertEqual(m.layerNormEps, 1e-6)
        XCTAssertTrue(json.contains("\"mask_token\""))
        XCTAssertNoThrow(try c.checkImages(shape: [2, 64, 48, 3]))
        XCTAssertThrowsError(try c.checkImages(shape: [2, 64, 60, 3])) { XCTAssertTrue("\($0)".contains("patch size 8")) }
        XCTAssertThrowsError(try c.checkImages(shape: [2, 64, 64, 1])) { XCTAssertTrue("\($0)".contains("[B, H, W, 3]")) }
        var bad = c
        bad.heads = 5
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("heads")) }
        bad = c
        bad.imageSize = 60
        XCTAssertThrowsError(try ViT(config: bad, seed: 0)) { XCTAssertTrue("\($0)".contains("patch_size")) }
        // ViT-Ti/16 at 224: the DeiT backbone is 1.25 GMAC per image (the paper's "1.3 GFLOPs"
        // count MACs), plus this model's CAM head over 196 patches: 196 * 192 * 1000 = 0.0376 GMAC.
        let ti = ViTConfig(imageSize: 224, patchSize: 16, depth: 12, dim: 192, heads: 3, numClasses: 1000)
        XCTAssertEqual(ti.forwardFLOPs() / 2e9, 1.254 + 0.0376, accuracy: 0.005)
    }
}
