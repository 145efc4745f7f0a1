import Primitives

extension Kernels {
    /// out[b, oy, ox, c] = bilinear sample of inp at the align_corners=False source position
    /// (Primitives' `Bilinear`, the project's one resizer, on the engine's threads).
    @_specialize(where S == Float)
    public static func bilinearResizeForward<S: EngineScalar>(
        out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>,
        batch: Int, inHeight: Int, inWidth: Int, outHeight: Int, outWidth: Int, channels: Int
    ) {
        let ys = BilinearTaps(from: inHeight, to: outHeight), xs = BilinearTaps(from: inWidth, to: outWidth)
        let o = SendablePointer(out), x = SendablePointer(inp)
        Parallel.forRanges(batch * outHeight, costPerItem: 8 * outWidth * channels) { range in
            Bilinear.resizeRows(UnsafePointer(x.p), into: o.p, inHeight: inHeight, inWidth: inWidth, outHeight: outHeight, outWidth: outWidth,
                                channels: channels, ys: ys, xs: xs, rows: range)
        }
    }

    /// dInp += adjoint of the resize applied to dOut.
    @_specialize(where S == Float)
    public static func bilinearResizeBackward<S: EngineScalar>(
        dInp: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>,
        batch: Int, inHeight: Int, inWidth: Int, outHeight: Int, outWidth: Int, channels: Int
    ) {
        let ay = BilinearTaps(from: inHeight, to: outHeight), ax = BilinearTaps(from: inWidth, to: outWidth)
        let C = channels
        let dx = SendablePointer(dInp), dy = SendablePointer(dOut)
        // Samples are independent; within one sample output rows scatter into shared input rows.
        Parallel.forRanges(batch, costPerItem: 8 * outHeight * outWidth * C) { range in
            for b in range {
                for oy in 0..<outHeight {
                    let ly = S(ay.weight[oy])
                    let r0 = dx.p + (b * inHeight + ay.lo[oy]) * inWidth * C
                    let r1 = dx.p + (b * inHeight + ay.hi[oy]) * inWidth * C
                    for ox in 0..<outWidth {
                        let lx = S(ax.weight[ox])
                        let w00 = (1 - ly) * (1 - lx), w01 = (1 - ly) * lx, w10 = ly * (1 - lx), w11 = ly * lx
                        let g = dy.p + ((b * outHeight + oy) * outWidth + ox) * C
                        let a = r0 + ax.lo[ox] * C, bb = r0 + ax.hi[ox] * C
                        let c = r1 + ax.lo[ox] * C, d = r1 + ax.hi[ox] * C
                        for ch in 0..<C {
                            let v = g[ch]
                            a[ch] += w00 * v
                            bb[ch] += w01 * v
                            c[ch] += w10 * v
                            d[ch] += w11 * v
                        }
                    }
                }
            }
        }
    }
}
