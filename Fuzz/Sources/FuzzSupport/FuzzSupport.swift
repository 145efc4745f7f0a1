import Foundation

/// What every fuzz target shares: the input goes to a file (the readers under test take paths),
/// and whatever they throw must name that file. A crash, an abort, a leak or a precondition
/// failure is a finding; a thrown error that names the file is the expected outcome of bad input.
public enum FuzzInput {
    /// Writes the input to one scratch file per process (reused across runs) and returns its path.
    public static func file(_ start: UnsafeRawPointer?, _ count: Int, suffix: String) -> String {
        let path = NSTemporaryDirectory() + "wsss-fuzz-\(getpid())\(suffix)"
        let data = start.map { Data(bytes: $0, count: count) } ?? Data()
        guard FileManager.default.createFile(atPath: path, contents: data) else {
            fatalError("fuzz harness cannot write its scratch file \(path)")
        }
        return path
    }

    /// A thrown error must be one message that names the file: anything else is a finding.
    public static func expect(_ error: Error, names path: String, _ what: String) {
        let text = String(describing: error)
        if !text.contains(path) {
            fatalError("\(what): error does not name \(path): \(text)")
        }
    }
}

/// libFuzzer's entry for programs that keep their own `main` (SwiftPM links every executable
/// target's `main.swift` as the program's entry, so the target calls this instead of relying on
/// libFuzzer's `main`): runs the fuzzing loop with the command-line flags and returns its status.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt
) -> CInt

public enum FuzzDriver {
    /// Runs libFuzzer on `test` (an empty input arrives as a null pointer and a count of 0).
    public static func run(_ test: @convention(c) (UnsafeRawPointer?, Int) -> CInt) -> Never {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, test))
    }
}
