import Engine
import Foundation
import Primitives

/// The second view of ACR's two-view training (paper 002 sec. 3.2): an image transform whose
/// effect on the token order is a permutation that `tokenOrder` inverts.
public enum ConsistencyView: String, ParameterChoice, Sendable {
    /// Horizontal flip (what the reference code trains with).
    case flip
    /// Rotation by 90 degrees counter-clockwise (`numpy.rot90`); square images only.
    case rot90

    /// The view of images [B, H, W, C] (channels-last), written into `out` when given (same shape).
    @_specialize(where S == Float)
    public func transform<S: EngineScalar>(_ images: TensorOf<S>, into out: TensorOf<S>? = nil) throws -> TensorOf<S> {
        guard images.rank == 4 else { throw EngineError("a consistency view needs images [B, H, W, C], got \(images.shape)") }
        let B = images.shape[0], H = images.shape[1], W = images.shape[2], C = images.shape[3]
        if self == .rot90, H != W {
            throw EngineError("a 90 degree rotation view needs square images, got \(H)x\(W) (use a flip view for non-square images)")
        }
        let target = out ?? TensorOf<S>(shape: images.shape)
        guard target.shape == images.shape else { throw EngineError("view output \(target.shape) differs from the images' \(images.shape)") }
        precondition(target.data != images.data, "a view cannot be written in place")
        let src = images.data, dst = target.data
        for b in 0..<B {
            let s = src + b * H * W * C, d = dst + b * H * W * C
            for i in 0..<H {
                for j in 0..<W {
                    // rot90: out[i, j] = in[j, W-1-i]; flip: out[i, j] = in[i, W-1-j].
                    let from = self == .flip ? (i * W + (W - 1 - j)) : (j * W + (W - 1 - i))
                    (d + (i * W + j) * C).update(from: s + from * C, count: C)
                }
            }
        }
        return target
    }

    /// Indices (class token first, index 0 unchanged) that gather the view's tokens back into the
    /// original image's token order: original token t corresponds to view token order[t].
    public func tokenOrder(gridH: Int, gridW: Int) throws -> [Int] {
        switch self {
        case .flip: return TokenOrder.horizontalFlip(gridH: gridH, gridW: gridW)
        case .rot90: return try TokenOrder.rotation90(gridH: gridH, gridW: gridW)
        }
    }
}

/// ACR's attention consistency terms (paper 002 eq. 1-2, 6) between the attention of an image
/// and of its second view, composed on the `Tape`. As the reference code (DPT/ACR.py `forward_cls`
/// + train_acr.py): per layer the head-averaged probabilities A (the view's brought back to the
/// image's token order, f^-1 permuting rows AND columns), then
///   L_act = mean |A[:, 0, 1:] - f^-1(A')[:, 0, 1:]|   (class-to-patch rows)
///   L_aff = mean |A[:, 1:, 1:] - f^-1(A')[:, 1:, 1:]|  (patch-to-patch blocks)
/// with the means over images, layers and entries (the reference stacks all layers and takes one
/// mean, which equals the mean over layers of per-layer means).
public struct AttentionConsistencyTerms<S: EngineScalar> {
    public var activation: Double
    public var affinity: Double
    /// d(alpha L_act + beta L_aff) / d(attention probabilities) per layer, [B, H, T, T], of the
    /// image and of the view.
    public var gradients1: [TensorOf<S>]
    public var gradients2: [TensorOf<S>]
}

public enum AttentionConsistency {
    /// `probs1`, `probs2`: per layer [B, H, T, T] of the image and of its view; `order` from
    /// `ConsistencyView.tokenOrder` (length T).
    @_specialize(where S == Float)
    public static func evaluate<S: EngineScalar>(probs1: [TensorOf<S>], probs2: [TensorOf<S>], order: [Int],
                                                 alpha: Double, beta: Double) -> AttentionConsistencyTerms<S> {
        precondition(!probs1.isEmpty && probs1.count == probs2.count, "attention of \(probs1.count) vs \(probs2.count) layers")
        let T = probs1[0].shape[3]
        precondition(order.count == T && order.first == 0, "token order of \(order.count) entries for \(T) tokens (class token first)")
        let tape = TapeOf<S>()
        var leaves1: [VarOf<S>] = [], leaves2: [VarOf<S>] = []
        var act: VarOf<S>? = nil, aff: VarOf<S>? = nil
        for (p1, p2) in zip(probs1, probs2) {
            precondition(p1.rank == 4 && p1.shape == p2.shape && p1.shape[2] == T && p1.shape[3] == T,
                         "attention shapes \(p1.shape) vs \(p2.shape)")
            let a1 = tape.leaf(p1), a2 = tape.leaf(p2)
            leaves1.append(a1)
            leaves2.append(a2)
            let restored = a2.mean(axes: [1]).gather(axis: 1, order).gather(axis: 2, order)
            let distance = (a1.mean(axes: [1]) - restored).abs()  // [B, T, T]
            let rowTerm = distance.slice(axis: 1, 0..<1).slice(axis: 2, 1..<T).mean()
            let blockTerm = distance.slice(axis: 1, 1..<T).slice(axis: 2, 1..<T).mean()
            act = act.map { $0 + rowTerm } ?? rowTerm
            aff = aff.map { $0 + blockTerm } ?? blockTerm
        }
        let layers = S(probs1.count)
        let activation = act! * (1 / layers), affinity = aff! * (1 / layers)
        tape.backward(activation * S(alpha) + affinity * S(beta))
        return AttentionConsistencyTerms(activation: Double(activation.value.data[0]), affinity: Double(affinity.value.data[0]),
                                         gradients1: leaves1.map { tape.grad(of: $0) }, gradients2: leaves2.map { tape.grad(of: $0) })
    }
}

/// ACR's training objective: the classification losses of a second view plus the attention
/// consistency of all layers between the batch and that view,
///   L = L_cls(view 1) + L_cls(view 2) + alpha L_act + beta L_aff   (paper eq. 6).
/// The trainer supplies view 1's classification loss; this adds the rest. L_cls is the trainer's
/// loss on both heads (multi-label soft margin on the CAM and class-token logits).
/// Logged terms: `acr_act`, `acr_aff` (unweighted) and `acr_view2_cls`.
public final class ACRObjective: TrainingObjective {
    public let view: ConsistencyView
    public let alpha: Double
    public let beta: Double
    public let termNames = ["acr_act", "acr_aff", "acr_view2_cls"]
    private var viewImages: Tensor?
    private var viewActivations: ViTActivations?
    private var gradCam: Tensor?
    private var gradCls: Tensor?

    public init(view: ConsistencyView, alpha: Double, beta: Double) {
        self.view = view
        self.alpha = alpha
        self.beta = beta
    }

    public func contribute(model: ViT, images: Tensor, labels: UnsafePointer<Float>, activations: ViTActivations,
                           grads: inout ViTOutputGrads, step: Int) throws -> ObjectiveContribution {
        let order = try view.tokenOrder(gridH: activations.gridH, gridW: activations.gridW)
        if viewImages?.shape != images.shape { viewImages = Tensor(shape: images.shape) }
        let second = try view.transform(images, into: viewImages)
        let acts2 = model.forward(images: second, training: true, reuse: viewActivations)
        viewActivations = acts2

        let batch = images.shape[0], classes = model.config.numClasses
        if gradCam?.shape != [batch, classes] {
            gradCam = Tensor(shape: [batch, classes])
            gradCls = Tensor(shape: [batch, classes])
        }
        let gCam = gradCam!, gCls = gradCls!
        gCam.zero()
        gCls.zero()
        let viewLoss = ClassificationLoss.multilabelSoftMargin(
            logits: acts2.camLogits.data, labels: labels, batch: batch, classes: classes, gradient: gCam.data)
            + ClassificationLoss.multilabelSoftMargin(
                logits: acts2.clsLogits.data, labels: labels, batch: batch, classes: classes, gradient: gCls.data)

        let terms = AttentionConsistency.evaluate(probs1: activations.attnProbs, probs2: acts2.attnProbs, order: order,
                                                  alpha: alpha, beta: beta)
        var viewGrads = ViTOutputGrads(camLogits: gCam, clsLogits: gCls)
        for (l, g) in terms.gradients2.enumerated() { viewGrads.attnProbs[l] = g }
        model.backward(acts2, viewGrads)
        for (l, g) in terms.gradients1.enumerated() {
            if let existing = grads.attnProbs[l] { existing.add(g) } else { grads.attnProbs[l] = g }
        }
        let loss = viewLoss + alpha * terms.activation + beta * terms.affinity
        return ObjectiveContribution(loss: loss, terms: ["acr_act": terms.activation, "acr_aff": terms.affinity, "acr_view2_cls": viewLoss])
    }
}
