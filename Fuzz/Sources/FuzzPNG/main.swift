import FuzzSupport
import Imaging

// The PNG reader's three entry points (and ImageFile, which sniffs the signature) on one file.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    ImageLimits.maxPixels = 1 << 22  // 4 Mpixel: a larger declared size is refused, not decoded
    let path = FuzzInput.file(start, count, suffix: ".png")
    do { _ = try PNG.readRGB(path) } catch { FuzzInput.expect(error, names: path, "PNG.readRGB") }
    do { _ = try PNG.readGray(path) } catch { FuzzInput.expect(error, names: path, "PNG.readGray") }
    do { _ = try PNG.readLabels(path) } catch { FuzzInput.expect(error, names: path, "PNG.readLabels") }
    do { _ = try ImageFile.readRGB(path) } catch { FuzzInput.expect(error, names: path, "ImageFile.readRGB") }
    return 0
}

FuzzDriver.run(fuzzTest)
