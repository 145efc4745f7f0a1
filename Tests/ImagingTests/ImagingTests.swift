import Foundation
import TestSupport
import XCTest
@testable import Imaging

final class ImagingTests: TemporaryFolderTestCase {
    /// Bytes that differ at every position and cover the whole 0...255 range.
    func pattern(_ count: Int, salt: Int = 0) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ ($0 >> 8) &* 11 &+ salt) }
    }

    // MARK: PNG

    func testGreyAndRGBRoundTripExactly() throws {
        let grey = GrayImage(width: 17, height: 9, pixels: pattern(17 * 9))
        try PNG.write(grey, to: path("g.png"))
        XCTAssertEqual(try PNG.readGray(path("g.png")), grey)

        let rgb = RGBImage(width: 13, height: 7, pixels: pattern(13 * 7 * 3, salt: 5))
        try PNG.write(rgb, to: path("c.png"))
        XCTAssertEqual(try PNG.readRGB(path("c.png")), rgb)

        // A grey file read as RGB repeats the grey value in every channel.
        let asRGB = try PNG.readRGB(path("g.png"))
        XCTAssertEqual(asRGB[3, 2], RGB(grey.pixels[2 * 17 + 3], grey.pixels[2 * 17 + 3], grey.pixels[2 * 17 + 3]))
    }

    func testPaletteLabelMapReadsBackIndicesNotColours() throws {
        var values = (0..<21).map(UInt8.init) + [255, 255, 0, 7]
        values += [UInt8](repeating: 3, count: 5 * 6 - values.count)
        let labels = LabelMap(width: 6, height: 5, labels: values)
        try PNG.write(labels, to: path("l.png"))
        XCTAssertEqual(try PNG.readLabels(path("l.png")), labels)
        // The file is a real palette PNG: decoded as colour it shows VOC colours, 255 white.
        let shown = try PNG.readRGB(path("l.png"))
        XCTAssertEqual(shown[1, 0], RGB(128, 0, 0))
        XCTAssertEqual(shown[15 % 6, 15 / 6], RGB(192, 128, 128))
        XCTAssertEqual(shown[21 % 6, 21 / 6], .white)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path("l.png")))
        XCTAssertNotNil(bytes.range(of: Data("PLTE".utf8)), "palette PNG must carry a PLTE chunk")
    }

    func testPaletteIndicesSurviveRepeatedColours() throws {
        // Every entry the same colour: indices can only come back if they are read as indices.
        let flat = Palette(colors: [RGB](repeating: RGB(10, 20, 30), count: 256))
        let labels = LabelMap(width: 16, height: 16, labels: (0..<256).map(UInt8.init))
        try PNG.write(labels, to: path("flat.png"), palette: flat)
        XCTAssertEqual(try PNG.readLabels(path("flat.png")), labels)
    }

    func testGreyAndRGBLabelFiles() throws {
        let labels = LabelMap(width: 4, height: 3, labels: [0, 1, 2, 255, 20, 5, 5, 0, 9, 9, 1, 255])
        try PNG.write(GrayImage(width: 4, height: 3, pixels: labels.labels), to: path("grey-labels.png"))
        XCTAssertEqual(try PNG.readLabels(path("grey-labels.png")), labels)
        // A colour-converted mask maps back through the palette; VOC's own ignore colour is 255 too.
        var colour = labels.colorized()
        colour[3, 0] = RGB(224, 224, 192)
        try PNG.write(colour, to: path("rgb-labels.png"))
        XCTAssertEqual(try PNG.readLabels(path("rgb-labels.png")), labels)
        colour[1, 1] = RGB(1, 2, 3)
        try PNG.write(colour, to: path("bad-labels.png"))
        XCTAssertThrowsError(try PNG.readLabels(path("bad-labels.png"))) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path("bad-labels.png")) && text.contains("(1, 2, 3)") && text.contains("(1, 1)"), text)
        }
    }

    func testRGBAIsCompositedOnBlack() throws {
        // Opaque, transparent and half-transparent pixels.
        let rgba: [UInt8] = [200, 100, 50, 255, 200, 100, 50, 0, 200, 100, 50, 128]
        try PNG.writeRGBA(width: 3, height: 1, pixels: rgba, to: path("a.png"))
        let image = try PNG.readRGB(path("a.png"))
        XCTAssertEqual(image[0, 0], RGB(200, 100, 50))
        XCTAssertEqual(image[1, 0], .black)
        let half = image[2, 0]
        XCTAssertTrue(half.r > 0 && half.r < 200 && half.g > 0 && half.g < 100, "\(half)")
        XCTAssertThrowsError(try PNG.readLabels(path("a.png"))) { error in
            XCTAssertTrue("\(error)".contains("alpha"), "\(error)")
        }
    }

    func testBadFilesFailNamingTheFile() throws {
        try Data("hello, not an image".utf8).write(to: URL(fileURLWithPath: path("text.png")))
        XCTAssertThrowsError(try PNG.readRGB(path("text.png"))) { error in
            XCTAssertEqual(error as? ImageError, ImageError(path: path("text.png"), "not a PNG file"))
            XCTAssertTrue("\(error)".hasPrefix(path("text.png") + ":"))
        }
        XCTAssertThrowsError(try PNG.readLabels(path("missing.png"))) { error in
            XCTAssertEqual(error as? ImageError, ImageError(path: path("missing.png"), "no such file"))
        }
        let rgb = RGBImage(width: 40, height: 40, pixels: pattern(40 * 40 * 3))
        try PNG.write(rgb, to: path("whole.png"))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path("whole.png")))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path("cut.png")))
        XCTAssertThrowsError(try PNG.readRGB(path("cut.png"))) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix(path("cut.png")) && text.contains("corrupt"), text)
        }
        XCTAssertThrowsError(try ImageFile.readRGB(path("text.png"))) { error in
            XCTAssertTrue("\(error)".contains("not a PNG or JPEG"), "\(error)")
        }
    }

    // MARK: JPEG

    func testJPEGRoundTripIsCloseAndDetectedByContent() throws {
        var smooth = RGBImage(width: 32, height: 24)
        for y in 0..<24 {
            for x in 0..<32 { smooth[x, y] = RGB(UInt8(x * 7), UInt8(y * 9), UInt8(128 + x - y)) }
        }
        try JPEG.write(smooth, to: path("s.jpg"), quality: 95)
        let decoded = try JPEG.readRGB(path("s.jpg"))
        XCTAssertEqual(decoded.width, 32)
        XCTAssertEqual(decoded.height, 24)
        let maxError = zip(decoded.pixels, smooth.pixels).map { abs(Int($0) - Int($1)) }.max()!
        XCTAssertLessThan(maxError, 12)
        // Named .png but holding JPEG bytes: read by content.
        try FileManager.default.copyItem(atPath: path("s.jpg"), toPath: path("really-jpeg.png"))
        XCTAssertEqual(try ImageFile.readRGB(path("really-jpeg.png")), decoded)

        let bytes = try Data(contentsOf: URL(fileURLWithPath: path("s.jpg")))
        try bytes.prefix(200).write(to: URL(fileURLWithPath: path("cut.jpg")))
        XCTAssertThrowsError(try JPEG.readRGB(path("cut.jpg"))) { error in
            XCTAssertTrue("\(error)".hasPrefix(path("cut.jpg") + ": cannot decode JPEG"), "\(error)")
        }
    }

    // MARK: Palette, overlays, heat maps

    func testVOCPaletteKnownEntries() {
        // Colours of VOC classes as published with the dataset.
        let voc = Palette.voc
        XCTAssertEqual(voc[0], RGB(0, 0, 0))
        XCTAssertEqual(voc[1], RGB(128, 0, 0))      // aeroplane
        XCTAssertEqual(voc[2], RGB(0, 128, 0))      // bicycle
        XCTAssertEqual(voc[3], RGB(128, 128, 0))    // bird
        XCTAssertEqual(voc[4], RGB(0, 0, 128))      // boat
        XCTAssertEqual(voc[8], RGB(64, 0, 0))       // cat
        XCTAssertEqual(voc[15], RGB(192, 128, 128)) // person
        XCTAssertEqual(voc[20], RGB(0, 64, 128))    // tvmonitor
        XCTAssertEqual(voc[255], .white)
        XCTAssertEqual(Set(voc.colors[0..<255]).count, 255, "labels 0...254 have distinct colours")
    }

    func testOverlayBlendsOnlyLabelledPixels() {
        let image = RGBImage(width: 3, height: 1, pixels: [100, 100, 100, 100, 100, 100, 100, 100, 100])
        let labels = LabelMap(width: 3, height: 1, labels: [0, 1, 255])
        let out = image.overlaid(with: labels, alpha: 0.5)
        XCTAssertEqual(out[0, 0], RGB(100, 100, 100))
        XCTAssertEqual(out[1, 0], RGB(114, 50, 50))   // (100 + 128) / 2, 100 / 2
        XCTAssertEqual(out[2, 0], RGB(178, 178, 178)) // (100 + 255) / 2 rounded
        XCTAssertEqual(image.overlaid(with: labels, alpha: 0.5, includeBackground: true)[0, 0], RGB(50, 50, 50))
        XCTAssertEqual(labels.colorized()[1, 0], RGB(128, 0, 0))
    }

    func testJetEndsAndMiddleAndHeatmapScaling() {
        XCTAssertEqual(ColorMap.jet(0), RGB(0, 0, 128))
        XCTAssertEqual(ColorMap.jet(0.5), RGB(128, 255, 128))
        XCTAssertEqual(ColorMap.jet(1), RGB(128, 0, 0))
        XCTAssertEqual(ColorMap.jet(-3), ColorMap.jet(0))
        XCTAssertEqual(ColorMap.jet(.nan), ColorMap.jet(0))
        let heat = ColorMap.heatmap([2, 4, 6], width: 3, height: 1)
        XCTAssertEqual(heat[0, 0], ColorMap.jet(0))
        XCTAssertEqual(heat[1, 0], ColorMap.jet(0.5))
        XCTAssertEqual(heat[2, 0], ColorMap.jet(1))
        let fixed = ColorMap.heatmap([2, 4, 6], width: 3, height: 1, range: 0...8)
        XCTAssertEqual(fixed[1, 0], ColorMap.jet(0.5))
        XCTAssertEqual(fixed[2, 0], ColorMap.jet(0.75))
    }

    // MARK: Resize

    func testBilinearMatchesPyTorch() {
        for (h, w, oh, ow, input, expected) in ResizeFixture.cases {
            let output = Resize.bilinear(input, width: w, height: h, toWidth: ow, toHeight: oh)
            XCTAssertEqual(output.count, expected.count)
            let worst = zip(output, expected).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-6, "\(h)x\(w) -> \(oh)x\(ow)")
        }
    }

    func testBilinearOfALinearRampByHand() {
        // v = 4x + 8y on 2x2; upsampling x2 samples at clamped source coordinates 0, .25, .75, 1.
        let source: [Float] = [0, 4, 8, 12]
        let out = Resize.bilinear(source, width: 2, height: 2, toWidth: 4, toHeight: 4)
        let s: [Float] = [0, 0.25, 0.75, 1]
        for y in 0..<4 {
            for x in 0..<4 { XCTAssertEqual(out[y * 4 + x], 4 * s[x] + 8 * s[y], accuracy: 1e-6) }
        }
        // Three channels interleaved resize independently.
        let rgb = RGBImage(width: 2, height: 1, pixels: [0, 100, 200, 100, 200, 0])
        let wide = rgb.resizedBilinear(width: 4, height: 1)
        XCTAssertEqual(wide.pixels, [0, 100, 200, 25, 125, 150, 75, 175, 50, 100, 200, 0])
    }

    func testNearestKeepsLabelsCentred() {
        let labels = LabelMap(width: 4, height: 1, labels: [1, 2, 3, 4])
        XCTAssertEqual(labels.resizedNearest(width: 2, height: 1).labels, [2, 4])
        XCTAssertEqual(labels.resizedNearest(width: 8, height: 2).labels, [1, 1, 2, 2, 3, 3, 4, 4, 1, 1, 2, 2, 3, 3, 4, 4])
        let image = RGBImage(width: 2, height: 1, pixels: [1, 2, 3, 4, 5, 6])
        // 2 -> 3: output centres 0.5, 1.5, 2.5 map to source 0.33, 1.0, 1.67 -> pixels 0, 1, 1.
        XCTAssertEqual(image.resizedNearest(width: 3, height: 1).pixels, [1, 2, 3, 4, 5, 6, 4, 5, 6])
    }

    // MARK: Tiling

    func testGridPlacesImagesInCellsWithGaps() {
        let red = RGBImage(width: 2, height: 2, fill: RGB(255, 0, 0))
        let green = RGBImage(width: 3, height: 1, fill: RGB(0, 255, 0))
        let blue = RGBImage(width: 1, height: 3, fill: RGB(0, 0, 255))
        let sheet = RGBImage.grid([red, green, blue], columns: 2, gap: 1, background: .black)
        // Column widths 2 and 3, row heights 2 and 3, one-pixel gaps.
        XCTAssertEqual(sheet.width, 6)
        XCTAssertEqual(sheet.height, 6)
        XCTAssertEqual(sheet[1, 1], RGB(255, 0, 0))
        XCTAssertEqual(sheet[2, 0], .black)
        XCTAssertEqual(sheet[3, 0], RGB(0, 255, 0))
        XCTAssertEqual(sheet[5, 0], RGB(0, 255, 0))
        XCTAssertEqual(sheet[3, 1], .black)
        XCTAssertEqual(sheet[0, 3], RGB(0, 0, 255))
        XCTAssertEqual(sheet[0, 5], RGB(0, 0, 255))
        XCTAssertEqual(sheet[1, 3], .black)
        let row = RGBImage.hstack([red, green], gap: 2)
        XCTAssertEqual([row.width, row.height], [7, 2])
        let column = RGBImage.vstack([red, green], gap: 2, background: .white)
        XCTAssertEqual([column.width, column.height], [3, 5])
        XCTAssertEqual(column[2, 0], .white)
        XCTAssertEqual(RGBImage.grid([red], columns: 1, gap: 3, margin: true).width, 8)
    }
}
