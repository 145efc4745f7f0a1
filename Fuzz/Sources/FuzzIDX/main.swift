import FuzzSupport
import Datasets

// IDX files, plain or gzip-compressed (zlib reads either through the same call), and the object
// source that pairs an image file with a label file (here the same file twice).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let path = FuzzInput.file(start, count, suffix: ".idx.gz")
    do { _ = try IDXArray.read(path) } catch { FuzzInput.expect(error, names: path, "IDXArray.read") }
    do {
        _ = try ObjectSource.load(images: path, labels: path, classNames: ["a", "b", "c"])
    } catch {
        FuzzInput.expect(error, names: path, "ObjectSource.load")
    }
    return 0
}

FuzzDriver.run(fuzzTest)
