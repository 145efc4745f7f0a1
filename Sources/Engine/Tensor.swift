import Primitives
#if canImport(Glibc)
import Glibc
#endif

public typealias Tensor = TensorOf<Float>

/// A dense row-major n-d array over a 64-byte-aligned buffer it owns (or a view into another
/// tensor's buffer, which it keeps alive). Hot code takes `data` once and loops over the pointer.
public final class TensorOf<S: EngineScalar> {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<S>
    /// The tensor whose buffer this view points into; nil when this tensor owns its buffer.
    private let base: TensorOf<S>?

    /// A zero-filled tensor.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        self.shape = shape
        count = shape.reduce(1, *)
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: max(count, 1) * MemoryLayout<S>.stride, alignment: 64)
        data = raw.bindMemory(to: S.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
        base = nil
    }

    public convenience init(shape: [Int], values: [S]) {
        self.init(shape: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    public convenience init(shape: [Int], repeating value: S) {
        self.init(shape: shape)
        data.update(repeating: value, count: count)
    }

    /// A view of `count(shape)` elements of `base` starting at `offset` (shares memory).
    public init(viewOf base: TensorOf<S>, offset: Int = 0, shape: [Int]) {
        let n = shape.reduce(1, *)
        precondition(offset >= 0 && offset + n <= base.count,
                     "view [\(offset), \(offset + n)) outside a tensor of \(base.count) elements")
        self.shape = shape
        count = n
        data = base.data + offset
        self.base = base.base ?? base
    }

    deinit {
        if base == nil { UnsafeMutableRawPointer(data).deallocate() }
    }

    public var rank: Int { shape.count }
    public var isView: Bool { base != nil }

    /// The same memory under another shape with the same element count.
    public func reshaped(_ newShape: [Int]) -> TensorOf<S> {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        return TensorOf(viewOf: self, offset: 0, shape: newShape)
    }

    /// Rows `range` of the leading dimension as a view.
    public func slice(_ range: Range<Int>) -> TensorOf<S> {
        precondition(rank >= 1 && range.lowerBound >= 0 && range.upperBound <= shape[0])
        let inner = count / max(shape[0], 1)
        return TensorOf(viewOf: self, offset: range.lowerBound * inner,
                        shape: [range.count] + shape.dropFirst())
    }

    public func zero() { data.update(repeating: 0, count: count) }
    public func fill(_ value: S) { data.update(repeating: value, count: count) }

    public func copy(from other: TensorOf<S>) {
        precondition(other.count == count, "copy of \(other.shape) into \(shape)")
        data.update(from: other.data, count: count)
    }

    /// A new tensor owning a copy of the values.
    public func clone() -> TensorOf<S> {
        let t = TensorOf(shape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    public func toArray() -> [S] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// Element-type conversion (Float <-> Double), used by the checks.
    public func converted<T: EngineScalar>(to: T.Type = T.self) -> TensorOf<T> {
        let t = TensorOf<T>(shape: shape)
        for i in 0..<count { t.data[i] = T(data[i]) }
        return t
    }

    /// Flat index of a multi-index (slow; for tests and setup code).
    public func offset(_ index: [Int]) -> Int {
        precondition(index.count == rank, "index \(index) for shape \(shape)")
        var o = 0
        for (i, n) in zip(index, shape) {
            precondition(i >= 0 && i < n, "index \(index) out of shape \(shape)")
            o = o * n + i
        }
        return o
    }

    public subscript(_ index: Int...) -> S {
        get { data[offset(index)] }
        set { data[offset(index)] = newValue }
    }

    /// Sum of squares, accumulated in Double.
    public func sumOfSquares() -> Double {
        var s = 0.0
        for i in 0..<count { let v = Double(data[i]); s += v * v }
        return s
    }

    /// In-place self += alpha * other.
    public func add(_ other: TensorOf<S>, scaled alpha: S = 1) {
        precondition(other.count == count, "add of \(other.shape) into \(shape)")
        let a = data, b = other.data
        for i in 0..<count { a[i] += alpha * b[i] }
    }
}

extension TensorOf: CustomStringConvertible {
    public var description: String {
        let head = (0..<min(count, 8)).map { "\(data[$0])" }.joined(separator: ", ")
        return "Tensor\(shape)[\(head)\(count > 8 ? ", ..." : "")]"
    }
}

extension TensorOf {
    /// Fills with Normal(0, std) values restricted to [lo, hi] (timm defaults).
    public func fillTruncatedNormal(std: Double, lo: Double = -2, hi: Double = 2, rng: inout SplitMix64) {
        for i in 0..<count { data[i] = S(rng.truncatedNormal(std: std, lo: lo, hi: hi)) }
    }
    public func fillUniform(_ lo: Double, _ hi: Double, rng: inout SplitMix64) {
        for i in 0..<count { data[i] = S(lo + (hi - lo) * rng.uniform()) }
    }
    public func fillNormal(std: Double, rng: inout SplitMix64) {
        for i in 0..<count { data[i] = S(rng.normal() * std) }
    }
}
