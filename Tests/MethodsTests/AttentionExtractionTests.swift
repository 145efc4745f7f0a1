import Primitives
@testable import CAM
import TestSupport
import XCTest
@testable import Engine

final class AttentionExtractionTests: XCTestCase {
    let config = ViTConfig(imageSize: 16, patchSize: 4, depth: 2, dim: 16, heads: 2, mlpRatio: 2, numClasses: 3)
    let norm = Normalization(mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3])

    func model() throws -> ViT { try ViT(config: config, seed: 7) }

    func randomImage(width: Int, height: Int, seed: UInt64, classes: [Int]) -> ExtractionInput {
        var rng = SplitMix64(seed: seed)
        let pixels = (0..<(width * height * 3)).map { _ in UInt8(rng.next() % 256) }
        return ExtractionInput(pixels: pixels, width: width, height: height, classes: classes)
    }

    func mirrored(_ input: ExtractionInput) -> ExtractionInput {
        var out = input
        for y in 0..<input.height {
            for x in 0..<input.width {
                for ch in 0..<3 { out.pixels[(y * input.width + x) * 3 + ch] = input.pixels[(y * input.width + input.width - 1 - x) * 3 + ch] }
            }
        }
        return out
    }

    /// Mirrors [K, g, g] maps along the width.
    func mirrorMaps(_ maps: [Float], grid g: Int) -> [Float] {
        var out = maps
        for k in 0..<(maps.count / (g * g)) {
            for y in 0..<g { for x in 0..<g { out[(k * g + y) * g + x] = maps[(k * g + y) * g + g - 1 - x] } }
        }
        return out
    }

    func assertClose(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5, _ message: String = "", line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, message, line: line)
        let scale = max(b.map(abs).max() ?? 1, 1e-6)
        for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > tolerance * scale {
            XCTFail("\(message) element \(i): \(a[i]) vs \(b[i])", line: line)
            return
        }
    }

    func testPrepareMatchesTrainingResizeAndMirrors() throws {
        let ex = try AttentionExtractor(model: try model(), normalization: norm, options: ExtractionOptions())
        let input = randomImage(width: 10, height: 7, seed: 1, classes: [])
        let expected = [Float](unsafeUninitializedCapacity: 16 * 16 * 3) { buf, n in
            input.pixels.withUnsafeBufferPointer {
                ImageAugmenter.resize($0.baseAddress!, width: 10, height: 7, into: buf.baseAddress!, size: 16, normalization: norm)
            }
            n = 16 * 16 * 3
        }
        XCTAssertEqual(ex.prepare([input], size: 16, flipped: false).toArray(), expected)
        let flipped = ex.prepare([input], size: 16, flipped: true)
        XCTAssertEqual(flipped[0, 3, 0, 1], expected[(3 * 16 + 15) * 3 + 1])
        XCTAssertEqual(flipped[0, 5, 12, 2], expected[(5 * 16 + 3) * 3 + 2])
        // The mirrored image's input is the mirrored input (resize commutes with a mirror).
        assertClose(ex.prepare([mirrored(input)], size: 16, flipped: false).toArray(), flipped.toArray(), tolerance: 1e-5)
        XCTAssertEqual(ex.inputSize(scale: 1), 16)
        XCTAssertEqual(ex.inputSize(scale: 0.5), 8)
        XCTAssertEqual(ex.inputSize(scale: 1.4), 24)  // 22.4 px = 5.6 patches -> 6 patches
        XCTAssertEqual(ex.inputSize(scale: 0.01), 4)
    }

    /// Batched extraction equals a direct single-image forward/backward read out by hand.
    func testBatchMatchesDirectComputation() throws {
        for score in GradientScore.allCases {
            let vit = try model()
            let ex = try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions(gradientScore: score))
            let inputs = [randomImage(width: 12, height: 20, seed: 2, classes: [2, 0]),
                          randomImage(width: 16, height: 16, seed: 3, classes: []),
                          randomImage(width: 9, height: 9, seed: 4, classes: [1])]
            let results = try ex.extract(inputs)
            XCTAssertEqual(results.count, 3)
            let g = 4, n = 16, T = 17, L = 2, H = 2, C = 3
            for (b, input) in inputs.enumerated() {
                let r = results[b]
                XCTAssertEqual(r.classes, input.classes)
                XCTAssertEqual([r.gridHeight, r.gridWidth, r.layers], [g, g, L])
                let reference = try ViT(config: config, seed: 7)
                let acts = reference.forward(images: ex.prepare([input], size: 16, flipped: false))
                // CAMs: the patch scores of the present classes.
                var cams: [Float] = []
                for c in input.classes { for i in 0..<n { cams.append(acts.patchScores[0, i, c]) } }
                assertClose(r.cams, cams, "cams \(score)")
                // Attention: head means of the patch block and of the class-token row.
                var patch: [Float] = [], cls: [Float] = []
                for l in 0..<L {
                    for i in 0..<n { for j in 0..<n { patch.append((0..<H).map { acts.attnProbs[l][0, $0, 1 + i, 1 + j] }.reduce(0, +) / Float(H)) } }
                    for j in 0..<n { cls.append((0..<H).map { acts.attnProbs[l][0, $0, 0, 1 + j] }.reduce(0, +) / Float(H)) }
                }
                assertClose(r.patchAttention, patch, "patch attention")
                assertClose(r.classAttention, cls, "class attention")
                // Gradients: one backward per class of this image alone.
                var grads: [Float] = []
                for c in input.classes {
                    let seed = Tensor(shape: [1, C])
                    seed[0, c] = 1
                    var og = ViTOutputGrads(recordAttentionGrads: true, parameterGrads: false)
                    if score == .cls { og.clsLogits = seed } else { og.camLogits = seed }
                    reference.backward(acts, og)
                    for l in 0..<L {
                        for j in 0..<n {
                            let mean = (0..<H).map { acts.attnProbsGrad[l][0, $0, 0, 1 + j] }.reduce(0, +) / Float(H)
                            grads.append(max(mean, 0))
                        }
                    }
                }
                XCTAssertEqual(r.gradients.count, input.classes.count * L * n)
                if score == .none {
                    XCTAssertTrue(r.gradients.allSatisfy { $0 == 0 }, "gradient_score none stores zero rows")
                } else {
                    assertClose(r.gradients, grads, tolerance: 1e-4, "gradients \(score)")
                    if !input.classes.isEmpty { XCTAssertGreaterThan(r.gradients.max()!, 0, "gradients vanish") }
                }
                XCTAssertEqual(r.logits.count, C)
                XCTAssertEqual(r.logits[0], score == .cls ? acts.clsLogits[0, 0] : acts.camLogits[0, 0], accuracy: 1e-5)
                _ = T
            }
            XCTAssertTrue(vit.parameters.allSatisfy { $0.grad.sumOfSquares() == 0 }, "extraction must leave parameter gradients alone")
        }
    }

    func testFlipAddsTheMirroredViewMirroredBack() throws {
        let vit = try model()
        let plain = try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions())
        let flip = try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions(flip: true))
        let input = randomImage(width: 14, height: 11, seed: 5, classes: [0, 1, 2])
        let mirror = mirrored(input)
        let a = try flip.extract([input, mirror])
        let raw = try plain.extract([input, mirror])
        // flip = the image's own maps + the mirrored image's maps mirrored back.
        let expected = zip(raw[0].cams, mirrorMaps(raw[1].cams, grid: 4)).map { $0 + $1 }
        assertClose(a[0].cams, expected, tolerance: 1e-4, "flip sum")
        // So the mirrored image gets exactly the mirrored maps.
        assertClose(a[1].cams, mirrorMaps(a[0].cams, grid: 4), tolerance: 1e-4, "mirror consistency")
        // Attention and gradients come from the unflipped scale-1 view only.
        XCTAssertEqual(a[0].patchAttention, raw[0].patchAttention)
        XCTAssertEqual(a[0].gradients, raw[0].gradients)

        // A mirror-symmetric image gets mirror-symmetric maps.
        var symmetric = input
        for y in 0..<input.height { for x in 0..<(input.width / 2) { for ch in 0..<3 {
            symmetric.pixels[(y * input.width + input.width - 1 - x) * 3 + ch] = input.pixels[(y * input.width + x) * 3 + ch]
        } } }
        let s = try flip.extract([symmetric])[0]
        assertClose(s.cams, mirrorMaps(s.cams, grid: 4), tolerance: 1e-4, "symmetric image")
    }

    func testScalesAddUpOnTheScaleOneGrid() throws {
        let vit = try model()
        func cams(_ scales: [Double]) throws -> [Float] {
            let ex = try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions(scales: scales))
            return try ex.extract([randomImage(width: 13, height: 17, seed: 6, classes: [1, 2])])[0].cams
        }
        let one = try cams([1]), half = try cams([0.5]), double = try cams([2])
        XCTAssertEqual(half.count, 2 * 16)
        XCTAssertEqual(double.count, 2 * 16)
        assertClose(try cams([0.5, 1, 2]), zip(zip(one, half).map { $0 + $1 }, double).map { $0 + $1 }, tolerance: 1e-4, "sum over scales")
        XCTAssertNotEqual(half, one)
        // Scale 2 by hand: 32 px input, 8 x 8 scores resized to 4 x 4 (align_corners=False halves
        // exactly: each output is the mean of a 2 x 2 block).
        let ex = try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions())
        let input = randomImage(width: 13, height: 17, seed: 6, classes: [1, 2])
        let acts = vit.forward(images: ex.prepare([input], size: 32, flipped: false))
        var expected: [Float] = []
        for c in [1, 2] {
            for y in 0..<4 { for x in 0..<4 {
                let s = [(0, 0), (0, 1), (1, 0), (1, 1)].map { acts.patchScores[0, (2 * y + $0.0) * 8 + 2 * x + $0.1, c] }
                expected.append(s.reduce(0, +) / 4)
            } }
        }
        assertClose(double, expected, tolerance: 1e-5, "scale 2")
        XCTAssertThrowsError(try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions(scales: [])))
        XCTAssertThrowsError(try AttentionExtractor(model: vit, normalization: norm, options: ExtractionOptions(scales: [1, -1])))
    }
}
