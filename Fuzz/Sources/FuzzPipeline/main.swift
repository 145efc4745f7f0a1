import Foundation
import FuzzSupport
import Runner

// The pipeline file parser: YAML, then the pipeline's own checks (keys, stage names, references,
// shared parameters, outputs, the stage graph), as `wsss` reads a file before it runs anything.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let path = FuzzInput.file(start, count, suffix: ".yaml")
    do { _ = try PipelineParser.parse(file: path) } catch { FuzzInput.expect(error, names: path, "PipelineParser.parse") }
    return 0
}

FuzzDriver.run(fuzzTest)
