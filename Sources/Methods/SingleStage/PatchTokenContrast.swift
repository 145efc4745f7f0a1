import Engine

/// ToCo's patch token contrast (PTC; Ru et al. 2023, `get_masked_ptc_loss`), which FSR's frame
/// keeps "against over-smoothing" of the last layer's patch tokens (FSR paper, section 3): within
/// each image, the absolute cosine similarity of two tokens with the same pseudo label is pulled
/// to 1 and that of two tokens with different labels pushed to 0,
///
///     L = 0.5 (1 - sum_pos |cos| / (P + 1)) + 0.5 sum_neg |cos| / (Q + 1),
///
/// P and Q counting the positive and negative token pairs of the whole batch (ordered pairs;
/// self-pairs and tokens labelled 255 are left out, as ToCo's `label_to_aff_mask` does).
public enum PatchTokenContrast {
    /// Pseudo labels [B, H, W] brought to the token grid [B, gridH, gridW] as PyTorch's
    /// `F.interpolate(mode='nearest')` does (source index floor(i * H / gridH)); not
    /// `Resize.nearest`, which samples pixel centres ('nearest-exact') and would pick other pixels.
    public static func tokenLabels(_ labels: [UInt8], batch B: Int, height H: Int, width W: Int, gridH: Int, gridW: Int) -> [UInt8] {
        precondition(labels.count == B * H * W, "labels must be [\(B), \(H), \(W)]")
        var out = [UInt8](repeating: 255, count: B * gridH * gridW)
        for b in 0..<B {
            for i in 0..<gridH {
                let y = min(i * H / gridH, H - 1)
                for j in 0..<gridW {
                    let x = min(j * W / gridW, W - 1)
                    out[(b * gridH + i) * gridW + j] = labels[(b * H + y) * W + x]
                }
            }
        }
        return out
    }

    /// Token labels from a CAM as FSR's code makes them for PTC (`multi_scale_cam` at one scale,
    /// then `cam_to_label(ignore_mid=True)`): per present class c the CAM ReLU(s_c) min-max
    /// normalised over the image's tokens, (r - min) / (max - min + 1e-5); per token the largest
    /// value v and its class k; label k + 1 where v > high, 255 where low < v <= high, background
    /// 0 where v <= low. patchScores [B, N, C], classLabels [B, C] multi-hot; tokens with `valid`
    /// false (padding the augmentation added) are 255.
    public static func camTokenLabels(patchScores: UnsafePointer<Float>, classLabels: UnsafePointer<Float>, batch B: Int, patches N: Int,
                                      classes C: Int, high: Float, low: Float, valid: [Bool]? = nil) -> [UInt8] {
        precondition(valid == nil || valid!.count == B * N, "valid must be [\(B), \(N)]")
        precondition(C < 255, "at most 254 classes fit a UInt8 label")
        var value = [Float](repeating: 0, count: B * N), best = [Int](repeating: 0, count: B * N)
        for b in 0..<B {
            for c in 0..<C where classLabels[b * C + c] > 0.5 {
                var lowest = Float.infinity, top = -Float.infinity
                for n in 0..<N {
                    let r = max(patchScores[(b * N + n) * C + c], 0)
                    lowest = min(lowest, r)
                    top = max(top, r)
                }
                let inv = 1 / (top - lowest + 1e-5)
                for n in 0..<N {
                    let v = (max(patchScores[(b * N + n) * C + c], 0) - lowest) * inv
                    if v > value[b * N + n] { value[b * N + n] = v; best[b * N + n] = c }
                }
            }
        }
        return (0..<(B * N)).map { i in
            if let valid, !valid[i] { return 255 }
            return value[i] > high ? UInt8(best[i] + 1) : (value[i] > low ? 255 : 0)
        }
    }

    /// The loss of tokens [B, N, D] under token labels [B, N] (255 = no label). With `dTokens`,
    /// ADDS weight * dL/dtokens. Tokens are normalised as `F.normalize` does (x / max(|x|, 1e-8)).
    @discardableResult
    @_specialize(where S == Float)
    public static func loss<S: EngineScalar>(tokens: UnsafePointer<S>, labels: UnsafePointer<UInt8>, batch B: Int, patches N: Int, dim D: Int,
                                             dTokens: UnsafeMutablePointer<S>? = nil, weight: S = 1) -> Double {
        guard B > 0, N > 0, D > 0 else { return 0 }
        // Pair counts of the batch: per image, P = sum_k c_k (c_k - 1), Q = n^2 - sum_k c_k^2.
        var positives = 0, negatives = 0
        for b in 0..<B {
            var counts = [Int](repeating: 0, count: 256)
            for n in 0..<N { counts[Int(labels[b * N + n])] += 1 }
            let labelled = N - counts[255]
            var squares = 0
            for k in 0..<255 where counts[k] > 0 {
                positives += counts[k] * (counts[k] - 1)
                squares += counts[k] * counts[k]
            }
            negatives += labelled * labelled - squares
        }
        let positiveScale = 0.5 / Double(positives + 1), negativeScale = 0.5 / Double(negatives + 1)
        let unit = UnsafeMutablePointer<S>.allocate(capacity: N * D)
        let norms = UnsafeMutablePointer<S>.allocate(capacity: N)
        let cosines = UnsafeMutablePointer<S>.allocate(capacity: N * N)
        let du = UnsafeMutablePointer<S>.allocate(capacity: dTokens == nil ? 0 : N * D)
        defer { unit.deallocate(); norms.deallocate(); cosines.deallocate(); du.deallocate() }
        var positiveSum = 0.0, negativeSum = 0.0
        for b in 0..<B {
            let x = tokens + b * N * D, lab = labels + b * N
            for n in 0..<N {
                let row = x + n * D
                let norm = max(S.rowDot(row, row, D).squareRoot(), S(1e-8))
                norms[n] = norm
                let inv = 1 / norm
                for j in 0..<D { unit[n * D + j] = row[j] * inv }
            }
            S.gemm(transA: false, transB: true, m: N, n: N, k: D, alpha: 1, a: unit, lda: D, b: unit, ldb: D, beta: 0, c: cosines, ldc: N)
            // cosines becomes G = dL/dcos (|cos|' = sign(cos), 0 at 0), symmetric like the pairs.
            for i in 0..<N {
                for j in 0..<N {
                    let c = cosines[i * N + j]
                    var g: Double = 0
                    if i != j && lab[i] != 255 && lab[j] != 255 {
                        let magnitude = Double(Swift.abs(c))
                        if lab[i] == lab[j] {
                            positiveSum += magnitude
                            g = -positiveScale
                        } else {
                            negativeSum += magnitude
                            g = negativeScale
                        }
                    }
                    cosines[i * N + j] = c > 0 ? S(g) : (c < 0 ? S(-g) : 0)
                }
            }
            guard let dTokens else { continue }
            // dL/du = (G + G^T) u = 2 G u; through the normalisation dx = (du - u (u . du)) / |x|
            // (du / 1e-8 where the norm was clamped, u = x / 1e-8 being linear there).
            S.gemm(transA: false, transB: false, m: N, n: D, k: N, alpha: 2 * weight, a: cosines, lda: N, b: unit, ldb: D, beta: 0, c: du, ldc: D)
            let dx = dTokens + b * N * D
            for n in 0..<N {
                let u = unit + n * D, g = du + n * D, inv = 1 / norms[n]
                let along = norms[n] <= S(1e-8) ? 0 : S.rowDot(u, g, D)  // clamped norm: u = x / 1e-8 is linear
                for j in 0..<D { dx[n * D + j] += (g[j] - u[j] * along) * inv }
            }
        }
        return 0.5 * (1 - positiveSum * 2 * positiveScale) + negativeSum * negativeScale
    }
}
