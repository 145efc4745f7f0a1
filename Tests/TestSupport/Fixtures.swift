import ArtifactStore
import Engine
import Foundation
import XCTest

/// Opens `Fixtures/<name>` next to the calling test file (fixtures are committed beside their tests).
public func openFixture(_ name: String, testFile: String = #filePath) throws -> HDF5Group {
    let path = URL(fileURLWithPath: testFile).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)").path
    return try HDF5File.open(path).root
}

/// A float32 ViT from a fixture's `config` group (make_parity_fixtures.py layout) and `weights` group.
public func fixtureViT(_ root: HDF5Group) throws -> ViT {
    let cfg = try root.group("config")
    func int(_ key: String) throws -> Int { Int(try cfg.int64Attribute(key)) }
    let config = ViTConfig(imageSize: try int("image_size"), patchSize: try int("patch_size"), depth: try int("depth"),
                           dim: try int("dim"), heads: try int("heads"), mlpRatio: try int("mlp_ratio"),
                           numClasses: try int("num_classes"), layerNormEps: try cfg.doubleAttribute("layernorm_eps"))
    let model = try ViT(config: config, seed: 99)
    let weights = try root.group("weights")
    var state: [String: (shape: [Int], values: [Float])] = [:]
    for name in try weights.childNames() {
        let array = try weights.read(name, as: Float.self)
        state[name] = (array.shape, array.values)
    }
    try model.load(state)
    return model
}

/// Asserts max |ours - reference| / max |reference| < tolerance (one number per tensor, so entries
/// that happen to be near zero do not dominate). An all-zero reference must be matched within
/// `tolerance` absolutely.
public func assertRelativelyClose<S: EngineScalar>(_ ours: UnsafePointer<S>, _ reference: [Double], _ tolerance: Double, _ what: String,
                                                   file: StaticString = #filePath, line: UInt = #line) {
    var worst = 0.0, scale = 0.0
    for i in 0..<reference.count {
        worst = max(worst, abs(Double(ours[i]) - reference[i]))
        scale = max(scale, abs(reference[i]))
    }
    let error = scale > 0 ? worst / scale : worst
    XCTAssertLessThan(error, tolerance, "\(what): relative error \(error)", file: file, line: line)
}

/// Weights after one AdamW step against the reference's `reference`, given the reference's
/// gradients: within 1e-6 absolute where |g| >= 1e-6. AdamW's first step moves a weight by about
/// lr * g / (|g| + eps), i.e. lr * sign(g) unless |g| is near eps; where |g| < 1e-6 that is
/// ill-conditioned in g (float32 rounding of a gradient that cancels decides it), so there only
/// 2 * `lr` (the largest learning rate of the step's groups) is asked. Returns the largest error
/// over the well-conditioned entries.
@discardableResult
public func assertUpdatedWeightsClose(_ ours: UnsafePointer<Float>, _ reference: [Double], gradients: [Double], lr: Double, _ what: String,
                                      file: StaticString = #filePath, line: UInt = #line) -> Double {
    precondition(reference.count == gradients.count)
    var worst = 0.0, worstIll = 0.0
    for i in 0..<reference.count {
        let error = abs(Double(ours[i]) - reference[i])
        if abs(gradients[i]) < 1e-6 { worstIll = max(worstIll, error) } else { worst = max(worst, error) }
    }
    XCTAssertLessThan(worst, 1e-6, "updated \(what): absolute error \(worst)", file: file, line: line)
    XCTAssertLessThanOrEqual(worstIll, 2 * lr, "updated \(what) where |g| < 1e-6: absolute error \(worstIll)", file: file, line: line)
    return worst
}
