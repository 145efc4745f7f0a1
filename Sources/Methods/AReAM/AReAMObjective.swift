// AReAM's training term for classify-train (method=areaM): online affinity labels from the
// step's own forward (Localization.AReAMTrainingLabels) supervise the raw attention logits of
// the deep layers (Engine.AttentionAffinityLoss, paper eq. 15-16).
import Engine
import Foundation
import Localization

public final class AReAMObjective: TrainingObjective {
    public let labels: AReAMTrainingLabels
    /// Layers whose attention logits are supervised (resolved indices).
    public let layers: [Int]
    public let lossWeight: Double
    /// Classification-only optimiser steps before the term starts.
    public let warmupSteps: Int
    private var gradients: [Int: Tensor] = [:]

    public init(labels: AReAMTrainingLabels, layers: [Int], lossWeight: Double, warmupSteps: Int) {
        precondition(!layers.isEmpty)
        self.labels = labels
        self.layers = layers
        self.lossWeight = lossWeight
        self.warmupSteps = warmupSteps
    }

    /// Default supervised layers: the code's 7-11 of 12, i.e. from depth * 7 / 12 to the last.
    public static func defaultLayers(depth: Int) -> [Int] { Array((depth * 7 / 12)..<depth) }

    /// aff_loss: the layer-weighted eq. 15 before `lossWeight` (0 during the warm-up); the
    /// fractions of the batch's token pairs that are positive and ignored; the fraction of images
    /// whose CAMs are blank (no positive score: ignored). (No time: the log goes into the
    /// checkpoint, whose bytes must not depend on the clock.)
    public let termNames = ["aff_loss", "aff_positive_fraction", "aff_ignored_fraction", "aff_blank_cam_fraction"]

    public func contribute(model: ViT, images: Tensor, labels multiHot: UnsafePointer<Float>, activations acts: ViTActivations,
                    grads: inout ViTOutputGrads, step: Int) throws -> ObjectiveContribution {
        guard step >= warmupSteps else {
            return ObjectiveContribution(loss: 0, terms: Dictionary(uniqueKeysWithValues: termNames.map { ($0, 0) }))
        }
        let B = images.shape[0], S = images.shape[1]
        let L = acts.attnProbs.count, H = acts.attnProbs[0].shape[1], T = acts.attnProbs[0].shape[2]
        let n = T - 1, C = acts.patchScores.shape[2]
        let grid = Int(Double(n).squareRoot().rounded())
        precondition(grid * grid == n && images.shape[2] == S, "AReAM labels need square images and token grids")

        // Label making reads copies of the forward's outputs: nothing here is differentiated.
        let invH = 1 / Float(H)
        var batch: [AReAMTrainingLabels.Image] = []
        batch.reserveCapacity(B)
        for b in 0..<B {
            let present = (0..<C).filter { multiHot[b * C + $0] > 0.5 }
            var cams = [Float](repeating: 0, count: present.count * n)
            let scores = acts.patchScores.data + b * n * C
            for (k, c) in present.enumerated() { for i in 0..<n { cams[k * n + i] = scores[i * C + c] } }
            var attention = [Float](repeating: 0, count: L * n * n)
            attention.withUnsafeMutableBufferPointer { out in
                for l in 0..<L {
                    let probs = acts.attnProbs[l].data
                    for h in 0..<H {
                        let head = probs + (b * H + h) * T * T
                        for i in 0..<n {
                            let src = head + (1 + i) * T + 1, dst = out.baseAddress! + (l * n + i) * n
                            for j in 0..<n { dst[j] += src[j] * invH }
                        }
                    }
                }
            }
            let pixels = Array(UnsafeBufferPointer(start: images.data + b * S * S * 3, count: S * S * 3))
            batch.append(.init(classes: present.map { $0 + 1 }, cams: cams, attention: attention, pixels: pixels, size: S))
        }
        let made = labels.make(batch, grid: grid, layers: L)

        // Eq. 16, averaged over the supervised layers so that lossWeight keeps its scale.
        var total = 0.0
        let share = 1 / Double(layers.count)
        var counted = (positives: 0, negatives: 0)
        made.affinity.withUnsafeBufferPointer { affinity in
            for l in layers {
                let gradient: Tensor
                if let existing = grads.attnLogits[l] {
                    gradient = existing
                } else {
                    if gradients[l]?.shape != [B, H, T, T] { gradients[l] = Tensor(shape: [B, H, T, T]) }
                    gradient = gradients[l]!
                    gradient.zero()
                    grads.attnLogits[l] = gradient
                }
                let layerWeight = Double(made.lossWeights[l]) * share
                let result = AttentionAffinityLoss.compute(logits: acts.attnLogits[l].data, labels: affinity.baseAddress!, batch: B, heads: H,
                                                           tokens: T, gradient: gradient.data, weight: Float(lossWeight * layerWeight))
                total += layerWeight * result.loss
                counted = (result.positives, result.negatives)
            }
        }
        let pairs = Double(B * n * n)
        return ObjectiveContribution(loss: lossWeight * total, terms: [
            "aff_loss": total,
            "aff_positive_fraction": Double(counted.positives) / pairs,
            "aff_ignored_fraction": (pairs - Double(counted.positives + counted.negatives)) / pairs,
            "aff_blank_cam_fraction": Double(made.blankCams) / Double(B),
        ])
    }
}
