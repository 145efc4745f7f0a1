import Primitives
import ArtifactStore
@testable import FSR
@testable import SingleStage
import TestSupport
import XCTest
@testable import Engine

typealias DHead = FSRHeadOf<Double>

final class SelfDistillationTests: XCTestCase {
    // MARK: Distillation loss

    /// Softmax in plain Double, for independent expectations.
    func softmax(_ x: [Double]) -> [Double] {
        let m = x.max()!
        let e = x.map { exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    func testCrossEntropyMatchesTheDefinitionAndItsGradientFiniteDifferences() {
        var rng = SplitMix64(seed: 1)
        let rows = 3, cols = 7
        let studentT = 0.1, teacherT = 0.05
        let student = randomTensor([rows, cols], &rng), teacherLogits = randomTensor([rows, cols], &rng)
        let centre = randomTensor([cols], &rng, std: 0.3)
        let weights = DTensor(shape: [rows], values: [0.5, 0.2, 1.5])
        let targets = DTensor(shape: [rows, cols])
        SelfDistillation.teacherProbabilities(logits: teacherLogits.data, centre: centre.data, rows: rows, cols: cols,
                                              temperature: teacherT, into: targets.data)
        withExtendedLifetime(centre) {}
        // Targets: softmax((t - c) / tau_t), computed independently.
        var expected = 0.0
        for r in 0..<rows {
            let t = softmax((0..<cols).map { (teacherLogits[r, $0] - centre[$0]) / teacherT })
            for k in 0..<cols { XCTAssertEqual(targets[r, k], t[k], accuracy: 1e-12) }
            let s = softmax((0..<cols).map { student[r, $0] / studentT })
            expected += weights[r] * -(0..<cols).reduce(0.0) { $0 + t[$1] * log(s[$1]) }
        }
        let grad = DTensor(shape: [rows, cols])
        let loss = SelfDistillation.crossEntropy(student: student.data, teacher: targets.data, rowWeights: weights.data, rows: rows, cols: cols,
                                                 studentTemperature: studentT, dStudent: grad.data)
        XCTAssertEqual(loss, expected, accuracy: 1e-10)
        checkGradient("student logits", input: student, analytic: grad) {
            SelfDistillation.crossEntropy(student: student.data, teacher: targets.data, rowWeights: weights.data, rows: rows, cols: cols,
                                          studentTemperature: studentT)
        }
    }

    /// Teacher logits t = s * tau_t / tau_s with zero centre give the student's own distribution
    /// as target: the loss is its entropy, the minimum over student logits, with zero gradient.
    func testIdenticalDistributionsGiveTheEntropyAndZeroGradient() {
        var rng = SplitMix64(seed: 2)
        let rows = 2, cols = 6, studentT = 0.1, teacherT = 0.04
        let student = randomTensor([rows, cols], &rng, std: 0.2)
        let teacherLogits = DTensor(shape: [rows, cols])
        for i in 0..<student.count { teacherLogits.data[i] = student.data[i] * teacherT / studentT }
        let targets = DTensor(shape: [rows, cols])
        let zeroCentre = DTensor(shape: [cols])
        SelfDistillation.teacherProbabilities(logits: teacherLogits.data, centre: zeroCentre.data, rows: rows, cols: cols,
                                              temperature: teacherT, into: targets.data)
        withExtendedLifetime(zeroCentre) {}
        let grad = DTensor(shape: [rows, cols])
        let loss = SelfDistillation.crossEntropy(student: student.data, teacher: targets.data, rowWeights: nil, rows: rows, cols: cols,
                                                 studentTemperature: studentT, dStudent: grad.data)
        var entropy = 0.0
        for r in 0..<rows {
            let p = softmax((0..<cols).map { student[r, $0] / studentT })
            entropy -= p.reduce(0.0) { $0 + $1 * log($1) }
        }
        XCTAssertEqual(loss, entropy, accuracy: 1e-10)
        XCTAssertLessThan(maxAbs(grad), 1e-12)
        // Any other student gives a larger cross-entropy (Gibbs' inequality).
        for _ in 0..<5 {
            let other = student.clone()
            for i in 0..<other.count { other.data[i] += 0.05 * rng.normal() }
            let l = SelfDistillation.crossEntropy(student: other.data, teacher: targets.data, rowWeights: nil, rows: rows, cols: cols,
                                                  studentTemperature: studentT)
            XCTAssertGreaterThan(l, entropy)
        }
    }

    func testCentreIsARunningMeanAndAConstantCentreChangesNothing() {
        let centre = DTensor(shape: [3])
        let rows = DTensor(shape: [2, 3], values: [1, 2, 3, 3, 4, 5])  // mean 2, 3, 4
        SelfDistillation.updateCentre(centre.data, rows: rows.data, count: 2, cols: 3, momentum: 0.9)
        assertAllClose(centre.toArray(), [0.2, 0.3, 0.4], accuracy: 1e-12)
        SelfDistillation.updateCentre(centre.data, rows: rows.data, count: 2, cols: 3, momentum: 0.9)
        assertAllClose(centre.toArray(), [0.38, 0.57, 0.76], accuracy: 1e-12)
        // Softmax is shift invariant: a centre with equal entries leaves the targets as they are.
        let logits = DTensor(shape: [1, 3], values: [0.3, -0.2, 0.5])
        let a = DTensor(shape: [1, 3]), b = DTensor(shape: [1, 3])
        SelfDistillation.teacherProbabilities(logits: logits.data, centre: nil, rows: 1, cols: 3, temperature: 0.07, into: a.data)
        let constant = DTensor(shape: [3], values: [2, 2, 2]), skewed = DTensor(shape: [3], values: [0, 0, 0.1])
        SelfDistillation.teacherProbabilities(logits: logits.data, centre: constant.data, rows: 1, cols: 3, temperature: 0.07, into: b.data)
        XCTAssertLessThan(maxAbsDiff(a, b), 1e-12)
        // A centre that is not constant does change them (it is subtracted before the softmax).
        SelfDistillation.teacherProbabilities(logits: logits.data, centre: skewed.data, rows: 1, cols: 3, temperature: 0.07, into: b.data)
        withExtendedLifetime((constant, skewed)) {}
        XCTAssertGreaterThan(maxAbsDiff(a, b), 0.1)
    }

    // MARK: Head

    let config = FSRHeadConfig(dim: 8, heads: 2, blocks: 2, mlpRatio: 2, projectorHidden: 6, bottleneck: 5, outDim: 7)

    func param(_ head: DHead, _ name: String) -> ParameterOf<Double> { head.parameterList.first { $0.name == "fsr." + name }! }

    func testProjectorGradients() throws {
        var rng = SplitMix64(seed: 3)
        let head = try DHead(config: config, seed: 4)
        // Non-trivial biases and last-layer norms.
        for q in head.parameterList where q.value.rank == 1 { q.value.fillNormal(std: 0.1, rng: &rng) }
        for q in head.parameterList where q.value.rank == 2 { q.value.fillNormal(std: 0.4, rng: &rng) }
        let x = randomTensor([4, 8], &rng)
        let probe = randomTensor([4, 7], &rng)
        let cache = head.project(x)
        // Output rows: unit bottleneck vectors times unit weight rows, so |logit| <= 1.
        XCTAssertLessThanOrEqual(maxAbs(cache.output), 1 + 1e-12)
        let dX = DTensor(shape: [4, 8])
        head.zeroGrad()
        head.projectBackward(cache, dOut: probe, dInput: dX)
        let loss = { dot(head.project(x).output, probe) }
        checkGradient("projector input", input: x, analytic: dX, loss: loss)
        for name in ["projector.mlp.0.weight", "projector.mlp.0.bias", "projector.mlp.2.weight", "projector.mlp.4.weight",
                     "projector.mlp.4.bias", "projector.last_layer.weight_v"] {
            let q = param(head, name)
            checkGradient(name, input: q.value, analytic: q.grad.clone(), indices: sampleIndices(q.value.count, 12, &rng), loss: loss)
        }
    }

    func testAggregationGradientsAndMaskedTokensAreIgnored() throws {
        var rng = SplitMix64(seed: 5)
        let head = try DHead(config: config, seed: 6)
        for q in head.parameterList where q.value.rank == 1 { q.value.fillNormal(std: 0.1, rng: &rng) }
        for q in head.parameterList where q.value.rank >= 2 { q.value.fillNormal(std: 0.4, rng: &rng) }
        let B = 2, N = 5
        let x = randomTensor([B, N, 8], &rng)
        let keep = [true, false, true, true, false, false, true, true, true, true]
        let probe = randomTensor([B, 8], &rng)
        let cache = head.aggregate(patches: x, keep: keep)
        let dX = DTensor(shape: [B, N, 8])
        head.zeroGrad()
        head.aggregateBackward(cache, dOut: probe, dPatches: dX)
        let loss = { dot(head.aggregate(patches: x, keep: keep).output, probe) }
        checkGradient("patches", input: x, analytic: dX, loss: loss)
        for name in ["aggregate.cls_token", "aggregate.blocks.0.norm1.weight", "aggregate.blocks.0.attn.q.weight",
                     "aggregate.blocks.0.attn.kv.weight", "aggregate.blocks.1.attn.kv.bias", "aggregate.blocks.1.attn.proj.weight",
                     "aggregate.blocks.1.norm2.bias", "aggregate.blocks.1.mlp.fc1.weight", "aggregate.blocks.0.mlp.fc2.weight",
                     "aggregate.norm.weight"] {
            let q = param(head, name)
            checkGradient(name, input: q.value, analytic: q.grad.clone(), indices: sampleIndices(q.value.count, 10, &rng), loss: loss)
        }
        // Masked tokens get no attention: no gradient, and changing them changes nothing.
        for (r, kept) in keep.enumerated() where !kept {
            for j in 0..<8 { XCTAssertEqual(dX.data[r * 8 + j], 0) }
        }
        let before = cache.output.clone()
        for (r, kept) in keep.enumerated() where !kept { for j in 0..<8 { x.data[r * 8 + j] += 3 } }
        XCTAssertEqual(maxAbsDiff(head.aggregate(patches: x, keep: keep).output, before), 0)
        // Without a mask every token counts.
        XCTAssertGreaterThan(maxAbsDiff(head.aggregate(patches: x).output, before), 1e-6)
    }

    // MARK: PyTorch parity

    /// The head and both FSR losses against PyTorch (float64): Fixtures/fsr_parity.h5, written by
    /// Tests/Fixtures/make_fsr_fixtures.py. The Swift side composes them as SingleStageTrainer does.
    func testHeadAndLossesMatchPyTorch() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/fsr_parity.h5").path
        let root = try HDF5File.open(path).root
        let cfg = try root.group("config")
        func int(_ key: String) throws -> Int { Int(try cfg.int64Attribute(key)) }
        let config = FSRHeadConfig(dim: try int("dim"), heads: try int("heads"), blocks: try int("blocks"), mlpRatio: try int("mlp_ratio"),
                                   projectorHidden: try int("projector_hidden"), bottleneck: try int("bottleneck"), outDim: try int("out_dim"),
                                   layerNormEps: try cfg.doubleAttribute("layernorm_eps"))
        let head = try DHead(config: config, seed: 0)
        let weights = try root.group("weights")
        XCTAssertEqual(Set(try weights.childNames()), Set(head.parameterList.map(\.name)))
        for q in head.parameterList {
            let array = try weights.read(q.name, as: Double.self)
            XCTAssertEqual(array.shape, q.value.shape, q.name)
            for i in 0..<q.value.count { q.value.data[i] = array.values[i] }
        }
        func tensor(_ name: String) throws -> DTensor {
            let a = try root.read(name, as: Double.self)
            return DTensor(shape: a.shape, values: a.values)
        }
        func close(_ ours: DTensor, _ reference: DTensor, _ what: String) {
            XCTAssertEqual(ours.count, reference.count, what)
            let scale = maxAbs(reference)
            XCTAssertGreaterThan(scale, 0, what)
            XCTAssertLessThan(maxAbsDiff(ours, reference) / scale, 1e-10, what)
        }
        let x = try tensor("input/patches")
        let B = x.shape[0], N = x.shape[1], D = x.shape[2], O = config.outDim
        let keep = try root.read("input/keep", as: UInt8.self).values.map { $0 != 0 }
        let masked = keep.indices.filter { !keep[$0] }
        let teacherClass = try tensor("input/teacher_class"), teacherPatch = try tensor("input/teacher_patch")
        let classCentre = try tensor("input/class_centre"), patchCentre = try tensor("input/patch_centre")
        let tauT = try root.doubleAttribute("teacher_temp"), tauS = try root.doubleAttribute("student_temp")
        let wc = try root.doubleAttribute("class_weight"), wu = try root.doubleAttribute("patch_weight")

        head.zeroGrad()
        let agg = head.aggregate(patches: x, keep: keep)
        close(agg.output, try tensor("output/aggregated"), "aggregated tokens")
        let rows = DTensor(shape: [B + masked.count, D])
        rows.data.update(from: agg.output.data, count: B * D)
        for (i, r) in masked.enumerated() { (rows.data + (B + i) * D).update(from: x.data + r * D, count: D) }
        let projected = head.project(rows)
        close(projected.output, try tensor("output/projected"), "projector outputs")

        let targets = DTensor(shape: [B + masked.count, O])
        SelfDistillation.teacherProbabilities(logits: teacherClass.data, centre: classCentre.data, rows: B, cols: O, temperature: tauT, into: targets.data)
        for (i, r) in masked.enumerated() {
            SelfDistillation.teacherProbabilities(logits: teacherPatch.data + r * O, centre: patchCentre.data, rows: 1, cols: O,
                                                  temperature: tauT, into: targets.data + (B + i) * O)
        }
        var perImage = [Int](repeating: 0, count: B)
        for r in masked { perImage[r / N] += 1 }
        let weights2 = DTensor(shape: [B + masked.count])
        for b in 0..<B { weights2.data[b] = wc / Double(B) }
        for (i, r) in masked.enumerated() { weights2.data[B + i] = wu / Double(B * perImage[r / N]) }
        let dProjected = DTensor(shape: [B + masked.count, O])
        let total = SelfDistillation.crossEntropy(student: projected.output.data, teacher: targets.data, rowWeights: weights2.data,
                                                  rows: B + masked.count, cols: O, studentTemperature: tauS, dStudent: dProjected.data)
        let classLoss = SelfDistillation.crossEntropy(student: projected.output.data, teacher: targets.data, rowWeights: nil, rows: B, cols: O,
                                                      studentTemperature: tauS) / Double(B)
        XCTAssertEqual(total, try root.read("output/total", as: Double.self).values[0], accuracy: 1e-12)
        XCTAssertEqual(classLoss, try root.read("output/class_loss", as: Double.self).values[0], accuracy: 1e-12)

        let dRows = DTensor(shape: [B + masked.count, D])
        head.projectBackward(projected, dOut: dProjected, dInput: dRows)
        let dX = DTensor(shape: [B, N, D])
        for (i, r) in masked.enumerated() { (dX.data + r * D).update(from: dRows.data + (B + i) * D, count: D) }
        head.aggregateBackward(agg, dOut: DTensor(viewOf: dRows, offset: 0, shape: [B, D]), dPatches: dX)
        close(dX, try tensor("output/grad_patches"), "gradient of the patches")
        let grads = try root.group("grads")
        for q in head.parameterList {
            let reference = try grads.read(q.name, as: Double.self)
            close(q.grad, DTensor(shape: reference.shape, values: reference.values), "gradient of \(q.name)")
        }
        withExtendedLifetime((classCentre, patchCentre, weights2)) {}
    }

    // MARK: Masking

    func testNormalisedCAMUsesPresentClassesOnly() {
        // B 1, N 3, C 2: class 0 present with scores 2, -1, 1; class 1 absent with large scores.
        let scores: [Float] = [2, 9, -1, 9, 1, 9]
        let labels: [Float] = [1, 0]
        let cam = UncertaintyMasking.normalisedCAM(patchScores: scores, labels: labels, batch: 1, patches: 3, classes: 2)
        XCTAssertEqual(cam[0], 2 / (2 + 1e-5), accuracy: 1e-6)
        XCTAssertEqual(cam[1], 0)
        XCTAssertEqual(cam[2], 1 / (2 + 1e-5), accuracy: 1e-6)
        let none = UncertaintyMasking.normalisedCAM(patchScores: scores, labels: [0, 0], batch: 1, patches: 3, classes: 2)
        XCTAssertEqual(none, [0, 0, 0])
    }

    /// A 4 x 4 map with six uncertain patches (strictly inside (0.2, 0.7); 0.2 and 0.7 themselves are confident).
    let uncertain: Set<Int> = [2, 5, 7, 10, 13, 15]
    var camMap: [Float] {
        (0..<16).map { i -> Float in
            if uncertain.contains(i) { return [0.3, 0.5, 0.69, 0.21, 0.45, 0.6][uncertain.sorted().firstIndex(of: i)!] }
            return [0.0, 0.1, 0.2, 0.7, 0.9, 1.0][i % 6]
        }
    }

    func masked(_ m: [Bool]) -> Set<Int> { Set(m.indices.filter { m[$0] }) }

    func testUncertaintyMaskPicksTheUncertainTokensFirst() {
        for seed in 0..<5 {
            var rng = SplitMix64(seed: UInt64(seed))
            // Quota floor(16 * 0.375) = 6 = the uncertain count: exactly them.
            let exact = UncertaintyMasking.select(cam: camMap, batch: 1, gridH: 4, gridW: 4, low: 0.2, high: 0.7, ratio: 0.375, strategy: .uncertain, rng: &rng)
            XCTAssertEqual(masked(exact), uncertain)
            // Quota 4: four of them, randomly.
            let fewer = masked(UncertaintyMasking.select(cam: camMap, batch: 1, gridH: 4, gridW: 4, low: 0.2, high: 0.7, ratio: 0.25, strategy: .uncertain, rng: &rng))
            XCTAssertEqual(fewer.count, 4)
            XCTAssertTrue(fewer.isSubset(of: uncertain))
            // Quota 8: all six plus two confident ones.
            let more = masked(UncertaintyMasking.select(cam: camMap, batch: 1, gridH: 4, gridW: 4, low: 0.2, high: 0.7, ratio: 0.5, strategy: .uncertain, rng: &rng))
            XCTAssertEqual(more.count, 8)
            XCTAssertTrue(uncertain.isSubset(of: more))
            // Ratio 0 masks nothing, whatever the map.
            let none = UncertaintyMasking.select(cam: camMap, batch: 1, gridH: 4, gridW: 4, low: 0.2, high: 0.7, ratio: 0, strategy: .uncertain, rng: &rng)
            XCTAssertEqual(masked(none), [])
        }
        // Random masking keeps the quota but ignores the map: over several draws it also masks confident tokens.
        var rng = SplitMix64(seed: 9)
        var outside = 0
        for _ in 0..<10 {
            let m = masked(UncertaintyMasking.select(cam: camMap, batch: 1, gridH: 4, gridW: 4, low: 0.2, high: 0.7, ratio: 0.375, strategy: .random, rng: &rng))
            XCTAssertEqual(m.count, 6)
            outside += m.subtracting(uncertain).count
        }
        XCTAssertGreaterThan(outside, 0)
    }

    func testBlockMaskingDecidesOnTheBlockMaximum() {
        // 2 x 2 blocks of a 4 x 4 grid; only the bottom-right block's maximum (0.5) is uncertain;
        // the top-left block holds an uncertain 0.4 but also a confident 0.9.
        var cam = [Float](repeating: 0.05, count: 16)
        cam[0] = 0.4; cam[1] = 0.9
        cam[10] = 0.5; cam[15] = 0.3
        var rng = SplitMix64(seed: 1)
        let m = UncertaintyMasking.select(cam: cam, batch: 1, gridH: 4, gridW: 4, low: 0.2, high: 0.7, ratio: 0.25, block: 2, strategy: .uncertain, rng: &rng)
        XCTAssertEqual(masked(m), [10, 11, 14, 15])
    }

    // MARK: Trainer

    func tinyTrainer(fsr: Bool, maskRatio: Double = 0.4, warmup: Int = 1, ptcWeight: Double = 0) throws -> SingleStageTrainer {
        let vit = try ViT(config: ViTConfig(imageSize: 16, patchSize: 4, depth: 2, dim: 16, heads: 2, numClasses: 3, maskToken: fsr), seed: 1)
        let decoder = try SegDecoder(config: SegDecoderConfig(inChannels: 16, channels: 8, dilations: [1], numClasses: 4), seed: 2)
        var s = SingleStageSettings()
        s.optimizer.totalSteps = 4
        s.segWarmupSteps = warmup
        s.fsr = fsr
        s.maskRatio = maskRatio
        s.ptcWeight = ptcWeight
        let head = fsr ? try FSRHead(config: FSRHeadConfig(dim: 16, heads: 2, projectorHidden: 12, bottleneck: 6, outDim: 10), seed: 3) : nil
        return try SingleStageTrainer(network: try SegNetwork(backbone: vit, decoder: decoder), head: head, settings: s, seed: 4)
    }

    func testSingleStageStepsWarmUpThenSegmentAndTheTeacherFollowsTheEMA() throws {
        var rng = SplitMix64(seed: 7)
        let view = Tensor(shape: [2, 16, 16, 3]), second = Tensor(shape: [2, 16, 16, 3])
        view.fillNormal(std: 1, rng: &rng)
        second.fillNormal(std: 1, rng: &rng)
        let labels: [Float] = [1, 0, 1, 0, 1, 0]
        let trainer = try tinyTrainer(fsr: true)
        let teacher = trainer.teacher!, student = trainer.network.backbone
        let start = student.parameter(named: "blocks.0.attn.qkv.weight")!.value.toArray()
        var calls = 0
        let pseudo: (ViTActivations) -> [UInt8] = { _ in
            calls += 1
            return (0..<(2 * 16 * 16)).map { (i: Int) -> UInt8 in i % 7 == 0 ? 255 : UInt8(i % 4) }
        }
        let first = try labels.withUnsafeBufferPointer { try trainer.trainStep(view: view, secondView: second, labels: $0.baseAddress!, pseudoLabels: pseudo) }
        XCTAssertEqual(calls, 0, "no pseudo labels during the warm-up")
        XCTAssertEqual(first.segLoss, 0)
        XCTAssertGreaterThan(first.fsrClassLoss, 0)
        XCTAssertGreaterThan(first.fsrPatchLoss, 0)
        XCTAssertEqual(first.maskedFraction, 0.375)  // floor(16 * 0.4) = 6 of 16 tokens per image
        // Teacher = m * start + (1 - m) * student after the step, m the step-0 momentum (0.9995).
        XCTAssertEqual(trainer.settings.momentum(atStep: 0, total: 4), 0.9995, accuracy: 1e-12)
        let m = Float(trainer.settings.momentum(atStep: 0, total: 4))
        let now = student.parameter(named: "blocks.0.attn.qkv.weight")!.value.toArray()
        let t = teacher.parameter(named: "blocks.0.attn.qkv.weight")!.value.toArray()
        XCTAssertNotEqual(now, start)
        for i in stride(from: 0, to: t.count, by: 37) { XCTAssertEqual(t[i], m * start[i] + (1 - m) * now[i], accuracy: 1e-6) }
        let second2 = try labels.withUnsafeBufferPointer { try trainer.trainStep(view: view, secondView: second, labels: $0.baseAddress!, pseudoLabels: pseudo) }
        XCTAssertEqual(calls, 1)
        XCTAssertGreaterThan(second2.segLoss, 0)
        XCTAssertEqual(second2.labelledFraction, Double((0..<512).filter { $0 % 7 != 0 }.count) / 512, accuracy: 1e-12)
        XCTAssertTrue(second2.loss.isFinite)
        // The centres moved off zero.
        XCTAssertGreaterThan(maxAbs(trainer.classCentre!), 0)
        XCTAssertGreaterThan(maxAbs(trainer.patchCentre!), 0)

        // Mask ratio 0: nothing masked, no patch term.
        let unmasked = try tinyTrainer(fsr: true, maskRatio: 0)
        let r = try labels.withUnsafeBufferPointer { try unmasked.trainStep(view: view, secondView: second, labels: $0.baseAddress!, pseudoLabels: pseudo) }
        XCTAssertEqual(r.maskedFraction, 0)
        XCTAssertEqual(r.fsrPatchLoss, 0)

        // The baseline has no teacher and no FSR terms.
        let baseline = try tinyTrainer(fsr: false, warmup: 0)
        XCTAssertNil(baseline.teacher)
        let b = try labels.withUnsafeBufferPointer { try baseline.trainStep(view: view, secondView: nil, labels: $0.baseAddress!, pseudoLabels: pseudo) }
        XCTAssertEqual(b.fsrClassLoss + b.fsrPatchLoss, 0)
        XCTAssertGreaterThan(b.segLoss, 0)
    }

    /// With `ptc_weight`, the patch token contrast runs from the first step (during the
    /// segmentation warm-up too) on the forward's last-layer tokens under the online labels
    /// brought to the token grid, enters the loss with its weight, and training lowers it.
    func testPatchTokenContrastRunsFromTheFirstStepAndTrainingLowersIt() throws {
        var rng = SplitMix64(seed: 9)
        let view = Tensor(shape: [2, 16, 16, 3])
        view.fillNormal(std: 1, rng: &rng)
        let labels: [Float] = [1, 0, 1, 0, 1, 0]
        // Left half class 1, right half background, a band of 255 between.
        let pixels: [UInt8] = (0..<(2 * 16 * 16)).map { (i: Int) -> UInt8 in
            let x = i % 16
            return x < 7 ? 1 : (x < 9 ? 255 : 0)
        }
        let weight = 2.0
        let trainer = try tinyTrainer(fsr: false, warmup: 100, ptcWeight: weight)
        var calls = 0, expected = 0.0
        let pseudo: (ViTActivations) -> [UInt8] = { acts in
            calls += 1
            let tokenLabels = PatchTokenContrast.tokenLabels(pixels, batch: 2, height: 16, width: 16, gridH: acts.gridH, gridW: acts.gridW)
            expected = tokenLabels.withUnsafeBufferPointer {
                PatchTokenContrast.loss(tokens: acts.features.data, labels: $0.baseAddress!, batch: 2, patches: acts.patches, dim: 16)
            }
            return pixels
        }
        var losses: [Double] = []
        for step in 0..<8 {
            let r = try labels.withUnsafeBufferPointer { try trainer.trainStep(view: view, secondView: nil, labels: $0.baseAddress!, pseudoLabels: pseudo) }
            XCTAssertEqual(calls, step + 1, "labels are made at every step while PTC is on")
            XCTAssertEqual(r.segLoss, 0, "segmentation is still warming up")
            XCTAssertEqual(r.ptcLoss, expected, accuracy: 1e-12)
            XCTAssertEqual(r.loss, r.clsLoss + weight * r.ptcLoss, accuracy: 1e-9)
            losses.append(r.ptcLoss)
        }
        XCTAssertLessThan(losses.last!, losses.first! - 0.01, "\(losses)")

        // Off (the default): no labels during the warm-up and no PTC term.
        let off = try tinyTrainer(fsr: false, warmup: 100)
        var offCalls = 0
        let r = try labels.withUnsafeBufferPointer {
            try off.trainStep(view: view, secondView: nil, labels: $0.baseAddress!) { _ in offCalls += 1; return pixels }
        }
        XCTAssertEqual(offCalls, 0)
        XCTAssertEqual(r.ptcLoss, 0)
    }

    /// A non-finite input ends the step with an error naming it, before any weight changes.
    func testNonFiniteLossIsRefusedAndLeavesTheWeights() throws {
        let trainer = try tinyTrainer(fsr: true, warmup: 0)
        let view = Tensor(shape: [2, 16, 16, 3]), second = Tensor(shape: [2, 16, 16, 3])
        view.data[5] = .nan
        let before = trainer.network.parameters.map { $0.value.toArray() }
        let teacherBefore = trainer.teacher!.parameters.map { $0.value.toArray() }
        let labels: [Float] = [1, 0, 0, 0, 1, 1]
        XCTAssertThrowsError(try labels.withUnsafeBufferPointer {
            try trainer.trainStep(view: view, secondView: second, labels: $0.baseAddress!) { _ in [UInt8](repeating: 0, count: 512) }
        }) { error in
            XCTAssertTrue("\(error)".contains("at optimiser step 1"), "\(error)")
        }
        XCTAssertEqual(trainer.network.parameters.map { $0.value.toArray() }, before)
        XCTAssertEqual(trainer.teacher!.parameters.map { $0.value.toArray() }, teacherBefore)
        XCTAssertEqual(trainer.step, 0)
    }

    func testSchedules() {
        var s = SingleStageSettings()
        s.teacherTempWarmup = 0.04
        s.teacherTemp = 0.07
        s.teacherTempWarmupFraction = 0.125
        // 80 steps: linear over the first 10 (0.04 at step 0, 0.07 at step 9), then constant.
        XCTAssertEqual(s.teacherTemperature(atStep: 0, total: 80), 0.04, accuracy: 1e-12)
        XCTAssertEqual(s.teacherTemperature(atStep: 9, total: 80), 0.07, accuracy: 1e-12)
        XCTAssertEqual(s.teacherTemperature(atStep: 3, total: 80), 0.05, accuracy: 1e-12)
        XCTAssertEqual(s.teacherTemperature(atStep: 50, total: 80), 0.07, accuracy: 1e-12)
        // Momentum: cosine from 0.9995 to 1.
        XCTAssertEqual(s.momentum(atStep: 0, total: 11), 0.9995, accuracy: 1e-12)
        XCTAssertEqual(s.momentum(atStep: 5, total: 11), 0.99975, accuracy: 1e-12)
        XCTAssertEqual(s.momentum(atStep: 10, total: 11), 1, accuracy: 1e-12)
    }
}

func assertAllClose(_ a: [Double], _ b: [Double], accuracy: Double, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, file: file, line: line) }
}
