import FuzzSupport
import Imaging

// The JPEG reader (libjpeg-turbo through the CJPEG shim's setjmp/longjmp error path).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    ImageLimits.maxPixels = 1 << 22  // 4 Mpixel: a larger declared size is refused, not decoded
    let path = FuzzInput.file(start, count, suffix: ".jpg")
    do { _ = try JPEG.readRGB(path) } catch { FuzzInput.expect(error, names: path, "JPEG.readRGB") }
    return 0
}

FuzzDriver.run(fuzzTest)
