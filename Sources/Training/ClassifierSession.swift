import ArtifactStore
import Datasets
import Engine
import Foundation
import Logging
import Primitives
import StageKit

/// classify-train's run: the model (fresh or from a checkpoint), resuming, the epoch loop with
/// per-epoch metrics, and the checkpoint contents.
public final class ClassifierSession {
    public let trainer: ClassifierTrainer
    public let train: ClassificationBatcher
    public let val: ClassificationBatcher
    public let batch: Int
    public let stepsPerEpoch: Int
    public let seed: Int
    public private(set) var log = TrainingLog()
    /// The first epoch still to train (after a resume, the checkpoint's epochs_completed).
    public private(set) var startEpoch = 0

    public init(trainer: ClassifierTrainer, train: ClassificationBatcher, val: ClassificationBatcher, batch: Int, seed: Int) {
        self.trainer = trainer
        self.train = train
        self.val = val
        self.batch = batch
        stepsPerEpoch = train.count / batch  // the incomplete last batch is dropped (fixed batch shape)
        self.seed = seed
    }

    /// A classifier model: from `initPath` (its configuration, classes and, with a pretrained
    /// stem, normalisation must match), or fresh with a pretrained stem from `stemPath` where
    /// `config` names one. Returns the checkpoint it came from.
    public static func makeModel(config: ViTConfig, normalization: Normalization, classNames: [String], initPath: String?,
                                 stemPath: String?, pretrained: PretrainedViTWeights? = nil, seed: UInt64, xavier: Bool,
                                 log: Logger) throws -> (ViT, Checkpoint?) {
        if let initPath {
            let checkpoint = try Checkpoint(path: initPath)
            var expected = checkpoint.config
            expected.dropPathRate = config.dropPathRate
            guard expected == config else {
                throw StageError("\(initPath): the checkpoint's model (\(try Checkpoint.canonicalJSON(checkpoint.config))) differs from the one the parameters ask for (\(try Checkpoint.canonicalJSON(config))); pass matching model parameters")
            }
            guard checkpoint.classNames == classNames else {
                throw StageError("\(initPath): the checkpoint's classes \(checkpoint.classNames) differ from the dataset's \(classNames)")
            }
            guard checkpoint.normalization == normalization || !config.hasPretrainedStem else {
                throw StageError("\(initPath): the checkpoint's stem expects inputs normalised with \(checkpoint.normalization), the parameters give \(normalization); pass matching norm_mean/norm_std")
            }
            if let stemPath { log.warning("stem_weights \(stemPath) is not used: the stem comes from the init checkpoint") }
            log.info("initialised from \(initPath)")
            return (try checkpoint.makeModel(), checkpoint)
        }
        if let pretrained {
            if let stemPath { log.warning("stem_weights \(stemPath) is not used with a pretrained ViT") }
            log.info("backbone \(pretrained.architecture) from \(pretrained.path), heads fresh")
            return (try pretrained.makeModel(imageSize: config.imageSize, numClasses: config.numClasses, seed: seed,
                                             dropPathRate: config.dropPathRate), nil)
        }
        var stem: PretrainedStem?
        if config.hasPretrainedStem {
            guard let stemPath else {
                throw StageError("stem=\(config.stem) needs the pretrained stem file: pass --in stem_weights=PATH (made by Scripts/import_pretrained.py)")
            }
            let loaded = try PretrainedStem.load(path: stemPath, inputNormalization: normalization)
            guard loaded.architecture.name == config.stem else {
                throw StageError("\(stemPath): holds a \(loaded.architecture.name) stem, stem=\(config.stem) was asked for")
            }
            log.info("stem \(config.stem) from \(stemPath): \(loaded.outChannels) channels at stride \(loaded.architecture.stride), frozen")
            stem = loaded
        } else if let stemPath {
            log.warning("stem_weights \(stemPath) is not used with stem=patch")
        }
        let model: ViT
        do { model = try ViT(config: config, seed: seed, stem: stem) } catch { throw StageError("\(error)") }
        if xavier { ViTInitialization.xavierUniform(model, seed: seed) }
        return (model, nil)
    }

    /// Continues `checkpoint`'s run: optimiser state, EMA, log and epoch count. The optimiser
    /// settings must match except for the schedule's length (a resumed run may extend `epochs`),
    /// and so must the objective: `objectiveParams` are the parameters that define it, compared
    /// with the checkpoint's recorded ones (`methodKey` missing there counts as "baseline").
    public func resume(from checkpoint: Checkpoint, epochs: Int, objectiveParams: [String: Any], methodKey: String = "method") throws {
        guard checkpoint.hasOptimizerState else {
            throw StageError("\(checkpoint.path): has no optimiser state to resume from (it was written with save_optimizer_state=false)")
        }
        let settings = trainer.settings
        var stored = try checkpoint.json("optimizer", as: OptimizerSettings.self)
        stored.totalSteps = settings.totalSteps
        stored.warmupSteps = settings.warmupSteps
        guard stored == settings else {
            throw StageError("\(checkpoint.path): resuming needs the same optimiser settings and schedule; the checkpoint has \(stored), the parameters give \(settings)")
        }
        let state = try checkpoint.optimizerMoments(names: trainer.model.trainableParameters.map(\.name))
        do {
            try trainer.optimizer.restore(stepCount: state.step, moments: state.moments)
        } catch { throw StageError("\(checkpoint.path): \(error)") }
        if let ema = trainer.ema {
            let averages = try checkpoint.tensors("ema_weights")
            for (index, name) in ema.names.enumerated() {
                guard let values = averages[name]?.values, values.count == ema.counts[index] else {
                    throw StageError("\(checkpoint.path): EMA weights lack '\(name)'")
                }
                ema.load(index, from: values)
            }
        }
        // The objective's per-epoch terms continue the stored log, so it must be the same one.
        let storedParams = (try? JSONSerialization.jsonObject(with: Data(checkpoint.reader.provenance.paramsJSON.utf8))) as? [String: Any] ?? [:]
        let keys = objectiveParams.keys.sorted()
        func shown(_ params: [String: Any]) -> String {
            keys.map { "\($0)=\(params[$0].map { "\($0)" } ?? ($0 == methodKey ? "baseline" : "-"))" }.joined(separator: " ")
        }
        let storedMethod = storedParams[methodKey] as? String ?? "baseline"
        let currentMethod = objectiveParams[methodKey] as? String ?? "baseline"
        let same = storedMethod == currentMethod && (currentMethod == "baseline" || keys.allSatisfy { key in
            guard let stored = storedParams[key] as? NSObject, let current = objectiveParams[key] as? NSObject else { return false }
            return stored.isEqual(current)
        })
        guard same else {
            throw StageError("\(checkpoint.path): resuming needs the same training objective; the checkpoint was trained with \(shown(storedParams)), the parameters give \(shown(objectiveParams))")
        }
        log = try TrainingLog.read(from: checkpoint.reader.root)
        startEpoch = try checkpoint.int("epochs_completed")
        guard startEpoch < epochs else {
            throw StageError("\(checkpoint.path): already trained for \(startEpoch) epochs; raise epochs above that to resume")
        }
    }

    /// Probabilities for every image of a split (no augmentation), then metrics.
    public func evaluate(_ data: ClassificationBatcher) throws -> MultiLabelMetrics {
        let classes = data.classes, size = data.size
        let evalBatch = min(batch, max(data.count, 1))
        var scores = [Float](repeating: 0, count: data.count * classes)
        var labelsBuffer = [Float](repeating: 0, count: evalBatch * classes)
        let order = Array(0..<data.count)
        let full = Tensor(shape: [evalBatch, size, size, 3])  // reused; only a short last batch allocates
        var start = 0
        while start < data.count {
            let n = min(evalBatch, data.count - start)
            let input = n == evalBatch ? full : Tensor(shape: [n, size, size, 3])
            try data.fill(order[start..<(start + n)], order: order, images: input, batchLabels: &labelsBuffer,
                          augmentation: nil, seed: 0, epoch: 0)
            scores.withUnsafeMutableBufferPointer { trainer.predict(images: input, into: $0.baseAddress! + start * classes) }
            start += n
        }
        return MultiLabelMetrics.compute(scores: scores, labels: data.labels, classes: classes)
    }

    /// Trains from `startEpoch` up to `epochs`, logging per-epoch losses, objective terms, train
    /// metrics (from the augmented batches as trained on) and val metrics (also of the EMA).
    public func run(epochs: Int, augmentation: AugmentationSettings, log logger: Logger) throws {
        let classes = train.classes, size = train.size
        let images = Tensor(shape: [batch, size, size, 3])
        var batchLabels = [Float](repeating: 0, count: batch * classes)
        var batchScores = [Float](repeating: 0, count: batch * classes)
        let progress = ProgressReporter("classify-train", total: (epochs - startEpoch) * stepsPerEpoch * batch, unit: "img")
        for epoch in startEpoch..<epochs {
            let epochStart = Date()
            var order = Array(0..<train.count)
            var shuffle = SplitMix64(seed: UInt64(seed), stream: UInt64(epoch), index: UInt64.max)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, shuffle.int(in: 0...i)) }
            var lossSum = 0.0, camSum = 0.0, clsSum = 0.0
            var termSums: [String: Double] = [:]
            var seenScores: [Float] = [], seenLabels: [Float] = []
            seenScores.reserveCapacity(stepsPerEpoch * batch * classes)
            for s in 0..<stepsPerEpoch {
                try train.fill(order[(s * batch)..<((s + 1) * batch)], order: order, images: images, batchLabels: &batchLabels,
                               augmentation: augmentation, seed: UInt64(seed), epoch: epoch)
                let result: ClassifierTrainer.StepResult
                do {
                    result = try batchLabels.withUnsafeBufferPointer { labels in
                        try batchScores.withUnsafeMutableBufferPointer { scores in
                            try trainer.trainStep(images: images, labels: labels.baseAddress!, scores: scores.baseAddress!)
                        }
                    }
                } catch let error as TrainingError {
                    throw StageError("training diverged: \(error) in epoch \(epoch + 1), batch \(s + 1) of \(stepsPerEpoch); no checkpoint written (lower lr or clip_grad_norm)")
                }
                lossSum += result.loss
                camSum += result.camLoss
                clsSum += result.clsLoss
                for (name, value) in result.terms { termSums[name, default: 0] += value }
                log.stepLoss.append(result.loss)
                seenScores += batchScores
                seenLabels += batchLabels
                progress.advance(by: batch, note: "epoch \(epoch + 1)/\(epochs) loss \(String(format: "%.4f", result.loss)) lr \(String(format: "%.2e", result.lr))")
            }
            let trainMetrics = MultiLabelMetrics.compute(scores: seenScores, labels: seenLabels, classes: classes)
            let valMetrics = val.count > 0 ? try evaluate(val) : nil
            let steps = Double(stepsPerEpoch)
            log.append("epoch_loss", lossSum / steps)
            log.append("epoch_cam_loss", camSum / steps)
            log.append("epoch_cls_loss", clsSum / steps)
            for name in trainer.objective?.termNames ?? [] { log.append("epoch_\(name)", (termSums[name] ?? .nan) / steps) }
            log.append("train_map", trainMetrics.mAP)
            log.append("train_f1", trainMetrics.macroF1)
            log.append("val_map", valMetrics?.mAP ?? .nan)
            log.append("val_f1", valMetrics?.macroF1 ?? .nan)
            log.append("val_micro_f1", valMetrics?.microF1 ?? .nan)
            log.append("lr", trainer.schedule.lr(atStep: max(trainer.step - 1, 0)))
            var line = "epoch \(epoch + 1)/\(epochs): loss \(String(format: "%.4f", lossSum / steps))"
            if let names = trainer.objective?.termNames {
                line += " (" + names.map { "\($0) \(String(format: "%.4g", (termSums[$0] ?? .nan) / steps))" }.joined(separator: ", ") + ")"
            }
            line += ", train mAP \(String(format: "%.3f", trainMetrics.mAP)) F1 \(String(format: "%.3f", trainMetrics.macroF1))"
            if let valMetrics {
                line += ", val mAP \(String(format: "%.3f", valMetrics.mAP)) F1 \(String(format: "%.3f", valMetrics.macroF1)) (micro \(String(format: "%.3f", valMetrics.microF1)))"
            }
            if trainer.ema != nil, val.count > 0 {
                let emaMetrics = try trainer.withEMAWeights { try evaluate(val) }
                log.append("ema_val_map", emaMetrics.mAP)
                log.append("ema_val_f1", emaMetrics.macroF1)
                line += ", EMA val mAP \(String(format: "%.3f", emaMetrics.mAP)) F1 \(String(format: "%.3f", emaMetrics.macroF1))"
            }
            // The epoch's time goes to the log line only: the checkpoint must not depend on the clock.
            logger.info("\(line) [\(String(format: "%.1f", Date().timeIntervalSince(epochStart))) s]")
        }
    }

    /// The checkpoint of the finished run: weights (with the frozen stem in every weight group,
    /// so either makes a complete model), the EMA, optionally the optimiser state, and the log.
    /// The contents point into live tensors: `body` writes them before this returns.
    public func withContents(_ contents: Checkpoint.Contents, saveOptimizerState: Bool, _ body: (Checkpoint.Contents) throws -> Void) throws {
        var contents = contents
        let model = trainer.model
        let params = model.trainableParameters
        let frozenTensors = model.frozenTensors
        // Frozen parameters (frozen_blocks) and the frozen stem go into every weight group as they are.
        let frozen = model.parameters.filter { model.isFrozen($0.name) }.map { StoredTensor(name: $0.name, tensor: $0.value) }
            + frozenTensors.map { StoredTensor(name: $0.name, tensor: $0.value) }
        contents.groups["weights"] = params.map { StoredTensor(name: $0.name, tensor: $0.value) } + frozen
        if let ema = trainer.ema {
            contents.groups["ema_weights"] = params.enumerated().map { StoredTensor(name: $1.name, shape: $1.value.shape, data: ema.average(of: $0).baseAddress!) } + frozen
        }
        if saveOptimizerState {
            contents.optimizerState = (trainer.step, params.enumerated().map { index, param in
                let (m, v) = trainer.optimizer.moments(of: index)
                return (param.name, param.value.shape, Array(m), Array(v))
            })
        }
        contents.log = log
        try withExtendedLifetime(frozenTensors) { try body(contents) }
    }
}
