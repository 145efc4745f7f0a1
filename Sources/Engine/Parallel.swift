import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// A pointer that may cross into concurrentPerform's closures (each task touches its own range).
public struct SendablePointer<T>: @unchecked Sendable {
    public let p: UnsafeMutablePointer<T>
    public init(_ p: UnsafeMutablePointer<T>) { self.p = p }
    public init(_ p: UnsafePointer<T>) { self.p = UnsafeMutablePointer(mutating: p) }
}

public enum Parallel {
    /// Worker threads for our own loops: the online cores (2 on the target machine).
    /// Override with WSSS_ENGINE_THREADS (1 disables our threading).
    public static let threads: Int = {
        if let s = getenv("WSSS_ENGINE_THREADS"), let n = Int(String(cString: s)), n >= 1 { return n }
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }()

    /// Chunks a parallel loop is split into: 4 per thread, handed out dynamically, so a core
    /// taken by another process (the machine is shared) delays a quarter of a thread's share
    /// rather than half the loop.
    public static var maxChunks: Int { threads == 1 ? 1 : 4 * threads }

    /// Runs body over `0..<n` split into at most `maxChunks` contiguous chunks, inline when the
    /// work is small (`n * costPerItem` below ~64k element operations: a dispatch costs a few
    /// microseconds, and memory-bound loops gain only 1.0-1.7x from the second core).
    @inline(__always)
    static func forRanges(_ n: Int, costPerItem: Int, _ body: (Range<Int>) -> Void) {
        let tasks = min(maxChunks, n, max(1, n * costPerItem / 65_536))
        if tasks <= 1 {
            body(0..<n)
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedBox(body)
            DispatchQueue.concurrentPerform(iterations: tasks) { t in
                let lo = n * t / tasks, hi = n * (t + 1) / tasks
                box.value(lo..<hi)
            }
        }
    }
}

@usableFromInline
struct UncheckedBox<T>: @unchecked Sendable {
    @usableFromInline let value: T
    @usableFromInline init(_ value: T) { self.value = value }
}
