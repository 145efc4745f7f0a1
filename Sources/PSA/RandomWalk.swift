import COpenBLAS

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// PSA's random walk: T = a^beta within a radius (0 elsewhere, diagonal 1), columns normalised to
/// sum 1 (PSA: trans = aff / aff.sum(0)); refined maps = maps [K, n] x T^(2^logt).
public enum RandomWalk {
    /// The walk's input: planar [background, M_1..M_K] over `tokens` positions, with the
    /// background (1 - max M)^alpha from the K class maps `maps` [K, tokens].
    public static func withBackground(_ maps: [Float], classes k: Int, tokens n: Int, alpha: Float) -> [Float] {
        var out = [Float](repeating: 0, count: (k + 1) * n)
        for p in 0..<n {
            var m: Float = 0
            for c in 0..<k { m = max(m, maps[c * n + p]) }
            out[p] = powf(max(0, 1 - m), alpha)
        }
        for i in 0..<maps.count { out[n + i] = maps[i] }
        return out
    }

    /// A column-stochastic sparse n x n transition stored by columns: column j holds rows
    /// `rows[columnStart[j]..<columnStart[j+1]]` with `values` (the diagonal included).
    public struct Transition: Sendable {
        public var n: Int
        public var columnStart: [Int]
        public var rows: [Int32]
        public var values: [Float]
        public var nonZeros: Int { rows.count }
    }

    /// Transition of an h x w token grid from affinity features f [h*w, F] (row-major).
    public static func transition(features f: UnsafePointer<Float>, featureDim: Int, height h: Int, width w: Int,
                                  radius: Int, beta: Float) -> Transition {
        precondition(radius >= 1, "radius must be >= 1")
        let n = h * w
        var start = [Int](repeating: 0, count: n + 1)
        var rows: [Int32] = [], values: [Float] = []
        rows.reserveCapacity(n * (2 * radius + 1) * (2 * radius + 1))
        values.reserveCapacity(rows.capacity)
        // Affinities are symmetric, so column j's neighbours are the full disc around j.
        for y in 0..<h {
            for x in 0..<w {
                let j = y * w + x
                var total: Float = 0
                let first = rows.count
                for dy in (-radius + 1)..<radius {
                    for dx in (-radius + 1)..<radius where dy * dy + dx * dx < radius * radius {
                        let y2 = y + dy, x2 = x + dx
                        guard y2 >= 0, y2 < h, x2 >= 0, x2 < w else { continue }
                        let i = y2 * w + x2
                        let a: Float = i == j ? 1 : powf(AffinityLoss.affinity(f, i, j, features: featureDim), beta)
                        rows.append(Int32(i)); values.append(a); total += a
                    }
                }
                for k in first..<rows.count { values[k] /= total }
                start[j + 1] = rows.count
            }
        }
        return Transition(n: n, columnStart: start, rows: rows, values: values)
    }

    /// The dense row-major n x n matrix T[i, j].
    public static func dense(_ t: Transition) -> [Float] {
        var m = [Float](repeating: 0, count: t.n * t.n)
        for j in 0..<t.n {
            for k in t.columnStart[j]..<t.columnStart[j + 1] { m[Int(t.rows[k]) * t.n + j] = t.values[k] }
        }
        return m
    }

    /// Faithful PSA: square the dense T `logt` times (sgemm), then maps [K, n] x T^(2^logt).
    /// Holds two dense n x n matrices: 8 n^2 bytes.
    public static func propagateBySquaring(maps: [Float], channels k: Int, transition t: Transition, logt: Int) -> [Float] {
        let n = t.n
        precondition(maps.count == k * n)
        var a = dense(t)
        var b = [Float](repeating: 0, count: n * n)
        for _ in 0..<logt {
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeMutableBufferPointer { bp in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(n), blasint(n), blasint(n),
                                1, ap.baseAddress, blasint(n), ap.baseAddress, blasint(n), 0, bp.baseAddress, blasint(n))
                }
            }
            swap(&a, &b)
        }
        var out = [Float](repeating: 0, count: k * n)
        maps.withUnsafeBufferPointer { mp in
            a.withUnsafeBufferPointer { ap in
                out.withUnsafeMutableBufferPointer { op in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(k), blasint(n), blasint(n),
                                1, mp.baseAddress, blasint(n), ap.baseAddress, blasint(n), 0, op.baseAddress, blasint(n))
                }
            }
        }
        return out
    }

    /// The same result without T^t: 2^logt sparse steps maps <- maps x T. Memory is the sparse T
    /// plus two [K, n] buffers; cost 2^logt * K * nnz multiply-adds.
    public static func propagateIterated(maps: [Float], channels k: Int, transition t: Transition, logt: Int) -> [Float] {
        let n = t.n
        precondition(maps.count == k * n)
        var current = maps
        var next = [Float](repeating: 0, count: k * n)
        let steps = 1 << logt
        t.columnStart.withUnsafeBufferPointer { start in
            t.rows.withUnsafeBufferPointer { rows in
                t.values.withUnsafeBufferPointer { values in
                    for _ in 0..<steps {
                        current.withUnsafeBufferPointer { src in
                            next.withUnsafeMutableBufferPointer { dst in
                                for c in 0..<k {
                                    let s = src.baseAddress! + c * n, d = dst.baseAddress! + c * n
                                    for j in 0..<n {
                                        var acc: Float = 0
                                        for q in start[j]..<start[j + 1] { acc += s[Int(rows[q])] * values[q] }
                                        d[j] = acc
                                    }
                                }
                            }
                        }
                        swap(&current, &next)
                    }
                }
            }
        }
        return current
    }
}
