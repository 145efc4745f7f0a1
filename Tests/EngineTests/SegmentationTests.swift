import Foundation
import Primitives
import TestSupport
import XCTest
@testable import Engine

final class SegmentationTests: XCTestCase {
    /// Decoder: every parameter gradient and the input gradient against central differences in Double.
    func testDecoderGradients() throws {
        var rng = SplitMix64(seed: 11)
        let config = SegDecoderConfig(inChannels: 5, channels: 3, dilations: [1, 2], numClasses: 4)
        let decoder = try SegDecoderOf<Double>(config: config, seed: 3)
        // Non-zero biases so that the check also covers them away from the ReLU kinks.
        for p in decoder.parameters where p.name.hasSuffix("bias") { p.value.fillNormal(std: 0.1, rng: &rng) }
        let (B, h, w) = (2, 4, 4)
        let features = randomTensor([B, h, w, config.inChannels], &rng)
        let probe = randomTensor([B, h, w, config.numClasses], &rng)
        func loss() -> Double { dot(decoder.forward(features: features, image: nil, batch: B, height: h, width: w).logits, probe) }
        decoder.zeroGrad()
        let acts = decoder.forward(features: features, image: nil, batch: B, height: h, width: w)
        let dFeatures = DTensor(shape: features.shape)
        decoder.backward(acts, dLogits: probe, dFeatures: dFeatures)
        checkGradient("features", input: features, analytic: dFeatures, loss: loss)
        XCTAssertEqual(decoder.parameters.count, 2 * 3 + 4)
        for p in decoder.parameters {
            XCTAssertGreaterThan(maxAbs(p.grad), 0, "\(p.name) got no gradient")
            checkGradient(p.name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 12, &rng), loss: loss)
        }
    }

    /// Decoder with the image detail branch: logits at 1/4 of an odd-sized image (13 -> 7 -> 4),
    /// every parameter gradient and the feature gradient against central differences in Double.
    func testDecoderDetailBranchGradients() throws {
        var rng = SplitMix64(seed: 12)
        let config = SegDecoderConfig(inChannels: 5, channels: 3, dilations: [1], numClasses: 3, detailChannels: 4)
        let decoder = try SegDecoderOf<Double>(config: config, seed: 4)
        for p in decoder.parameters where p.name.hasSuffix("bias") { p.value.fillNormal(std: 0.1, rng: &rng) }
        let (B, h, w, H) = (2, 3, 3, 13)
        XCTAssertEqual(config.outputSize(imageSize: H, gridSize: h), 4)
        let features = randomTensor([B, h, w, config.inChannels], &rng)
        let image = randomTensor([B, H, H, 3], &rng)
        let probe = randomTensor([B, 4, 4, config.numClasses], &rng)
        func loss() -> Double { dot(decoder.forward(features: features, image: image, batch: B, height: h, width: w).logits, probe) }
        decoder.zeroGrad()
        let acts = decoder.forward(features: features, image: image, batch: B, height: h, width: w)
        XCTAssertEqual(acts.logits.shape, [B, 4, 4, config.numClasses])
        XCTAssertEqual([acts.outHeight, acts.outWidth], [4, 4])
        let dFeatures = DTensor(shape: features.shape)
        decoder.backward(acts, dLogits: probe, dFeatures: dFeatures)
        checkGradient("features", input: features, analytic: dFeatures, loss: loss)
        XCTAssertEqual(decoder.parameters.count, 2 * 2 + 4 + 6)
        for name in ["decoder.detail.0.weight", "decoder.detail.1.bias", "decoder.merge.weight"] {
            XCTAssertNotNil(decoder.parameters.first { $0.name == name }, name)
        }
        for p in decoder.parameters {
            XCTAssertGreaterThan(maxAbs(p.grad), 0, "\(p.name) got no gradient")
            checkGradient(p.name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 12, &rng), loss: loss)
        }
    }

    /// The image changes the detail decoder's logits (the branch is wired in), not the plain one's.
    func testDetailBranchReadsTheImage() throws {
        var rng = SplitMix64(seed: 13)
        let features = randomTensor([1, 2, 2, 4], &rng)
        let a = randomTensor([1, 8, 8, 3], &rng), b = randomTensor([1, 8, 8, 3], &rng)
        let detail = try SegDecoderOf<Double>(config: SegDecoderConfig(inChannels: 4, channels: 3, dilations: [1], numClasses: 2, detailChannels: 4), seed: 1)
        detail.parameters.first { $0.name == "decoder.classifier.weight" }!.value.fillNormal(std: 1, rng: &rng)
        let la = detail.forward(features: features, image: a, batch: 1, height: 2, width: 2).logits.toArray()
        let lb = detail.forward(features: features, image: b, batch: 1, height: 2, width: 2).logits.toArray()
        XCTAssertGreaterThan(zip(la, lb).map { abs($0 - $1) }.max()!, 1e-6)
        XCTAssertThrowsError(try SegDecoderConfig(inChannels: 4, numClasses: 2, detailChannels: 3).validate())
    }

    /// A decoder config recorded before the detail branch existed reads as one without it.
    func testDecoderConfigWithoutDetailFieldDecodes() throws {
        let old = #"{"in_channels": 8, "channels": 4, "dilations": [1, 2], "num_classes": 3}"#
        let config = try JSONDecoder().decode(SegDecoderConfig.self, from: Data(old.utf8))
        XCTAssertEqual(config, SegDecoderConfig(inChannels: 8, channels: 4, dilations: [1, 2], numClasses: 3))
        XCTAssertFalse(config.hasDetail)
    }

    /// Whole network (ViT + decoder + upsampling + pixel cross-entropy with some ignored pixels).
    func testNetworkStepGradients() throws {
        var rng = SplitMix64(seed: 5)
        let vitConfig = ViTConfig(imageSize: 12, patchSize: 4, depth: 1, dim: 8, heads: 2, mlpRatio: 2, numClasses: 3)
        let network = try SegNetworkOf<Double>(
            backbone: try ViTOf<Double>(config: vitConfig, seed: 1),
            decoder: try SegDecoderOf<Double>(config: SegDecoderConfig(inChannels: 8, channels: 4, dilations: [1], numClasses: 4), seed: 2))
        // Larger classifier weights than the init's so that the loss depends on them noticeably.
        network.decoder.parameters.last(where: { $0.name == "decoder.classifier.weight" })!.value.fillNormal(std: 0.5, rng: &rng)
        let B = 2, S = 12
        let images = randomTensor([B, S, S, 3], &rng)
        var labels = (0..<(B * S * S)).map { _ in UInt8(rng.next() % 4) }
        for i in stride(from: 0, to: labels.count, by: 5) { labels[i] = 255 }
        func loss() -> Double {
            labels.withUnsafeBufferPointer { network.loss(images: images, labels: $0.baseAddress!, training: false, backward: false).loss }
        }
        network.zeroGrad()
        let result = labels.withUnsafeBufferPointer { network.loss(images: images, labels: $0.baseAddress!, training: false, backward: true) }
        XCTAssertEqual(result.counted, labels.filter { $0 != 255 }.count)
        XCTAssertGreaterThan(result.loss, 0)
        for name in ["patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "norm.weight",
                     "decoder.aspp.0.weight", "decoder.aspp.1.weight", "decoder.fuse.weight", "decoder.classifier.bias"] {
            let p = try XCTUnwrap(network.parameters.first { $0.name == name }, name)
            XCTAssertGreaterThan(maxAbs(p.grad), 0, "\(name) got no gradient")
            checkGradient(name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 8, &rng), loss: loss)
        }
    }

    /// The network with the detail decoder: logits upsampled from 1/4 of the image, gradients
    /// through the branch, the merge and the backbone.
    func testNetworkWithDetailDecoderGradients() throws {
        var rng = SplitMix64(seed: 6)
        let vitConfig = ViTConfig(imageSize: 12, patchSize: 4, depth: 1, dim: 8, heads: 2, mlpRatio: 2, numClasses: 3)
        let network = try SegNetworkOf<Double>(
            backbone: try ViTOf<Double>(config: vitConfig, seed: 1),
            decoder: try SegDecoderOf<Double>(config: SegDecoderConfig(inChannels: 8, channels: 4, dilations: [1], numClasses: 4, detailChannels: 4), seed: 2))
        network.decoder.parameters.last(where: { $0.name == "decoder.classifier.weight" })!.value.fillNormal(std: 0.5, rng: &rng)
        let B = 2, S = 12
        let images = randomTensor([B, S, S, 3], &rng)
        var labels = (0..<(B * S * S)).map { _ in UInt8(rng.next() % 4) }
        for i in stride(from: 0, to: labels.count, by: 7) { labels[i] = 255 }
        func loss() -> Double {
            labels.withUnsafeBufferPointer { network.loss(images: images, labels: $0.baseAddress!, training: false, backward: false).loss }
        }
        network.zeroGrad()
        let result = labels.withUnsafeBufferPointer { network.loss(images: images, labels: $0.baseAddress!, training: false, backward: true) }
        XCTAssertEqual(result.activations.decoder.logits.shape, [B, 3, 3, 4])
        for name in ["blocks.0.attn.qkv.weight", "decoder.aspp.0.weight", "decoder.detail.0.weight", "decoder.merge.weight", "decoder.classifier.weight"] {
            let p = try XCTUnwrap(network.parameters.first { $0.name == name }, name)
            XCTAssertGreaterThan(maxAbs(p.grad), 0, "\(name) got no gradient")
            checkGradient(name, input: p.value, analytic: p.grad, indices: sampleIndices(p.value.count, 8, &rng), loss: loss)
        }
    }

    /// Pixels labelled 255 contribute nothing: all-255 labels give loss 0 and no gradient at all.
    func testIgnoredPixelsGiveNoLossAndNoGradient() throws {
        let vitConfig = ViTConfig(imageSize: 16, patchSize: 8, depth: 1, dim: 8, heads: 2, mlpRatio: 2, numClasses: 2)
        let network = try SegNetwork(backbone: try ViT(config: vitConfig, seed: 1),
                                     decoder: try SegDecoder(config: SegDecoderConfig(inChannels: 8, channels: 4, numClasses: 3), seed: 2))
        var settings = SegOptimizerSettings()
        settings.totalSteps = 4
        let trainer = SegTrainer(network: network, settings: settings)
        var rng = SplitMix64(seed: 9)
        let images = Tensor(shape: [2, 16, 16, 3])
        images.fillNormal(std: 1, rng: &rng)
        let before = network.parameters.map { $0.value.toArray() }
        let labels = [UInt8](repeating: 255, count: 2 * 16 * 16)
        let result = try labels.withUnsafeBufferPointer { try trainer.trainStep(images: images, labels: $0.baseAddress!) }
        XCTAssertEqual(result.loss, 0)
        XCTAssertEqual(result.counted, 0)
        XCTAssertEqual(result.gradNorm, 0)
        for p in network.parameters { XCTAssertEqual(maxAbs(p.grad), 0, p.name) }
        // Weight decay still shrinks decaying weights; nothing else moves (Adam's update of a zero gradient is 0).
        for (index, p) in network.parameters.enumerated() where p.name.hasSuffix("bias") {
            XCTAssertEqual(p.value.toArray(), before[index], p.name)
        }
    }

    func testTrainingStepLowersTheLoss() throws {
        let vitConfig = ViTConfig(imageSize: 16, patchSize: 8, depth: 1, dim: 16, heads: 2, mlpRatio: 2, numClasses: 2)
        let network = try SegNetwork(backbone: try ViT(config: vitConfig, seed: 1),
                                     decoder: try SegDecoder(config: SegDecoderConfig(inChannels: 16, channels: 8, numClasses: 3), seed: 2))
        var settings = SegOptimizerSettings()
        settings.totalSteps = 60
        settings.lr = 1e-2
        settings.backboneLRMultiplier = 1
        let trainer = SegTrainer(network: network, settings: settings)
        var rng = SplitMix64(seed: 4)
        let images = Tensor(shape: [2, 16, 16, 3])
        images.fillNormal(std: 1, rng: &rng)
        // Left half class 1, right half class 2, one image; the other all background.
        var labels = [UInt8](repeating: 0, count: 2 * 16 * 16)
        for y in 0..<16 { for x in 0..<16 { labels[y * 16 + x] = x < 8 ? 1 : 2 } }
        var losses: [Double] = []
        for _ in 0..<60 {
            losses.append(try labels.withUnsafeBufferPointer { try trainer.trainStep(images: images, labels: $0.baseAddress!) }.loss)
        }
        XCTAssertEqual(losses[0], log(3), accuracy: 0.05, "a near-zero classifier starts near uniform")
        XCTAssertLessThan(losses.last!, 0.5 * losses[0])
    }

    func testPolySchedule() {
        let s = SegLRSchedule(peakLR: 0.01, totalSteps: 100, power: 0.9)
        XCTAssertEqual(s.lr(atStep: 0), 0.01)
        XCTAssertEqual(s.lr(atStep: 50), 0.01 * pow(0.5, 0.9), accuracy: 1e-15)
        XCTAssertEqual(s.lr(atStep: 100), 0)
        XCTAssertEqual(s.lr(atStep: 120), 0)
    }

    /// The references' warm-up (ToCo's PolyWarmupAdamW, FSR's CosWarmupAdamW): linear from
    /// ratio x peak at step 0 towards the peak; then poly on s / T, or a cosine over the rest.
    func testWarmupThenPolyOrCosine() {
        let poly = SegLRSchedule(peakLR: 0.01, totalSteps: 100, power: 0.9, warmupSteps: 10, warmupRatio: 0.1, decay: .poly)
        XCTAssertEqual(poly.lr(atStep: 0), 0.001, accuracy: 1e-15)
        XCTAssertEqual(poly.lr(atStep: 5), 0.01 * (0.1 + 0.9 * 0.5), accuracy: 1e-15)
        XCTAssertEqual(poly.lr(atStep: 10), 0.01 * pow(0.9, 0.9), accuracy: 1e-15)
        let cosine = SegLRSchedule(peakLR: 0.01, totalSteps: 100, warmupSteps: 10, warmupRatio: 0.1, decay: .cosine)
        XCTAssertEqual(cosine.lr(atStep: 9), 0.01 * (0.1 + 0.9 * 0.9), accuracy: 1e-15)
        XCTAssertEqual(cosine.lr(atStep: 10), 0.01, accuracy: 1e-15)
        XCTAssertEqual(cosine.lr(atStep: 55), 0.005, accuracy: 1e-15)
        XCTAssertEqual(cosine.lr(atStep: 100), 0, accuracy: 1e-15)
        // Settings recorded before warm-up existed decode to none, on poly.
        let old = #"{"lr":0.001,"backbone_lr_mult":0.1,"weight_decay":0.01,"beta1":0.9,"beta2":0.999,"eps":1e-8,"clip_grad_norm":1,"total_steps":40,"poly_power":0.9}"#
        let decoded = try! JSONDecoder().decode(SegOptimizerSettings.self, from: Data(old.utf8))
        XCTAssertEqual(decoded.schedule, SegLRSchedule(peakLR: 0.001, totalSteps: 40, power: 0.9))
    }

    /// Labels follow the image's geometry: flips mirror, upscaling repeats (nearest), padding is 255.
    func testLabelAugmentation() {
        let (w, h) = (4, 4)
        let source = (0..<(w * h)).map { UInt8($0) }
        func render(_ d: AugmentationDraw, size: Int) -> [UInt8] {
            var out = [UInt8](repeating: 7, count: size * size)
            source.withUnsafeBufferPointer { s in out.withUnsafeMutableBufferPointer {
                ImageAugmenter.renderLabels(s.baseAddress!, width: w, height: h, into: $0.baseAddress!, size: size, draw: d)
            } }
            return out
        }
        func draw(_ r: Int, _ cx: Int, _ cy: Int, _ flipped: Bool) -> AugmentationDraw {
            AugmentationDraw(resizedWidth: r, resizedHeight: r, cropX: cx, cropY: cy, flipped: flipped, brightness: 1, contrast: 1, saturation: 1)
        }
        XCTAssertEqual(render(draw(4, 0, 0, false), size: 4), source)
        XCTAssertEqual(render(draw(4, 0, 0, true), size: 4), [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12])
        // Twice the size, top-left 4x4 crop: each source pixel covers 2x2 output pixels.
        XCTAssertEqual(render(draw(8, 0, 0, false), size: 4), [0, 0, 1, 1, 0, 0, 1, 1, 4, 4, 5, 5, 4, 4, 5, 5])
        // Shifted by one pixel left/up of the image: first row and column are padding.
        XCTAssertEqual(render(draw(4, -1, -1, false), size: 4),
                       [255, 255, 255, 255, 255, 0, 1, 2, 255, 4, 5, 6, 255, 8, 9, 10])
        // The image pipeline's padding (normalised zeros) lies exactly where the labels are 255.
        let rgb = [UInt8](repeating: 200, count: w * h * 3)
        var floats = [Float](repeating: 9, count: 4 * 4 * 3)
        rgb.withUnsafeBufferPointer { s in floats.withUnsafeMutableBufferPointer {
            ImageAugmenter.render(s.baseAddress!, width: w, height: h, into: $0.baseAddress!, size: 4,
                                  draw: draw(4, -1, -1, false), normalization: .imageNet)
        } }
        let labels = render(draw(4, -1, -1, false), size: 4)
        for i in 0..<16 { XCTAssertEqual(labels[i] == 255, floats[3 * i] == 0, "pixel \(i)") }
    }
}
