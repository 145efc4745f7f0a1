import Primitives
import TestSupport
import XCTest
@testable import Engine

final class AugmentationTests: XCTestCase {
    let unit = Normalization(mean: [0, 0, 0], std: [1, 1, 1])

    /// A w x h RGB image whose channels encode position, so misplaced samples show.
    func gradientImage(_ w: Int, _ h: Int) -> [UInt8] {
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h {
            for x in 0..<w {
                pixels[(y * w + x) * 3] = UInt8(10 * x)
                pixels[(y * w + x) * 3 + 1] = UInt8(10 * y)
                pixels[(y * w + x) * 3 + 2] = UInt8((x * 7 + y * 13) % 256)
            }
        }
        return pixels
    }

    func render(_ pixels: [UInt8], _ w: Int, _ h: Int, size: Int, draw: AugmentationDraw, norm: Normalization? = nil) -> [Float] {
        var out = [Float](repeating: .nan, count: size * size * 3)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                ImageAugmenter.render(src.baseAddress!, width: w, height: h, into: dst.baseAddress!, size: size, draw: draw, normalization: norm ?? unit)
            }
        }
        return out
    }

    func identity(_ size: Int) -> AugmentationDraw {
        AugmentationDraw(resizedWidth: size, resizedHeight: size, cropX: 0, cropY: 0, flipped: false, brightness: 1, contrast: 1, saturation: 1)
    }

    func testIdentityResizeNormalisesEachPixel() {
        let image = gradientImage(8, 8)
        let norm = Normalization.imageNet
        let out = render(image, 8, 8, size: 8, draw: identity(8), norm: norm)
        for i in 0..<(8 * 8) {
            for c in 0..<3 {
                let expected = (Float(image[i * 3 + c]) / 255 - norm.mean[c]) / norm.std[c]
                XCTAssertEqual(out[i * 3 + c], expected, accuracy: 1e-5)
            }
        }
    }

    /// Halving a 4x4 image: output pixel centres fall midway between source pixels, so each
    /// output value is the mean of a 2x2 block.
    func testDownscaleAveragesBlocks() {
        let image = gradientImage(4, 4)
        let out = render(image, 4, 4, size: 2, draw: identity(2))
        for oy in 0..<2 {
            for ox in 0..<2 {
                var mean: Float = 0
                for dy in 0..<2 { for dx in 0..<2 { mean += Float(image[((2 * oy + dy) * 4 + 2 * ox + dx) * 3]) } }
                XCTAssertEqual(out[(oy * 2 + ox) * 3], mean / 4 / 255, accuracy: 1e-6)
            }
        }
    }

    func testFlipMirrorsColumns() {
        let image = gradientImage(6, 5)
        var flipped = identity(6)
        flipped.flipped = true
        let plain = render(image, 6, 5, size: 6, draw: identity(6))
        let mirrored = render(image, 6, 5, size: 6, draw: flipped)
        for y in 0..<6 {
            for x in 0..<6 {
                for c in 0..<3 { XCTAssertEqual(mirrored[(y * 6 + x) * 3 + c], plain[(y * 6 + 5 - x) * 3 + c]) }
            }
        }
    }

    /// A shrunken image placed inside the output: padding is 0 (the mean), the inside the colour.
    func testPaddingAndCropPlacement() {
        let image = [UInt8](repeating: 51, count: 4 * 4 * 3)  // 0.2
        let norm = Normalization(mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5])
        let d = AugmentationDraw(resizedWidth: 3, resizedHeight: 2, cropX: -1, cropY: -3, flipped: false,
                                 brightness: 1, contrast: 1, saturation: 1)
        let out = render(image, 4, 4, size: 6, draw: d, norm: norm)
        for y in 0..<6 {
            for x in 0..<6 {
                let inside = (3..<5).contains(y) && (1..<4).contains(x)
                XCTAssertEqual(out[(y * 6 + x) * 3], inside ? (0.2 - 0.5) / 0.5 : 0, accuracy: 1e-6, "(\(x), \(y))")
            }
        }
        // Cropping from an enlarged image: output (0,0) is rescaled-image pixel (cropX, cropY).
        let big = gradientImage(4, 4)
        let crop = AugmentationDraw(resizedWidth: 8, resizedHeight: 8, cropX: 4, cropY: 2, flipped: false,
                                    brightness: 1, contrast: 1, saturation: 1)
        let cropped = render(big, 4, 4, size: 4, draw: crop)
        let full = render(big, 4, 4, size: 8, draw: identity(8))
        for y in 0..<4 { for x in 0..<4 { XCTAssertEqual(cropped[(y * 4 + x) * 3 + 1], full[((y + 2) * 8 + x + 4) * 3 + 1]) } }
    }

    func testColourJitter() {
        let image: [UInt8] = [100, 150, 200, 100, 150, 200, 100, 150, 200, 100, 150, 200]  // 2x2, one colour
        var d = identity(2)
        d.brightness = 1.2
        var out = render(image, 2, 2, size: 2, draw: d)
        XCTAssertEqual(out[0], 120 / 255, accuracy: 1e-6)
        XCTAssertEqual(out[2], 240 / 255, accuracy: 1e-6)
        d.brightness = 2  // 400/255 clips to 1
        out = render(image, 2, 2, size: 2, draw: d)
        XCTAssertEqual(out[2], 1, accuracy: 0)
        // Contrast blends every channel towards the image's mean luma (torchvision's definition);
        // for one colour that is 0.299 R + 0.587 G + 0.114 B = 140.75, so factor 0.5 gives the midpoint.
        let grey: Float = (0.299 * 100 + 0.587 * 150 + 0.114 * 200) / 255
        d = identity(2)
        d.contrast = 0.5
        out = render(image, 2, 2, size: 2, draw: d)
        XCTAssertEqual(out[1], (150 / 255 + grey) / 2, accuracy: 1e-5)
        XCTAssertEqual(out[0], (100 / 255 + grey) / 2, accuracy: 1e-5)
        // Saturation 0 gives the per-pixel luma grey in every channel.
        d = identity(2)
        d.saturation = 0
        out = render(image, 2, 2, size: 2, draw: d)
        for c in 0..<3 { XCTAssertEqual(out[c], grey, accuracy: 1e-5) }
    }

    func testDrawsStayInRangeAndAreSeeded() {
        let settings = AugmentationSettings(scaleMin: 0.5, scaleMax: 2, flip: true, brightness: 0.3, contrast: 0.3, saturation: 0.3)
        var rng = SplitMix64(seed: 7)
        var flips = 0, smaller = 0, larger = 0
        for _ in 0..<2000 {
            let d = ImageAugmenter.draw(size: 32, settings: settings, using: &rng)
            XCTAssert((16...64).contains(d.resizedWidth))
            XCTAssertEqual(d.resizedWidth, d.resizedHeight)
            let slack = d.resizedWidth - 32
            XCTAssert((min(0, slack)...max(0, slack)).contains(d.cropX))
            XCTAssert((min(0, slack)...max(0, slack)).contains(d.cropY))
            XCTAssert((0.7...1.3).contains(d.brightness) && (0.7...1.3).contains(d.saturation))
            if d.flipped { flips += 1 }
            if slack < 0 { smaller += 1 } else if slack > 0 { larger += 1 }
        }
        XCTAssert((900...1100).contains(flips), "flips \(flips)")
        XCTAssert(smaller > 200 && larger > 200)

        // Same (seed, stream, index): same draw; another index: another draw.
        var a = SplitMix64(seed: 3, stream: 1, index: 5), b = SplitMix64(seed: 3, stream: 1, index: 5)
        var c = SplitMix64(seed: 3, stream: 1, index: 6), e = SplitMix64(seed: 3, stream: 2, index: 5)
        let da = ImageAugmenter.draw(size: 32, settings: settings, using: &a)
        XCTAssertEqual(da, ImageAugmenter.draw(size: 32, settings: settings, using: &b))
        XCTAssertNotEqual(da, ImageAugmenter.draw(size: 32, settings: settings, using: &c))
        XCTAssertNotEqual(da, ImageAugmenter.draw(size: 32, settings: settings, using: &e))
    }

    func testNoneEqualsResize() {
        let image = gradientImage(10, 7)
        var viaAugment = [Float](repeating: 0, count: 8 * 8 * 3), viaResize = viaAugment
        var rng = SplitMix64(seed: 1)
        image.withUnsafeBufferPointer { src in
            ImageAugmenter.augment(src.baseAddress!, width: 10, height: 7, into: &viaAugment, size: 8,
                                   settings: .none, normalization: .imageNet, using: &rng)
            ImageAugmenter.resize(src.baseAddress!, width: 10, height: 7, into: &viaResize, size: 8, normalization: .imageNet)
        }
        XCTAssertEqual(viaAugment, viaResize)
    }
}
