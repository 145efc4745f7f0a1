import Foundation

/// What an extra objective adds to one training step.
public struct ObjectiveContribution: Sendable {
    /// Its weighted total, added to the step's loss.
    public var loss: Double
    /// Named terms for the training log (unweighted values, as the objective defines them).
    public var terms: [String: Double]

    public init(loss: Double, terms: [String: Double]) {
        self.loss = loss
        self.terms = terms
    }
}

/// A training term on top of the classification losses of `ClassifierTrainer` (ACR's attention
/// consistency, AReAM's affinity loss, ...). The trainer calls `contribute` once per step after
/// the forward of the batch and its classification losses, before the batch's backward.
///
/// An objective may run the model on other inputs (e.g. a second view: forward AND backward,
/// the parameter gradients accumulate into the step's), and adds the gradients of its loss with
/// respect to the batch's outputs into `grads` (e.g. `grads.attnProbs[l]`, `grads.attnLogits[l]`;
/// add to an entry that is already there rather than replacing it).
public protocol TrainingObjective: AnyObject {
    /// The names of the terms `contribute` reports, in log order.
    var termNames: [String] { get }

    /// `step` is the number of optimiser steps taken before this one (for warm-ups).
    func contribute(model: ViT, images: Tensor, labels: UnsafePointer<Float>, activations: ViTActivations,
                    grads: inout ViTOutputGrads, step: Int) throws -> ObjectiveContribution
}
