import Primitives
/// Whole-layer kernels over raw pointers with explicit sizes (llm.c style). Every backward ADDS
/// into its gradient outputs. Row-major throughout; a token matrix is [rows, features].
public enum Kernels {}

// MARK: - Vector helpers

// Row reductions dispatch to concrete per-type code (see `EngineScalar`): the SIMD lane compare
// in generic code specialised for Float compiled to a per-lane scalar loop, the same source in
// non-generic code to maxps.
@inline(__always) @usableFromInline
func vsum<S: EngineScalar>(_ p: UnsafePointer<S>, _ n: Int) -> S { S.rowSum(p, n) }
@inline(__always) @usableFromInline
func vdot<S: EngineScalar>(_ a: UnsafePointer<S>, _ b: UnsafePointer<S>, _ n: Int) -> S { S.rowDot(a, b, n) }
@inline(__always) @usableFromInline
func vmax<S: EngineScalar>(_ p: UnsafePointer<S>, _ n: Int) -> S { S.rowMax(p, n) }
/// Sum of (p[i] - c)^2.
@inline(__always) @usableFromInline
func vsumSquaredDeviation<S: EngineScalar>(_ p: UnsafePointer<S>, _ n: Int, _ c: S) -> S {
    S.rowSumSquaredDeviation(p, n, c)
}

/// Column sums of a [rows, cols] matrix added into out[cols], split over threads by rows.
@inline(__always) @usableFromInline
func addColumnSums<S: EngineScalar>(_ out: UnsafeMutablePointer<S>, _ m: UnsafePointer<S>, rows: Int, cols: Int) {
    let tasks = min(Parallel.maxChunks, max(1, rows * cols / 262_144))
    if tasks <= 1 {
        for r in 0..<rows {
            let row = m + r * cols
            for j in 0..<cols { out[j] += row[j] }
        }
        return
    }
    let partial = UnsafeMutablePointer<S>.allocate(capacity: tasks * cols)
    partial.initialize(repeating: 0, count: tasks * cols)
    defer { partial.deallocate() }
    let pp = SendablePointer(partial), mp = SendablePointer(m)
    Parallel.forRanges(tasks, costPerItem: 1 << 20) { range in
        for t in range {
            let acc = pp.p + t * cols
            for r in (rows * t / tasks)..<(rows * (t + 1) / tasks) {
                let row = mp.p + r * cols
                for j in 0..<cols { acc[j] += row[j] }
            }
        }
    }
    for t in 0..<tasks {
        let acc = partial + t * cols
        for j in 0..<cols { out[j] += acc[j] }
    }
}

// MARK: - Linear

extension Kernels {
    /// out[rows, outF] = inp[rows, inF] @ weight[outF, inF]^T + bias[outF].
    @_specialize(where S == Float)
    public static func linearForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, weight: UnsafePointer<S>,
        bias: UnsafePointer<S>?, rows: Int, inFeatures: Int, outFeatures: Int
    ) {
        if let bias {
            for r in 0..<rows { (out + r * outFeatures).update(from: bias, count: outFeatures) }
        }
        S.gemm(transA: false, transB: true, m: rows, n: outFeatures, k: inFeatures,
               alpha: 1, a: inp, lda: inFeatures, b: weight, ldb: inFeatures,
               beta: bias == nil ? 0 : 1, c: out, ldc: outFeatures)
    }

    /// dInp += dOut @ W; dWeight += dOut^T @ inp; dBias += column sums of dOut.
    /// Any gradient output may be nil (not wanted). `accumulateInput: false` overwrites dInp
    /// instead (saves zeroing a scratch buffer first).
    @_specialize(where S == Float)
    public static func linearBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>?, dWeight: UnsafeMutablePointer<S>?, dBias: UnsafeMutablePointer<S>?,
        dOut: UnsafePointer<S>, inp: UnsafePointer<S>, weight: UnsafePointer<S>,
        rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = true
    ) {
        if let dInp {
            S.gemm(transA: false, transB: false, m: rows, n: inFeatures, k: outFeatures,
                   alpha: 1, a: dOut, lda: outFeatures, b: weight, ldb: inFeatures,
                   beta: accumulateInput ? 1 : 0, c: dInp, ldc: inFeatures)
        }
        if let dWeight {
            S.gemm(transA: true, transB: false, m: outFeatures, n: inFeatures, k: rows,
                   alpha: 1, a: dOut, lda: outFeatures, b: inp, ldb: inFeatures,
                   beta: 1, c: dWeight, ldc: inFeatures)
        }
        if let dBias { addColumnSums(dBias, dOut, rows: rows, cols: outFeatures) }
    }
}

// MARK: - LayerNorm

extension Kernels {
    /// Per row: out = (x - mean) / sqrt(var + eps) * weight + bias (biased variance, as PyTorch).
    /// Keeps mean[rows] and rstd[rows] for the backward.
    @_specialize(where S == Float)
    public static func layerNormForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, mean: UnsafeMutablePointer<S>, rstd: UnsafeMutablePointer<S>,
        inp: UnsafePointer<S>, weight: UnsafePointer<S>, bias: UnsafePointer<S>,
        rows: Int, dim: Int, eps: S
    ) {
        let o = SendablePointer(out), mp = SendablePointer(mean), rp = SendablePointer(rstd)
        let x = SendablePointer(inp), w = SendablePointer(weight), b = SendablePointer(bias)
        Parallel.forRanges(rows, costPerItem: 3 * dim) { range in
            for r in range {
                let xr = UnsafePointer(x.p + r * dim), yr = o.p + r * dim
                let m = vsum(xr, dim) / S(dim)
                let v = vsumSquaredDeviation(xr, dim, m) / S(dim)
                let s = 1 / (v + eps).squareRoot()
                mp.p[r] = m
                rp.p[r] = s
                for i in 0..<dim { yr[i] = (xr[i] - m) * s * w.p[i] + b.p[i] }
            }
        }
    }

    /// dInp += dx; dWeight += sum_rows dOut * xhat; dBias += sum_rows dOut (nil: not wanted).
    @_specialize(where S == Float)
    public static func layerNormBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dWeight: UnsafeMutablePointer<S>?, dBias: UnsafeMutablePointer<S>?,
        dOut: UnsafePointer<S>, inp: UnsafePointer<S>, weight: UnsafePointer<S>,
        mean: UnsafePointer<S>, rstd: UnsafePointer<S>, rows: Int, dim: Int
    ) {
        if rows == 0 { return }
        let tasks = min(Parallel.maxChunks, rows, max(1, rows * dim * 6 / 65_536))
        // Per-task partial weight/bias gradients, reduced at the end (rows race on them).
        let partial = UnsafeMutablePointer<S>.allocate(capacity: max(1, tasks) * 2 * dim)
        partial.initialize(repeating: 0, count: max(1, tasks) * 2 * dim)
        defer { partial.deallocate() }
        let pp = SendablePointer(partial), dx = SendablePointer(dInp), dy = SendablePointer(dOut)
        let x = SendablePointer(inp), w = SendablePointer(weight)
        let mp = SendablePointer(mean), rp = SendablePointer(rstd)
        let body: (Int) -> Void = { t in
            let dw = pp.p + t * 2 * dim, db = dw + dim
            for r in (rows * t / tasks)..<(rows * (t + 1) / tasks) {
                let xr = x.p + r * dim, dyr = dy.p + r * dim, dxr = dx.p + r * dim
                let m = mp.p[r], s = rp.p[r]
                // Two row reductions: mean(dy*w) and mean(dy*w*xhat).
                var a1 = SIMD8<S>(), a2 = SIMD8<S>()
                var i = 0
                let mv = SIMD8<S>(repeating: m), sv = SIMD8<S>(repeating: s)
                let stride = MemoryLayout<S>.stride
                let rx = UnsafeRawPointer(xr), rdy = UnsafeRawPointer(dyr), rw = UnsafeRawPointer(w.p)
                while i + 8 <= dim {
                    let off = i * stride
                    let g = rdy.loadUnaligned(fromByteOffset: off, as: SIMD8<S>.self)
                        * rw.loadUnaligned(fromByteOffset: off, as: SIMD8<S>.self)
                    let xh = (rx.loadUnaligned(fromByteOffset: off, as: SIMD8<S>.self) - mv) * sv
                    a1 += g
                    a2 += g * xh
                    i += 8
                }
                var s1 = a1.sum(), s2 = a2.sum()
                while i < dim {
                    let g = dyr[i] * w.p[i]
                    s1 += g
                    s2 += g * (xr[i] - m) * s
                    i += 1
                }
                let gm = s1 / S(dim), gxm = s2 / S(dim)
                for j in 0..<dim {
                    let xh = (xr[j] - m) * s
                    dxr[j] += (dyr[j] * w.p[j] - gm - xh * gxm) * s
                    dw[j] += dyr[j] * xh
                    db[j] += dyr[j]
                }
            }
        }
        if tasks <= 1 {
            body(0)
        } else {
            Parallel.forRanges(tasks, costPerItem: 1 << 20) { range in for t in range { body(t) } }
        }
        for t in 0..<tasks {
            let dw = partial + t * 2 * dim, db = dw + dim
            if let dWeight { for j in 0..<dim { dWeight[j] += dw[j] } }
            if let dBias { for j in 0..<dim { dBias[j] += db[j] } }
        }
    }
}

// MARK: - GELU (tanh approximation, PyTorch approximate='tanh')

@usableFromInline let geluK0 = 0.7978845608028654   // sqrt(2/pi)
@usableFromInline let geluK1 = 0.044715

extension Kernels {
    /// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    @_specialize(where S == Float)
    public static func geluForward<S: EngineScalar>(out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, count: Int) {
        let o = SendablePointer(out), x = SendablePointer(inp)
        let k0 = S(geluK0), k1 = S(geluK1)
        Parallel.forRanges(count, costPerItem: 24) { range in
            let op = o.p, xp = x.p
            for i in range {
                let v = xp[i]
                let t = S.engineTanh(k0 * (v + k1 * v * v * v))
                op[i] = 0.5 * v * (1 + t)
            }
        }
    }

    /// dInp += dOut * gelu'(x), recomputing tanh from the kept input.
    @_specialize(where S == Float)
    public static func geluBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>, inp: UnsafePointer<S>, count: Int
    ) {
        let d = SendablePointer(dInp), g = SendablePointer(dOut), x = SendablePointer(inp)
        let k0 = S(geluK0), k1 = S(geluK1)
        Parallel.forRanges(count, costPerItem: 30) { range in
            let dp = d.p, gp = g.p, xp = x.p
            for i in range {
                let v = xp[i]
                let v2 = v * v
                let t = S.engineTanh(k0 * (v + k1 * v2 * v))
                let dudx = k0 * (1 + 3 * k1 * v2)
                dp[i] += gp[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * dudx)
            }
        }
    }
}

extension Kernels {
    /// Exact GELU: out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's default, DINOv2's).
    @_specialize(where S == Float)
    public static func geluErfForward<S: EngineScalar>(out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, count: Int) {
        let o = SendablePointer(out), x = SendablePointer(inp)
        let r2 = S(0.7071067811865476)
        Parallel.forRanges(count, costPerItem: 24) { range in
            let op = o.p, xp = x.p
            for i in range {
                let v = xp[i]
                op[i] = 0.5 * v * (1 + S.engineErf(v * r2))
            }
        }
    }

    /// dInp += dOut * (Phi(x) + x phi(x)), phi the standard normal density.
    @_specialize(where S == Float)
    public static func geluErfBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>, inp: UnsafePointer<S>, count: Int
    ) {
        let d = SendablePointer(dInp), g = SendablePointer(dOut), x = SendablePointer(inp)
        let r2 = S(0.7071067811865476), rpi = S(0.3989422804014327)  // 1/sqrt(2), 1/sqrt(2 pi)
        Parallel.forRanges(count, costPerItem: 30) { range in
            let dp = d.p, gp = g.p, xp = x.p
            for i in range {
                let v = xp[i]
                let cdf = 0.5 * (1 + S.engineErf(v * r2))
                let pdf = rpi * S.engineExp(-0.5 * v * v)
                dp[i] += gp[i] * (cdf + v * pdf)
            }
        }
    }

    /// LayerScale: out[r, j] = gamma[j] * inp[r, j] over rows of `dim` (out may alias inp).
    @_specialize(where S == Float)
    public static func scaleColumnsForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, gamma: UnsafePointer<S>, rows: Int, dim: Int
    ) {
        let o = SendablePointer(out), x = SendablePointer(inp), g = SendablePointer(gamma)
        Parallel.forRanges(rows, costPerItem: dim) { range in
            for r in range {
                let src = x.p + r * dim, dst = o.p + r * dim
                for j in 0..<dim { dst[j] = g.p[j] * src[j] }
            }
        }
    }

    /// LayerScale backward: dInp = gamma * dOut (overwritten), dGamma[j] += sum_r dOut[r, j] * inp[r, j].
    @_specialize(where S == Float)
    public static func scaleColumnsBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dGamma: UnsafeMutablePointer<S>?, dOut: UnsafePointer<S>, inp: UnsafePointer<S>,
        gamma: UnsafePointer<S>, rows: Int, dim: Int
    ) {
        if let dGamma {
            // Serial over rows (a [dim] reduction); the products dominate a block anyway.
            for r in 0..<rows {
                let go = dOut + r * dim, x = inp + r * dim
                for j in 0..<dim { dGamma[j] += go[j] * x[j] }
            }
        }
        scaleColumnsForward(out: dInp, inp: dOut, gamma: gamma, rows: rows, dim: dim)
    }
}

// MARK: - Softmax over the last axis

extension Kernels {
    /// Row-wise softmax of one row (max-subtracted).
    @inline(__always) @usableFromInline
    static func softmaxRow<S: EngineScalar>(_ y: UnsafeMutablePointer<S>, _ x: UnsafePointer<S>, _ n: Int) {
        let m = vmax(x, n)
        for j in 0..<n { y[j] = S.engineExp(x[j] - m) }
        let inv = 1 / vsum(UnsafePointer(y), n)
        for j in 0..<n { y[j] *= inv }
    }

    /// Row-wise: dLogits += p * (dp - sum_j dp_j p_j) for one row.
    @inline(__always) @usableFromInline
    static func softmaxBackwardRow<S: EngineScalar>(
        _ dx: UnsafeMutablePointer<S>, _ dy: UnsafePointer<S>, _ y: UnsafePointer<S>, _ n: Int
    ) {
        let s = vdot(dy, y, n)
        for j in 0..<n { dx[j] += y[j] * (dy[j] - s) }
    }

    /// out[r, :] = softmax(inp[r, :]) for rows of length cols. out may alias inp.
    @_specialize(where S == Float)
    public static func softmaxForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, rows: Int, cols: Int
    ) {
        let o = SendablePointer(out), x = SendablePointer(inp)
        Parallel.forRanges(rows, costPerItem: 20 * cols) { range in
            for r in range { softmaxRow(o.p + r * cols, UnsafePointer(x.p + r * cols), cols) }
        }
    }

    /// dInp += softmax Jacobian^T dOut, from the kept output.
    @_specialize(where S == Float)
    public static func softmaxBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>, out: UnsafePointer<S>, rows: Int, cols: Int
    ) {
        let dx = SendablePointer(dInp), dy = SendablePointer(dOut), y = SendablePointer(out)
        Parallel.forRanges(rows, costPerItem: 4 * cols) { range in
            for r in range {
                softmaxBackwardRow(dx.p + r * cols, UnsafePointer(dy.p + r * cols), UnsafePointer(y.p + r * cols), cols)
            }
        }
    }
}

// MARK: - Dropout and drop-path

extension Kernels {
    /// Inverted dropout: mask[i] = 0 with probability p, else 1/(1-p); out = inp * mask.
    /// p = 0 (or not training) is the identity and writes mask = 1.
    @_specialize(where S == Float)
    public static func dropoutForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, mask: UnsafeMutablePointer<S>, inp: UnsafePointer<S>,
        count: Int, p: Double, rng: inout SplitMix64
    ) {
        precondition(p >= 0 && p < 1, "dropout probability \(p) outside [0, 1)")
        let keep = S(1 / (1 - p))
        for i in 0..<count { mask[i] = p > 0 && rng.uniform() < p ? 0 : keep }
        for i in 0..<count { out[i] = inp[i] * mask[i] }
    }

    /// dInp += dOut * mask.
    @_specialize(where S == Float)
    public static func dropoutBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>, mask: UnsafePointer<S>, count: Int
    ) {
        for i in 0..<count { dInp[i] += dOut[i] * mask[i] }
    }

    /// Per-sample keep scales for drop-path (stochastic depth): 0 with probability p,
    /// else 1/(1-p), as timm's drop_path with scale_by_keep.
    public static func dropPathScales<S: EngineScalar>(
        into scales: UnsafeMutablePointer<S>, batch: Int, p: Double, rng: inout SplitMix64
    ) {
        precondition(p >= 0 && p < 1, "drop-path probability \(p) outside [0, 1)")
        for b in 0..<batch { scales[b] = p > 0 && rng.uniform() < p ? 0 : S(1 / (1 - p)) }
    }

    /// out[b] = x[b] + scale[b] * branch[b] for samples of `perSample` elements (the residual add
    /// of a block with drop-path; scales nil means all 1). out may alias x.
    @_specialize(where S == Float)
    public static func residualAdd<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, x: UnsafePointer<S>, branch: UnsafePointer<S>, scales: UnsafePointer<S>?,
        batch: Int, perSample: Int
    ) {
        let op = SendablePointer(out), xp = SendablePointer(x), bp = SendablePointer(branch)
        let sp = scales.map { SendablePointer($0) }
        Parallel.forRanges(batch * perSample, costPerItem: 2) { range in
            if let sp {
                var i = range.lowerBound
                while i < range.upperBound {
                    let b = i / perSample
                    let end = min(range.upperBound, (b + 1) * perSample)
                    let s = sp.p[b]
                    for j in i..<end { op.p[j] = xp.p[j] + s * bp.p[j] }
                    i = end
                }
            } else {
                for i in range { op.p[i] = xp.p[i] + bp.p[i] }
            }
        }
    }

    /// x[b] += scale[b] * branch[b] (in place; also the drop-path backward on a zeroed buffer).
    @_specialize(where S == Float)
    public static func residualAdd<S: EngineScalar>(
        x: UnsafeMutablePointer<S>, branch: UnsafePointer<S>, scales: UnsafePointer<S>?,
        batch: Int, perSample: Int
    ) {
        residualAdd(out: x, x: UnsafePointer(x), branch: branch, scales: scales, batch: batch, perSample: perSample)
    }
}
