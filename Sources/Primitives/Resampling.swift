/// The project's one bilinear resizer: PyTorch's `interpolate(mode="bilinear",
/// align_corners=False, antialias=False)`. Along each axis, output coordinate o samples the
/// source at (o + 0.5) * in / out - 0.5, clamped below at 0; the upper neighbour clamps at the
/// last index. Imaging resizes pictures and maps with it; the engine's resize kernel (forward on
/// row ranges of its threads, and the backward, its adjoint) uses the same taps and rows.
public struct BilinearTaps: Sendable {
    /// Per output coordinate: the lower and upper source index, and the upper one's weight.
    public let lo: [Int]
    public let hi: [Int]
    public let weight: [Float]

    public init(from input: Int, to output: Int) {
        let scale = Float(input) / Float(output)
        var lo = [Int](repeating: 0, count: output), hi = lo
        var weight = [Float](repeating: 0, count: output)
        for o in 0..<output {
            let real = max(scale * (Float(o) + 0.5) - 0.5, 0)
            let i0 = min(Int(real), input - 1)
            lo[o] = i0
            hi[o] = i0 < input - 1 ? i0 + 1 : i0
            weight[o] = real - Float(i0)
        }
        (self.lo, self.hi, self.weight) = (lo, hi, weight)
    }
}

public enum Bilinear {
    /// Resizes channels-last images [batch, inHeight, inWidth, channels] to [batch, outHeight,
    /// outWidth, channels], the output rows `rows` (indices into batch * outHeight) only, so that
    /// callers can split the work over threads.
    @inlinable
    public static func resizeRows<T: BinaryFloatingPoint>(
        _ source: UnsafePointer<T>, into destination: UnsafeMutablePointer<T>,
        inHeight: Int, inWidth: Int, outHeight: Int, outWidth: Int, channels: Int,
        ys: BilinearTaps, xs: BilinearTaps, rows: Range<Int>
    ) {
        let C = channels
        for row in rows {
            let b = row / outHeight, oy = row % outHeight
            let wy = T(ys.weight[oy])
            let r0 = source + (b * inHeight + ys.lo[oy]) * inWidth * C
            let r1 = source + (b * inHeight + ys.hi[oy]) * inWidth * C
            let out = destination + row * outWidth * C
            for ox in 0..<outWidth {
                let wx = T(xs.weight[ox])
                let a = r0 + xs.lo[ox] * C, b = r0 + xs.hi[ox] * C
                let c = r1 + xs.lo[ox] * C, d = r1 + xs.hi[ox] * C
                let o = out + ox * C
                for k in 0..<C {
                    let top = (1 - wx) * a[k] + wx * b[k]
                    let bottom = (1 - wx) * c[k] + wx * d[k]
                    o[k] = (1 - wy) * top + wy * bottom
                }
            }
        }
    }
}

/// Bicubic resampling as PyTorch's `interpolate(mode="bicubic", align_corners=False)` and ONNX
/// Resize (mode cubic, cubic_coeff_a -0.75, half_pixel, exclude_outside 0): output coordinate o
/// samples x = (o + 0.5) * in / out - 0.5; taps floor(x) - 1 ... floor(x) + 2, clamped to the
/// edge, weighted by Keys' cubic with A = -0.75 (not renormalised). Used once per model to bring a
/// pretrained position embedding to the model's token grid, as timm and DINOv2 do.
public enum Bicubic {
    static func keys(_ s: Double, _ a: Double = -0.75) -> Double {
        let x = abs(s)
        if x <= 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
        if x < 2 { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
        return 0
    }

    /// Per output coordinate: four source indices and their weights.
    static func taps(from input: Int, to output: Int) -> [(index: [Int], weight: [Double])] {
        let scale = Double(input) / Double(output)
        return (0..<output).map { o in
            let x = (Double(o) + 0.5) * scale - 0.5
            let x0 = Int(x.rounded(.down)), t = x - Double(x0)
            let index = (-1...2).map { min(max(x0 + $0, 0), input - 1) }
            return (index, [keys(t + 1), keys(t), keys(1 - t), keys(2 - t)])
        }
    }

    /// Resizes a channels-last image [inHeight, inWidth, channels] to [outHeight, outWidth,
    /// channels], accumulating in Double.
    public static func resize(_ source: [Float], inHeight: Int, inWidth: Int, channels: Int,
                              outHeight: Int, outWidth: Int) -> [Float] {
        precondition(source.count == inHeight * inWidth * channels, "bicubic resize: \(source.count) values for \(inHeight)x\(inWidth)x\(channels)")
        let ys = taps(from: inHeight, to: outHeight), xs = taps(from: inWidth, to: outWidth)
        var out = [Float](repeating: 0, count: outHeight * outWidth * channels)
        var acc = [Double](repeating: 0, count: channels)
        for oy in 0..<outHeight {
            for ox in 0..<outWidth {
                for k in 0..<channels { acc[k] = 0 }
                for (iy, wy) in zip(ys[oy].index, ys[oy].weight) {
                    for (ix, wx) in zip(xs[ox].index, xs[ox].weight) {
                        let w = wy * wx, base = (iy * inWidth + ix) * channels
                        for k in 0..<channels { acc[k] += w * Double(source[base + k]) }
                    }
                }
                let base = (oy * outWidth + ox) * channels
                for k in 0..<channels { out[base + k] = Float(acc[k]) }
            }
        }
        return out
    }
}
