import ArtifactStore
import TestSupport
import XCTest
@testable import Engine

/// AdamW against torch.optim.AdamW: two steps with four parameter groups, recorded by
/// Tests/Fixtures/make_parity_fixtures.py in Fixtures/vit_parity.h5.
final class AdamWParityTests: XCTestCase {
    static var fixturePath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/vit_parity.h5").path
    }

    func testTwoStepsMatchTorch() throws {
        let file = try HDF5File.open(Self.fixturePath)
        let root = try file.root
        let weights = try root.group("weights")
        let adam = try root.group("adamw")
        let names = try weights.childNames()
        XCTAssertEqual(names.count, 33)

        // Our grouping rule must put every parameter where the PyTorch script did.
        let groupNames = ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]
        var expectedGroup: [String: Int] = [:]
        for (index, key) in groupNames.enumerated() {
            for name in try adam.stringAttribute("group_" + key).split(separator: ",") { expectedGroup[String(name)] = index }
        }
        var values: [[Float]] = []
        var parameters: [OptimizedParameter] = []
        for name in names {
            let w = try weights.read(name, as: Float.self)
            let group = ParameterGrouping.group(name: name, shape: w.shape)
            XCTAssertEqual(group, expectedGroup[name], name)
            values.append(w.values)
            parameters.append(OptimizedParameter(name: name, count: w.count, group: group))
        }
        let settings = AdamW.Settings(lr: try adam.doubleAttribute("lr"), beta1: try adam.doubleAttribute("beta1"),
                                      beta2: try adam.doubleAttribute("beta2"), eps: try adam.doubleAttribute("eps"))
        let optimizer = AdamW(settings: settings,
                              groups: ParameterGrouping.groups(weightDecay: try adam.doubleAttribute("weight_decay"),
                                                               headLRMultiplier: try adam.doubleAttribute("head_lr_mult")),
                              parameters: parameters)
        let initial = values
        for (stepName, gradGroup) in [("step1", "grads"), ("step2", "adamw/grads2")] {
            let before = values
            let grads = try names.map { try root.group(gradGroup).read($0, as: Float.self).values }
            applyStep(optimizer, &values, grads)
            for (index, name) in names.enumerated() {
                let expected = try adam.group(stepName).read(name, as: Float.self).values
                // Compare the update (after - before), not the weights, which would hide it; the
                // fixture's float32 rounding of the weights bounds what can be resolved.
                var worst: Float = 0, scale: Float = 0
                for i in 0..<expected.count {
                    let ours = values[index][i] - before[index][i]
                    let theirs = expected[i] - before[index][i]
                    worst = max(worst, abs(ours - theirs))
                    scale = max(scale, abs(theirs))
                }
                XCTAssertGreaterThan(scale, 0, "\(stepName) \(name) did not move")
                XCTAssertLessThan(worst / scale, 1e-3, "\(stepName) \(name)")
                // Continue from torch's weights so step 2 starts from the same point.
                values[index] = expected
            }
        }
        XCTAssertEqual(optimizer.stepCount, 2)
        XCTAssertNotEqual(initial[0], values[0])
    }

    func testGlobalNormMatchesTorch() throws {
        let root = try HDF5File.open(Self.fixturePath).root
        let grads = try root.group("grads")
        let arrays = try grads.childNames().map { try grads.read($0, as: Float.self).values }
        let norm = arrays.withPointers { GradientTools.globalNorm($0.map { (UnsafePointer($0.pointer), $0.count) }) }
        XCTAssertEqual(norm, try grads.doubleAttribute("global_norm"), accuracy: 1e-5 * norm)
    }

    private func applyStep(_ optimizer: AdamW, _ values: inout [[Float]], _ grads: [[Float]]) {
        var valueArrays = values
        valueArrays.withMutablePointers { valuePointers in
            grads.withPointers { gradPointers in
                optimizer.step(values: valuePointers.map(\.pointer), gradients: gradPointers.map { UnsafePointer($0.pointer) })
            }
        }
        values = valueArrays
    }
}

extension Array where Element == [Float] {
    /// Calls `body` with stable pointers into every inner array (read-only use).
    func withPointers<R>(_ body: ([(pointer: UnsafeMutablePointer<Float>, count: Int)]) -> R) -> R {
        var copy = self
        return copy.withMutablePointers(body)
    }

    mutating func withMutablePointers<R>(_ body: ([(pointer: UnsafeMutablePointer<Float>, count: Int)]) -> R) -> R {
        var pointers: [(pointer: UnsafeMutablePointer<Float>, count: Int)] = []
        var buffers: [UnsafeMutablePointer<Float>] = []
        for inner in self {
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(inner.count, 1))
            inner.withUnsafeBufferPointer { buffer.initialize(from: $0.baseAddress!, count: inner.count) }
            buffers.append(buffer)
            pointers.append((buffer, inner.count))
        }
        defer { buffers.forEach { $0.deallocate() } }
        let result = body(pointers)
        for index in indices {
            self[index] = [Float](UnsafeBufferPointer(start: buffers[index], count: self[index].count))
        }
        return result
    }
}
