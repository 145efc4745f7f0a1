import Primitives

/// The classification head of ToCo and FSR (`top_classifier` / `aux_classifier`): global max
/// pooling of the patch tokens per channel (`F.adaptive_max_pool2d(x, 1)`), then a 1x1
/// classifier without bias,
///
///     logits[b, c] = sum_d W[c, d] max_n x[b, n, d],
///
/// whose CAM is the same classifier on every token (`F.conv2d(x, W)`, `patchScores`). Unlike the
/// ViT's own CAM head (average of the patch scores), the pooled logit only sees each channel's
/// strongest token. Tokens may sit inside a larger tensor: image b's first patch is at
/// `tokens + b * imageStride`, its patches follow one another (a hidden state [B, T, D] with a
/// class token first: `tokens` = its row 1, `imageStride` = T * D).
public enum MaxPooledClassifier {
    public struct Pass<S: EngineScalar> {
        public let batch, patches, dim, classes, imageStride: Int
        /// Per image and channel, the pooled value [B, D] and the patch it came from (first
        /// maximum on ties, as PyTorch's CPU max pooling).
        public let pooled: TensorOf<S>
        public let argmax: [Int32]
        public let logits: TensorOf<S>  // [B, C]
    }

    /// Pooled logits of tokens (see the type's comment) under weight [C, D].
    @_specialize(where S == Float)
    public static func forward<S: EngineScalar>(tokens: UnsafePointer<S>, batch B: Int, patches N: Int, dim D: Int, imageStride: Int? = nil,
                                                weight: UnsafePointer<S>, classes C: Int) -> Pass<S> {
        let stride = imageStride ?? N * D
        precondition(B > 0 && N > 0 && D > 0 && C > 0 && stride >= N * D, "bad max-pooled classifier shape")
        let pooled = TensorOf<S>(shape: [B, D]), logits = TensorOf<S>(shape: [B, C])
        var argmax = [Int32](repeating: 0, count: B * D)
        for b in 0..<B {
            let x = tokens + b * stride, out = pooled.data + b * D
            out.update(from: x, count: D)
            for n in 1..<N {
                let row = x + n * D
                for d in 0..<D where row[d] > out[d] {
                    out[d] = row[d]
                    argmax[b * D + d] = Int32(n)
                }
            }
        }
        Kernels.linearForward(out: logits.data, inp: pooled.data, weight: weight, bias: nil, rows: B, inFeatures: D, outFeatures: C)
        return Pass(batch: B, patches: N, dim: D, classes: C, imageStride: stride, pooled: pooled, argmax: argmax, logits: logits)
    }

    /// ADDS dL/dW into `dWeight` (when given) and dL/dtokens into `dTokens` (laid out as the
    /// forward's tokens; only each channel's chosen patch receives gradient).
    @_specialize(where S == Float)
    public static func backward<S: EngineScalar>(_ p: Pass<S>, dLogits: UnsafePointer<S>, weight: UnsafePointer<S>,
                                                 dWeight: UnsafeMutablePointer<S>?, dTokens: UnsafeMutablePointer<S>) {
        let B = p.batch, D = p.dim
        let dPooled = TensorOf<S>(shape: [B, D])
        Kernels.linearBackward(dInp: dPooled.data, dWeight: dWeight, dBias: nil, dOut: dLogits, inp: p.pooled.data, weight: weight,
                               rows: B, inFeatures: D, outFeatures: p.classes)
        for b in 0..<B {
            let dx = dTokens + b * p.imageStride, g = dPooled.data + b * D
            for d in 0..<D { dx[Int(p.argmax[b * D + d]) * D + d] += g[d] }
        }
    }

    /// The CAM: patch scores [B, N, C] = tokens . W^T for every patch (no ReLU).
    @_specialize(where S == Float)
    public static func patchScores<S: EngineScalar>(tokens: UnsafePointer<S>, batch B: Int, patches N: Int, dim D: Int, imageStride: Int? = nil,
                                                    weight: UnsafePointer<S>, classes C: Int) -> TensorOf<S> {
        let stride = imageStride ?? N * D
        let out = TensorOf<S>(shape: [B, N, C])
        if stride == N * D {
            Kernels.linearForward(out: out.data, inp: tokens, weight: weight, bias: nil, rows: B * N, inFeatures: D, outFeatures: C)
        } else {
            for b in 0..<B {
                Kernels.linearForward(out: out.data + b * N * C, inp: tokens + b * stride, weight: weight, bias: nil,
                                      rows: N, inFeatures: D, outFeatures: C)
            }
        }
        return out
    }
}
