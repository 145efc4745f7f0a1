import Foundation
import Primitives

/// Per-channel normalisation of [0, 1] RGB values: (v - mean) / std.
public struct Normalization: Codable, Equatable, Sendable {
    public var mean: [Float]
    public var std: [Float]

    public init(mean: [Float], std: [Float]) {
        precondition(mean.count == 3 && std.count == 3 && std.allSatisfy { $0 > 0 })
        self.mean = mean
        self.std = std
    }

    /// ImageNet statistics, the usual choice for ViTs.
    public static let imageNet = Normalization(mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])
}

/// Training augmentation of one image into the ViT's channels-last float input.
///
/// Order: random rescale (factor r uniform in [scaleMin, scaleMax] relative to the size at which
/// the image exactly fills the output), horizontal flip, colour jitter (brightness, contrast,
/// saturation factors uniform in [1 - j, 1 + j]), then a random crop of the output size; where the
/// rescaled image is smaller than the output the rest is padding at the normalisation mean
/// (0 after normalising). Resampling is bilinear straight from the source, so rescale, flip and
/// crop cost one pass. The references rescale by 0.5-2.0 for 512-pixel crops; small images lose
/// their objects at 0.5, so the defaults here are narrower.
public struct AugmentationSettings: Codable, Equatable, Sendable {
    public var scaleMin: Double = 0.75
    public var scaleMax: Double = 1.5
    public var flip: Bool = true
    public var brightness: Double = 0.2
    public var contrast: Double = 0.2
    public var saturation: Double = 0.2

    public init() {}

    public init(scaleMin: Double, scaleMax: Double, flip: Bool, brightness: Double, contrast: Double, saturation: Double) {
        self.scaleMin = scaleMin
        self.scaleMax = scaleMax
        self.flip = flip
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
    }

    /// No augmentation at all: `augment` then equals `ImageAugmenter.resize`.
    public static let none = AugmentationSettings(scaleMin: 1, scaleMax: 1, flip: false, brightness: 0, contrast: 0, saturation: 0)

    public func validate() throws {
        guard scaleMin > 0, scaleMax >= scaleMin else {
            throw TrainingError("augmentation scale range [\(scaleMin), \(scaleMax)] must satisfy 0 < min <= max")
        }
        for (name, value) in [("brightness", brightness), ("contrast", contrast), ("saturation", saturation)] where !(0...1).contains(value) {
            throw TrainingError("augmentation \(name) jitter \(value) must lie in [0, 1]")
        }
    }
}

/// The random choices of one augmentation, drawn before any pixel is touched.
public struct AugmentationDraw: Equatable, Sendable {
    public var resizedWidth: Int
    public var resizedHeight: Int
    /// Top-left corner of the crop in the rescaled image (negative: padding before the image).
    public var cropX: Int
    public var cropY: Int
    public var flipped: Bool
    public var brightness: Float
    public var contrast: Float
    public var saturation: Float
}

public enum ImageAugmenter {
    public static func draw(size: Int, settings: AugmentationSettings, using rng: inout SplitMix64) -> AugmentationDraw {
        let r = rng.uniform(settings.scaleMin, settings.scaleMax)
        let rw = max(1, Int((Double(size) * r).rounded()))
        let rh = max(1, Int((Double(size) * r).rounded()))
        func offset(_ resized: Int) -> Int {
            let slack = resized - size
            return slack == 0 ? 0 : rng.int(in: min(0, slack)...max(0, slack))
        }
        let cropX = offset(rw), cropY = offset(rh)
        let flipped = settings.flip ? rng.bool() : false
        func jitter(_ j: Double) -> Float { j > 0 ? Float(rng.uniform(1 - j, 1 + j)) : 1 }
        return AugmentationDraw(resizedWidth: rw, resizedHeight: rh, cropX: cropX, cropY: cropY, flipped: flipped,
                                brightness: jitter(settings.brightness), contrast: jitter(settings.contrast),
                                saturation: jitter(settings.saturation))
    }

    /// Augments one interleaved RGB8 image of `width` x `height` into `output` ([size, size, 3],
    /// normalised floats).
    public static func augment(
        _ source: UnsafePointer<UInt8>, width: Int, height: Int, into output: UnsafeMutablePointer<Float>, size: Int,
        settings: AugmentationSettings, normalization: Normalization, using rng: inout SplitMix64
    ) {
        let d = draw(size: size, settings: settings, using: &rng)
        render(source, width: width, height: height, into: output, size: size, draw: d, normalization: normalization)
    }

    /// Plain bilinear resize to `size` x `size` and normalisation (evaluation and inference).
    public static func resize(
        _ source: UnsafePointer<UInt8>, width: Int, height: Int, into output: UnsafeMutablePointer<Float>, size: Int,
        normalization: Normalization
    ) {
        let d = AugmentationDraw(resizedWidth: size, resizedHeight: size, cropX: 0, cropY: 0, flipped: false,
                                 brightness: 1, contrast: 1, saturation: 1)
        render(source, width: width, height: height, into: output, size: size, draw: d, normalization: normalization)
    }

    public static func render(
        _ source: UnsafePointer<UInt8>, width: Int, height: Int, into output: UnsafeMutablePointer<Float>, size: Int,
        draw d: AugmentationDraw, normalization: Normalization
    ) {
        precondition(width > 0 && height > 0 && size > 0)
        let jitterContrast = d.contrast != 1
        let jitterSaturation = d.saturation != 1
        // Contrast blends towards the mean grey of the (brightness-scaled) image, as torchvision.
        var meanGrey: Float = 0
        if jitterContrast {
            var sum: Double = 0
            for i in 0..<(width * height) {
                sum += 0.299 * Double(source[3 * i]) + 0.587 * Double(source[3 * i + 1]) + 0.114 * Double(source[3 * i + 2])
            }
            meanGrey = Float(sum / Double(width * height) / 255) * d.brightness
        }
        let scaleX = Float(width) / Float(d.resizedWidth), scaleY = Float(height) / Float(d.resizedHeight)
        let m0 = normalization.mean[0], m1 = normalization.mean[1], m2 = normalization.mean[2]
        let s0 = 1 / normalization.std[0], s1 = 1 / normalization.std[1], s2 = 1 / normalization.std[2]
        let byteScale = d.brightness / 255
        for oy in 0..<size {
            let y = oy + d.cropY
            let row = output + oy * size * 3
            guard y >= 0 && y < d.resizedHeight else {
                for i in 0..<(size * 3) { row[i] = 0 }
                continue
            }
            let sy = min(max((Float(y) + 0.5) * scaleY - 0.5, 0), Float(height - 1))
            let y0 = Int(sy), y1 = min(y0 + 1, height - 1)
            let fy = sy - Float(y0)
            for ox in 0..<size {
                var x = ox + d.cropX
                let out = row + ox * 3
                guard x >= 0 && x < d.resizedWidth else {
                    out[0] = 0; out[1] = 0; out[2] = 0
                    continue
                }
                if d.flipped { x = d.resizedWidth - 1 - x }
                let sx = min(max((Float(x) + 0.5) * scaleX - 0.5, 0), Float(width - 1))
                let x0 = Int(sx), x1 = min(x0 + 1, width - 1)
                let fx = sx - Float(x0)
                let p00 = source + (y0 * width + x0) * 3, p01 = source + (y0 * width + x1) * 3
                let p10 = source + (y1 * width + x0) * 3, p11 = source + (y1 * width + x1) * 3
                let w00 = (1 - fx) * (1 - fy), w01 = fx * (1 - fy), w10 = (1 - fx) * fy, w11 = fx * fy
                var r = (w00 * Float(p00[0]) + w01 * Float(p01[0]) + w10 * Float(p10[0]) + w11 * Float(p11[0])) * byteScale
                var g = (w00 * Float(p00[1]) + w01 * Float(p01[1]) + w10 * Float(p10[1]) + w11 * Float(p11[1])) * byteScale
                var b = (w00 * Float(p00[2]) + w01 * Float(p01[2]) + w10 * Float(p10[2]) + w11 * Float(p11[2])) * byteScale
                if jitterContrast {
                    r = (r - meanGrey) * d.contrast + meanGrey
                    g = (g - meanGrey) * d.contrast + meanGrey
                    b = (b - meanGrey) * d.contrast + meanGrey
                }
                if jitterSaturation {
                    let grey = 0.299 * r + 0.587 * g + 0.114 * b
                    r = (r - grey) * d.saturation + grey
                    g = (g - grey) * d.saturation + grey
                    b = (b - grey) * d.saturation + grey
                }
                out[0] = (min(max(r, 0), 1) - m0) * s0
                out[1] = (min(max(g, 0), 1) - m1) * s1
                out[2] = (min(max(b, 0), 1) - m2) * s2
            }
        }
    }
}
