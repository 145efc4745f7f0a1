import Foundation
import XCTest

/// A stage's cache key includes its executable's content, so code linked into a stage that never
/// runs it still makes that stage rerun when it changes. Each method family is its own module
/// (Sources/Methods/<family>), and a stage links only the families it can run: an edit to FSR, for
/// example, leaves the classifier, multi-stage and fully supervised stages cached.
final class ModuleBoundaryTests: XCTestCase {
    /// Which method modules each stage executable may contain (Swift mangles a module's symbols
    /// with "$s" + length + name, so a linked module leaves its name in the symbol table).
    static let methodModules = ["CAM", "AReAM", "ACR", "CAMRefinement", "FSR", "SingleStage"]
    static let allowed: [String: Set<String>] = [
        "prepare-data": [], "evaluate": [], "pseudo-label": [], "psa-refine": [], "seg-train": [],
        "classify-train": ["AReAM", "ACR"],
        "extract-attention": ["CAM"],
        "cam-refine": ["AReAM", "ACR", "CAMRefinement"],
        "single-stage-train": ["FSR", "SingleStage"],
    ]

    func testStagesLinkOnlyTheMethodsTheyRun() throws {
        for (stage, allowed) in Self.allowed.sorted(by: { $0.key < $1.key }) {
            let binary = try Data(contentsOf: StageHarness.binFolder.appendingPathComponent(stage))
            for module in Self.methodModules {
                let linked = binary.range(of: Data("$s\(module.utf8.count)\(module)".utf8)) != nil
                XCTAssertEqual(linked, allowed.contains(module),
                               "\(stage) \(linked ? "links" : "does not link") the \(module) module; expected \(allowed.sorted())")
            }
        }
    }
}
