import CHDF5
import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// HDF5's registered filter id for zstd (the id hdf5plugin and h5dump's plugin use).
public let zstdFilterID: H5Z_filter_t = 32015

private let zstdFilterName: StaticString = "zstd"

private let reverseFlag: UInt32 = 0x0100  // H5Z_FLAG_REVERSE

/// One chunk is one zstd frame with its content size, the format other readers expect.
/// HDF5 owns `buf` and frees it with free(), so replacements are malloc'ed.
private let zstdFilterCallback: H5Z_func_t = { flags, cdCount, cdValues, byteCount, bufferSize, buffer in
    guard let buffer, let bufferSize, let input = buffer.pointee else { return 0 }
    if flags & reverseFlag != 0 {
        let size = ZSTD_getFrameContentSize(input, byteCount)
        if size == wsss_ZSTD_CONTENTSIZE_UNKNOWN() || size == wsss_ZSTD_CONTENTSIZE_ERROR() { return 0 }
        // A corrupt frame header can claim any size; HDF5 chunks hold at most 4 GiB.
        if size > UInt64(min(HDF5Limits.maxReadBytes, Int(UInt32.max))) { return 0 }
        guard let output = malloc(max(Int(size), 1)) else { return 0 }
        let written = ZSTD_decompress(output, Int(size), input, byteCount)
        if ZSTD_isError(written) != 0 || written != Int(size) { free(output); return 0 }
        free(input)
        buffer.pointee = output
        bufferSize.pointee = Int(size)
        return written
    } else {
        // cd_values[0] is the level as unsigned; negative levels arrive cast to uint32.
        let level = cdCount > 0 && cdValues != nil ? Int32(bitPattern: cdValues![0]) : 3
        let bound = ZSTD_compressBound(byteCount)
        guard let output = malloc(bound) else { return 0 }
        let written = ZSTD_compress(output, bound, input, byteCount, level)
        if ZSTD_isError(written) != 0 { free(output); return 0 }
        free(input)
        buffer.pointee = output
        bufferSize.pointee = bound
        return written
    }
}

/// Registers the zstd filter and silences HDF5's own error printing once per process;
/// every store entry point calls this first. Errors are reported through `StoreError` instead.
let hdf5Ready: Bool = {
    // No HDF5 exit handler. When closing a file fails (a full disk: HDF5 cannot write what it
    // still caches), HDF5 1.10 frees the file but keeps its id, and its exit handler closes that id
    // again: a use after free, a segfault after the error was reported. Every file written here is
    // closed explicitly (`ArtifactWriter.commit`) or is a temporary that is deleted, and a file
    // opened for reading has nothing to flush, so there is nothing for the handler to do.
    // (Must come before the library initialises; it only sets a flag.)
    H5dont_atexit()
    H5open()
    wsss_H5_silence_errors()
    var filterClass = H5Z_class2_t(
        version: 1,  // H5Z_CLASS_T_VERS
        id: zstdFilterID,
        encoder_present: 1,
        decoder_present: 1,
        // HDF5 keeps this pointer for the life of the process: a string in the binary, not a
        // heap copy (which LeakSanitizer reports as leaked once the class struct goes away).
        name: UnsafeRawPointer(zstdFilterName.utf8Start).assumingMemoryBound(to: CChar.self),
        can_apply: nil,
        set_local: nil,
        filter: zstdFilterCallback
    )
    return H5Zregister(&filterClass) >= 0
}()
