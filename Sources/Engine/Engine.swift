import Primitives
/// The numerical engine: tensors over aligned float32 buffers and layer kernels over BLAS.
///
/// # API overview
///
/// **Scalars and tensors.** Everything is generic over an ``EngineScalar`` (`Float` or `Double`)
/// and used as `Float`: `Tensor`, `ViT`, `Tape`, `Var`, `ViTActivations`, `ViTOutputGrads` are
/// aliases of `TensorOf<Float>`, `ViTOf<Float>`, ... Why generic: the gradient checks run the very
/// same kernel and model code in `Double` (with `cblas_dgemm` and libm `exp`/`tanh`), so central
/// finite differences are accurate to ~1e-10 and the checks use tight tolerances (1e-6..1e-5
/// relative) instead of float-level ones. The `Float` instantiation runs `cblas_sgemm` and the
/// fast polynomial `exp`/`tanh` of `FastMath.swift`, whose errors are measured and bounded by
/// tests, and tests check that the Float and Double paths agree. Public generic entry points
/// carry `@_specialize(where S == Float)`, so callers in other modules run specialised code.
///
/// `TensorOf<S>(shape:)` (zeroed, 64-byte aligned), `init(shape:values:)`, `data` (the raw
/// pointer hot loops use), `shape`, `count`, `reshaped`, `slice` (views sharing memory), `zero`,
/// `fill`, `copy(from:)`, `clone`, `toArray`, `subscript[i, j, ...]` (slow, for tests/setup),
/// `fillTruncatedNormal/Normal/Uniform(rng:)`. `SplitMix64(seed:)` is the seeded generator.
/// A raw pointer does not keep its tensor alive: keep the tensor referenced while using `data`.
///
/// **Layout.** Row-major, contiguous. Token matrices are `[B*T, D]`; images and feature maps
/// are channels-last `[B, H, W, C]`. Weights follow PyTorch names and layouts
/// (`Linear.weight` `[out, in]`, `Conv2d.weight` `[Cout, Cin, kh, kw]`), so checkpoints map one
/// to one to PyTorch state dicts.
///
/// **Kernels** (`enum Kernels`, llm.c style, raw pointers + explicit sizes; every backward ADDS
/// into its gradient buffers, inputs' and parameters' alike, and takes nil for unwanted ones):
/// `linearForward/Backward`, `layerNormForward/Backward` (keeps mean/rstd), `geluForward/Backward`
/// (tanh approximation), `softmaxForward/Backward` (last axis), `dropoutForward/Backward`,
/// `dropPathScales` + `residualAdd`, `attentionForward/Backward` (`Attention.swift`: keeps
/// logits and probabilities [B, H, T, T]; backward writes dProbs and accepts extra gradients on
/// probs and logits), `conv2dForward/Backward` with `Conv2dGeometry` (im2col + gemm, stride,
/// padding, dilation), `avgPool2d...`, `maxPool2d...`, `bilinearResizeForward/Backward`
/// (align_corners=False), losses `multilabelSoftMargin`, `bceWithLogits`, `bceLoss`, `l1Loss`,
/// `pixelCrossEntropy` (ignore index 255) returning the loss and adding `weight * gradient`.
///
/// **Model.** ``ViTOf`` with ``ViTConfig`` (Codable, snake_case keys as in the checkpoint layout, Sources/Training/Checkpoint.swift).
/// Images are `[B, H, W, 3]` float, channels-last, already normalised; H, W multiples of the
/// patch size (other grids interpolate the position embedding).
/// `let acts = vit.forward(images:, training:, patchMask:, reuse:)` returns a ``ViTActivationsOf`` holding the
/// outputs (`camLogits` [B,C], `clsLogits` [B,C], `patchScores` [B,N,C], per-layer `attnLogits` /
/// `attnProbs` [B,H,T,T], `tokens` [B,T,D], `features` [B,N,D], `classTokens` [B,D],
/// `hiddenStates`) and the caches backward needs; several can be alive at once (two views).
/// `vit.backward(acts, ViTOutputGrads(camLogits:, clsLogits:, patchScores:, features:,
/// classTokens:, attnProbs: [layer: grad], attnLogits: [layer: grad], hiddenStates: [i: grad],
/// recordAttentionGrads:, parameterGrads:))` accumulates into the parameter gradients (one backward at a time per model);
/// with `recordAttentionGrads` it stores d(loss)/d(probs) per layer in `acts.attnProbsGrad`.
/// `vit.parameters` lists `(name, value, grad)` in PyTorch order; `zeroGrad()`, `stateDict()`,
/// `load(_:)` (by name, checks shapes), `init(config:seed:)` (trunc-normal 0.02),
/// `positionEmbedding(gridH:gridW:)`, `config.checkImages(shape:)` (throws a clear error before a
/// forward would trap), `config.forwardFLOPs()`. `maskToken: true` in the config adds a
/// `mask_token` parameter that `patchMask` [B, N] substitutes for patch embeddings.
///
/// **Pretrained stem (hybrid ViT).** `ViTConfig.stem` "patch" (default) or "efficientnet_lite0":
/// ``PretrainedStemOf`` (`PretrainedStem.load(path:inputNormalization:)`, file layout in
/// `PretrainedStem.swift`) is a frozen, forward-only EfficientNet-Lite0 stem + blocks 0-4 (stride
/// 8) whose [B, H/8, W/8, Cs] features feed `patch_embed.proj` [D, Cs, 1, 1]; pass it as
/// `ViT(config:seed:stem:)`. It takes the ViT's normalised input (its `inputNormalization`, the
/// checkpoint's) and maps it back to its own (rgb - 127) / 128. Not in `parameters`; its tensors
/// are in `stateDict()` / `frozenTensors` as `stem.*`, which checkpoint writers store in every
/// weight group and `Checkpoint.makeModel` rebuilds the stem from. Kernels:
/// `depthwiseConv2dForward`, `relu6`. `forwardFLOPs` / `trainingFLOPs` count the stem.
///
/// **Composed losses.** ``TapeOf`` / ``VarOf``: a small reverse-mode tape over tensors (broadcasting
/// + - * /, sigmoid, relu, exp, log, abs, sqrt, square, clamp, sum/mean over axes, min-max
/// normalisation, softmax/logSoftmax, batched matmul, reshape/permute/gather/slice/flip/concat,
/// L1, BCE with logits; `TokenOrder` flips and 90 degree rotation of the patch grid). Leaves wrap
/// model outputs; their gradients (`tape.grad(of:)`) feed `ViTOutputGrads`.
///
/// **Training objectives.** `ClassifierTrainer(model:settings:objective:)` takes a
/// ``TrainingObjective`` whose `contribute` runs after the batch's forward and classification
/// losses: it may forward and back-propagate other inputs and adds gradients on the batch's
/// outputs (`grads.attnProbs[l]`, ...); its named terms come back in `StepResult.terms`.
/// The papers' objectives (ACR's consistency, AReAM's affinity loss) and single-stage training
/// (FSR) live in Sources/Methods, one module per family; nothing here is paper-specific.
///
/// **Threading.** OpenBLAS owns its threads for the big products; the attention core spreads
/// its (batch, head) products over our own threads with OpenBLAS pinned to one thread meanwhile
/// (measured, see `Attention.swift`; this changes the process-wide OpenBLAS thread count during
/// the call, so drive the engine from one thread at a time); elementwise kernels split rows over
/// `Parallel.threads` (the online cores, or WSSS_ENGINE_THREADS). `engine-bench` measures it all.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import COpenBLAS

/// A scalar the engine computes in. `Float` is the working type; `Double` exists for the
/// finite-difference checks. The requirements are the few places where the two differ.
public protocol EngineScalar: BinaryFloatingPoint, SIMDScalar, Codable, Sendable
where Self.RawSignificand: FixedWidthInteger {
    /// C = alpha * op(A) * op(B) + beta * C, row-major.
    static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
        alpha: Self, a: UnsafePointer<Self>, lda: Int,
        b: UnsafePointer<Self>, ldb: Int,
        beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    /// exp used by hot loops (softmax, sigmoid): fast polynomial for Float, libm for Double.
    static func engineExp(_ x: Self) -> Self
    /// tanh used by GELU: fast rational approximation for Float, libm for Double.
    static func engineTanh(_ x: Self) -> Self
    static func engineErf(_ x: Self) -> Self
    /// Natural logarithm (libm; used only on small tensors).
    static func engineLog(_ x: Self) -> Self
    /// Row reductions of the hot loops (sum, dot, max, sum of squared deviations from c).
    static func rowSum(_ p: UnsafePointer<Self>, _ n: Int) -> Self
    static func rowDot(_ a: UnsafePointer<Self>, _ b: UnsafePointer<Self>, _ n: Int) -> Self
    static func rowMax(_ p: UnsafePointer<Self>, _ n: Int) -> Self
    static func rowSumSquaredDeviation(_ p: UnsafePointer<Self>, _ n: Int, _ c: Self) -> Self
}

extension Float: EngineScalar {
    @inline(__always)
    public static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
        alpha: Float, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }
    @inline(__always) public static func engineExp(_ x: Float) -> Float { FastMath.exp(x) }
    @inline(__always) public static func engineTanh(_ x: Float) -> Float { FastMath.tanh(x) }
    @inline(__always) public static func engineErf(_ x: Float) -> Float { FastMath.erf(x) }
    @inline(__always) public static func engineLog(_ x: Float) -> Float { logf(x) }

    // Plain float sums do not vectorise (no reassociation without fast-math): accumulate in
    // SIMD8 lanes (two SSE registers on the baseline target), reduce the lanes at the end.
    @inline(__always)
    public static func rowSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 8 <= n {
            acc += raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        var s = acc.sum()
        while i < n { s += p[i]; i += 1 }
        return s
    }

    @inline(__always)
    public static func rowDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        while i + 8 <= n {
            acc += ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    @inline(__always)
    public static func rowMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var i = 0
        var m = -Float.infinity
        if n >= 8 {
            let raw = UnsafeRawPointer(p)
            var acc = SIMD8<Float>(repeating: -.infinity)
            while i + 8 <= n {
                let v = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                acc.replace(with: v, where: v .> acc)
                i += 8
            }
            for j in 0..<8 where acc[j] > m { m = acc[j] }
        }
        while i < n { if p[i] > m { m = p[i] }; i += 1 }
        return m
    }

    @inline(__always)
    public static func rowSumSquaredDeviation(_ p: UnsafePointer<Float>, _ n: Int, _ c: Float) -> Float {
        var acc = SIMD8<Float>()
        let cv = SIMD8<Float>(repeating: c)
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 8 <= n {
            let d = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - cv
            acc += d * d
            i += 8
        }
        var s = acc.sum()
        while i < n { let d = p[i] - c; s += d * d; i += 1 }
        return s
    }
}

extension Double: EngineScalar {
    @inline(__always)
    public static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
        alpha: Double, a: UnsafePointer<Double>, lda: Int,
        b: UnsafePointer<Double>, ldb: Int,
        beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }
    @inline(__always) public static func engineExp(_ x: Double) -> Double { exp(x) }
    @inline(__always) public static func engineTanh(_ x: Double) -> Double { tanh(x) }
    @inline(__always) public static func engineErf(_ x: Double) -> Double { erf(x) }
    @inline(__always) public static func engineLog(_ x: Double) -> Double { log(x) }

    // The Double path only serves the checks: plain loops.
    public static func rowSum(_ p: UnsafePointer<Double>, _ n: Int) -> Double {
        var s = 0.0
        for i in 0..<n { s += p[i] }
        return s
    }
    public static func rowDot(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ n: Int) -> Double {
        var s = 0.0
        for i in 0..<n { s += a[i] * b[i] }
        return s
    }
    public static func rowMax(_ p: UnsafePointer<Double>, _ n: Int) -> Double {
        var m = -Double.infinity
        for i in 0..<n where p[i] > m { m = p[i] }
        return m
    }
    public static func rowSumSquaredDeviation(_ p: UnsafePointer<Double>, _ n: Int, _ c: Double) -> Double {
        var s = 0.0
        for i in 0..<n { s += (p[i] - c) * (p[i] - c) }
        return s
    }
}

/// Process-wide engine settings and information.
public enum EngineInfo {
    /// OpenBLAS's core name (e.g. "Haswell", "SkylakeX") and configuration string.
    public static var blasCore: String { String(cString: openblas_get_corename()) }
    public static var blasConfig: String { String(cString: openblas_get_config()) }
    /// Threads OpenBLAS uses for one product (fixed at library load from OPENBLAS_NUM_THREADS,
    /// changeable with `setBlasThreads`).
    public static var blasThreads: Int { Int(openblas_get_num_threads()) }
    public static func setBlasThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }
}
