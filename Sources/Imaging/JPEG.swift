import CJPEG
import Foundation

/// Baseline and progressive JPEG through libjpeg(-turbo); grey JPEGs decode to RGB.
public enum JPEG {
    public static func readRGB(_ path: String) throws -> RGBImage {
        try requireReadableFile(path)
        var pixels: UnsafeMutablePointer<UInt8>? = nil
        var width: Int32 = 0, height: Int32 = 0
        var message = [CChar](repeating: 0, count: 256)
        guard wsss_jpeg_read_rgb(path, &pixels, &width, &height, ImageLimits.maxPixels, &message, message.count) == 0, let pixels else {
            throw ImageError(path: path, "cannot decode JPEG (\(String(cString: message)))")
        }
        defer { free(pixels) }
        let count = Int(width) * Int(height) * 3
        return RGBImage(width: Int(width), height: Int(height), pixels: Array(UnsafeBufferPointer(start: pixels, count: count)))
    }

    /// Writes a JPEG (quality 1...100). Lossy: for photos and fixtures, never for label maps.
    public static func write(_ image: RGBImage, to path: String, quality: Int = 95) throws {
        var message = [CChar](repeating: 0, count: 256)
        let status = image.pixels.withUnsafeBufferPointer {
            wsss_jpeg_write_rgb(path, $0.baseAddress, Int32(image.width), Int32(image.height),
                                Int32(min(max(quality, 1), 100)), &message, message.count)
        }
        guard status == 0 else { throw ImageError(path: path, "cannot write JPEG (\(String(cString: message)))") }
    }
}

/// Reads an image file by content (PNG or JPEG signature), whatever its extension says.
public enum ImageFile {
    public static func readRGB(_ path: String) throws -> RGBImage {
        try requireReadableFile(path)
        let head = FileHandle(forReadingAtPath: path).flatMap { handle -> Data? in
            defer { try? handle.close() }
            return try? handle.read(upToCount: 8)
        } ?? Data()
        let bytes = [UInt8](head)
        if bytes == PNG.signature { return try PNG.readRGB(path) }
        if bytes.count >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF { return try JPEG.readRGB(path) }
        throw ImageError(path: path, "not a PNG or JPEG file")
    }
}

func requireReadableFile(_ path: String) throws {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw ImageError(path: path, "no such file")
    }
    if isDirectory.boolValue { throw ImageError(path: path, "is a directory, not an image file") }
    guard FileManager.default.isReadableFile(atPath: path) else { throw ImageError(path: path, "cannot open file") }
}
