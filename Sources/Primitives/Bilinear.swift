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
