/// Plain value types for pictures that every stage passes around: row-major, 8 bits per sample.

/// An 8-bit RGB image, row-major HWC: pixel (x, y) starts at `(y * width + x) * 3`.
public struct RGBImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3,
                     "RGB image \(width)x\(height) needs \(width * height * 3) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// An image filled with one colour.
    public init(width: Int, height: Int, fill: RGB = RGB(0, 0, 0)) {
        self.width = width
        self.height = height
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        if fill != RGB(0, 0, 0) {
            pixels.withUnsafeMutableBufferPointer { p in
                for i in 0..<(width * height) {
                    p[3 * i] = fill.r; p[3 * i + 1] = fill.g; p[3 * i + 2] = fill.b
                }
            }
        }
        self.pixels = pixels
    }

    public subscript(x: Int, y: Int) -> RGB {
        get {
            let i = (y * width + x) * 3
            return RGB(pixels[i], pixels[i + 1], pixels[i + 2])
        }
        set {
            let i = (y * width + x) * 3
            pixels[i] = newValue.r; pixels[i + 1] = newValue.g; pixels[i + 2] = newValue.b
        }
    }

    /// Luma (ITU-R BT.601 weights, rounded), one byte per pixel.
    public func luminance() -> [UInt8] {
        let n = width * height
        return [UInt8](unsafeUninitializedCapacity: n) { out, count in
            pixels.withUnsafeBufferPointer { p in
                for i in 0..<n {
                    let y = 299 * Int(p[3 * i]) + 587 * Int(p[3 * i + 1]) + 114 * Int(p[3 * i + 2])
                    out[i] = UInt8((y + 500) / 1000)
                }
            }
            count = n
        }
    }
}

/// An 8-bit single-channel image.
public struct GrayImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height,
                     "grey image \(width)x\(height) needs \(width * height) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// A per-pixel class map: 0 = background, 1...C = classes, 255 = ignore (not scored).
public struct LabelMap: Equatable, Sendable {
    public static let ignore: UInt8 = 255

    public var width: Int
    public var height: Int
    public var labels: [UInt8]

    public init(width: Int, height: Int, labels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && labels.count == width * height,
                     "label map \(width)x\(height) needs \(width * height) bytes, got \(labels.count)")
        self.width = width
        self.height = height
        self.labels = labels
    }

    public init(width: Int, height: Int, fill: UInt8 = 0) {
        self.init(width: width, height: height, labels: [UInt8](repeating: fill, count: width * height))
    }

    public subscript(x: Int, y: Int) -> UInt8 {
        get { labels[y * width + x] }
        set { labels[y * width + x] = newValue }
    }

    /// Pixel count per label value (256 bins).
    public func histogram() -> [Int] {
        var counts = [Int](repeating: 0, count: 256)
        labels.withUnsafeBufferPointer { p in
            for value in p { counts[Int(value)] += 1 }
        }
        return counts
    }
}

/// One 8-bit RGB colour.
public struct RGB: Equatable, Hashable, Sendable {
    public var r: UInt8
    public var g: UInt8
    public var b: UInt8
    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) {
        self.r = r
        self.g = g
        self.b = b
    }

    public static let white = RGB(255, 255, 255)
    public static let black = RGB(0, 0, 0)
}

/// Image I/O failures name the file and the problem.
public struct ImageError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String

    public init(path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }

    public var description: String { "\(path): \(problem)" }
}

/// How large an image the readers decode. A corrupt or hostile header can declare up to
/// 1,000,000 x 1,000,000 pixels (libpng's limit; libjpeg allows 65,500 x 65,500), and
/// allocating for that would end the process instead of reporting the file; anything above the
/// limit is refused with a message naming the file. The default, 2^28 pixels (16,384 x 16,384),
/// is far beyond any image this project reads; the fuzz targets lower it to keep each run small.
public enum ImageLimits {
    nonisolated(unsafe) public static var maxPixels = 1 << 28

    static func check(width: Int, height: Int, path: String) throws {
        guard width.multipliedReportingOverflow(by: height).partialValue <= maxPixels, width <= maxPixels, height <= maxPixels else {
            throw ImageError(path: path, "image of \(width) x \(height) pixels is larger than the reader's limit of \(maxPixels) pixels")
        }
    }
}
