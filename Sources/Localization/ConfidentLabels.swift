import Foundation
import Imaging

/// Label maps with uncertainty from class maps, as AFA/ToCo/FSR/AReAM make them
/// (`refine_cams_with_bkg_v2`): the maps of the present classes, resized to the image, get a
/// constant background channel; everything is halved in resolution, softmaxed over channels,
/// refined with PAR against the halved image, resized back, and argmaxed. Done once with a high
/// and once with a low background score: a pixel is its class where the high-background map says
/// so, background where even the low-background map says background, and 255 where they disagree.
public struct ConfidentLabels: Codable, Equatable, Sendable {
    public var highBackground: Float = 0.55
    public var lowBackground: Float = 0.35
    public var downscale = 2
    public var par = PixelAdaptiveRefinement()

    public init() {}

    public static let ignore: UInt8 = 255

    public func labels(image: RGBImage, maps: ClassMaps) -> [UInt8] {
        labels(pixels: image.pixels.map(Float.init), width: image.width, height: image.height, maps: maps)
    }

    /// The same from float pixels, channels-last [height, width, 3]. PAR's colour term divides each
    /// channel's differences by that channel's local spread, so any per-channel affine scale
    /// (0-255, or a training batch's normalised values) gives the same labels.
    public func labels(pixels: [Float], width w: Int, height h: Int, maps: ClassMaps) -> [UInt8] {
        precondition(lowBackground < highBackground, "the low background score must be below the high one")
        precondition(pixels.count == w * h * 3, "\(w)x\(h) RGB pixels need \(w * h * 3) values, got \(pixels.count)")
        let classPlanes = resizePlanes(maps.values, count: maps.classes.count, width: maps.width, height: maps.height, toWidth: w, toHeight: h)
        let (sh, sw) = (max(h / downscale, 1), max(w / downscale, 1))
        let small = Resize.bilinear(pixels, width: w, height: h, channels: 3, toWidth: sw, toHeight: sh)
        let affinity = small.withUnsafeBufferPointer { par.affinity(image: $0.baseAddress!, height: sh, width: sw) }
        let high = argmaxRefined(classPlanes, classes: maps.classes, background: highBackground, size: (h, w), small: (sh, sw), affinity: affinity)
        let low = argmaxRefined(classPlanes, classes: maps.classes, background: lowBackground, size: (h, w), small: (sh, sw), affinity: affinity)
        return zip(high, low).map { h, l in h != 0 ? h : (l == 0 ? 0 : Self.ignore) }
    }

    /// Class id per pixel (0 = background) after PAR at the reduced size.
    func argmaxRefined(_ classPlanes: [Float], classes: [Int], background: Float, size: (Int, Int), small: (Int, Int), affinity: [Float]) -> [UInt8] {
        let (h, w) = size, (sh, sw) = small
        let channels = classes.count + 1
        var full = [Float](repeating: background, count: h * w)
        full += classPlanes
        var maps = resizePlanes(full, count: channels, width: w, height: h, toWidth: sw, toHeight: sh)
        softmaxOverChannels(&maps, channels: channels, pixels: sh * sw)
        par.refine(maps: &maps, count: channels, height: sh, width: sw, affinity: affinity)
        let refined = resizePlanes(maps, count: channels, width: sw, height: sh, toWidth: w, toHeight: h)
        let pixels = h * w
        var labels = [UInt8](repeating: 0, count: pixels)
        refined.withUnsafeBufferPointer { r in
            for p in 0..<pixels {
                var best = r[p], index = 0
                for k in 1..<channels where r[k * pixels + p] > best { best = r[k * pixels + p]; index = k }
                labels[p] = index == 0 ? 0 : UInt8(classes[index - 1])
            }
        }
        return labels
    }
}

/// Bilinear resize (PyTorch align_corners=false) of `count` planar maps.
public func resizePlanes(_ planes: [Float], count: Int, width: Int, height: Int, toWidth: Int, toHeight: Int) -> [Float] {
    if width == toWidth && height == toHeight { return planes }
    let plane = width * height, target = toWidth * toHeight
    var out = [Float](repeating: 0, count: count * target)
    planes.withUnsafeBufferPointer { source in
        out.withUnsafeMutableBufferPointer { destination in
            for k in 0..<count {
                Resize.bilinear(UnsafeBufferPointer(rebasing: source[k * plane..<(k + 1) * plane]), width: width, height: height, channels: 1,
                                toWidth: toWidth, toHeight: toHeight,
                                into: UnsafeMutableBufferPointer(rebasing: destination[k * target..<(k + 1) * target]))
            }
        }
    }
    return out
}

func softmaxOverChannels(_ maps: inout [Float], channels: Int, pixels: Int) {
    maps.withUnsafeMutableBufferPointer { m in
        for p in 0..<pixels {
            var top = -Float.infinity
            for k in 0..<channels { top = max(top, m[k * pixels + p]) }
            var total: Float = 0
            for k in 0..<channels { let e = expf(m[k * pixels + p] - top); m[k * pixels + p] = e; total += e }
            for k in 0..<channels { m[k * pixels + p] /= total }
        }
    }
}
