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
/// - `auto` (default): AVX-512 kernels when /proc/cpuinfo lists avx512f. An inherited
///   OPENBLAS_CORETYPE pin to a non-AVX-512 core (this machine kind pins Haswell) is removed and
///   OpenBLAS detects the core itself, which also checks that the OS enables the AVX-512 state.
///   Measured on this machine kind (AMD EPYC with avx512f, 2 threads, ViT shapes): sgemm runs
///   about 1.6-1.9x faster with the AVX-512 kernels (see `make bench`).
/// - `keep`: use whatever was loaded.
/// - a core name (e.g. `Haswell`, `SkylakeX`): pin that core.
///
/// It also sets OPENBLAS_THREAD_TIMEOUT (read at load too) unless the user did: OpenBLAS's idle
/// worker threads otherwise spin in sched_yield for 2^28 cycles after every product, taking the
/// cores from the engine's own threads in the elementwise kernels between products (perf: 11 % of
/// a training step in sched_yield). With 2^4 they sleep at once; measured on the default model
/// (bench-train-step, 2 threads): 268-280 img/s against 220-256 without.
public enum BLASCorePolicy {
    static let threadTimeout = "4"
    static let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    static let marker = "WSSS_BLAS_CORE_APPLIED"

    public static var loadedCore: String { String(cString: openblas_get_corename()) }

    public static var cpuHasAVX512F: Bool {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
        return text.split(separator: "\n").contains { $0.hasPrefix("flags") && $0.split(separator: " ").contains("avx512f") }
    }

    /// What `apply()` would change: the OPENBLAS_CORETYPE value to run with (nil = unset, let
    /// OpenBLAS detect), or no change.
    static func decision(policy: String, pinned: String?, loaded: String, hasAVX512: Bool) -> (change: Bool, coreType: String?) {
        switch policy.lowercased() {
        case "keep":
            return (false, pinned)
        case "auto", "":
            if hasAVX512, pinned != nil, !avx512Cores.contains(loaded.lowercased()) { return (true, nil) }
            return (false, pinned)
        default:
            if loaded.lowercased() == policy.lowercased() { return (false, pinned) }
            return (true, policy)
        }
    }

    /// Re-executes the current program with the chosen kernels when they differ from the loaded
    /// ones (at most once). Call first thing in `main`. Returns a line describing the choice.
    @discardableResult
    public static func apply() -> String {
        let env = ProcessInfo.processInfo.environment
        let policy = env["WSSS_BLAS_CORE"] ?? "auto"
        let loaded = loadedCore
        if env[marker] == nil {
            let (change, coreType) = decision(policy: policy, pinned: env["OPENBLAS_CORETYPE"], loaded: loaded, hasAVX512: cpuHasAVX512F)
            let setTimeout = env["OPENBLAS_THREAD_TIMEOUT"] == nil
            if change || setTimeout {
                if change { if let coreType { setenv("OPENBLAS_CORETYPE", coreType, 1) } else { unsetenv("OPENBLAS_CORETYPE") } }
                if setTimeout { setenv("OPENBLAS_THREAD_TIMEOUT", threadTimeout, 1) }
                setenv(marker, "1", 1)
                execv("/proc/self/exe", CommandLine.unsafeArgv)
                // Only reached when exec fails: carry on with the loaded kernels.
            }
        }
        let timeout = ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] ?? "default"
        return "OpenBLAS core \(loaded) (policy \(policy), avx512f \(cpuHasAVX512F ? "yes" : "no")), \(openblas_get_num_threads()) threads, thread timeout 2^\(timeout)"
    }
}
