import ArtifactStore
import Foundation
import Primitives
@testable import SingleStage
import TestSupport
import XCTest
@testable import Engine

final class PatchTokenContrastTests: XCTestCase {
    /// Two tokens of one label pointing the same way (|cos| = 1 on both ordered pairs: P = 2) and
    /// a third of another label orthogonal to them (4 negative pairs, |cos| = 0), plus an ignored
    /// token that would otherwise count: L = 0.5 (1 - 2 / 3) + 0.5 * 0 / 5.
    func testLossFollowsTheDefinitionOnAHandMadeCase() {
        let tokens = DTensor(shape: [1, 4, 2], values: [1, 0, 3, 0, 0, 2, 1, 1])
        let labels: [UInt8] = [1, 1, 0, 255]
        let loss = labels.withUnsafeBufferPointer {
            PatchTokenContrast.loss(tokens: tokens.data, labels: $0.baseAddress!, batch: 1, patches: 4, dim: 2)
        }
        XCTAssertEqual(loss, 0.5 * (1 - 2.0 / 3.0), accuracy: 1e-12)
        // Same tokens, the third now sharing the first two's label: every |cos| of the labelled
        // tokens is counted as positive (P = 6, sum 2): L = 0.5 (1 - 2 / 7).
        let shared: [UInt8] = [1, 1, 1, 255]
        let loss2 = shared.withUnsafeBufferPointer {
            PatchTokenContrast.loss(tokens: tokens.data, labels: $0.baseAddress!, batch: 1, patches: 4, dim: 2)
        }
        XCTAssertEqual(loss2, 0.5 * (1 - 2.0 / 7.0), accuracy: 1e-12)
    }

    func testGradientMatchesFiniteDifferences() {
        var rng = SplitMix64(seed: 11)
        let B = 2, N = 6, D = 4
        let tokens = randomTensor([B, N, D], &rng)
        // A pair with negative cosine in each image, where |cos| bends.
        for b in 0..<B { for j in 0..<D { tokens.data[(b * N + 1) * D + j] = -0.7 * tokens.data[b * N * D + j] + 0.1 } }
        let labels: [UInt8] = [0, 0, 1, 1, 255, 2, 3, 3, 3, 0, 0, 255]
        let weight = 0.3
        let grad = DTensor(shape: [B, N, D])
        labels.withUnsafeBufferPointer {
            _ = PatchTokenContrast.loss(tokens: tokens.data, labels: $0.baseAddress!, batch: B, patches: N, dim: D, dTokens: grad.data, weight: weight)
        }
        // Tokens labelled 255 take part in no pair: no gradient.
        for n in [4, 11] { for j in 0..<D { XCTAssertEqual(grad.data[n * D + j], 0) } }
        checkGradient("PTC tokens", input: tokens, analytic: grad) {
            weight * labels.withUnsafeBufferPointer {
                PatchTokenContrast.loss(tokens: tokens.data, labels: $0.baseAddress!, batch: B, patches: N, dim: D)
            }
        }
    }

    /// Against ToCo's `get_masked_ptc_loss` with `label_to_aff_mask` and nearest-downsampled
    /// labels in PyTorch (float64): Fixtures/ptc_parity.h5, written by Tests/Fixtures/make_ptc_fixtures.py.
    func testMatchesToCosReferenceInPyTorch() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/ptc_parity.h5").path
        let root = try HDF5File.open(path).root
        let x = try root.read("input/tokens", as: Double.self)
        let labels = try root.read("input/labels", as: UInt8.self)
        let expectedTokenLabels = try root.read("output/token_labels", as: UInt8.self)
        let B = x.shape[0], N = x.shape[1], D = x.shape[2]
        let (H, W) = (labels.shape[1], labels.shape[2]), (GH, GW) = (expectedTokenLabels.shape[1], expectedTokenLabels.shape[2])
        XCTAssertEqual(GH * GW, N)
        let tokenLabels = PatchTokenContrast.tokenLabels(labels.values, batch: B, height: H, width: W, gridH: GH, gridW: GW)
        XCTAssertEqual(tokenLabels, expectedTokenLabels.values)
        XCTAssertTrue(tokenLabels.contains(255), "the fixture must exercise ignored tokens")
        let tokens = DTensor(shape: x.shape, values: x.values)
        let grad = DTensor(shape: x.shape)
        let loss = tokenLabels.withUnsafeBufferPointer {
            PatchTokenContrast.loss(tokens: tokens.data, labels: $0.baseAddress!, batch: B, patches: N, dim: D, dTokens: grad.data)
        }
        XCTAssertEqual(loss, try root.read("output/loss", as: Double.self).values[0], accuracy: 1e-12)
        let reference = try root.read("output/grad", as: Double.self)
        let scale = reference.values.map(abs).max()!
        XCTAssertGreaterThan(scale, 0)
        let worst = zip(grad.toArray(), reference.values).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst / scale, 1e-10)
    }

    /// The Float kernel (the one training runs) agrees with the Double one.
    func testFloatAgreesWithDouble() {
        var rng = SplitMix64(seed: 5)
        let B = 3, N = 16, D = 24
        let tokens = randomTensor([B, N, D], &rng)
        var labels = [UInt8](repeating: 0, count: B * N)
        for i in labels.indices { labels[i] = (i * 7) % 4 == 3 ? 255 : UInt8((i * 5) % 3) }
        let dGrad = DTensor(shape: [B, N, D])
        let dLoss = labels.withUnsafeBufferPointer {
            PatchTokenContrast.loss(tokens: tokens.data, labels: $0.baseAddress!, batch: B, patches: N, dim: D, dTokens: dGrad.data)
        }
        let f = Tensor(shape: [B, N, D]), fGrad = Tensor(shape: [B, N, D])
        for i in 0..<f.count { f.data[i] = Float(tokens.data[i]) }
        let fLoss = labels.withUnsafeBufferPointer {
            PatchTokenContrast.loss(tokens: f.data, labels: $0.baseAddress!, batch: B, patches: N, dim: D, dTokens: fGrad.data)
        }
        XCTAssertEqual(fLoss, dLoss, accuracy: 1e-5)
        var worst = 0.0, scale = 0.0
        for i in 0..<f.count {
            worst = max(worst, abs(Double(fGrad.data[i]) - dGrad.data[i]))
            scale = max(scale, abs(dGrad.data[i]))
        }
        XCTAssertLessThan(worst / scale, 1e-4)
    }
}
