#if canImport(Glibc)
import Glibc
#endif
import COpenBLAS
import Foundation

/// Which OpenBLAS kernels the process runs, decided before any heavy work.
///
/// OpenBLAS reads OPENBLAS_CORETYPE once, when the library loads (before `main`), so a different
/// choice needs a fresh process: `apply()` re-executes the program with the environment changed.
/// `WSSS_BLAS_CORE` selects:
/// - `auto` (default): the kernels as wide as the CPU and OS can run (`cpuTier`: AVX-512 ->
///   SkylakeX, AVX2 + FMA -> Haswell), whenever the loaded core is of another width. That covers
///   an inherited OPENBLAS_CORETYPE pin to a narrower core (one machine kind here pins Haswell),
///   and OpenBLAS not knowing the CPU: Debian's 0.3.21 detects an Intel Xeon of model 207
///   (Emerald Rapids) as Prescott, the SSE3 kernels. Measured there (2 threads): one-thread sgemm
///   at 512^3 28 GFLOP/s as Prescott, 147 as SkylakeX; seg-train at the demo's recipe 7.2 img/s
///   against 23.3. On an AMD EPYC with avx512f the AVX-512 kernels ran sgemm 1.6-1.9x faster than
///   the Haswell pin (see `make bench`).
/// - `keep`: use whatever was loaded.
/// - a core name (e.g. `Haswell`, `SkylakeX`): pin that core; one whose kernels this CPU cannot
///   run is refused (it would stop at its first product with an illegal instruction).
///
/// It also sets OPENBLAS_THREAD_TIMEOUT (read at load too) unless the user did: OpenBLAS's idle
/// worker threads otherwise spin in sched_yield for 2^28 cycles after every product, taking the
/// cores from the engine's own threads in the elementwise kernels between products (perf: 11 % of
/// a training step in sched_yield). With 2^4 they sleep at once; measured on the default model
/// (bench-train-step, 2 threads): 268-280 img/s against 220-256 without.
public enum BLASCorePolicy {
    /// How wide the vector kernels are: what a CPU can run, or what an OpenBLAS core uses.
    public enum VectorTier: Int, Comparable, CustomStringConvertible, Sendable {
        case baseline = 0, avx2, avx512

        public static func < (a: VectorTier, b: VectorTier) -> Bool { a.rawValue < b.rawValue }
        public var description: String { ["no AVX2", "AVX2", "AVX-512"][rawValue] }
        /// The OpenBLAS core pinned for this width (nil: let OpenBLAS detect, as for narrow CPUs).
        var core: String? { [nil, "Haswell", "SkylakeX"][rawValue] }
    }

    static let threadTimeout = "4"
    static let marker = "WSSS_BLAS_CORE_APPLIED"
    /// OpenBLAS's x86 cores with AVX2 or AVX-512 kernels (lower-cased corenames); any other core
    /// (Prescott, Core2, Nehalem, Sandybridge, a non-x86 one) counts as `baseline`.
    static let coreTiers: [String: VectorTier] = [
        "haswell": .avx2, "zen": .avx2,
        "skylakex": .avx512, "cooperlake": .avx512, "sapphirerapids": .avx512,
    ]

    static func tier(ofCore name: String) -> VectorTier { coreTiers[name.lowercased()] ?? .baseline }

    /// What this CPU and its OS can run (CPUID and XGETBV, read by the C shim).
    public static var cpuTier: VectorTier { VectorTier(rawValue: Int(wsss_cpu_vector_tier())) ?? .baseline }

    enum Decision: Equatable {
        case keep
        /// Re-execute with OPENBLAS_CORETYPE set to this core (nil: unset it).
        case run(coreType: String?)
        case refuse(String)
    }

    static func decision(policy: String, loaded: String, cpu: VectorTier) -> Decision {
        switch policy.lowercased() {
        case "keep":
            return .keep
        case "auto", "":
            return tier(ofCore: loaded) == cpu ? .keep : .run(coreType: cpu.core)
        default:
            if loaded.lowercased() == policy.lowercased() { return .keep }
            let wanted = tier(ofCore: policy)
            if wanted > cpu {
                return .refuse("WSSS_BLAS_CORE=\(policy): this CPU cannot run OpenBLAS's \(policy) kernels (they need \(wanted), the CPU and OS offer \(cpu)); use auto")
            }
            return .run(coreType: policy)
        }
    }

    /// Re-executes the current program with the chosen kernels when they differ from the loaded
    /// ones (at most once). Call first thing in `main`. Returns a line describing the choice.
    @discardableResult
    public static func apply() -> String {
        let env = ProcessInfo.processInfo.environment
        let policy = env["WSSS_BLAS_CORE"] ?? "auto"
        let loaded = EngineInfo.blasCore
        let cpu = cpuTier
        if env[marker] == nil {
            let choice = decision(policy: policy, loaded: loaded, cpu: cpu)
            if case .refuse(let message) = choice {
                let tool = CommandLine.arguments.first.map { URL(fileURLWithPath: $0).lastPathComponent } ?? "wsss"
                FileHandle.standardError.write(Data("error: \(tool): \(message)\n".utf8))
                exit(2)
            }
            let setTimeout = env["OPENBLAS_THREAD_TIMEOUT"] == nil
            if choice != .keep || setTimeout {
                if case .run(let coreType) = choice {
                    if let coreType { setenv("OPENBLAS_CORETYPE", coreType, 1) } else { unsetenv("OPENBLAS_CORETYPE") }
                }
                if setTimeout { setenv("OPENBLAS_THREAD_TIMEOUT", threadTimeout, 1) }
                setenv(marker, "1", 1)
                execv("/proc/self/exe", CommandLine.unsafeArgv)
                // Only reached when exec fails: carry on with the loaded kernels.
            }
        }
        let timeout = ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] ?? "default"
        return "OpenBLAS core \(loaded) (policy \(policy), CPU \(cpu)), \(openblas_get_num_threads()) threads, thread timeout 2^\(timeout)"
    }
}
