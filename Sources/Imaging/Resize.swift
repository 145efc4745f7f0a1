import Primitives

/// Resampling. Bilinear follows PyTorch's `interpolate(mode="bilinear", align_corners=False,
/// antialias=False)` exactly, so CAMs upsampled here match the reference code; nearest samples the
/// source pixel under each output pixel's centre (PyTorch's "nearest-exact"), which keeps label
/// maps centred instead of drifting by half a source pixel.
public enum Resize {
    static func nearestIndices(from input: Int, to output: Int) -> [Int] {
        let scale = Double(input) / Double(output)
        return (0..<output).map { min(Int((Double($0) + 0.5) * scale), input - 1) }
    }

    /// Bilinear resize of an interleaved (row-major HWC) float image.
    public static func bilinear(
        _ source: UnsafeBufferPointer<Float>, width: Int, height: Int, channels: Int,
        toWidth: Int, toHeight: Int, into destination: UnsafeMutableBufferPointer<Float>
    ) {
        precondition(source.count == width * height * channels && destination.count == toWidth * toHeight * channels,
                     "bilinear resize buffer sizes do not match the shapes")
        precondition(width > 0 && height > 0 || toWidth * toHeight == 0, "cannot resize an empty image")
        guard toWidth * toHeight > 0 else { return }
        Bilinear.resizeRows(source.baseAddress!, into: destination.baseAddress!, inHeight: height, inWidth: width,
                            outHeight: toHeight, outWidth: toWidth, channels: channels,
                            ys: BilinearTaps(from: height, to: toHeight), xs: BilinearTaps(from: width, to: toWidth), rows: 0..<toHeight)
    }

    public static func bilinear(_ source: [Float], width: Int, height: Int, channels: Int = 1,
                                toWidth: Int, toHeight: Int) -> [Float] {
        let count = toWidth * toHeight * channels
        return [Float](unsafeUninitializedCapacity: count) { out, n in
            source.withUnsafeBufferPointer {
                bilinear($0, width: width, height: height, channels: channels, toWidth: toWidth, toHeight: toHeight, into: out)
            }
            n = count
        }
    }

    /// Bilinear resize of 8-bit interleaved samples, rounded back to bytes.
    public static func bilinear(_ source: [UInt8], width: Int, height: Int, channels: Int,
                                toWidth: Int, toHeight: Int) -> [UInt8] {
        let resized = bilinear(source.map(Float.init), width: width, height: height, channels: channels,
                               toWidth: toWidth, toHeight: toHeight)
        return resized.map { UInt8(min(max($0 + 0.5, 0), 255)) }
    }

    /// Nearest-neighbour resize of interleaved samples of any type.
    public static func nearest<T>(_ source: [T], width: Int, height: Int, channels: Int,
                                  toWidth: Int, toHeight: Int) -> [T] {
        precondition(source.count == width * height * channels, "nearest resize buffer size does not match the shape")
        let xs = nearestIndices(from: width, to: toWidth)
        let ys = nearestIndices(from: height, to: toHeight)
        var result: [T] = []
        result.reserveCapacity(toWidth * toHeight * channels)
        source.withUnsafeBufferPointer { p in
            for oy in 0..<toHeight {
                let row = ys[oy] * width
                for ox in 0..<toWidth {
                    let start = (row + xs[ox]) * channels
                    for k in 0..<channels { result.append(p[start + k]) }
                }
            }
        }
        return result
    }
}

extension RGBImage {
    public func resizedBilinear(width newWidth: Int, height newHeight: Int) -> RGBImage {
        RGBImage(width: newWidth, height: newHeight,
                 pixels: Resize.bilinear(pixels, width: width, height: height, channels: 3, toWidth: newWidth, toHeight: newHeight))
    }

    public func resizedNearest(width newWidth: Int, height newHeight: Int) -> RGBImage {
        RGBImage(width: newWidth, height: newHeight,
                 pixels: Resize.nearest(pixels, width: width, height: height, channels: 3, toWidth: newWidth, toHeight: newHeight))
    }
}

extension GrayImage {
    public func resizedBilinear(width newWidth: Int, height newHeight: Int) -> GrayImage {
        GrayImage(width: newWidth, height: newHeight,
                  pixels: Resize.bilinear(pixels, width: width, height: height, channels: 1, toWidth: newWidth, toHeight: newHeight))
    }
}

extension LabelMap {
    /// Label maps only resize by nearest neighbour: interpolating class ids would invent classes.
    public func resizedNearest(width newWidth: Int, height newHeight: Int) -> LabelMap {
        LabelMap(width: newWidth, height: newHeight,
                 labels: Resize.nearest(labels, width: width, height: height, channels: 1, toWidth: newWidth, toHeight: newHeight))
    }
}
