import CHDF5

/// A chunked dataset that grows along its leading dimension, so a stage can stream results image
/// by image without holding the whole split in memory.
public final class AppendableDataset<T: HDF5Scalar> {
    public let group: HDF5Group
    public let name: String
    /// Shape of one row (everything after the leading dimension).
    public let rowShape: [Int]
    public private(set) var rows: Int = 0
    private let id: hid_t
    private let rowSize: Int
    private let storage: StorageType

    public init(
        in group: HDF5Group, name: String, rowShape: [Int], chunkRows: Int? = nil,
        compression: Compression = .default, storage: StorageType = .native
    ) throws {
        self.group = group
        self.name = name
        self.rowShape = rowShape
        self.rowSize = rowShape.reduce(1, *)
        self.storage = storage
        var dims = ([0] + rowShape).map { hsize_t($0) }
        var maxDims = dims
        maxDims[0] = wsss_H5S_UNLIMITED()
        let space = H5Screate_simple(Int32(dims.count), &dims, &maxDims)
        defer { H5Sclose(space) }
        let elementSize = storage == .float16 ? 2 : MemoryLayout<T>.stride
        var chunk = HDF5Group.defaultChunk(shape: [1 << 20] + rowShape, elementSize: elementSize)
        if let chunkRows { chunk[0] = max(chunkRows, 1) }
        let dcpl = group.makeCreationProperties(chunk: chunk, compression: compression)
        defer { H5Pclose(dcpl) }
        let fileType = storage == .float16 ? StorageType.half : T.hdf5Type
        let id = H5Dcreate2(group.id, name, fileType, space, wsss_H5P_DEFAULT(), dcpl, wsss_H5P_DEFAULT())
        guard id >= 0 else { throw StoreError.hdf5(path: group.file.path, "cannot create dataset '\(group.childPath(name))'") }
        self.id = id
    }

    deinit { H5Dclose(id) }

    /// Appends `values.count / rowSize` rows.
    public func append(_ values: UnsafeBufferPointer<T>) throws {
        if storage == .float16 {
            try halfPrecision(values).withUnsafeBufferPointer { try appendRows($0) }
        } else {
            try appendRows(values)
        }
    }

    private func appendRows<E: HDF5Scalar>(_ values: UnsafeBufferPointer<E>) throws {
        precondition(rowSize > 0 && values.count % rowSize == 0, "\(name): \(values.count) values are not whole rows of \(rowShape)")
        let newRows = values.count / rowSize
        if newRows == 0 { return }
        var newDims = ([rows + newRows] + rowShape).map { hsize_t($0) }
        guard H5Dset_extent(id, &newDims) >= 0 else {
            throw StoreError.hdf5(path: group.file.path, "cannot extend dataset '\(group.childPath(name))'")
        }
        let space = H5Dget_space(id)
        defer { H5Sclose(space) }
        var offset = [hsize_t](repeating: 0, count: newDims.count)
        offset[0] = hsize_t(rows)
        var extent = newDims
        extent[0] = hsize_t(newRows)
        H5Sselect_hyperslab(space, H5S_SELECT_SET, &offset, nil, &extent, nil)
        let memorySpace = H5Screate_simple(Int32(extent.count), &extent, nil)
        defer { H5Sclose(memorySpace) }
        guard H5Dwrite(id, E.hdf5Type, memorySpace, space, wsss_H5P_DEFAULT(), values.baseAddress) >= 0 else {
            throw StoreError.hdf5(path: group.file.path, "cannot write dataset '\(group.childPath(name))'")
        }
        rows += newRows
    }

    public func append(_ values: [T]) throws {
        try values.withUnsafeBufferPointer { try append($0) }
    }
}

/// Per-item arrays of varying shape (one per image) in one group: a flat chunked `data` array plus
/// `offsets` (N+1, int64) and `shapes` (N x rank, int64). One group per image gets slow in HDF5 past
/// ~15k groups; this layout reads item i with one hyperslab read at any dataset size.
public final class RaggedArrayWriter<T: HDF5Scalar> {
    public let group: HDF5Group
    public let rank: Int
    private let data: AppendableDataset<T>
    private var offsets: [Int64] = [0]
    private var shapes: [Int64] = []

    /// `chunkElements` should be near one typical item so a read touches one or two chunks.
    public init(
        in parent: HDF5Group, name: String, rank: Int, chunkElements: Int = 1 << 16,
        compression: Compression = .default, storage: StorageType = .native
    ) throws {
        group = try parent.createGroup(name)
        self.rank = rank
        data = try AppendableDataset<T>(
            in: group, name: "data", rowShape: [], chunkRows: max(1024, min(chunkElements, 1 << 20)),
            compression: compression, storage: storage)
        try group.setAttribute("layout", "ragged")
        try group.setAttribute("dtype", T.dtypeName)
    }

    public var count: Int { shapes.count / max(rank, 1) }

    public func append(_ values: UnsafeBufferPointer<T>, shape: [Int]) throws {
        precondition(shape.count == rank, "item shape \(shape) does not have rank \(rank)")
        precondition(shape.reduce(1, *) == values.count, "item shape \(shape) does not match \(values.count) values")
        try data.append(values)
        offsets.append(offsets.last! + Int64(values.count))
        shapes.append(contentsOf: shape.map(Int64.init))
    }

    public func append(_ values: [T], shape: [Int]) throws {
        try values.withUnsafeBufferPointer { try append($0, shape: shape) }
    }

    /// Writes the index; the items are unreadable until this is called.
    public func finish() throws {
        try group.write("offsets", offsets, compression: .default)
        try group.write("shapes", shapes, shape: [count, rank], compression: .default)
    }
}

public final class RaggedArrayReader<T: HDF5Scalar> {
    public let group: HDF5Group
    public let rank: Int
    public let offsets: [Int64]
    public let shapes: [[Int]]
    private let dataID: hid_t

    public init(_ parent: HDF5Group, name: String) throws {
        group = try parent.group(name)
        offsets = try group.read("offsets", as: Int64.self).values
        let shapeArray = try group.read("shapes", as: Int64.self)
        let rank = shapeArray.shape.count == 2 ? shapeArray.shape[1] : 0
        self.rank = rank
        shapes = stride(from: 0, to: shapeArray.count, by: max(rank, 1)).map { start in
            shapeArray.values[start..<start + rank].map { Int($0) }
        }
        guard offsets.count == shapes.count + 1 else {
            throw StoreError(path: group.file.path, "ragged array '\(group.path)' has \(offsets.count) offsets for \(shapes.count) items")
        }
        dataID = try group.openDataset("data")
    }

    deinit { H5Dclose(dataID) }

    public var count: Int { shapes.count }

    public func item(_ index: Int) throws -> NDArray<T> {
        guard index >= 0 && index < count else {
            throw StoreError(path: group.file.path, "item \(index) is outside ragged array '\(group.path)' of \(count) items")
        }
        let start = Int(offsets[index]), end = Int(offsets[index + 1])
        let itemCount = try HDF5Limits.elementCount(shapes[index], elementSize: MemoryLayout<T>.stride, file: group.file.path, name: group.path)
        guard start >= 0, end >= start, end - start == itemCount else {
            throw StoreError(path: group.file.path,
                "item \(index) of ragged array '\(group.path)': offsets \(start)..<\(end) do not hold its shape \(shapes[index]) (corrupt index)")
        }
        var values = [T](unsafeUninitializedCapacity: end - start) { _, n in n = end - start }
        try values.withUnsafeMutableBufferPointer {
            try HDF5Group.readRows(dataset: dataID, file: group.file.path, name: group.childPath("data"), start: start, count: end - start, into: $0)
        }
        return NDArray(shape: shapes[index], values: values)
    }
}
