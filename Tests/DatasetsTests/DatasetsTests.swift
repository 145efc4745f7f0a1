import Foundation
import Primitives
import TestSupport
import XCTest
@testable import Datasets
import Imaging

final class RandomTests: XCTestCase {
    func testGeneratorsMatchReferenceOutputs() {
        // SplitMix64 from state 0 and xoshiro256** from state {1, 2, 3, 4}, as published with the
        // reference C implementations (and reproduced by e.g. Rust's rand_xoshiro tests).
        var splitmix = SplitMix64(seed: 0)
        XCTAssertEqual([splitmix.next(), splitmix.next(), splitmix.next()],
                       [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var xoshiro = Xoshiro256(state: (1, 2, 3, 4))
        XCTAssertEqual((0..<4).map { _ in xoshiro.next() }, [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240])
    }

    func testBoundedDrawsStayInRangeAndCoverIt() {
        var rng = Xoshiro256(seed: 42)
        var seen = [Int](repeating: 0, count: 7)
        for _ in 0..<7000 {
            let value = rng.int(in: 3...9)
            XCTAssertTrue((3...9).contains(value))
            seen[value - 3] += 1
        }
        // Each of 7 values expected 1000 times; 5 sigma is about 150.
        XCTAssertTrue(seen.allSatisfy { abs($0 - 1000) < 150 }, "\(seen)")
        for _ in 0..<1000 {
            let u = rng.uniformFloat()
            XCTAssertTrue(u >= 0 && u < 1)
        }
    }
}

final class MetricsTests: XCTestCase {
    func testConfusionMatrixHandExample() {
        // Pixel 6 is ignored (truth 255); pixel 7 has an invalid prediction (255) for truth 1.
        let truth: [UInt8] = [0, 0, 1, 1, 2, 2, 255, 1]
        let prediction: [UInt8] = [0, 1, 1, 1, 2, 0, 2, 255]
        var matrix = ConfusionMatrix(classCount: 3)
        matrix.add(prediction: LabelMap(width: 8, height: 1, labels: prediction), truth: LabelMap(width: 8, height: 1, labels: truth))
        XCTAssertEqual(matrix.counts, [1, 1, 0,
                                       0, 2, 0,
                                       1, 0, 1])
        XCTAssertEqual(matrix.invalidPredictions, [0, 1, 0])
        // IoU 0: TP 1, FN 1 (0->1), FP 1 (2->0) = 1/3. IoU 1: TP 2, FN 1 (invalid), FP 1 = 2/4.
        // IoU 2: TP 1, FN 1, FP 0 = 1/2.
        let iou = matrix.iou
        XCTAssertEqual(iou[0], 1.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(iou[1], 0.5, accuracy: 1e-12)
        XCTAssertEqual(iou[2], 0.5, accuracy: 1e-12)
        XCTAssertEqual(matrix.meanIoU, 4.0 / 9, accuracy: 1e-12)
        XCTAssertEqual(matrix.total, 7)
        XCTAssertEqual(matrix.pixelAccuracy, 4.0 / 7, accuracy: 1e-12)

        // A class absent from truth and prediction is NaN and left out of the mean.
        var wider = ConfusionMatrix(classCount: 4)
        wider.add(prediction: LabelMap(width: 8, height: 1, labels: prediction), truth: LabelMap(width: 8, height: 1, labels: truth))
        XCTAssertTrue(wider.iou[3].isNaN)
        XCTAssertEqual(wider.meanIoU, 4.0 / 9, accuracy: 1e-12)
        // Merging doubles the counts and keeps the ratios.
        var twice = matrix
        twice.merge(matrix)
        XCTAssertEqual(twice.total, 14)
        XCTAssertEqual(twice.meanIoU, matrix.meanIoU, accuracy: 1e-12)
        XCTAssertTrue(ConfusionMatrix(classCount: 2).meanIoU.isNaN)

        // Foreground (classes 1, 2) vs background: TP 3 (1->1 twice, 2->2), FP 1 (0->1),
        // FN 2 (2->0, and the invalid prediction of a class-1 pixel) = 3/6.
        XCTAssertEqual(matrix.foregroundIoU, 0.5, accuracy: 1e-12)
        XCTAssertEqual(matrix.foregroundClassAccuracy, 1.0, accuracy: 1e-12)
        XCTAssertEqual(matrix.rowNormalized[1], [0, 2.0 / 3, 0])  // the invalid prediction counts in the row total
        XCTAssertEqual(matrix.rowNormalized[2], [0.5, 0, 0.5])
        XCTAssertTrue(wider.rowNormalized[3].allSatisfy(\.isNaN))
        XCTAssertTrue(ConfusionMatrix(classCount: 3).foregroundIoU.isNaN)
        // Of the 5 true foreground pixels (the invalid prediction included) one is called
        // background (2 -> 0); of the 2 background pixels one is called an object (0 -> 1).
        XCTAssertEqual(matrix.total(foreground: true), 5)
        XCTAssertEqual(matrix.total(foreground: false), 2)
        XCTAssertEqual(matrix.predictedBackground(foreground: true), 1)
        XCTAssertEqual(matrix.predictedBackground(foreground: false), 1)
        XCTAssertEqual(matrix.foregroundAsBackground, 0.2, accuracy: 1e-12)
        XCTAssertEqual(matrix.backgroundAsForeground, 0.5, accuracy: 1e-12)
        XCTAssertTrue(ConfusionMatrix(classCount: 3).foregroundAsBackground.isNaN)
        XCTAssertTrue(ConfusionMatrix(classCount: 3).backgroundAsForeground.isNaN)
    }

    /// Objects found in the right place but given each other's class: perfect foreground IoU,
    /// no class right, so localisation can be told from confusion.
    func testForegroundIoUSeparatesLocalisationFromClassConfusion() {
        let truth: [UInt8] = [0, 0, 1, 1, 2, 2]
        let swapped: [UInt8] = [0, 0, 2, 2, 1, 1]
        var matrix = ConfusionMatrix(classCount: 3)
        matrix.add(prediction: LabelMap(width: 6, height: 1, labels: swapped), truth: LabelMap(width: 6, height: 1, labels: truth))
        XCTAssertEqual(matrix.foregroundIoU, 1.0)
        XCTAssertEqual(matrix.foregroundClassAccuracy, 0.0)
        XCTAssertEqual(matrix.iou[1], 0.0)
        let shifted: [UInt8] = [1, 0, 0, 1, 2, 0]
        var missed = ConfusionMatrix(classCount: 3)
        missed.add(prediction: LabelMap(width: 6, height: 1, labels: shifted), truth: LabelMap(width: 6, height: 1, labels: truth))
        // TP 2 (pixels 3, 4), FP 1 (pixel 0), FN 2 (pixels 2, 5).
        XCTAssertEqual(missed.foregroundIoU, 0.4, accuracy: 1e-12)
        XCTAssertEqual(missed.foregroundClassAccuracy, 1.0)
    }

    func testOtsuSplitsABimodalImageAndLabelsTheMinoritySide() {
        var histogram = [Int](repeating: 0, count: 256)
        histogram[50] = 100
        histogram[200] = 100
        let t = OtsuBaseline.threshold(histogram: histogram)
        XCTAssertTrue(t >= 50 && t < 200, "\(t)")

        // 30 bright pixels on 70 dark ones: the bright ones are foreground, labelled with the
        // labelled class that has most mask pixels (class 2, 40 pixels, over class 1, 10 pixels).
        var image = RGBImage(width: 10, height: 10, fill: RGB(40, 40, 40))
        for i in 0..<30 { image[i % 10, i / 10] = RGB(220, 220, 220) }
        var mask = LabelMap(width: 10, height: 10)
        for i in 0..<40 { mask.labels[i] = 2 }
        for i in 40..<50 { mask.labels[i] = 1 }
        let prediction = OtsuBaseline.predict(image: image, mask: mask, labels: [1, 1, 0])
        XCTAssertEqual(prediction.labels, [UInt8](repeating: 2, count: 30) + [UInt8](repeating: 0, count: 70))
        // Dark objects on a bright background are found too.
        var inverted = RGBImage(width: 10, height: 10, fill: RGB(220, 220, 220))
        for i in 0..<30 { inverted[i % 10, i / 10] = RGB(40, 40, 40) }
        XCTAssertEqual(OtsuBaseline.predict(image: inverted, mask: mask, labels: [1, 1, 0]).labels, prediction.labels)
        // No labelled class: everything background.
        XCTAssertEqual(OtsuBaseline.predict(image: image, mask: mask, labels: [0, 0, 0]).labels, [UInt8](repeating: 0, count: 100))
    }
}

final class IDXTests: TemporaryFolderTestCase {
    func testRoundTripGzipAndPlain() throws {
        let values = (0..<(5 * 3 * 4)).map { UInt8($0 * 3 % 256) }
        try IDXArray.write(shape: [5, 3, 4], values: values, to: path("a.gz"))
        XCTAssertEqual(try IDXArray.read(path("a.gz")), IDXArray(shape: [5, 3, 4], values: values))
        // An unpacked IDX file reads the same.
        try Data(IDXArray.encode(shape: [5, 3, 4], values: values)).write(to: folder.appendingPathComponent("a.idx"))
        XCTAssertEqual(try IDXArray.read(path("a.idx")), IDXArray(shape: [5, 3, 4], values: values))
        // Header layout: magic 0x00000803 then big-endian dims.
        XCTAssertEqual(Array(IDXArray.encode(shape: [258, 1, 2], values: [UInt8](repeating: 0, count: 516)).prefix(8)),
                       [0, 0, 8, 3, 0, 0, 1, 2])
    }

    func testErrorsNameTheFileAndTheProblem() throws {
        func expectError(_ name: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try IDXArray.read(path(name)), file: file, line: line) { error in
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix(path(name) + ":") && text.contains(fragment), text, file: file, line: line)
            }
        }
        try Gzip.write([0x12, 0x34, 0x08, 0x01, 0, 0, 0, 1, 7], to: path("magic.gz"))
        expectError("magic.gz", "bad IDX magic number 0x12340801")
        try Gzip.write([0, 0, 0x0D, 0x01, 0, 0, 0, 1, 1, 2, 3, 4], to: path("float.gz"))
        expectError("float.gz", "element type 0x0d")
        try Gzip.write(IDXArray.encode(shape: [10], values: [UInt8](repeating: 1, count: 10)).dropLast(3).map { $0 }, to: path("short.gz"))
        expectError("short.gz", "truncated IDX data: shape [10] needs 10 bytes, file has 7")
        try Gzip.write(IDXArray.encode(shape: [2], values: [1, 2]) + [9], to: path("long.gz"))
        expectError("long.gz", "1 bytes beyond shape [2]")
        try Gzip.write([0, 0, 8, 3, 0, 0], to: path("header.gz"))
        expectError("header.gz", "truncated IDX header")
        expectError("missing.gz", "no such file")

        // A gzip stream cut short is reported as such, not read as a short array.
        let big = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        try IDXArray.write(shape: [50_000], values: big, to: path("whole.gz"))
        let bytes = try Data(contentsOf: folder.appendingPathComponent("whole.gz"))
        try bytes.prefix(bytes.count * 2 / 3).write(to: folder.appendingPathComponent("cut.gz"))
        expectError("cut.gz", "gzip")
    }

    func testObjectSourceChecksLabelsAgainstImages() throws {
        try IDXArray.write(shape: [3, 2, 2], values: [UInt8](repeating: 5, count: 12), to: path("i.gz"))
        try IDXArray.write(shape: [3], values: [0, 1, 1], to: path("l.gz"))
        let source = try ObjectSource.load(images: path("i.gz"), labels: path("l.gz"), classNames: ["a", "b"])
        XCTAssertEqual(source.count, 3)
        XCTAssertEqual(source.indicesByClass, [[0], [1, 2]])
        XCTAssertThrowsError(try ObjectSource.load(images: path("i.gz"), labels: path("l.gz"), classNames: ["a"])) { error in
            XCTAssertTrue("\(error)".hasPrefix(path("l.gz")) && "\(error)".contains("label 1 of item 1"), "\(error)")
        }
        try IDXArray.write(shape: [4], values: [0, 1, 1, 0], to: path("l4.gz"))
        XCTAssertThrowsError(try ObjectSource.load(images: path("i.gz"), labels: path("l4.gz"), classNames: ["a", "b"])) { error in
            XCTAssertTrue("\(error)".contains("has 4 labels but"), "\(error)")
        }
        XCTAssertThrowsError(try ObjectSource.load(images: path("l.gz"), labels: path("l.gz"), classNames: ["a", "b"])) { error in
            XCTAssertTrue("\(error)".contains("N x rows x cols"), "\(error)")
        }
        try "shirt\n\n  shoe \nbag\n".write(toFile: path("names.txt"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try ObjectSource.readClassNames(path("names.txt")), ["shirt", "shoe", "bag"])
        try "a\nb\na\n".write(toFile: path("dup.txt"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ObjectSource.readClassNames(path("dup.txt")))
    }

    func testRealFashionMNISTTestFile() throws {
        // Fashion-MNIST's test set: 10,000 28x28 images, exactly 1,000 per class; its first image
        // is an ankle boot (class 9). Needs the Debian package dataset-fashion-mnist.
        let source = try ObjectSource.fashionMNIST(part: "t10k")
        XCTAssertEqual(source.count, 10_000)
        XCTAssertEqual([source.rows, source.cols], [28, 28])
        XCTAssertEqual(source.indicesByClass.map(\.count), [Int](repeating: 1000, count: 10))
        XCTAssertEqual(source.labels[0], 9)
        XCTAssertEqual(source.classNames[9], "ankle boot")
        // About half of all pixels are exactly 0 (the objects' exact masks are pixel > 0).
        let zeros = source.pixels.reduce(0) { $0 + ($1 == 0 ? 1 : 0) }
        let fraction = Double(zeros) / Double(source.pixels.count)
        XCTAssertTrue(fraction > 0.4 && fraction < 0.6, "\(fraction)")
    }

    /// Dimensions whose product overflows Int (found reviewing the IDX fuzz target): reported as
    /// truncated data, not an arithmetic trap.
    func testOverflowingDimensionsAreTruncatedData() throws {
        let header: [UInt8] = [0, 0, 8, 4] + [UInt8](repeating: 0xFF, count: 16)
        try Data(header + [1, 2, 3]).write(to: folder.appendingPathComponent("overflow.idx"))
        XCTAssertThrowsError(try IDXArray.read(path("overflow.idx"))) { error in
            XCTAssertTrue("\(error)".hasPrefix(path("overflow.idx") + ": truncated IDX data"), "\(error)")
        }
        // A zero dimension makes the whole array empty, whatever the others say.
        let empty: [UInt8] = [0, 0, 8, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
        try Data(empty).write(to: folder.appendingPathComponent("empty.idx"))
        XCTAssertEqual(try IDXArray.read(path("empty.idx")), IDXArray(shape: [0xFFFF_FFFF, 0], values: []))
    }
}
