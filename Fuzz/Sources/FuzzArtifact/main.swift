import ArtifactStore
import Foundation
import Datasets
import FuzzSupport
import Localization
import Training

// The artifact readers on one HDF5 file: the generic reader and listing (`wsss show`), a dataset
// (every split, the first items of each), class maps (cams), label maps, and a checkpoint.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    HDF5Limits.maxReadBytes = 256 << 20  // a larger declared dataset is refused, not allocated
    Seal.remembersVerifiedFiles = false
    let path = FuzzInput.file(start, count, suffix: ".h5")
    // As given: a mutated sealed file is refused by its seal (this exercises the seal's reader).
    readEverything(path)
    // Sealed again after the mutation, as a file crafted to pass the seal would be: this reaches
    // libhdf5 and the readers with damaged structure (README "Fuzzing").
    if count >= Seal.blockSize, Data(bytes: start!, count: Seal.magic.utf8.count) == Data(Seal.magic.utf8) {
        do { try Seal.write(path) } catch { FuzzInput.expect(error, names: path, "Seal.write") }
        readEverything(path)
    }
    return 0
}

private func readEverything(_ path: String) {
    let items = 0..<4
    check(path, "ArtifactReader") {
        let reader = try ArtifactReader(path: path, kind: nil)
        _ = try reader.root.datasetSummaries()
    }
    check(path, "DatasetReader") {
        let reader = try DatasetReader(path: path)
        for name in reader.splitNames {
            let split = try reader.split(name)
            for index in items where index < split.count {
                _ = try split.size(index)
                _ = try split.image(index)
                _ = try split.mask(index)
                _ = try split.labels(index)
            }
        }
    }
    check(path, "ClassMapsReader") {
        let reader = try ClassMapsReader(path: path)
        for index in items where index < reader.count { _ = try reader.maps(index) }
    }
    check(path, "LabelMapsReader") {
        let reader = try LabelMapsReader(path: path, kind: .labels)
        for index in items where index < reader.count { _ = try reader.labels(index) }
    }
    check(path, "Checkpoint") {
        let checkpoint = try Checkpoint(path: path)
        _ = try checkpoint.tensors()
    }
}

private func check(_ path: String, _ what: String, _ body: () throws -> Void) {
    do { try body() } catch { FuzzInput.expect(error, names: path, what) }
}

FuzzDriver.run(fuzzTest)
