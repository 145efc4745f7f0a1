import ArtifactStore
import Foundation

/// IDX files (the MNIST family's format), optionally gzip-compressed: a 4-byte magic number
/// (0, 0, element type, rank), `rank` big-endian UInt32 dimensions, then the row-major elements.
/// Only unsigned bytes (type 0x08) are accepted: that is what image and label files hold.
public struct IDXArray: Equatable, Sendable {
    public let shape: [Int]
    public let values: [UInt8]

    public static func read(_ path: String) throws -> IDXArray {
        let bytes = try Gzip.readAll(path)
        guard bytes.count >= 4 else { throw StoreError(path: path, "too short for an IDX header (\(bytes.count) bytes)") }
        guard bytes[0] == 0, bytes[1] == 0 else {
            let magic = bytes.prefix(4).map { String(format: "%02x", $0) }.joined()
            throw StoreError(path: path, "bad IDX magic number 0x\(magic) (expected 0x000008NN)")
        }
        guard bytes[2] == 0x08 else {
            throw StoreError(path: path, "IDX element type 0x\(String(format: "%02x", bytes[2])) is not unsigned bytes (0x08)")
        }
        let rank = Int(bytes[3])
        guard rank >= 1 else { throw StoreError(path: path, "IDX file declares rank 0") }
        let headerSize = 4 + 4 * rank
        guard bytes.count >= headerSize else {
            throw StoreError(path: path, "truncated IDX header (\(bytes.count) bytes, rank \(rank) needs \(headerSize))")
        }
        let shape = (0..<rank).map { axis -> Int in
            let at = 4 + 4 * axis
            return Int(bytes[at]) << 24 | Int(bytes[at + 1]) << 16 | Int(bytes[at + 2]) << 8 | Int(bytes[at + 3])
        }
        let actual = bytes.count - headerSize
        // A corrupt header can declare dimensions whose product overflows: such a file is truncated.
        let (expected, overflow) = shape.contains(0) ? (0, false) : shape.reduce((1, false)) { product, dim in
            let next = product.0.multipliedReportingOverflow(by: dim)
            return (next.partialValue, product.1 || next.overflow)
        }
        if overflow || actual < expected {
            let needs = overflow ? "more than \(Int.max)" : "\(expected)"
            throw StoreError(path: path, "truncated IDX data: shape \(shape) needs \(needs) bytes, file has \(actual)")
        }
        if actual > expected {
            throw StoreError(path: path, "IDX data has \(actual - expected) bytes beyond shape \(shape)")
        }
        return IDXArray(shape: shape, values: Array(bytes[headerSize...]))
    }

    /// Encodes an array as IDX bytes (for tests and for exporting object sets).
    public static func encode(shape: [Int], values: [UInt8]) -> [UInt8] {
        precondition(shape.reduce(1, *) == values.count, "IDX shape \(shape) does not match \(values.count) values")
        var bytes: [UInt8] = [0, 0, 0x08, UInt8(shape.count)]
        for dim in shape { bytes += [UInt8(dim >> 24 & 0xFF), UInt8(dim >> 16 & 0xFF), UInt8(dim >> 8 & 0xFF), UInt8(dim & 0xFF)] }
        return bytes + values
    }

    /// Writes gzip-compressed IDX.
    public static func write(shape: [Int], values: [UInt8], to path: String) throws {
        try Gzip.write(encode(shape: shape, values: values), to: path)
    }
}

/// A labelled set of small grey object images (Fashion-MNIST, MNIST, or any IDX pair): the
/// objects scenes are composed from. Objects' exact masks are their pixels > 0.
public struct ObjectSource: Sendable {
    /// Where the images came from (for provenance and error messages).
    public let imagesPath: String
    public let labelsPath: String
    public let classNames: [String]
    public let rows: Int
    public let cols: Int
    /// `count * rows * cols` bytes.
    public let pixels: [UInt8]
    /// 0-based class of each object.
    public let labels: [UInt8]
    /// Object indices of each class.
    public let indicesByClass: [[Int]]

    public var count: Int { labels.count }

    public static let fashionMNISTClassNames = [
        "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
    ]
    public static let defaultFashionMNISTDirectory = "/usr/share/datasets/fashion-mnist"

    /// Fashion-MNIST's `train` (60,000) or `t10k` (10,000) objects.
    public static func fashionMNIST(directory: String = defaultFashionMNISTDirectory, part: String) throws -> ObjectSource {
        let folder = URL(fileURLWithPath: directory)
        return try load(
            images: folder.appendingPathComponent("\(part)-images-idx3-ubyte.gz").path,
            labels: folder.appendingPathComponent("\(part)-labels-idx1-ubyte.gz").path,
            classNames: fashionMNISTClassNames)
    }

    /// Any IDX image file (N x rows x cols) with its label file (N values below `classNames.count`).
    public static func load(images imagesPath: String, labels labelsPath: String, classNames: [String]) throws -> ObjectSource {
        let images = try IDXArray.read(imagesPath)
        guard images.shape.count == 3, images.shape[1] > 0, images.shape[2] > 0 else {
            throw StoreError(path: imagesPath, "IDX image file must have shape N x rows x cols, found \(images.shape)")
        }
        let labels = try IDXArray.read(labelsPath)
        guard labels.shape.count == 1 else {
            throw StoreError(path: labelsPath, "IDX label file must have shape N, found \(labels.shape)")
        }
        guard labels.shape[0] == images.shape[0] else {
            throw StoreError(path: labelsPath, "has \(labels.shape[0]) labels but \(imagesPath) has \(images.shape[0]) images")
        }
        guard !classNames.isEmpty, classNames.count <= 254 else {
            throw StoreError(path: labelsPath, "need 1...254 class names, got \(classNames.count)")
        }
        var byClass = [[Int]](repeating: [], count: classNames.count)
        try labels.values.withUnsafeBufferPointer { values in
            for index in 0..<values.count {
                let label = Int(values[index])
                guard label < classNames.count else {
                    throw StoreError(path: labelsPath, "label \(label) of item \(index) is not below the \(classNames.count) class names")
                }
                byClass[label].append(index)
            }
        }
        return ObjectSource(
            imagesPath: imagesPath, labelsPath: labelsPath, classNames: classNames,
            rows: images.shape[1], cols: images.shape[2], pixels: images.values, labels: labels.values,
            indicesByClass: byClass)
    }

    /// Class names from a text file, one per line (blank lines skipped).
    public static func readClassNames(_ path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StoreError(path: path, FileManager.default.fileExists(atPath: path) ? "cannot read class-names file" : "no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw StoreError(path: path, "class-names file is not UTF-8 text") }
        let names = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw StoreError(path: path, "class-names file lists no names") }
        var seen = Set<String>()
        for name in names where !seen.insert(name).inserted {
            throw StoreError(path: path, "class name '\(name)' appears twice")
        }
        return names
    }

    /// The grey pixels of one object.
    public func object(_ index: Int) -> ArraySlice<UInt8> {
        pixels[(index * rows * cols)..<((index + 1) * rows * cols)]
    }
}
