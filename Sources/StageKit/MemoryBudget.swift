import Foundation

/// Refuses, before allocating, work whose size a parameter sets beyond what the machine can hold:
/// one error that names the parameter, instead of an allocation failure and a stack dump.
public enum MemoryBudget {
    /// WSSS_MEMORY_LIMIT_MB when set (e.g. a cluster job's limit), else the physical memory.
    public static var limitBytes: Double {
        if let text = ProcessInfo.processInfo.environment["WSSS_MEMORY_LIMIT_MB"], let mb = Double(text), mb > 0 { return mb * 1_048_576 }
        return Double(ProcessInfo.processInfo.physicalMemory)
    }

    /// Throws when `bytes` (an estimate of what `parameter` makes the stage hold at once) exceeds the limit.
    public static func check(bytes: Double, parameter: String, what: String) throws {
        let limit = limitBytes
        guard bytes.isFinite, bytes <= limit else {
            throw StageError("parameter '\(parameter)' asks for \(what), about \(gigabytes(bytes)) of memory; "
                             + "this machine allows \(gigabytes(limit)) (WSSS_MEMORY_LIMIT_MB): lower it")
        }
    }

    static func gigabytes(_ bytes: Double) -> String {
        bytes.isFinite ? String(format: "%.1f GB", bytes / 1_073_741_824) : "unbounded"
    }
}
