#if canImport(Glibc)
import Glibc
#endif

/// A thin reverse-mode tape over tensors, for losses composed on model outputs (CAMs,
/// attention maps): the model's heavy layers keep their hand-written backward passes, and a
/// loss built here hands its leaf gradients to them (e.g. `ViTOutputGrads.attnProbs[l] =
/// tape.grad(of: probsLeaf)`).
///
///     let tape = Tape()
///     let a1 = tape.leaf(acts1.attnProbs[l]), a2 = tape.leaf(acts2.attnProbs[l])
///     let loss = (a1.mean(axes: [1]) - a2.mean(axes: [1]).gather(axis: 2, flip).gather(axis: 1, flip)).abs().mean()
///     tape.backward(loss)
///     grads1.attnProbs[l] = tape.grad(of: a1)
///
/// Values are immutable once recorded; every op allocates its output. Binary elementwise ops
/// broadcast with NumPy rules. Gradients of leaves are summed over every use.
public final class TapeOf<S: EngineScalar> {
    final class Node {
        let value: TensorOf<S>
        let needsGrad: Bool
        var grad: TensorOf<S>?
        /// Given this node's gradient, adds into the parents' gradients.
        var backward: ((TensorOf<S>) -> Void)?
        init(_ value: TensorOf<S>, needsGrad: Bool) {
            self.value = value
            self.needsGrad = needsGrad
        }
        /// The gradient buffer, created zeroed on first use.
        func gradBuffer() -> TensorOf<S> {
            if let g = grad { return g }
            let g = TensorOf<S>(shape: value.shape)
            grad = g
            return g
        }
    }

    var nodes: [Node] = []

    public init() {}

    /// A tensor gradients flow to (read them with `grad(of:)` after `backward`).
    public func leaf(_ t: TensorOf<S>) -> VarOf<S> { record(t, needsGrad: true) }
    /// A tensor no gradient is wanted for (labels, masks, targets).
    public func constant(_ t: TensorOf<S>) -> VarOf<S> { record(t, needsGrad: false) }
    public func constant(_ value: S, shape: [Int] = [1]) -> VarOf<S> { record(TensorOf(shape: shape, repeating: value), needsGrad: false) }

    /// Back-propagates from a scalar (one-element) variable with d(root)/d(root) = seed.
    public func backward(_ root: VarOf<S>, seed: S = 1) {
        precondition(root.tape === self, "variable from another tape")
        precondition(root.value.count == 1, "backward needs a scalar, got shape \(root.value.shape)")
        guard nodes[root.index].needsGrad else { return }
        nodes[root.index].gradBuffer().data[0] += seed
        for i in stride(from: root.index, through: 0, by: -1) {
            let n = nodes[i]
            if let g = n.grad, let back = n.backward { back(g) }
        }
    }

    /// d(root)/d(v) after `backward` (zeros when v did not influence the root).
    public func grad(of v: VarOf<S>) -> TensorOf<S> {
        nodes[v.index].grad ?? TensorOf(shape: nodes[v.index].value.shape)
    }

    /// Forgets all recorded values (keeps nothing alive).
    public func reset() { nodes.removeAll() }

    func record(_ t: TensorOf<S>, needsGrad: Bool) -> VarOf<S> {
        nodes.append(Node(t, needsGrad: needsGrad))
        return VarOf(tape: self, index: nodes.count - 1)
    }

    /// Records an op's output; `back` runs only when some input needs a gradient.
    func op(_ value: TensorOf<S>, _ inputs: [VarOf<S>], _ back: @escaping (_ g: TensorOf<S>, _ parents: [Node]) -> Void) -> VarOf<S> {
        for v in inputs { precondition(v.tape === self, "variables from different tapes") }
        let parents = inputs.map { nodes[$0.index] }
        let needs = parents.contains { $0.needsGrad }
        let out = record(value, needsGrad: needs)
        if needs { nodes[out.index].backward = { g in back(g, parents) } }
        return out
    }
}

public typealias Tape = TapeOf<Float>
public typealias Var = VarOf<Float>

/// A value recorded on a tape. Ops return new variables on the same tape.
public struct VarOf<S: EngineScalar> {
    public let tape: TapeOf<S>
    let index: Int
    public var value: TensorOf<S> { tape.nodes[index].value }
    public var shape: [Int] { value.shape }
}

// MARK: - Shape helpers

@usableFromInline
func contiguousStrides(_ shape: [Int]) -> [Int] {
    var s = [Int](repeating: 1, count: shape.count)
    var acc = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        s[i] = acc
        acc *= shape[i]
    }
    return s
}

/// NumPy broadcasting of two shapes (aligned on the right).
func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int] {
    let n = max(a.count, b.count)
    var out = [Int](repeating: 1, count: n)
    for i in 0..<n {
        let da = i < n - a.count ? 1 : a[i - (n - a.count)]
        let db = i < n - b.count ? 1 : b[i - (n - b.count)]
        precondition(da == db || da == 1 || db == 1, "shapes \(a) and \(b) do not broadcast")
        out[i] = max(da, db)
    }
    return out
}

/// Strides of `shape` read as if broadcast to `target` (0 along broadcast dimensions).
func broadcastStrides(_ shape: [Int], to target: [Int]) -> [Int] {
    let own = contiguousStrides(shape)
    let off = target.count - shape.count
    precondition(off >= 0, "cannot broadcast \(shape) to \(target)")
    return (0..<target.count).map { i in
        if i < off { return 0 }
        let d = shape[i - off]
        precondition(d == target[i] || d == 1, "cannot broadcast \(shape) to \(target)")
        return d == 1 && target[i] != 1 ? 0 : own[i - off]
    }
}

/// Visits `shape` in row-major order in runs along the last dimension, passing each operand's
/// offset at the start of the run (operand k advances by strides[k] per element).
func stridedRuns(_ shape: [Int], _ strides: [[Int]], _ body: (_ offsets: [Int], _ n: Int) -> Void) {
    let rank = shape.count
    if shape.contains(0) { return }
    if rank == 0 { body([Int](repeating: 0, count: strides.count), 1); return }
    let n = shape[rank - 1]
    var index = [Int](repeating: 0, count: rank)
    var offsets = [Int](repeating: 0, count: strides.count)
    while true {
        body(offsets, n)
        // Advance the multi-index over all but the last dimension.
        var d = rank - 2
        while d >= 0 {
            index[d] += 1
            for k in 0..<strides.count { offsets[k] += strides[k][d] }
            if index[d] < shape[d] { break }
            for k in 0..<strides.count { offsets[k] -= strides[k][d] * shape[d] }
            index[d] = 0
            d -= 1
        }
        if d < 0 { return }
    }
}

extension TensorOf {
    /// Sum over the broadcast dimensions so the result has `target` shape (the adjoint of
    /// broadcasting `target` to self's shape), added into `into`.
    func sumBroadcast(into: TensorOf<S>) {
        let st = broadcastStrides(into.shape, to: shape)
        let dst = into.data, src = data
        var pos = 0
        stridedRuns(shape, [st]) { o, n in
            let s = st.last ?? 0
            let d = dst + o[0]
            if s == 0 {
                var acc: S = 0
                for j in 0..<n { acc += src[pos + j] }
                d[0] += acc
            } else {
                for j in 0..<n { d[j * s] += src[pos + j] }
            }
            pos += n
        }
    }

    /// This tensor broadcast to `shape` (a new tensor).
    func broadcast(to target: [Int]) -> TensorOf<S> {
        let out = TensorOf<S>(shape: target)
        let st = broadcastStrides(shape, to: target)
        let dst = out.data, src = data
        var pos = 0
        stridedRuns(target, [st]) { o, n in
            let s = st.last ?? 0
            for j in 0..<n { dst[pos + j] = src[o[0] + j * s] }
            pos += n
        }
        return out
    }
}

/// Shape with `axes` set to 1 (keepDims) or removed.
func reducedShape(_ shape: [Int], _ axes: [Int], keepDims: Bool) -> [Int] {
    var out: [Int] = []
    for (i, d) in shape.enumerated() {
        if axes.contains(i) { if keepDims { out.append(1) } } else { out.append(d) }
    }
    return out
}

func normaliseAxes(_ axes: [Int], rank: Int) -> [Int] {
    let a = axes.map { $0 < 0 ? $0 + rank : $0 }
    precondition(a.allSatisfy { $0 >= 0 && $0 < rank } && Set(a).count == a.count, "bad axes \(axes) for rank \(rank)")
    return a.sorted()
}

// MARK: - Elementwise binary ops (broadcasting)

extension VarOf {
    func binary(_ b: VarOf<S>, _ f: (S, S) -> S,
                _ grads: @escaping (_ g: S, _ a: S, _ b: S, _ out: S) -> (S, S)) -> VarOf<S> {
        let av = value, bv = b.value
        let shape = broadcastShape(av.shape, bv.shape)
        let out = TensorOf<S>(shape: shape)
        let sa = broadcastStrides(av.shape, to: shape), sb = broadcastStrides(bv.shape, to: shape)
        do {
            let o = out.data, x = av.data, y = bv.data
            var pos = 0
            let ia = sa.last ?? 0, ib = sb.last ?? 0
            stridedRuns(shape, [sa, sb]) { off, n in
                for j in 0..<n { o[pos + j] = f(x[off[0] + j * ia], y[off[1] + j * ib]) }
                pos += n
            }
        }
        return tape.op(out, [self, b]) { g, parents in
            let (pa, pb) = (parents[0], parents[1])
            // Gradients on the broadcast shape first, then summed down to each input's shape.
            let ga = pa.needsGrad ? TensorOf<S>(shape: shape) : nil
            let gb = pb.needsGrad ? TensorOf<S>(shape: shape) : nil
            let x = av.data, y = bv.data, o = out.data, gp = g.data
            var pos = 0
            let ia = sa.last ?? 0, ib = sb.last ?? 0
            stridedRuns(shape, [sa, sb]) { off, n in
                for j in 0..<n {
                    let (da, db) = grads(gp[pos + j], x[off[0] + j * ia], y[off[1] + j * ib], o[pos + j])
                    ga?.data[pos + j] = da
                    gb?.data[pos + j] = db
                }
                pos += n
            }
            if let ga { ga.sumBroadcast(into: pa.gradBuffer()) }
            if let gb { gb.sumBroadcast(into: pb.gradBuffer()) }
        }
    }

    @_specialize(where S == Float)
    public static func + (a: VarOf<S>, b: VarOf<S>) -> VarOf<S> { a.binary(b, +) { g, _, _, _ in (g, g) } }
    @_specialize(where S == Float)
    public static func - (a: VarOf<S>, b: VarOf<S>) -> VarOf<S> { a.binary(b, -) { g, _, _, _ in (g, -g) } }
    @_specialize(where S == Float)
    public static func * (a: VarOf<S>, b: VarOf<S>) -> VarOf<S> { a.binary(b, *) { g, x, y, _ in (g * y, g * x) } }
    @_specialize(where S == Float)
    public static func / (a: VarOf<S>, b: VarOf<S>) -> VarOf<S> {
        a.binary(b, /) { g, x, y, _ in (g / y, -g * x / (y * y)) }
    }
    @_specialize(where S == Float)
    public static func + (a: VarOf<S>, s: S) -> VarOf<S> { a.unary({ $0 + s }) { g, _, _ in g } }
    @_specialize(where S == Float)
    public static func - (a: VarOf<S>, s: S) -> VarOf<S> { a.unary({ $0 - s }) { g, _, _ in g } }
    @_specialize(where S == Float)
    public static func * (a: VarOf<S>, s: S) -> VarOf<S> { a.unary({ $0 * s }) { g, _, _ in g * s } }
    @_specialize(where S == Float)
    public static func * (s: S, a: VarOf<S>) -> VarOf<S> { a * s }
    @_specialize(where S == Float)
    public static func / (a: VarOf<S>, s: S) -> VarOf<S> { a * (1 / s) }
    @_specialize(where S == Float)
    public static prefix func - (a: VarOf<S>) -> VarOf<S> { a * -1 }
}

// MARK: - Elementwise unary ops

extension VarOf {
    func unary(_ f: (S) -> S, _ df: @escaping (_ g: S, _ x: S, _ y: S) -> S) -> VarOf<S> {
        let x = value
        let out = TensorOf<S>(shape: x.shape)
        for i in 0..<x.count { out.data[i] = f(x.data[i]) }
        return tape.op(out, [self]) { g, parents in
            let d = parents[0].gradBuffer()
            for i in 0..<x.count { d.data[i] += df(g.data[i], x.data[i], out.data[i]) }
        }
    }

    @_specialize(where S == Float)
    public func sigmoid() -> VarOf<S> { unary({ 1 / (1 + S.engineExp(-$0)) }) { g, _, y in g * y * (1 - y) } }
    /// max(x, 0); the gradient at exactly 0 is 0 (as PyTorch).
    @_specialize(where S == Float)
    public func relu() -> VarOf<S> { unary({ $0 > 0 ? $0 : 0 }) { g, x, _ in x > 0 ? g : 0 } }
    @_specialize(where S == Float)
    public func exp() -> VarOf<S> { unary({ S.engineExp($0) }) { g, _, y in g * y } }
    /// Natural log; inputs must be positive (clamp or add an epsilon first).
    @_specialize(where S == Float)
    public func log() -> VarOf<S> { unary({ S.engineLog($0) }) { g, x, _ in g / x } }
    /// |x|; gradient sign(x), 0 at 0 (as PyTorch).
    @_specialize(where S == Float)
    public func abs() -> VarOf<S> { unary({ Swift.abs($0) }) { g, x, _ in x > 0 ? g : (x < 0 ? -g : 0) } }
    @_specialize(where S == Float)
    public func sqrt() -> VarOf<S> { unary({ $0.squareRoot() }) { g, _, y in g / (2 * y) } }
    @_specialize(where S == Float)
    public func square() -> VarOf<S> { unary({ $0 * $0 }) { g, x, _ in 2 * g * x } }
    /// max(x, lo) with gradient 0 where clamped.
    @_specialize(where S == Float)
    public func clamped(min lo: S) -> VarOf<S> { unary({ Swift.max($0, lo) }) { g, x, _ in x >= lo ? g : 0 } }
}

// MARK: - Reductions

extension VarOf {
    /// Sum over `axes` (all when nil).
    @_specialize(where S == Float)
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) -> VarOf<S> {
        let x = value
        let ax = normaliseAxes(axes ?? Array(0..<x.rank), rank: x.rank)
        let kept = reducedShape(x.shape, ax, keepDims: true)
        let out = TensorOf<S>(shape: kept)
        x.sumBroadcast(into: out)
        let result = keepDims ? out : out.reshaped(reducedShape(x.shape, ax, keepDims: false))
        return tape.op(result, [self]) { g, parents in
            let gb = g.reshaped(kept).broadcast(to: x.shape)
            parents[0].gradBuffer().add(gb)
        }
    }

    @_specialize(where S == Float)
    public func mean(axes: [Int]? = nil, keepDims: Bool = false) -> VarOf<S> {
        let x = value
        let ax = normaliseAxes(axes ?? Array(0..<x.rank), rank: x.rank)
        let n = ax.reduce(1) { $0 * x.shape[$1] }
        return sum(axes: ax, keepDims: keepDims) * (1 / S(n))
    }

    /// Min-max normalisation over `axes`, per slice of the other axes:
    /// (x - min) / (max - min + eps). The gradient flows through min and max to their (first)
    /// positions. E.g. per-class CAM normalisation over patches of [B, N, C]: axes [1].
    @_specialize(where S == Float)
    public func minMaxNormalised(axes: [Int], eps: S = 1e-5) -> VarOf<S> {
        let x = value
        let ax = normaliseAxes(axes, rank: x.rank)
        let kept = reducedShape(x.shape, ax, keepDims: true)
        let slots = kept.reduce(1, *)
        let mn = TensorOf<S>(shape: kept, repeating: S.infinity), mx = TensorOf<S>(shape: kept, repeating: -S.infinity)
        var argMin = [Int](repeating: -1, count: slots), argMax = [Int](repeating: -1, count: slots)
        let st = broadcastStrides(kept, to: x.shape)
        var pos = 0
        stridedRuns(x.shape, [st]) { o, n in
            let s = st.last ?? 0
            for j in 0..<n {
                let slot = o[0] + j * s, v = x.data[pos + j]
                if v < mn.data[slot] { mn.data[slot] = v; argMin[slot] = pos + j }
                if v > mx.data[slot] { mx.data[slot] = v; argMax[slot] = pos + j }
            }
            pos += n
        }
        let out = TensorOf<S>(shape: x.shape)
        pos = 0
        stridedRuns(x.shape, [st]) { o, n in
            let s = st.last ?? 0
            for j in 0..<n {
                let slot = o[0] + j * s
                out.data[pos + j] = (x.data[pos + j] - mn.data[slot]) / (mx.data[slot] - mn.data[slot] + eps)
            }
            pos += n
        }
        return tape.op(out, [self]) { g, parents in
            let d = parents[0].gradBuffer()
            // y = (x - mn) / r, r = mx - mn + eps: dy/dx = 1/r; d/dmn = (y - 1)/r; d/dmx = -y/r.
            let dMin = TensorOf<S>(shape: kept), dMax = TensorOf<S>(shape: kept)
            var p = 0
            stridedRuns(x.shape, [st]) { o, n in
                let s = st.last ?? 0
                for j in 0..<n {
                    let slot = o[0] + j * s
                    let r = mx.data[slot] - mn.data[slot] + eps, y = out.data[p + j], gj = g.data[p + j]
                    d.data[p + j] += gj / r
                    dMin.data[slot] += gj * (y - 1) / r
                    dMax.data[slot] -= gj * y / r
                }
                p += n
            }
            for k in 0..<slots {
                if argMin[k] >= 0 { d.data[argMin[k]] += dMin.data[k] }
                if argMax[k] >= 0 { d.data[argMax[k]] += dMax.data[k] }
            }
        }
    }
}

// MARK: - Softmax over the last axis

extension VarOf {
    @_specialize(where S == Float)
    public func softmax() -> VarOf<S> {
        let x = value
        let cols = x.shape.last ?? 1, rows = x.count / max(cols, 1)
        let out = TensorOf<S>(shape: x.shape)
        Kernels.softmaxForward(out: out.data, inp: x.data, rows: rows, cols: cols)
        return tape.op(out, [self]) { g, parents in
            Kernels.softmaxBackward(dInp: parents[0].gradBuffer().data, dOut: g.data, out: out.data, rows: rows, cols: cols)
        }
    }

    /// log softmax over the last axis (stable: x - max - log sum exp(x - max)).
    @_specialize(where S == Float)
    public func logSoftmax() -> VarOf<S> {
        let x = value
        let cols = x.shape.last ?? 1, rows = x.count / max(cols, 1)
        let out = TensorOf<S>(shape: x.shape), p = TensorOf<S>(shape: x.shape)
        Kernels.softmaxForward(out: p.data, inp: x.data, rows: rows, cols: cols)
        for r in 0..<rows {
            let xr = x.data + r * cols, m = vmax(xr, cols)
            var s: S = 0
            for j in 0..<cols { s += S.engineExp(xr[j] - m) }
            let lse = m + S.engineLog(s)
            for j in 0..<cols { out.data[r * cols + j] = xr[j] - lse }
        }
        return tape.op(out, [self]) { g, parents in
            let d = parents[0].gradBuffer()
            for r in 0..<rows {
                let gr = g.data + r * cols
                let s = vsum(gr, cols)
                for j in 0..<cols { d.data[r * cols + j] += gr[j] - p.data[r * cols + j] * s }
            }
        }
    }
}

// MARK: - Products and layout

extension VarOf {
    /// Batched matrix product: self [..., M, K] (or [..., K, M] with transposeSelf) times
    /// other [..., K, N] (or [..., N, K] with transposeOther). Batch dimensions must match, or one
    /// side is a plain matrix shared by every batch entry.
    @_specialize(where S == Float)
    public func matmul(_ other: VarOf<S>, transposeSelf tA: Bool = false, transposeOther tB: Bool = false) -> VarOf<S> {
        let a = value, b = other.value
        precondition(a.rank >= 2 && b.rank >= 2, "matmul needs matrices, got \(a.shape) and \(b.shape)")
        let M = tA ? a.shape[a.rank - 1] : a.shape[a.rank - 2], K = tA ? a.shape[a.rank - 2] : a.shape[a.rank - 1]
        let K2 = tB ? b.shape[b.rank - 1] : b.shape[b.rank - 2], N = tB ? b.shape[b.rank - 2] : b.shape[b.rank - 1]
        precondition(K == K2, "matmul inner sizes differ: \(a.shape) x \(b.shape)")
        let batchA = Array(a.shape.dropLast(2)), batchB = Array(b.shape.dropLast(2))
        precondition(batchA == batchB || batchA.isEmpty || batchB.isEmpty, "matmul batch shapes \(batchA) vs \(batchB)")
        let batch = batchA.isEmpty ? batchB : batchA
        let count = batch.reduce(1, *)
        let strideA = batchA.isEmpty ? 0 : M * K, strideB = batchB.isEmpty ? 0 : K * N
        let out = TensorOf<S>(shape: batch + [M, N])
        let lda = tA ? M : K, ldb = tB ? K : N
        for i in 0..<count {
            S.gemm(transA: tA, transB: tB, m: M, n: N, k: K, alpha: 1, a: a.data + i * strideA, lda: lda,
                   b: b.data + i * strideB, ldb: ldb, beta: 0, c: out.data + i * M * N, ldc: N)
        }
        return tape.op(out, [self, other]) { g, parents in
            for i in 0..<count {
                let gp = UnsafePointer(g.data + i * M * N)
                let ap = UnsafePointer(a.data + i * strideA), bp = UnsafePointer(b.data + i * strideB)
                if parents[0].needsGrad {
                    let da = parents[0].gradBuffer().data + i * strideA
                    if !tA {  // dA [M, K] += G op(B)^T
                        S.gemm(transA: false, transB: !tB, m: M, n: K, k: N, alpha: 1, a: gp, lda: N, b: bp, ldb: ldb, beta: 1, c: da, ldc: K)
                    } else {  // dA [K, M] += op(B) G^T
                        S.gemm(transA: tB, transB: true, m: K, n: M, k: N, alpha: 1, a: bp, lda: ldb, b: gp, ldb: N, beta: 1, c: da, ldc: M)
                    }
                }
                if parents[1].needsGrad {
                    let db = parents[1].gradBuffer().data + i * strideB
                    if !tB {  // dB [K, N] += op(A)^T G
                        S.gemm(transA: !tA, transB: false, m: K, n: N, k: M, alpha: 1, a: ap, lda: lda, b: gp, ldb: N, beta: 1, c: db, ldc: N)
                    } else {  // dB [N, K] += G^T op(A)
                        S.gemm(transA: true, transB: tA, m: N, n: K, k: M, alpha: 1, a: gp, lda: N, b: ap, ldb: lda, beta: 1, c: db, ldc: K)
                    }
                }
            }
        }
    }

    /// The same values under another shape.
    @_specialize(where S == Float)
    public func reshaped(_ shape: [Int]) -> VarOf<S> {
        let x = value
        let out = x.reshaped(shape)
        return tape.op(out, [self]) { g, parents in parents[0].gradBuffer().add(g) }
    }

    /// Axis permutation (out.shape[i] = shape[perm[i]]).
    @_specialize(where S == Float)
    public func permuted(_ perm: [Int]) -> VarOf<S> {
        let x = value
        precondition(perm.sorted() == Array(0..<x.rank), "bad permutation \(perm) for rank \(x.rank)")
        let outShape = perm.map { x.shape[$0] }
        let xs = contiguousStrides(x.shape)
        let st = perm.map { xs[$0] }
        let out = TensorOf<S>(shape: outShape)
        var pos = 0
        stridedRuns(outShape, [st]) { o, n in
            let s = st.last ?? 0
            for j in 0..<n { out.data[pos + j] = x.data[o[0] + j * s] }
            pos += n
        }
        return tape.op(out, [self]) { g, parents in
            let d = parents[0].gradBuffer()
            var p = 0
            stridedRuns(outShape, [st]) { o, n in
                let s = st.last ?? 0
                for j in 0..<n { d.data[o[0] + j * s] += g.data[p + j] }
                p += n
            }
        }
    }

    /// Selects `indices` along `axis` (repeats allowed; the backward scatter-adds). Reorders tokens,
    /// e.g. the inverse of a flip of the patch grid (see `TokenOrder`).
    @_specialize(where S == Float)
    public func gather(axis: Int, _ indices: [Int]) -> VarOf<S> {
        let x = value
        let ax = axis < 0 ? axis + x.rank : axis
        precondition(ax >= 0 && ax < x.rank, "axis \(axis) for shape \(x.shape)")
        let n = x.shape[ax]
        precondition(indices.allSatisfy { $0 >= 0 && $0 < n }, "gather index outside 0..<\(n)")
        let outer = x.shape[..<ax].reduce(1, *), inner = x.shape[(ax + 1)...].reduce(1, *)
        var outShape = x.shape
        outShape[ax] = indices.count
        let out = TensorOf<S>(shape: outShape)
        for o in 0..<outer {
            for (j, idx) in indices.enumerated() {
                (out.data + (o * indices.count + j) * inner).update(from: x.data + (o * n + idx) * inner, count: inner)
            }
        }
        return tape.op(out, [self]) { g, parents in
            let d = parents[0].gradBuffer()
            for o in 0..<outer {
                for (j, idx) in indices.enumerated() {
                    let src = g.data + (o * indices.count + j) * inner, dst = d.data + (o * n + idx) * inner
                    for k in 0..<inner { dst[k] += src[k] }
                }
            }
        }
    }

    /// Elements `range` along `axis`.
    @_specialize(where S == Float)
    public func slice(axis: Int, _ range: Range<Int>) -> VarOf<S> { gather(axis: axis, Array(range)) }

    /// Reverses `axis`.
    @_specialize(where S == Float)
    public func flipped(axis: Int) -> VarOf<S> {
        let ax = axis < 0 ? axis + value.rank : axis
        return gather(axis: ax, Array((0..<value.shape[ax]).reversed()))
    }

    /// Concatenation along `axis` (other dimensions equal).
    @_specialize(where S == Float)
    public static func concat(_ vars: [VarOf<S>], axis: Int) -> VarOf<S> {
        precondition(!vars.isEmpty)
        let first = vars[0].value
        let ax = axis < 0 ? axis + first.rank : axis
        for v in vars {
            precondition(v.value.rank == first.rank && (0..<first.rank).allSatisfy { $0 == ax || v.value.shape[$0] == first.shape[$0] },
                         "concat shapes \(vars.map(\.shape)) along \(axis)")
        }
        let sizes = vars.map { $0.value.shape[ax] }, total = sizes.reduce(0, +)
        let outer = first.shape[..<ax].reduce(1, *), inner = first.shape[(ax + 1)...].reduce(1, *)
        var outShape = first.shape
        outShape[ax] = total
        let out = TensorOf<S>(shape: outShape)
        var start = 0
        let values = vars.map(\.value)
        for (v, n) in zip(values, sizes) {
            for o in 0..<outer {
                (out.data + (o * total + start) * inner).update(from: v.data + o * n * inner, count: n * inner)
            }
            start += n
        }
        return vars[0].tape.op(out, vars) { g, parents in
            var s = 0
            for (p, n) in zip(parents, sizes) {
                if p.needsGrad {
                    let d = p.gradBuffer()
                    for o in 0..<outer {
                        let src = g.data + (o * total + s) * inner, dst = d.data + o * n * inner
                        for k in 0..<(n * inner) { dst[k] += src[k] }
                    }
                }
                s += n
            }
        }
    }
}

// MARK: - Losses

extension VarOf {
    /// mean |self - other|.
    @_specialize(where S == Float)
    public func l1Loss(_ other: VarOf<S>) -> VarOf<S> { (self - other).abs().mean() }

    /// Mean binary cross-entropy with logits against targets of the same shape (multilabel
    /// soft margin for [B, C]).
    @_specialize(where S == Float)
    public func bceWithLogits(targets: VarOf<S>) -> VarOf<S> {
        let z = value, y = targets.value
        precondition(z.shape == y.shape, "logits \(z.shape) vs targets \(y.shape)")
        let loss = Kernels.bceWithLogits(logits: z.data, targets: y.data, count: z.count)
        let out = TensorOf<S>(shape: [], values: [S(loss)])
        return tape.op(out, [self, targets]) { g, parents in
            if parents[0].needsGrad {
                _ = Kernels.bceWithLogits(logits: z.data, targets: y.data, count: z.count,
                                          dLogits: parents[0].gradBuffer().data, weight: g.data[0])
            }
            if parents[1].needsGrad {  // d/dy = -z / count
                let d = parents[1].gradBuffer()
                for i in 0..<z.count { d.data[i] -= g.data[0] * z.data[i] / S(z.count) }
            }
        }
    }
}

/// Token permutations of the patch grid under flips and rotations (two-view consistency losses).
public enum TokenOrder {
    /// Token indices after a horizontal flip of a gridH x gridW patch grid (row-major patches,
    /// preceded by the class token when `classToken`). The permutation is its own inverse, so
    /// gathering a flipped view's tokens with it restores the original order.
    public static func horizontalFlip(gridH: Int, gridW: Int, classToken: Bool = true) -> [Int] {
        let c = classToken ? 1 : 0
        var idx = classToken ? [0] : []
        for y in 0..<gridH { for x in 0..<gridW { idx.append(c + y * gridW + (gridW - 1 - x)) } }
        return idx
    }

    /// The same for a vertical flip.
    public static func verticalFlip(gridH: Int, gridW: Int, classToken: Bool = true) -> [Int] {
        let c = classToken ? 1 : 0
        var idx = classToken ? [0] : []
        for y in 0..<gridH { for x in 0..<gridW { idx.append(c + (gridH - 1 - y) * gridW + x) } }
        return idx
    }

    /// Token indices after a rotation of the image by 90 degrees counter-clockwise (as
    /// `numpy.rot90` / `torch.rot90(k=1)` over (H, W)): gathering the rotated view's tokens with
    /// them restores the original order. Patch (y, x) of a g x g grid lands at (g-1-x, y) of the
    /// view. Square grids only: a rotated non-square image has another grid shape, which a
    /// fixed-shape batch cannot hold.
    public static func rotation90(gridH: Int, gridW: Int, classToken: Bool = true) throws -> [Int] {
        guard gridH == gridW else {
            throw EngineError("a 90 degree rotation view needs a square patch grid, got \(gridH)x\(gridW) (use a flip view for non-square images)")
        }
        let g = gridW, c = classToken ? 1 : 0
        var idx = classToken ? [0] : []
        for y in 0..<g { for x in 0..<g { idx.append(c + (g - 1 - x) * g + y) } }
        return idx
    }
}
