import CHDF5
import Foundation

/// Compression of a chunked dataset: byte shuffle then zstd, or none.
public enum Compression: Equatable, Sendable {
    case none
    case zstd(level: Int32)

    public static let `default` = Compression.zstd(level: 3)
}

/// How much one read may allocate. A corrupt file can declare a dataset of any size (dimensions
/// are 64-bit); reading one larger than this is refused with a message naming the file instead of
/// ending the process in a failed allocation. The default is the machine's memory; the fuzz
/// targets lower it. The zstd filter refuses to inflate a chunk beyond it too.
public enum HDF5Limits {
    nonisolated(unsafe) public static var maxReadBytes = Int(clamping: ProcessInfo.processInfo.physicalMemory)

    /// The element count of `shape`, checked against the limit (and for overflow).
    static func elementCount(_ shape: [Int], elementSize: Int, file: String, name: String) throws -> Int {
        var count = 1
        for dim in shape {
            let (next, overflow) = count.multipliedReportingOverflow(by: dim)
            guard dim >= 0, !overflow else { count = .max; break }
            count = next
        }
        guard count <= maxReadBytes / max(elementSize, 1) else {
            throw StoreError(path: file, "dataset '\(name)' of shape \(shape) is larger than this reader's limit of \(maxReadBytes) bytes (corrupt file?)")
        }
        return count
    }
}

/// An open HDF5 file. Closing happens when the last reference goes away or on `close()`.
public final class HDF5File {
    /// The file as messages name it.
    public let path: String
    fileprivate(set) var id: hid_t
    /// Where the file is on disk (`path` may name its destination instead).
    private let location: String
    /// Whether closing writes the seal (`Seal`): files this process created or changed.
    private var sealsOnClose: Bool

    private init(path: String, location: String, id: hid_t, sealsOnClose: Bool) {
        self.path = path
        self.location = location
        self.id = id
        self.sealsOnClose = sealsOnClose
    }

    /// Creates (truncating) a file. Messages name it as `displayAs` (default: as given): an
    /// artifact being written lives under a temporary name, but errors name its destination.
    public static func create(_ path: String, displayAs: String? = nil) throws -> HDF5File {
        precondition(hdf5Ready)
        let access = strongCloseAccess()
        defer { H5Pclose(access) }
        // The root group, like every object made here, carries no modification time (see
        // `objectDefaults`): the same content written twice gives the same bytes.
        let creation = compactLinks(objectDefaults(H5Pcreate(wsss_H5P_FILE_CREATE())))
        defer { H5Pclose(creation) }
        // Room for the seal, and the file format of HDF5 1.8 on: its superblock, object headers
        // and heaps carry checksums, so HDF5 itself also notices damaged metadata.
        H5Pset_userblock(creation, hsize_t(Seal.blockSize))
        H5Pset_libver_bounds(access, H5F_LIBVER_V18, H5F_LIBVER_V110)
        let id = H5Fcreate(path, wsss_H5F_ACC_TRUNC(), creation, access)
        guard id >= 0 else { throw StoreError.hdf5(path: displayAs ?? path, "cannot create HDF5 file (check the folder exists and is writable)") }
        return HDF5File(path: displayAs ?? path, location: path, id: id, sealsOnClose: true)
    }

    /// Opens an existing file, telling a missing file, a file that is not HDF5, and a damaged one apart.
    public static func open(_ path: String, writable: Bool = false) throws -> HDF5File {
        precondition(hdf5Ready)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw StoreError(path: path, "no such file")
        }
        if isDirectory.boolValue { throw StoreError(path: path, "is a directory, not an HDF5 file") }
        // Before libhdf5 reads anything: a damaged sealed file is refused here.
        let sealed = try Seal.verify(path)
        let signature = H5Fis_hdf5(path)
        if signature == 0 { throw StoreError(path: path, "not an HDF5 file") }
        let access = strongCloseAccess()
        defer { H5Pclose(access) }
        let id = H5Fopen(path, writable ? wsss_H5F_ACC_RDWR() : wsss_H5F_ACC_RDONLY(), access)
        guard signature > 0, id >= 0 else {
            throw StoreError(path: path, "HDF5 file is truncated or corrupt and cannot be opened")
        }
        return HDF5File(path: path, location: path, id: id, sealsOnClose: writable && sealed)
    }

    /// Closing the file closes every group and dataset still open in it, so `close()` really
    /// releases the file (and its lock) even while group objects are still referenced.
    private static func strongCloseAccess() -> hid_t {
        let access = H5Pcreate(wsss_H5P_FILE_ACCESS())
        H5Pset_fclose_degree(access, H5F_CLOSE_STRONG)
        return access
    }

    public var root: HDF5Group {
        get throws { try HDF5Group(file: self, path: "/") }
    }

    public func flush() throws {
        guard H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0 else { throw StoreError.hdf5(path: path, "cannot flush file") }
    }

    /// Closes the file (sealing it when it was written here; a failure to do so is not reported:
    /// use `closeChecked()` where it matters).
    public func close() {
        try? closeChecked()
    }

    /// Closes the file without sealing it: it is about to be deleted.
    public func discard() {
        sealsOnClose = false
        close()
    }

    /// Closes the file and says when that failed: closing writes what HDF5 still caches, so a
    /// full disk can show up here first, and then seals it. The id is given up either way.
    public func closeChecked() throws {
        guard id >= 0 else { return }
        let status = H5Fclose(id)
        id = -1
        guard status >= 0 else { throw StoreError.hdf5(path: path, "cannot finish writing the HDF5 file") }
        if sealsOnClose {
            sealsOnClose = false
            try Seal.write(location, displayAs: path)
        }
    }

    deinit { close() }
}

/// What every object this store creates shares: no creation time (HDF5 stamps one unless told
/// not to; artifacts must not vary with the clock, or a rerun could not reproduce its bytes for the
/// runner's cache to see "unchanged"), and attributes kept in the object's header (checksummed in
/// this file format) up to 1000 of them, rather than in a fractal heap after 8, whose blocks carry
/// no checksum.
func objectDefaults(_ creationProperties: hid_t) -> hid_t {
    H5Pset_obj_track_times(creationProperties, false)
    H5Pset_attr_phase_change(creationProperties, 1000, 900)
    return creationProperties
}

/// Links of a group (or the root) stay in its checksummed header up to 1000 (see `objectDefaults`).
func compactLinks(_ creationProperties: hid_t) -> hid_t {
    H5Pset_link_phase_change(creationProperties, 1000, 900)
    return creationProperties
}

/// Creation properties of every group made here (the caller closes them).
func groupDefaults() -> hid_t {
    compactLinks(objectDefaults(H5Pcreate(wsss_H5P_GROUP_CREATE())))
}

/// A group inside an open file: datasets, subgroups and attributes.
public final class HDF5Group {
    public let file: HDF5File
    /// Path of the group inside the file, for error messages.
    public let path: String
    let id: hid_t

    init(file: HDF5File, path: String) throws {
        self.file = file
        self.path = path
        let id = H5Gopen2(file.id, path, wsss_H5P_DEFAULT())
        guard id >= 0 else { throw StoreError(path: file.path, "missing group '\(path)'") }
        self.id = id
    }

    deinit { H5Gclose(id) }

    func childPath(_ name: String) -> String { path == "/" ? "/" + name : path + "/" + name }

    public func contains(_ name: String) -> Bool {
        // H5Lexists fails on a path whose intermediate groups are missing; check each level.
        var prefix = ""
        for part in name.split(separator: "/") {
            prefix += prefix.isEmpty ? String(part) : "/" + part
            if H5Lexists(id, prefix, wsss_H5P_DEFAULT()) <= 0 { return false }
        }
        return true
    }

    public func group(_ name: String) throws -> HDF5Group {
        guard contains(name) else { throw StoreError(path: file.path, "missing group '\(childPath(name))'") }
        return try HDF5Group(file: file, path: childPath(name))
    }

    public func createGroup(_ name: String) throws -> HDF5Group {
        let creation = groupDefaults()
        defer { H5Pclose(creation) }
        let gid = H5Gcreate2(id, name, wsss_H5P_DEFAULT(), creation, wsss_H5P_DEFAULT())
        guard gid >= 0 else { throw StoreError.hdf5(path: file.path, "cannot create group '\(childPath(name))'") }
        H5Gclose(gid)
        return try HDF5Group(file: file, path: childPath(name))
    }

    /// Creates the missing groups on the way to `name` ("m/blocks.0.weight" needs "m"), with
    /// `groupDefaults` like every other group (HDF5's own intermediate groups would carry a time).
    func createParentGroups(of name: String) throws {
        let parts = name.split(separator: "/").dropLast()
        var prefix = ""
        for part in parts {
            prefix += prefix.isEmpty ? String(part) : "/" + part
            guard H5Lexists(id, prefix, wsss_H5P_DEFAULT()) <= 0 else { continue }
            let creation = groupDefaults()
            defer { H5Pclose(creation) }
            let gid = H5Gcreate2(id, prefix, wsss_H5P_DEFAULT(), creation, wsss_H5P_DEFAULT())
            guard gid >= 0 else { throw StoreError.hdf5(path: file.path, "cannot create group '\(childPath(prefix))'") }
            H5Gclose(gid)
        }
    }

    /// Names of the direct children (groups and datasets), in name order.
    public func childNames() throws -> [String] {
        var names: [String] = []
        let collect: H5L_iterate_t = { _, name, _, context in
            let box = context!.assumingMemoryBound(to: [String].self)
            box.pointee.append(String(cString: name!))
            return 0
        }
        let status = withUnsafeMutablePointer(to: &names) { pointer in
            H5Literate(id, H5_INDEX_NAME, H5_ITER_INC, nil, collect, pointer)
        }
        guard status >= 0 else { throw StoreError.hdf5(path: file.path, "cannot list group '\(path)'") }
        return names
    }

    // MARK: Datasets

    /// Chunk shape of about `targetBytes`, shrinking leading dimensions first so that a chunk holds
    /// whole trailing rows (one image per chunk when images are the leading dimension).
    static func defaultChunk(shape: [Int], elementSize: Int, targetBytes: Int = 256 << 10) -> [Int] {
        var chunk = shape.map { max($0, 1) }
        for axis in chunk.indices {
            while chunk.reduce(elementSize, *) > targetBytes && chunk[axis] > 1 {
                chunk[axis] = (chunk[axis] + 1) / 2
            }
        }
        return chunk
    }

    func makeCreationProperties(chunk: [Int], compression: Compression) -> hid_t {
        let dcpl = objectDefaults(H5Pcreate(wsss_H5P_DATASET_CREATE()))
        var chunkDims = chunk.map { hsize_t($0) }
        H5Pset_chunk(dcpl, Int32(chunkDims.count), &chunkDims)
        if case .zstd(let level) = compression {
            H5Pset_shuffle(dcpl)
            var cd = [UInt32(bitPattern: level)]
            H5Pset_filter(dcpl, zstdFilterID, 0, 1, &cd)
        }
        return dcpl
    }

    /// Writes a whole array as a new chunked dataset. Rank-0 shapes are stored as one-element arrays.
    public func write<T: HDF5Scalar>(
        _ name: String, _ values: UnsafeBufferPointer<T>, shape: [Int],
        chunk: [Int]? = nil, compression: Compression = .default, storage: StorageType = .native
    ) throws {
        if storage == .float16 {
            return try halfPrecision(values).withUnsafeBufferPointer {
                try write(name, $0, shape: shape, chunk: chunk, compression: compression)
            }
        }
        let shape = shape.isEmpty ? [1] : shape
        precondition(shape.reduce(1, *) == values.count, "\(name): shape \(shape) does not match \(values.count) values")
        var dims = shape.map { hsize_t($0) }
        let space = H5Screate_simple(Int32(dims.count), &dims, nil)
        defer { H5Sclose(space) }
        let fileType = T.hdf5Type
        let chunkShape = chunk ?? Self.defaultChunk(shape: shape, elementSize: MemoryLayout<T>.stride)
        let dcpl = makeCreationProperties(chunk: chunkShape, compression: compression)
        defer { H5Pclose(dcpl) }
        try createParentGroups(of: name)
        let dataset = H5Dcreate2(id, name, fileType, space, wsss_H5P_DEFAULT(), dcpl, wsss_H5P_DEFAULT())
        guard dataset >= 0 else { throw StoreError.hdf5(path: file.path, "cannot create dataset '\(childPath(name))'") }
        if values.count > 0 {
            guard H5Dwrite(dataset, T.hdf5Type, wsss_H5S_ALL(), wsss_H5S_ALL(), wsss_H5P_DEFAULT(), values.baseAddress) >= 0 else {
                let error = StoreError.hdf5(path: file.path, "cannot write dataset '\(childPath(name))'")
                H5Dclose(dataset)
                throw error
            }
        }
        // Closing writes the chunks HDF5 still caches: a full disk can surface here.
        guard H5Dclose(dataset) >= 0 else { throw StoreError.hdf5(path: file.path, "cannot write dataset '\(childPath(name))'") }
    }

    public func write<T: HDF5Scalar>(
        _ name: String, _ values: [T], shape: [Int]? = nil,
        chunk: [Int]? = nil, compression: Compression = .default, storage: StorageType = .native
    ) throws {
        try values.withUnsafeBufferPointer {
            try write(name, $0, shape: shape ?? [values.count], chunk: chunk, compression: compression, storage: storage)
        }
    }

    func openDataset(_ name: String) throws -> hid_t {
        guard contains(name) else { throw StoreError(path: file.path, "missing dataset '\(childPath(name))'") }
        let dataset = H5Dopen2(id, name, wsss_H5P_DEFAULT())
        guard dataset >= 0 else { throw StoreError(path: file.path, "'\(childPath(name))' is not a readable dataset") }
        return dataset
    }

    static func dims(ofSpace space: hid_t) -> [Int] {
        let rank = Int(H5Sget_simple_extent_ndims(space))
        var dims = [hsize_t](repeating: 0, count: max(rank, 0))
        if rank > 0 { H5Sget_simple_extent_dims(space, &dims, nil) }
        return dims.map { Int($0) }
    }

    public func shape(of name: String) throws -> [Int] {
        let dataset = try openDataset(name)
        defer { H5Dclose(dataset) }
        let space = H5Dget_space(dataset)
        defer { H5Sclose(space) }
        return Self.dims(ofSpace: space)
    }

    /// Filters applied to a dataset, by HDF5 filter id (for checks that data really is compressed).
    public func filters(of name: String) throws -> [Int32] {
        let dataset = try openDataset(name)
        defer { H5Dclose(dataset) }
        let dcpl = H5Dget_create_plist(dataset)
        defer { H5Pclose(dcpl) }
        let count = H5Pget_nfilters(dcpl)
        return (0..<max(count, 0)).map { index in
            var flags: UInt32 = 0
            var cdCount = 0
            var nameBuffer = [CChar](repeating: 0, count: 64)
            var config: UInt32 = 0
            return H5Pget_filter2(dcpl, UInt32(index), &flags, &cdCount, nil, 64, &nameBuffer, &config)
        }
    }

    public func read<T: HDF5Scalar>(_ name: String, as type: T.Type = T.self) throws -> NDArray<T> {
        let dataset = try openDataset(name)
        defer { H5Dclose(dataset) }
        let space = H5Dget_space(dataset)
        defer { H5Sclose(space) }
        let shape = Self.dims(ofSpace: space)
        let count = try HDF5Limits.elementCount(shape, elementSize: MemoryLayout<T>.stride, file: file.path, name: childPath(name))
        var values = [T](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
        if count > 0 {
            let status = values.withUnsafeMutableBufferPointer {
                Self.readHalfAsFloat(dataset: dataset, memorySpace: wsss_H5S_ALL(), fileSpace: wsss_H5S_ALL(), into: $0)
                    ?? H5Dread(dataset, T.hdf5Type, wsss_H5S_ALL(), wsss_H5S_ALL(), wsss_H5P_DEFAULT(), $0.baseAddress)
            }
            guard status >= 0 else {
                throw StoreError.hdf5(path: file.path, "cannot read dataset '\(childPath(name))' (corrupt or truncated data)")
            }
        }
        return NDArray(shape: shape, values: values)
    }

    /// Reads elements `[start, start + count)` of a dataset's leading dimension into `destination`,
    /// which must hold `count * (product of trailing dims)` elements.
    public func readRows<T: HDF5Scalar>(
        _ name: String, start: Int, count: Int, into destination: UnsafeMutableBufferPointer<T>
    ) throws {
        let dataset = try openDataset(name)
        defer { H5Dclose(dataset) }
        try Self.readRows(dataset: dataset, file: file.path, name: childPath(name), start: start, count: count, into: destination)
    }

    static func readRows<T: HDF5Scalar>(
        dataset: hid_t, file: String, name: String, start: Int, count: Int, into destination: UnsafeMutableBufferPointer<T>
    ) throws {
        let space = H5Dget_space(dataset)
        defer { H5Sclose(space) }
        let shape = dims(ofSpace: space)
        guard !shape.isEmpty, start >= 0, count >= 0, start + count <= shape[0] else {
            throw StoreError(path: file, "rows \(start)..<\(start + count) are outside dataset '\(name)' of shape \(shape)")
        }
        let rowSize = try HDF5Limits.elementCount(Array(shape.dropFirst()), elementSize: MemoryLayout<T>.stride, file: file, name: name)
        guard destination.count == rowSize * count else {
            throw StoreError(path: file, "rows \(start)..<\(start + count) of '\(name)' (shape \(shape)) do not fit the \(destination.count) elements the index says")
        }
        if count == 0 { return }
        var offset = [hsize_t](repeating: 0, count: shape.count)
        offset[0] = hsize_t(start)
        var extent = shape.map { hsize_t($0) }
        extent[0] = hsize_t(count)
        H5Sselect_hyperslab(space, H5S_SELECT_SET, &offset, nil, &extent, nil)
        let memorySpace = H5Screate_simple(Int32(extent.count), &extent, nil)
        defer { H5Sclose(memorySpace) }
        let status = readHalfAsFloat(dataset: dataset, memorySpace: memorySpace, fileSpace: space, into: destination)
            ?? H5Dread(dataset, T.hdf5Type, memorySpace, space, wsss_H5P_DEFAULT(), destination.baseAddress)
        guard status >= 0 else {
            throw StoreError(path: file, "cannot read rows \(start)..<\(start + count) of '\(name)' (corrupt or truncated data)")
        }
    }

    /// Float16 datasets read into Float: HDF5 1.10 has no hard half->float conversion and its soft
    /// one goes bit by bit (~75% of a cam-refine run), so the raw halves are read with the file's
    /// own type (no conversion) and widened here. Returns nil when this does not apply (not a
    /// Float destination, not a little-endian 16-bit float dataset): the caller reads normally.
    static func readHalfAsFloat<T: HDF5Scalar>(dataset: hid_t, memorySpace: hid_t, fileSpace: hid_t, into destination: UnsafeMutableBufferPointer<T>) -> herr_t? {
        guard T.self == Float.self else { return nil }
        let fileType = H5Dget_type(dataset)
        defer { H5Tclose(fileType) }
        guard H5Tget_class(fileType) == H5T_FLOAT, H5Tget_size(fileType) == 2, H5Tget_order(fileType) == H5T_ORDER_LE else { return nil }
        var bits = [UInt16](repeating: 0, count: destination.count)
        let status = H5Dread(dataset, fileType, memorySpace, fileSpace, wsss_H5P_DEFAULT(), &bits)
        guard status >= 0 else { return status }
        destination.withMemoryRebound(to: Float.self) { floats in
            bits.withUnsafeBufferPointer { halves in
                halfToFloat.withUnsafeBufferPointer { table in
                    for i in 0..<halves.count { floats[i] = table[Int(halves[i])] }
                }
            }
        }
        return status
    }

    /// Every half value widened once (256 KiB): without F16C in the target, each Float(Float16)
    /// is a library call, several times slower than this lookup.
    static let halfToFloat: [Float] = (0..<65536).map { Float(Float16(bitPattern: UInt16($0))) }

    // MARK: Attributes

    public func setAttribute(_ name: String, _ value: String) throws {
        let type = H5Tcopy(wsss_H5T_C_S1())
        defer { H5Tclose(type) }
        H5Tset_size(type, wsss_H5T_VARIABLE())
        H5Tset_cset(type, H5T_CSET_UTF8)
        try writeAttribute(name, type: type) { attribute in
            value.withCString { cString in
                var pointer: UnsafePointer<CChar>? = cString
                return H5Awrite(attribute, type, &pointer)
            }
        }
    }

    public func setAttribute(_ name: String, _ value: Int64) throws {
        var value = value
        try writeAttribute(name, type: wsss_H5T_NATIVE_INT64()) { H5Awrite($0, wsss_H5T_NATIVE_INT64(), &value) }
    }

    public func setAttribute(_ name: String, _ value: Double) throws {
        var value = value
        try writeAttribute(name, type: wsss_H5T_NATIVE_DOUBLE()) { H5Awrite($0, wsss_H5T_NATIVE_DOUBLE(), &value) }
    }

    private func writeAttribute(_ name: String, type: hid_t, write: (hid_t) -> herr_t) throws {
        if H5Aexists(id, name) > 0 { H5Adelete(id, name) }
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        let attribute = H5Acreate2(id, name, type, space, wsss_H5P_DEFAULT(), wsss_H5P_DEFAULT())
        guard attribute >= 0 else { throw StoreError.hdf5(path: file.path, "cannot create attribute '\(name)' on '\(path)'") }
        defer { H5Aclose(attribute) }
        guard write(attribute) >= 0 else { throw StoreError.hdf5(path: file.path, "cannot write attribute '\(name)' on '\(path)'") }
    }

    public func hasAttribute(_ name: String) -> Bool { H5Aexists(id, name) > 0 }

    public func attributeNames() -> [String] {
        var info = H5O_info_t()
        guard H5Oget_info(id, &info) >= 0 else { return [] }
        return (0..<info.num_attrs).compactMap { index in
            let attribute = H5Aopen_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, index, wsss_H5P_DEFAULT(), wsss_H5P_DEFAULT())
            guard attribute >= 0 else { return nil }
            defer { H5Aclose(attribute) }
            let length = H5Aget_name(attribute, 0, nil)
            var buffer = [CChar](repeating: 0, count: Int(length) + 1)
            H5Aget_name(attribute, buffer.count, &buffer)
            return String(cString: buffer)
        }
    }

    private func openAttribute(_ name: String) throws -> hid_t {
        guard H5Aexists(id, name) > 0 else { throw StoreError(path: file.path, "missing attribute '\(name)' on '\(path)'") }
        let attribute = H5Aopen(id, name, wsss_H5P_DEFAULT())
        guard attribute >= 0 else { throw StoreError.hdf5(path: file.path, "cannot open attribute '\(name)' on '\(path)'") }
        return attribute
    }

    /// Reads a string attribute, variable-length (ours, h5py's default) or fixed-length.
    public func stringAttribute(_ name: String) throws -> String {
        let attribute = try openAttribute(name)
        defer { H5Aclose(attribute) }
        let fileType = H5Aget_type(attribute)
        defer { H5Tclose(fileType) }
        guard H5Tget_class(fileType) == H5T_STRING else {
            throw StoreError(path: file.path, "attribute '\(name)' on '\(path)' is not a string")
        }
        let memoryType = H5Tcopy(wsss_H5T_C_S1())
        defer { H5Tclose(memoryType) }
        if H5Tis_variable_str(fileType) > 0 {
            H5Tset_size(memoryType, wsss_H5T_VARIABLE())
            H5Tset_cset(memoryType, H5Tget_cset(fileType))
            var pointer: UnsafeMutablePointer<CChar>? = nil
            guard H5Aread(attribute, memoryType, &pointer) >= 0 else {
                throw StoreError.hdf5(path: file.path, "cannot read attribute '\(name)' on '\(path)'")
            }
            defer { free(pointer) }
            return pointer.map { String(cString: $0) } ?? ""
        }
        let size = H5Tget_size(fileType)
        H5Tset_size(memoryType, size + 1)
        var buffer = [CChar](repeating: 0, count: size + 1)
        guard H5Aread(attribute, memoryType, &buffer) >= 0 else {
            throw StoreError.hdf5(path: file.path, "cannot read attribute '\(name)' on '\(path)'")
        }
        return String(cString: buffer)
    }

    public func int64Attribute(_ name: String) throws -> Int64 {
        let attribute = try openAttribute(name)
        defer { H5Aclose(attribute) }
        var value: Int64 = 0
        guard H5Aread(attribute, wsss_H5T_NATIVE_INT64(), &value) >= 0 else {
            throw StoreError(path: file.path, "attribute '\(name)' on '\(path)' is not an integer")
        }
        return value
    }

    /// Reads a numeric attribute of any shape (scalar or array, integer or float, e.g. h5py's
    /// `attrs["x"] = [1, 2, 3]`) as Doubles in row-major order.
    public func doublesAttribute(_ name: String) throws -> [Double] {
        let attribute = try openAttribute(name)
        defer { H5Aclose(attribute) }
        let space = H5Aget_space(attribute)
        defer { H5Sclose(space) }
        let count = max(1, Int(H5Sget_simple_extent_npoints(space)))
        var values = [Double](repeating: 0, count: count)
        let fileType = H5Aget_type(attribute)
        defer { H5Tclose(fileType) }
        let typeClass = H5Tget_class(fileType)
        guard typeClass == H5T_INTEGER || typeClass == H5T_FLOAT,
              H5Aread(attribute, wsss_H5T_NATIVE_DOUBLE(), &values) >= 0 else {
            throw StoreError(path: file.path, "attribute '\(name)' on '\(path)' is not numeric")
        }
        return values
    }

    public func doubleAttribute(_ name: String) throws -> Double {
        let attribute = try openAttribute(name)
        defer { H5Aclose(attribute) }
        var value: Double = 0
        guard H5Aread(attribute, wsss_H5T_NATIVE_DOUBLE(), &value) >= 0 else {
            throw StoreError(path: file.path, "attribute '\(name)' on '\(path)' is not a number")
        }
        return value
    }
}

extension StoreError {
    /// A failed HDF5 call: `problem`, then the operating-system cause HDF5 recorded on its error
    /// stack when there is one ("no space left on device", "file too large", ...), so that a full
    /// disk reads as one line naming the file and the cause.
    static func hdf5(path: String, _ problem: String) -> StoreError {
        guard let cause = hdf5SystemCause() else { return StoreError(path: path, problem) }
        return StoreError(path: path, "\(problem): \(cause)")
    }
}

/// The `errno` HDF5's file driver recorded for the failure on the current error stack (its
/// messages read "..., errno = 28, error message = 'No space left on device', ..."), as text.
func hdf5SystemCause() -> String? {
    var code: Int32 = 0
    let walker: H5E_walk2_t = { _, error, data in
        guard let description = error?.pointee.desc, let found = strstr(description, "errno = "), let data else { return 0 }
        let value = atoi(found + 8)
        if value > 0 { data.assumingMemoryBound(to: Int32.self).pointee = value }
        return 0
    }
    _ = withUnsafeMutablePointer(to: &code) { H5Ewalk2(wsss_H5E_DEFAULT(), H5E_WALK_DOWNWARD, walker, $0) }
    return code > 0 ? String(cString: strerror(code)).lowercased() : nil
}
