import Engine
import Foundation
import Primitives

public typealias FSRHead = FSRHeadOf<Float>

/// Shape of FSR's self-distillation head: the class-attention aggregation blocks and the
/// DINO-style projector (3-layer MLP, L2 normalisation, weight-normalised last layer with the
/// norm fixed to 1). Recorded in single-stage checkpoints.
public struct FSRHeadConfig: Codable, Equatable, Sendable {
    public var dim: Int
    public var heads: Int
    /// Aggregation blocks (masked cross-attention + feed-forward); the paper uses 2.
    public var blocks: Int
    public var mlpRatio: Int
    public var projectorHidden: Int
    public var bottleneck: Int
    /// Size of the softmax outputs student and teacher are compared on.
    public var outDim: Int
    public var layerNormEps: Double

    public init(dim: Int, heads: Int, blocks: Int = 2, mlpRatio: Int = 4, projectorHidden: Int = 512,
                bottleneck: Int = 128, outDim: Int = 1024, layerNormEps: Double = 1e-6) {
        self.dim = dim
        self.heads = heads
        self.blocks = blocks
        self.mlpRatio = mlpRatio
        self.projectorHidden = projectorHidden
        self.bottleneck = bottleneck
        self.outDim = outDim
        self.layerNormEps = layerNormEps
    }

    enum CodingKeys: String, CodingKey {
        case dim, heads, blocks, mlpRatio = "mlp_ratio", projectorHidden = "projector_hidden", bottleneck
        case outDim = "out_dim", layerNormEps = "layernorm_eps"
    }

    public func validate() throws {
        guard dim >= 1, heads >= 1, dim % heads == 0, blocks >= 0, mlpRatio >= 1, projectorHidden >= 1, bottleneck >= 1, outDim >= 1,
              layerNormEps > 0 else {
            throw EngineError("invalid FSR head config: dim \(dim) (divisible by heads \(heads)), blocks \(blocks) >= 0, mlp_ratio, projector_hidden, bottleneck, out_dim >= 1")
        }
    }
}

/// FSR's feature self-reinforcement head (paper eq. 1, 5-7), hand-written forward/backward like
/// the ViT's layers.
///
/// `aggregate` summarises patch tokens [B, N, D] into one class token per image: a learned query
/// token passes `blocks` blocks of c <- c + MCA(LN(c), LN(X)), c <- c + FF(LN(c)), where MCA is
/// multi-head attention from the class token to the patch tokens that `keep` allows (masked
/// tokens get no attention), then a final LayerNorm.
/// `project` maps rows [R, D] to [R, outDim] logits: Linear-GELU-Linear-GELU-Linear, L2
/// normalisation, then a bias-free linear layer whose rows are normalised (weight norm, g = 1).
public final class FSRHeadOf<S: EngineScalar> {
    public let config: FSRHeadConfig
    public let parameterList: [ParameterOf<S>]

    struct Block {
        let norm1W, norm1B, qW, qB, kvW, kvB, projW, projB, norm2W, norm2B, fc1W, fc1B, fc2W, fc2B: ParameterOf<S>
    }
    let query: ParameterOf<S>
    let blocks: [Block]
    let normW, normB: ParameterOf<S>
    let p1W, p1B, p2W, p2B, p3W, p3B, lastV: ParameterOf<S>

    /// Trunc-normal(0.02) weights, zero biases, LayerNorm weight 1. The last layer keeps
    /// PyTorch's default Linear init, U(+-1/sqrt(bottleneck)), as in DINO's head (its init runs
    /// before the last layer exists): its directions are unit rows either way, but the size of
    /// v sets how fast Adam turns them.
    public init(config: FSRHeadConfig, seed: UInt64) throws {
        try config.validate()
        self.config = config
        let D = config.dim, F = config.mlpRatio * D, Hd = config.projectorHidden
        var list: [ParameterOf<S>] = []
        func param(_ name: String, _ shape: [Int]) -> ParameterOf<S> {
            let q = ParameterOf<S>("fsr." + name, shape)
            list.append(q)
            return q
        }
        query = param("aggregate.cls_token", [1, 1, D])
        var bs: [Block] = []
        for i in 0..<config.blocks {
            let pre = "aggregate.blocks.\(i)."
            bs.append(Block(
                norm1W: param(pre + "norm1.weight", [D]), norm1B: param(pre + "norm1.bias", [D]),
                qW: param(pre + "attn.q.weight", [D, D]), qB: param(pre + "attn.q.bias", [D]),
                kvW: param(pre + "attn.kv.weight", [2 * D, D]), kvB: param(pre + "attn.kv.bias", [2 * D]),
                projW: param(pre + "attn.proj.weight", [D, D]), projB: param(pre + "attn.proj.bias", [D]),
                norm2W: param(pre + "norm2.weight", [D]), norm2B: param(pre + "norm2.bias", [D]),
                fc1W: param(pre + "mlp.fc1.weight", [F, D]), fc1B: param(pre + "mlp.fc1.bias", [F]),
                fc2W: param(pre + "mlp.fc2.weight", [D, F]), fc2B: param(pre + "mlp.fc2.bias", [D])))
        }
        blocks = bs
        normW = param("aggregate.norm.weight", [D])
        normB = param("aggregate.norm.bias", [D])
        p1W = param("projector.mlp.0.weight", [Hd, D]); p1B = param("projector.mlp.0.bias", [Hd])
        p2W = param("projector.mlp.2.weight", [Hd, Hd]); p2B = param("projector.mlp.2.bias", [Hd])
        p3W = param("projector.mlp.4.weight", [config.bottleneck, Hd]); p3B = param("projector.mlp.4.bias", [config.bottleneck])
        lastV = param("projector.last_layer.weight_v", [config.outDim, config.bottleneck])
        parameterList = list
        var rng = SplitMix64(seed: seed)
        for q in list {
            if q.name.hasSuffix("norm1.weight") || q.name.hasSuffix("norm2.weight") || q.name.hasSuffix("norm.weight") {
                q.value.fill(1)
            } else if q.value.rank == 1 {
                q.value.zero()
            } else if q === lastV {
                let bound = 1 / Double(config.bottleneck).squareRoot()
                for i in 0..<q.value.count { q.value.data[i] = S((2 * rng.uniform() - 1) * bound) }
            } else {
                q.value.fillTruncatedNormal(std: 0.02, rng: &rng)
            }
        }
    }

    public var parameters: [(name: String, value: TensorOf<S>, grad: TensorOf<S>)] {
        parameterList.map { ($0.name, $0.value, $0.grad) }
    }
    public var parameterCount: Int { parameterList.reduce(0) { $0 + $1.value.count } }
    public func zeroGrad() { for q in parameterList { q.grad.zero() } }

    // MARK: Aggregation

    /// What `aggregate` keeps for its backward.
    public final class AggregateCache {
        public let batch: Int, patches: Int
        /// [B, D] aggregated class tokens (after the final norm).
        public let output: TensorOf<S>
        let patchesIn: TensorOf<S>
        let keep: [Bool]
        let cs: [TensorOf<S>]          // block inputs [B, D] (blocks + 1, last = final norm input)
        let mids: [TensorOf<S>]        // after the attention residual
        let lnX: [TensorOf<S>], statsX: [TensorOf<S>]
        let lnC: [TensorOf<S>], statsC: [TensorOf<S>]
        let q: [TensorOf<S>], kv: [TensorOf<S>], probs: [TensorOf<S>], attnOut: [TensorOf<S>]
        let ln2: [TensorOf<S>], stats2: [TensorOf<S>], fc1: [TensorOf<S>], act: [TensorOf<S>]
        let statsF: TensorOf<S>
        init(batch: Int, patches: Int, output: TensorOf<S>, patchesIn: TensorOf<S>, keep: [Bool], cs: [TensorOf<S>], mids: [TensorOf<S>],
             lnX: [TensorOf<S>], statsX: [TensorOf<S>], lnC: [TensorOf<S>], statsC: [TensorOf<S>], q: [TensorOf<S>], kv: [TensorOf<S>],
             probs: [TensorOf<S>], attnOut: [TensorOf<S>], ln2: [TensorOf<S>], stats2: [TensorOf<S>], fc1: [TensorOf<S>],
             act: [TensorOf<S>], statsF: TensorOf<S>) {
            self.batch = batch; self.patches = patches; self.output = output; self.patchesIn = patchesIn; self.keep = keep
            self.cs = cs; self.mids = mids; self.lnX = lnX; self.statsX = statsX; self.lnC = lnC; self.statsC = statsC
            self.q = q; self.kv = kv; self.probs = probs; self.attnOut = attnOut; self.ln2 = ln2; self.stats2 = stats2
            self.fc1 = fc1; self.act = act; self.statsF = statsF
        }
    }

    /// Aggregates patch tokens [B, N, D] into [B, D]. `keep` [B*N] (nil: all) says which tokens
    /// the class token may attend to; an image with no kept token gets no attention output.
    @_specialize(where S == Float)
    public func aggregate(patches x: TensorOf<S>, keep: [Bool]? = nil) -> AggregateCache {
        let B = x.shape[0], N = x.shape[1], D = config.dim, F = config.mlpRatio * D
        precondition(x.shape == [B, N, D], "aggregate needs patches [B, N, \(D)], got \(x.shape)")
        let keepMask = keep ?? [Bool](repeating: true, count: B * N)
        precondition(keepMask.count == B * N, "keep mask needs \(B * N) entries")
        let eps = S(config.layerNormEps), H = config.heads, dh = D / H
        let scale = 1 / S(dh).squareRoot()
        var cs: [TensorOf<S>] = [], mids: [TensorOf<S>] = []
        var lnX: [TensorOf<S>] = [], statsX: [TensorOf<S>] = [], lnC: [TensorOf<S>] = [], statsC: [TensorOf<S>] = []
        var qs: [TensorOf<S>] = [], kvs: [TensorOf<S>] = [], probsL: [TensorOf<S>] = [], outs: [TensorOf<S>] = []
        var ln2s: [TensorOf<S>] = [], stats2s: [TensorOf<S>] = [], fc1s: [TensorOf<S>] = [], acts: [TensorOf<S>] = []
        let c0 = TensorOf<S>(shape: [B, D])
        for b in 0..<B { (c0.data + b * D).update(from: query.value.data, count: D) }
        cs.append(c0)
        let branch = TensorOf<S>(shape: [B, D])
        for blk in blocks {
            let c = cs.last!
            let lx = TensorOf<S>(shape: [B * N, D]), sx = TensorOf<S>(shape: [2, B * N])
            Kernels.layerNormForward(out: lx.data, mean: sx.data, rstd: sx.data + B * N, inp: x.data, weight: blk.norm1W.value.data,
                                     bias: blk.norm1B.value.data, rows: B * N, dim: D, eps: eps)
            let lc = TensorOf<S>(shape: [B, D]), sc = TensorOf<S>(shape: [2, B])
            Kernels.layerNormForward(out: lc.data, mean: sc.data, rstd: sc.data + B, inp: c.data, weight: blk.norm1W.value.data,
                                     bias: blk.norm1B.value.data, rows: B, dim: D, eps: eps)
            let q = TensorOf<S>(shape: [B, D]), kv = TensorOf<S>(shape: [B * N, 2 * D])
            Kernels.linearForward(out: q.data, inp: lc.data, weight: blk.qW.value.data, bias: blk.qB.value.data, rows: B, inFeatures: D, outFeatures: D)
            Kernels.linearForward(out: kv.data, inp: lx.data, weight: blk.kvW.value.data, bias: blk.kvB.value.data,
                                  rows: B * N, inFeatures: D, outFeatures: 2 * D)
            let probs = TensorOf<S>(shape: [B, H, N]), out = TensorOf<S>(shape: [B, D])
            for b in 0..<B {
                for h in 0..<H {
                    let qp = q.data + b * D + h * dh, pr = probs.data + (b * H + h) * N
                    var top = -S.infinity
                    for n in 0..<N where keepMask[b * N + n] {
                        let k = kv.data + (b * N + n) * 2 * D + h * dh
                        pr[n] = S.rowDot(qp, k, dh) * scale
                        top = max(top, pr[n])
                    }
                    var total: S = 0
                    for n in 0..<N {
                        if keepMask[b * N + n] { pr[n] = S.engineExp(pr[n] - top); total += pr[n] } else { pr[n] = 0 }
                    }
                    let o = out.data + b * D + h * dh
                    if total > 0 {
                        for n in 0..<N { pr[n] /= total }
                        for n in 0..<N where pr[n] != 0 {
                            let v = kv.data + (b * N + n) * 2 * D + D + h * dh
                            for j in 0..<dh { o[j] += pr[n] * v[j] }
                        }
                    }
                }
            }
            let mid = TensorOf<S>(shape: [B, D])
            Kernels.linearForward(out: branch.data, inp: out.data, weight: blk.projW.value.data, bias: blk.projB.value.data,
                                  rows: B, inFeatures: D, outFeatures: D)
            for i in 0..<(B * D) { mid.data[i] = c.data[i] + branch.data[i] }
            let l2 = TensorOf<S>(shape: [B, D]), s2 = TensorOf<S>(shape: [2, B])
            Kernels.layerNormForward(out: l2.data, mean: s2.data, rstd: s2.data + B, inp: mid.data, weight: blk.norm2W.value.data,
                                     bias: blk.norm2B.value.data, rows: B, dim: D, eps: eps)
            let f1 = TensorOf<S>(shape: [B, F]), a1 = TensorOf<S>(shape: [B, F])
            Kernels.linearForward(out: f1.data, inp: l2.data, weight: blk.fc1W.value.data, bias: blk.fc1B.value.data, rows: B, inFeatures: D, outFeatures: F)
            Kernels.geluForward(out: a1.data, inp: f1.data, count: B * F)
            Kernels.linearForward(out: branch.data, inp: a1.data, weight: blk.fc2W.value.data, bias: blk.fc2B.value.data, rows: B, inFeatures: F, outFeatures: D)
            let next = TensorOf<S>(shape: [B, D])
            for i in 0..<(B * D) { next.data[i] = mid.data[i] + branch.data[i] }
            lnX.append(lx); statsX.append(sx); lnC.append(lc); statsC.append(sc); qs.append(q); kvs.append(kv)
            probsL.append(probs); outs.append(out); mids.append(mid); ln2s.append(l2); stats2s.append(s2); fc1s.append(f1); acts.append(a1)
            cs.append(next)
        }
        let output = TensorOf<S>(shape: [B, D]), statsF = TensorOf<S>(shape: [2, B])
        Kernels.layerNormForward(out: output.data, mean: statsF.data, rstd: statsF.data + B, inp: cs.last!.data, weight: normW.value.data,
                                 bias: normB.value.data, rows: B, dim: D, eps: eps)
        return AggregateCache(batch: B, patches: N, output: output, patchesIn: x, keep: keepMask, cs: cs, mids: mids, lnX: lnX, statsX: statsX,
                              lnC: lnC, statsC: statsC, q: qs, kv: kvs, probs: probsL, attnOut: outs, ln2: ln2s, stats2: stats2s,
                              fc1: fc1s, act: acts, statsF: statsF)
    }

    /// Adds d(loss)/d(patches) into `dPatches` [B, N, D] (when given) and the parameter
    /// gradients, from dOut [B, D] on the aggregated tokens.
    @_specialize(where S == Float)
    public func aggregateBackward(_ a: AggregateCache, dOut: TensorOf<S>, dPatches: TensorOf<S>?) {
        let B = a.batch, N = a.patches, D = config.dim, F = config.mlpRatio * D, H = config.heads, dh = D / H
        let scale = 1 / S(dh).squareRoot()
        let dc = TensorOf<S>(shape: [B, D])
        Kernels.layerNormBackward(dInp: dc.data, dWeight: normW.grad.data, dBias: normB.grad.data, dOut: dOut.data, inp: a.cs.last!.data,
                                  weight: normW.value.data, mean: a.statsF.data, rstd: a.statsF.data + B, rows: B, dim: D)
        let dX = TensorOf<S>(shape: [B * N, D])
        for (l, blk) in blocks.enumerated().reversed() {
            // Feed-forward branch: dc flows to mid directly and through the MLP.
            let dMid = dc.clone()
            let dAct = TensorOf<S>(shape: [B, F]), dF1 = TensorOf<S>(shape: [B, F]), dL2 = TensorOf<S>(shape: [B, D])
            Kernels.linearBackward(dInp: dAct.data, dWeight: blk.fc2W.grad.data, dBias: blk.fc2B.grad.data, dOut: dc.data, inp: a.act[l].data,
                                   weight: blk.fc2W.value.data, rows: B, inFeatures: F, outFeatures: D)
            Kernels.geluBackward(dInp: dF1.data, dOut: dAct.data, inp: a.fc1[l].data, count: B * F)
            Kernels.linearBackward(dInp: dL2.data, dWeight: blk.fc1W.grad.data, dBias: blk.fc1B.grad.data, dOut: dF1.data, inp: a.ln2[l].data,
                                   weight: blk.fc1W.value.data, rows: B, inFeatures: D, outFeatures: F)
            Kernels.layerNormBackward(dInp: dMid.data, dWeight: blk.norm2W.grad.data, dBias: blk.norm2B.grad.data, dOut: dL2.data,
                                      inp: a.mids[l].data, weight: blk.norm2W.value.data, mean: a.stats2[l].data, rstd: a.stats2[l].data + B,
                                      rows: B, dim: D)
            // Attention branch.
            let dPrev = dMid.clone()
            let dAttnOut = TensorOf<S>(shape: [B, D])
            Kernels.linearBackward(dInp: dAttnOut.data, dWeight: blk.projW.grad.data, dBias: blk.projB.grad.data, dOut: dMid.data,
                                   inp: a.attnOut[l].data, weight: blk.projW.value.data, rows: B, inFeatures: D, outFeatures: D)
            let dQ = TensorOf<S>(shape: [B, D]), dKV = TensorOf<S>(shape: [B * N, 2 * D])
            let kv = a.kv[l], q = a.q[l]
            let dP = UnsafeMutablePointer<S>.allocate(capacity: max(N, 1))
            defer { dP.deallocate() }
            for b in 0..<B {
                for h in 0..<H {
                    let pr = a.probs[l].data + (b * H + h) * N, dO = dAttnOut.data + b * D + h * dh
                    // out = sum_n p_n v_n: dv_n = p_n dO, dp_n = dO . v_n; softmax backward; logits = scale q.k_n.
                    var s: S = 0
                    for n in 0..<N {
                        if pr[n] == 0 { dP[n] = 0; continue }
                        let v = kv.data + (b * N + n) * 2 * D + D + h * dh
                        let dv = dKV.data + (b * N + n) * 2 * D + D + h * dh
                        for j in 0..<dh { dv[j] += pr[n] * dO[j] }
                        dP[n] = S.rowDot(dO, v, dh)
                        s += dP[n] * pr[n]
                    }
                    let qp = q.data + b * D + h * dh, dq = dQ.data + b * D + h * dh
                    for n in 0..<N where pr[n] != 0 {
                        let dLogit = pr[n] * (dP[n] - s) * scale
                        let k = kv.data + (b * N + n) * 2 * D + h * dh
                        let dk = dKV.data + (b * N + n) * 2 * D + h * dh
                        for j in 0..<dh { dq[j] += dLogit * k[j]; dk[j] += dLogit * qp[j] }
                    }
                }
            }
            let dLC = TensorOf<S>(shape: [B, D]), dLX = TensorOf<S>(shape: [B * N, D])
            Kernels.linearBackward(dInp: dLC.data, dWeight: blk.qW.grad.data, dBias: blk.qB.grad.data, dOut: dQ.data, inp: a.lnC[l].data,
                                   weight: blk.qW.value.data, rows: B, inFeatures: D, outFeatures: D)
            Kernels.linearBackward(dInp: dLX.data, dWeight: blk.kvW.grad.data, dBias: blk.kvB.grad.data, dOut: dKV.data, inp: a.lnX[l].data,
                                   weight: blk.kvW.value.data, rows: B * N, inFeatures: D, outFeatures: 2 * D)
            Kernels.layerNormBackward(dInp: dPrev.data, dWeight: blk.norm1W.grad.data, dBias: blk.norm1B.grad.data, dOut: dLC.data,
                                      inp: a.cs[l].data, weight: blk.norm1W.value.data, mean: a.statsC[l].data, rstd: a.statsC[l].data + B,
                                      rows: B, dim: D)
            Kernels.layerNormBackward(dInp: dX.data, dWeight: blk.norm1W.grad.data, dBias: blk.norm1B.grad.data, dOut: dLX.data,
                                      inp: a.patchesIn.data, weight: blk.norm1W.value.data, mean: a.statsX[l].data,
                                      rstd: a.statsX[l].data + B * N, rows: B * N, dim: D)
            dc.copy(from: dPrev)
        }
        // The learned query is shared by every image.
        for b in 0..<B { for j in 0..<D { query.grad.data[j] += dc.data[b * D + j] } }
        if let dPatches {
            precondition(dPatches.count == B * N * D)
            for i in 0..<(B * N * D) { dPatches.data[i] += dX.data[i] }
        }
    }

    // MARK: Projection

    public final class ProjectCache {
        public let rows: Int
        /// [R, outDim] logits (before any temperature).
        public let output: TensorOf<S>
        let input: TensorOf<S>
        let h1: TensorOf<S>, a1: TensorOf<S>, h2: TensorOf<S>, a2: TensorOf<S>, z: TensorOf<S>, u: TensorOf<S>
        let zNorm: [S]
        let w: TensorOf<S>, vNorm: [S]
        init(rows: Int, output: TensorOf<S>, input: TensorOf<S>, h1: TensorOf<S>, a1: TensorOf<S>, h2: TensorOf<S>, a2: TensorOf<S>,
             z: TensorOf<S>, u: TensorOf<S>, zNorm: [S], w: TensorOf<S>, vNorm: [S]) {
            self.rows = rows; self.output = output; self.input = input; self.h1 = h1; self.a1 = a1; self.h2 = h2; self.a2 = a2
            self.z = z; self.u = u; self.zNorm = zNorm; self.w = w; self.vNorm = vNorm
        }
    }

    /// Projector logits [R, outDim] of rows [R, D].
    @_specialize(where S == Float)
    public func project(_ x: TensorOf<S>) -> ProjectCache {
        let D = config.dim, Hd = config.projectorHidden, K = config.bottleneck, O = config.outDim
        let R = x.count / D
        precondition(x.count == R * D, "project needs rows of \(D) values")
        let h1 = TensorOf<S>(shape: [R, Hd]), a1 = TensorOf<S>(shape: [R, Hd]), h2 = TensorOf<S>(shape: [R, Hd]), a2 = TensorOf<S>(shape: [R, Hd])
        let z = TensorOf<S>(shape: [R, K]), u = TensorOf<S>(shape: [R, K])
        Kernels.linearForward(out: h1.data, inp: x.data, weight: p1W.value.data, bias: p1B.value.data, rows: R, inFeatures: D, outFeatures: Hd)
        Kernels.geluForward(out: a1.data, inp: h1.data, count: R * Hd)
        Kernels.linearForward(out: h2.data, inp: a1.data, weight: p2W.value.data, bias: p2B.value.data, rows: R, inFeatures: Hd, outFeatures: Hd)
        Kernels.geluForward(out: a2.data, inp: h2.data, count: R * Hd)
        Kernels.linearForward(out: z.data, inp: a2.data, weight: p3W.value.data, bias: p3B.value.data, rows: R, inFeatures: Hd, outFeatures: K)
        // F.normalize: z / max(|z|, 1e-12).
        var zNorm = [S](repeating: 0, count: R)
        for r in 0..<R {
            let n = S.rowDot(z.data + r * K, z.data + r * K, K).squareRoot()
            zNorm[r] = n
            let inv = 1 / max(n, S(1e-12))
            for j in 0..<K { u.data[r * K + j] = z.data[r * K + j] * inv }
        }
        let w = TensorOf<S>(shape: [O, K])
        var vNorm = [S](repeating: 0, count: O)
        for o in 0..<O {
            let v = lastV.value.data + o * K
            let n = S.rowDot(v, v, K).squareRoot()
            vNorm[o] = n
            let inv = 1 / max(n, S(1e-12))
            for j in 0..<K { w.data[o * K + j] = v[j] * inv }
        }
        let out = TensorOf<S>(shape: [R, O])
        Kernels.linearForward(out: out.data, inp: u.data, weight: w.data, bias: nil, rows: R, inFeatures: K, outFeatures: O)
        return ProjectCache(rows: R, output: out, input: x, h1: h1, a1: a1, h2: h2, a2: a2, z: z, u: u, zNorm: zNorm, w: w, vNorm: vNorm)
    }

    /// Adds d(loss)/d(x) into `dInput` [R, D] (when given) and the parameter gradients.
    @_specialize(where S == Float)
    public func projectBackward(_ c: ProjectCache, dOut: TensorOf<S>, dInput: TensorOf<S>?) {
        let D = config.dim, Hd = config.projectorHidden, K = config.bottleneck, O = config.outDim, R = c.rows
        let dU = TensorOf<S>(shape: [R, K]), dW = TensorOf<S>(shape: [O, K])
        Kernels.linearBackward(dInp: dU.data, dWeight: dW.data, dBias: nil, dOut: dOut.data, inp: c.u.data, weight: c.w.data,
                               rows: R, inFeatures: K, outFeatures: O)
        // Row normalisation w = v/|v|: dv = (dw - w (w . dw)) / |v|.
        for o in 0..<O where c.vNorm[o] > 1e-12 {
            let w = c.w.data + o * K, g = dW.data + o * K, dv = lastV.grad.data + o * K
            let s = S.rowDot(w, g, K), inv = 1 / c.vNorm[o]
            for j in 0..<K { dv[j] += (g[j] - w[j] * s) * inv }
        }
        let dZ = TensorOf<S>(shape: [R, K])
        for r in 0..<R where c.zNorm[r] > 1e-12 {
            let u = c.u.data + r * K, g = dU.data + r * K, dz = dZ.data + r * K
            let s = S.rowDot(u, g, K), inv = 1 / c.zNorm[r]
            for j in 0..<K { dz[j] = (g[j] - u[j] * s) * inv }
        }
        let dA2 = TensorOf<S>(shape: [R, Hd]), dH2 = TensorOf<S>(shape: [R, Hd]), dA1 = TensorOf<S>(shape: [R, Hd]), dH1 = TensorOf<S>(shape: [R, Hd])
        Kernels.linearBackward(dInp: dA2.data, dWeight: p3W.grad.data, dBias: p3B.grad.data, dOut: dZ.data, inp: c.a2.data, weight: p3W.value.data,
                               rows: R, inFeatures: Hd, outFeatures: K)
        Kernels.geluBackward(dInp: dH2.data, dOut: dA2.data, inp: c.h2.data, count: R * Hd)
        Kernels.linearBackward(dInp: dA1.data, dWeight: p2W.grad.data, dBias: p2B.grad.data, dOut: dH2.data, inp: c.a1.data, weight: p2W.value.data,
                               rows: R, inFeatures: Hd, outFeatures: Hd)
        Kernels.geluBackward(dInp: dH1.data, dOut: dA1.data, inp: c.h1.data, count: R * Hd)
        Kernels.linearBackward(dInp: dInput?.data, dWeight: p1W.grad.data, dBias: p1B.grad.data, dOut: dH1.data, inp: c.input.data,
                               weight: p1W.value.data, rows: R, inFeatures: D, outFeatures: Hd)
    }
}

// MARK: - Distillation loss

/// DINO/FSR self-distillation: teacher targets softmax((t - centre) / tau_t) (centring and
/// sharpening against collapse), student log softmax(s / tau_s), cross-entropy per row.
public enum SelfDistillation {
    /// out[r, :] = softmax((logits[r, :] - centre) / temperature); `centre` nil = 0.
    @_specialize(where S == Float)
    public static func teacherProbabilities<S: EngineScalar>(
        logits: UnsafePointer<S>, centre: UnsafePointer<S>?, rows: Int, cols: Int, temperature: S, into out: UnsafeMutablePointer<S>
    ) {
        let inv = 1 / temperature
        for r in 0..<rows {
            let x = logits + r * cols, y = out + r * cols
            for j in 0..<cols { y[j] = (x[j] - (centre?[j] ?? 0)) * inv }
        }
        Kernels.softmaxForward(out: out, inp: UnsafePointer(out), rows: rows, cols: cols)
    }

    /// Sum over rows of weight[r] * (-sum_k teacher[r, k] log softmax(student[r, :] / tau_s)_k)
    /// (weight nil = 1). With `dStudent`, ADDS scale * the gradient with respect to the student
    /// logits (the teacher is a constant target).
    @discardableResult
    @_specialize(where S == Float)
    public static func crossEntropy<S: EngineScalar>(
        student: UnsafePointer<S>, teacher: UnsafePointer<S>, rowWeights: UnsafePointer<S>?, rows: Int, cols: Int,
        studentTemperature: S, dStudent: UnsafeMutablePointer<S>? = nil, scale: S = 1
    ) -> Double {
        let inv = 1 / studentTemperature
        let logp = UnsafeMutablePointer<S>.allocate(capacity: max(cols, 1))
        defer { logp.deallocate() }
        var total = 0.0
        for r in 0..<rows {
            let w = rowWeights?[r] ?? 1
            if w == 0 { continue }
            let s = student + r * cols, t = teacher + r * cols
            var top = -S.infinity
            for j in 0..<cols { logp[j] = s[j] * inv; top = max(top, logp[j]) }
            var z: S = 0
            for j in 0..<cols { z += S.engineExp(logp[j] - top) }
            let lse = top + S.engineLog(z)
            var ce: S = 0, tSum: S = 0
            for j in 0..<cols { logp[j] -= lse; ce -= t[j] * logp[j]; tSum += t[j] }
            total += Double(w * ce)
            if let dStudent {
                let g = dStudent + r * cols, k = scale * w * inv
                for j in 0..<cols { g[j] += k * (S.engineExp(logp[j]) * tSum - t[j]) }
            }
        }
        return total
    }

    /// centre <- momentum * centre + (1 - momentum) * mean of the rows.
    @_specialize(where S == Float)
    public static func updateCentre<S: EngineScalar>(_ centre: UnsafeMutablePointer<S>, rows x: UnsafePointer<S>, count: Int, cols: Int, momentum: S) {
        guard count > 0 else { return }
        let mean = UnsafeMutablePointer<S>.allocate(capacity: cols)
        defer { mean.deallocate() }
        mean.initialize(repeating: 0, count: cols)
        for r in 0..<count { for j in 0..<cols { mean[j] += x[r * cols + j] } }
        let k = (1 - momentum) / S(count)
        for j in 0..<cols { centre[j] = momentum * centre[j] + k * mean[j] }
    }
}

// MARK: - Uncertainty-guided masking

/// FSR's adaptive masking (paper eq. 2-4, reference MaskGenerator): a patch (or block of
/// patches) is uncertain when its normalised CAM lies strictly between `low` and `high`;
/// uncertain units score u + 1 and the others u (u uniform in [0, 1)), and the floor(units *
/// ratio) highest scores are masked. So uncertain units are masked first, randomly among
/// themselves, and confident ones fill up the quota. The random strategy scores every unit u.
public enum UncertaintyMasking {
    public enum Strategy: String, Codable, Sendable { case uncertain, random }

    /// Per patch: the max over the image's present classes of ReLU(score) / max over patches
    /// (+1e-5), i.e. the normalised CAM; 0 where no class is present. patchScores [B, N, C],
    /// labels [B, C] multi-hot.
    public static func normalisedCAM(patchScores: UnsafePointer<Float>, labels: UnsafePointer<Float>,
                                     batch B: Int, patches N: Int, classes C: Int) -> [Float] {
        var out = [Float](repeating: 0, count: B * N)
        for b in 0..<B {
            for c in 0..<C where labels[b * C + c] > 0.5 {
                var top: Float = 0
                for n in 0..<N { top = max(top, patchScores[(b * N + n) * C + c]) }
                let inv = 1 / (top + 1e-5)
                for n in 0..<N {
                    let v = max(patchScores[(b * N + n) * C + c], 0) * inv
                    if v > out[b * N + n] { out[b * N + n] = v }
                }
            }
        }
        return out
    }

    /// Masks [B * gridH * gridW] (true = masked) from the normalised CAM [B, gridH, gridW].
    /// `block` > 1 decides per block x block patches on the block's maximum (edge blocks may be
    /// smaller).
    public static func select(cam: [Float], batch B: Int, gridH: Int, gridW: Int, low: Float, high: Float, ratio: Double,
                              block: Int = 1, strategy: Strategy, rng: inout SplitMix64) -> [Bool] {
        precondition(cam.count == B * gridH * gridW && block >= 1 && ratio >= 0 && ratio <= 1)
        let bh = (gridH + block - 1) / block, bw = (gridW + block - 1) / block, units = bh * bw
        let quota = Int((Double(units) * ratio).rounded(.down))
        var mask = [Bool](repeating: false, count: B * gridH * gridW)
        if quota == 0 { return mask }
        for b in 0..<B {
            var scores = [Double](repeating: 0, count: units)
            for u in 0..<units {
                let by = u / bw, bx = u % bw
                var top = -Float.infinity
                for y in (by * block)..<min((by + 1) * block, gridH) {
                    for x in (bx * block)..<min((bx + 1) * block, gridW) { top = max(top, cam[(b * gridH + y) * gridW + x]) }
                }
                let uncertain = strategy == .uncertain && top > low && top < high
                scores[u] = rng.uniform() + (uncertain ? 1 : 0)
            }
            let chosen = scores.indices.sorted { scores[$0] > scores[$1] }.prefix(quota)
            for u in chosen {
                let by = u / bw, bx = u % bw
                for y in (by * block)..<min((by + 1) * block, gridH) {
                    for x in (bx * block)..<min((bx + 1) * block, gridW) { mask[(b * gridH + y) * gridW + x] = true }
                }
            }
        }
        return mask
    }
}
