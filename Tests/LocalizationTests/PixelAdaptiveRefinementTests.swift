import ArtifactStore
import Imaging
import Foundation
import XCTest
@testable import Localization

final class PixelAdaptiveRefinementTests: XCTestCase {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/par.h5").path

    /// Matches PyTorch (Tests/Fixtures/par_reference.py via make_par_fixtures.py) on two image shapes,
    /// including dilations larger than the image, where replicate padding dominates.
    func testMatchesPyTorchReference() throws {
        let root = try HDF5File.open(Self.fixture).root
        for name in ["small", "wide"] {
            let group = try root.group(name)
            let image = try group.read("image", as: Float.self)
            var maps = try group.read("maps", as: Float.self)
            let expectedAffinity = try group.read("affinity", as: Float.self).values
            let expected = try group.read("refined", as: Float.self).values
            let (h, w) = (image.shape[0], image.shape[1])
            let par = PixelAdaptiveRefinement()
            let affinity = image.values.withUnsafeBufferPointer { par.affinity(image: $0.baseAddress!, height: h, width: w) }
            XCTAssertLessThan(maxRelativeError(affinity, expectedAffinity), 1e-4, name)
            par.refine(maps: &maps.values, count: maps.shape[0], height: h, width: w, affinity: affinity)
            XCTAssertLessThan(maxRelativeError(maps.values, expected), 1e-4, name)
        }
    }

    /// A map that is constant stays constant: every pixel's weights sum to 1 + w2.
    func testWeightsSumToOnePlusPositionWeight() {
        let (h, w) = (9, 11)
        let image = (0..<h * w * 3).map { Float(($0 * 37) % 251) }
        let par = PixelAdaptiveRefinement()
        let affinity = image.withUnsafeBufferPointer { par.affinity(image: $0.baseAddress!, height: h, width: w) }
        for p in 0..<h * w {
            let total = (0..<48).reduce(Float(0)) { $0 + affinity[$1 * h * w + p] }
            XCTAssertEqual(total, 1 + par.w2, accuracy: 1e-5)
        }
    }

    /// Scores spread along a uniform region and stop at a strong colour edge.
    func testPropagatesWithinRegionsNotAcrossEdges() {
        let (h, w) = (16, 16)
        var image = [Float](repeating: 20, count: h * w * 3)
        for y in 0..<h { for x in 8..<w { for c in 0..<3 { image[(y * w + x) * 3 + c] = 230 } } }
        // Class map: a single confident seed column inside the left half.
        var maps = [Float](repeating: 0, count: h * w)
        for y in 0..<h { maps[y * w + 2] = 1 }
        let par = PixelAdaptiveRefinement()
        let affinity = image.withUnsafeBufferPointer { par.affinity(image: $0.baseAddress!, height: h, width: w) }
        par.refine(maps: &maps, count: 1, height: h, width: w, affinity: affinity)
        let left = (0..<h).map { maps[$0 * w + 6] }.reduce(0, +) / Float(h)
        let right = (0..<h).map { maps[$0 * w + 9] }.reduce(0, +) / Float(h)
        XCTAssertGreaterThan(left, 20 * right, "left \(left) right \(right)")
    }
}

func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "\(a.count) vs \(b.count)")
    let scale = max(b.map { abs($0) }.max() ?? 1, 1e-12)
    return zip(a, b).map { abs($0 - $1) }.max()! / scale
}

final class ConfidentLabelsTests: XCTestCase {
    /// Same labels as the PyTorch version of refine_cams_with_bkg_v2 (Tests/Fixtures/make_par_fixtures.py).
    func testMatchesPyTorchReference() throws {
        let group = try HDF5File.open(PixelAdaptiveRefinementTests.fixture).root.group("confident_labels")
        let image = try group.read("image", as: UInt8.self)
        let maps = try group.read("maps", as: Float.self)
        let classes = try group.read("classes", as: Int32.self).values.map { Int($0) }
        let expected = try group.read("labels", as: UInt8.self).values
        var labeller = ConfidentLabels()
        labeller.highBackground = Float(try group.doubleAttribute("high_background"))
        labeller.lowBackground = Float(try group.doubleAttribute("low_background"))
        let labels = labeller.labels(image: RGBImage(width: image.shape[1], height: image.shape[0], pixels: image.values),
                                     maps: ClassMaps(classes: classes, height: maps.shape[1], width: maps.shape[2], values: maps.values))
        XCTAssertEqual(Set(expected), [0, 2, 5, 7, 255], "fixture should exercise every outcome")
        XCTAssertEqual(labels, expected)
    }
}
