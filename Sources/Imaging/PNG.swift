import CPNG
import Foundation

/// PNG files through libpng's simplified API.
///
/// Reading converts to what the caller asks for: `readRGB` takes grey, RGB, RGBA (composited on
/// black) and palette files; `readLabels` returns a palette file's *indices* (not its colours), a
/// grey file's values, or maps an RGB file's colours back through a palette.
public enum PNG {
    static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    public static func readRGB(_ path: String) throws -> RGBImage {
        let reader = try Reader(path)
        reader.image.pointee.format = wsss_PNG_FORMAT_RGB()
        var pixels = [UInt8](repeating: 0, count: reader.width * reader.height * 3)
        var black = png_color(red: 0, green: 0, blue: 0)
        try reader.finish(into: &pixels, colormap: nil, background: &black)
        return RGBImage(width: reader.width, height: reader.height, pixels: pixels)
    }

    public static func readGray(_ path: String) throws -> GrayImage {
        let reader = try Reader(path)
        reader.image.pointee.format = wsss_PNG_FORMAT_GRAY()
        var pixels = [UInt8](repeating: 0, count: reader.width * reader.height)
        var black = png_color(red: 0, green: 0, blue: 0)
        try reader.finish(into: &pixels, colormap: nil, background: &black)
        return GrayImage(width: reader.width, height: reader.height, pixels: pixels)
    }

    /// Reads a label map: palette indices from a palette PNG (VOC's SegmentationClass), values from
    /// an 8-bit grey PNG (SegmentationClassAug style), or RGB colours mapped back through `palette`.
    public static func readLabels(_ path: String, palette: Palette = .voc) throws -> LabelMap {
        let reader = try Reader(path)
        let fileFormat = reader.image.pointee.format
        let (width, height) = (reader.width, reader.height)
        var labels = [UInt8](repeating: 0, count: width * height)
        if fileFormat & wsss_PNG_FORMAT_FLAG_COLORMAP() != 0 {
            // For a palette file libpng copies PLTE entry i to colormap entry i and hands back the
            // file's own indices; asking for an alpha colormap avoids any compositing of tRNS entries.
            reader.image.pointee.format = wsss_PNG_FORMAT_RGBA_COLORMAP()
            var colormap = [UInt8](repeating: 0, count: 256 * 4)
            try colormap.withUnsafeMutableBytes { map in
                try reader.finish(into: &labels, colormap: map.baseAddress, background: nil)
            }
            return LabelMap(width: width, height: height, labels: labels)
        }
        if fileFormat & wsss_PNG_FORMAT_FLAG_LINEAR() != 0 {
            throw ImageError(path: path, "16-bit PNG cannot be read as a label map (expected 8-bit palette or grey)")
        }
        if fileFormat & wsss_PNG_FORMAT_FLAG_ALPHA() != 0 {
            throw ImageError(path: path, "label PNG has an alpha channel (expected 8-bit palette or grey)")
        }
        if fileFormat & wsss_PNG_FORMAT_FLAG_COLOR() == 0 {
            reader.image.pointee.format = wsss_PNG_FORMAT_GRAY()
            try reader.finish(into: &labels, colormap: nil, background: nil)
            return LabelMap(width: width, height: height, labels: labels)
        }
        reader.image.pointee.format = wsss_PNG_FORMAT_RGB()
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        try reader.finish(into: &rgb, colormap: nil, background: nil)
        let lookup = palette.inverse
        for i in 0..<(width * height) {
            let key = Int(rgb[3 * i]) << 16 | Int(rgb[3 * i + 1]) << 8 | Int(rgb[3 * i + 2])
            guard let label = lookup[key] else {
                throw ImageError(path: path,
                    "colour (\(rgb[3 * i]), \(rgb[3 * i + 1]), \(rgb[3 * i + 2])) at pixel (\(i % width), \(i / width)) is not in the label palette")
            }
            labels[i] = label
        }
        return LabelMap(width: width, height: height, labels: labels)
    }

    public static func write(_ image: RGBImage, to path: String) throws {
        try write(path: path, width: image.width, height: image.height, format: wsss_PNG_FORMAT_RGB(), pixels: image.pixels, colormap: nil)
    }

    public static func write(_ image: GrayImage, to path: String) throws {
        try write(path: path, width: image.width, height: image.height, format: wsss_PNG_FORMAT_GRAY(), pixels: image.pixels, colormap: nil)
    }

    /// Writes a label map as an 8-bit palette PNG: the stored indices are the labels, so the file
    /// reads back exactly and viewers show the palette's colours.
    public static func write(_ labels: LabelMap, to path: String, palette: Palette = .voc) throws {
        try write(path: path, width: labels.width, height: labels.height, format: wsss_PNG_FORMAT_RGB_COLORMAP(),
                  pixels: labels.labels, colormap: palette.bytes)
    }

    // MARK: libpng plumbing

    /// One read in progress. libpng keeps the address of the `png_image` it was started with (its
    /// error handler writes there), so the struct lives on the heap, never copied, until freed.
    final class Reader {
        let path: String
        let image: UnsafeMutablePointer<png_image>
        private var open = true

        init(_ path: String) throws {
            self.path = path
            try requireReadableFile(path)
            let head = FileHandle(forReadingAtPath: path).flatMap { handle -> Data? in
                defer { try? handle.close() }
                return try? handle.read(upToCount: 8)
            } ?? Data()
            guard [UInt8](head) == PNG.signature else { throw ImageError(path: path, "not a PNG file") }
            image = .allocate(capacity: 1)
            wsss_png_image_init(image)
            guard png_image_begin_read_from_file(image, path) != 0 else {
                // Every stored property is set, so the throw runs `deinit`: that frees the struct
                // (exactly once); libpng's own state is released here.
                let message = PNG.libpngMessage(image)
                png_image_free(image)
                open = false
                throw ImageError(path: path, "corrupt PNG (\(message))")
            }
            try ImageLimits.check(width: width, height: height, path: path)
        }

        /// The one place the `png_image` struct is released.
        deinit {
            if open { png_image_free(image) }
            image.deallocate()
        }

        var width: Int { Int(image.pointee.width) }
        var height: Int { Int(image.pointee.height) }

        /// Decodes into `buffer` (sized for the format set on `image`) and releases libpng's state.
        func finish(into buffer: inout [UInt8], colormap: UnsafeMutableRawPointer?, background: UnsafePointer<png_color>?) throws {
            precondition(buffer.count == wsss_PNG_IMAGE_SIZE(image), "PNG buffer size mismatch")
            let ok = buffer.withUnsafeMutableBytes { png_image_finish_read(image, background, $0.baseAddress, 0, colormap) }
            open = false  // finish_read frees libpng's state on success and on failure
            guard ok != 0 else { throw ImageError(path: path, "corrupt or truncated PNG (\(PNG.libpngMessage(image)))") }
        }
    }

    /// RGBA writing exists for tests of alpha handling; stages have no use for it.
    static func writeRGBA(width: Int, height: Int, pixels: [UInt8], to path: String) throws {
        try write(path: path, width: width, height: height, format: wsss_PNG_FORMAT_RGBA(), pixels: pixels, colormap: nil)
    }

    static func write(path: String, width: Int, height: Int, format: png_uint_32, pixels: [UInt8], colormap: [UInt8]?) throws {
        // Heap-allocated for the same reason as in `Reader`: libpng holds on to its address.
        let image = UnsafeMutablePointer<png_image>.allocate(capacity: 1)
        defer { image.deallocate() }
        wsss_png_image_init(image)
        image.pointee.width = png_uint_32(width)
        image.pointee.height = png_uint_32(height)
        image.pointee.format = format
        if let colormap { image.pointee.colormap_entries = png_uint_32(colormap.count / 3) }
        let ok = pixels.withUnsafeBytes { data in
            if let colormap {
                return colormap.withUnsafeBytes { png_image_write_to_file(image, path, 0, data.baseAddress, 0, $0.baseAddress) }
            }
            return png_image_write_to_file(image, path, 0, data.baseAddress, 0, nil)
        }
        guard ok != 0 else {
            let message = libpngMessage(image)
            png_image_free(image)
            throw ImageError(path: path, "cannot write PNG (\(message))")
        }
    }

    static func libpngMessage(_ image: UnsafeMutablePointer<png_image>) -> String {
        withUnsafeBytes(of: &image.pointee.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
