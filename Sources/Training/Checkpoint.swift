import ArtifactStore
import Engine
import Foundation

// Checkpoint artifacts (kind "checkpoint", format version 1): one layout for the classifier
// (classify-train), the segmenter (seg-train) and the single-stage network (single-stage-train)
// =================================================================================
//
//     /                  provenance (kind, format_version, producer, params, inputs, created_at)
//                        model_config   JSON of ViTConfig (snake_case keys)
//                        normalization  JSON {"mean": [3], "std": [3]}: inputs are (rgb/255 - mean) / std
//                        class_names    JSON array of the C foreground class names (the dataset's)
//                        optimizer      JSON of the trainer's settings (OptimizerSettings for the
//                                       classifier, SegOptimizerSettings for the segmenters)
//                        augmentation   JSON of AugmentationSettings
//                        seed, epochs_completed, steps_completed   int64
//                        blas           the OpenBLAS configuration line
//                        segmenters:    decoder_config (SegDecoderConfig JSON; the network predicts
//                                       0...C), supervision
//                        stage-specific attributes (classifier: method, train_images, val_images;
//                                       single stage: method, single_stage,
//                                       pseudo_labels and with FSR fsr_head_config, all JSON)
//     /weights/<name>    float32, PyTorch state-dict names and shapes (cam_head.weight is [C, D]);
//                        decoder weights under decoder.*; a model with a pretrained stem also stores
//                        the frozen stem here as stem.* (ViT.frozenTensors), in ema_weights too
//     /ema_weights/<name>      the exponential moving average of the weights (classifier with
//                              ema_decay > 0; single-stage FSR: the EMA teacher's ViT)
//     /fsr_weights/<name>, /fsr_ema_weights/<name>   single-stage FSR: student and teacher FSR heads
//     /optimizer/m/<name>, /optimizer/v/<name>   AdamW moments (for resuming), attribute step
//     /log/...           training log (TrainingLog): per-epoch 1-D float64 arrays (epoch_loss,
//                        train_map, val_map, val_f1, val_miou, lr, ...) and step_loss; no wall-clock
//                        times (the log lines have them), so a rerun writes the same bytes

/// A named float32 array to store; the caller keeps `data` alive until `Checkpoint.write` returns.
public struct StoredTensor {
    public var name: String
    public var shape: [Int]
    public var data: UnsafePointer<Float>
    public init(name: String, shape: [Int], data: UnsafePointer<Float>) {
        self.name = name
        self.shape = shape
        self.data = data
    }
    public init(name: String, tensor: Tensor) { self.init(name: name, shape: tensor.shape, data: tensor.data) }
}

/// An opened checkpoint (layout above), and the one writer of that layout.
public final class Checkpoint {
    public static let formatVersion = 1

    public let reader: ArtifactReader
    public let config: ViTConfig
    public let normalization: Normalization
    public let classNames: [String]
    public var path: String { reader.path }

    public init(path: String) throws {
        reader = try ArtifactReader(path: path, kind: .checkpoint, versions: 1...Checkpoint.formatVersion)
        let root = reader.root
        config = try Checkpoint.readJSON(root, "model_config", as: ViTConfig.self)
        do { try config.validate() } catch { throw StoreError(path: path, "\(error)") }
        normalization = try Checkpoint.readJSON(root, "normalization", as: Normalization.self)
        guard normalization.mean.count == 3, normalization.std.count == 3, normalization.std.allSatisfy({ $0 > 0 }) else {
            throw StoreError(path: path, "normalization needs 3 means and 3 positive standard deviations")
        }
        classNames = try Checkpoint.readJSON(root, "class_names", as: [String].self)
        guard classNames.count == config.numClasses else {
            throw StoreError(path: path, "class_names lists \(classNames.count) classes but the model has \(config.numClasses)")
        }
    }

    public var hasEMAWeights: Bool { reader.root.contains("ema_weights") }
    public var hasOptimizerState: Bool { reader.root.contains("optimizer") }

    /// name -> (shape, values) of a weight group ("weights" or "ema_weights"), optionally only the
    /// names `keep` accepts.
    public func tensors(_ groupName: String = "weights", keep: (String) -> Bool = { _ in true }) throws -> [String: (shape: [Int], values: [Float])] {
        guard reader.root.contains(groupName) else { throw StoreError(path: path, "checkpoint has no group '/\(groupName)'") }
        let group = try reader.root.group(groupName)
        var result: [String: (shape: [Int], values: [Float])] = [:]
        for name in try group.childNames() where keep(name) {
            let array = try group.read(name, as: Float.self)
            // Every consumer (inference, init, resume) loads through here, so a diverged training's
            // weights are refused the same way by all of them.
            if let bad = array.values.first(where: { !$0.isFinite }) {
                throw StoreError(path: path, "weight '\(groupName)/\(name)' holds a non-finite value (\(bad.isNaN ? "nan" : "\(bad)")): the training that wrote it diverged")
            }
            result[name] = (array.shape, array.values)
        }
        return result
    }

    /// A model with the checkpoint's configuration and weights (the EMA weights when asked and
    /// present). A segmentation checkpoint serves too: its `decoder.*` weights are not the ViT's.
    /// A model with a pretrained stem rebuilds it from the group's `stem.*` tensors (with the
    /// checkpoint's normalisation as the stem's input normalisation). `maskToken` adds a mask
    /// token that the checkpoint's model lacks (FSR masks patch embeddings), initialised as a
    /// fresh model's with `seed`.
    public func makeModel(useEMA: Bool = false, maskToken: Bool = false, seed: UInt64 = 0) throws -> ViT {
        var weights = try tensors(useEMA && hasEMAWeights ? "ema_weights" : "weights", keep: { !$0.hasPrefix("decoder.") })
        var config = self.config
        let addToken = maskToken && !config.maskToken
        if addToken { config.maskToken = true }
        do {
            let stem = config.hasPretrainedStem
                ? try PretrainedStem(architecture: config.stem, stateDict: weights, inputNormalization: normalization) : nil
            let model = try ViT(config: config, seed: addToken ? seed : 0, stem: stem)
            if addToken, let token = model.parameter(named: "mask_token") {
                weights["mask_token"] = (token.value.shape, token.value.toArray())
            }
            try model.load(weights)
            return model
        } catch let error as EngineError {
            throw StoreError(path: path, error.description)
        }
    }

    public func int(_ attribute: String) throws -> Int { Int(try reader.root.int64Attribute(attribute)) }

    public func json<T: Decodable>(_ attribute: String, as type: T.Type) throws -> T { try Checkpoint.readJSON(reader.root, attribute, as: type) }

    // MARK: writing

    /// A stage-specific root attribute.
    public enum Attribute {
        case text(String), integer(Int), number(Double)
        /// Any Encodable as canonical JSON (sorted keys).
        public static func json<T: Encodable>(_ value: T) throws -> Attribute { .text(try Checkpoint.canonicalJSON(value)) }
    }

    /// Everything a checkpoint holds; `write` lays it out as documented above.
    public struct Contents {
        public var modelConfig: ViTConfig
        public var normalization: Normalization
        public var classNames: [String]
        public var optimizer: Attribute
        public var augmentation: AugmentationSettings
        public var seed: Int
        public var epochsCompleted: Int
        public var stepsCompleted: Int
        /// Root attributes of the stage (method, supervision, decoder_config, blas, ...).
        public var attributes: [String: Attribute] = [:]
        /// Weight groups by name ("weights", "ema_weights", "fsr_weights", ...).
        public var groups: [String: [StoredTensor]] = [:]
        /// AdamW state to resume from: step count and each parameter's moments.
        public var optimizerState: (step: Int, moments: [(name: String, shape: [Int], m: [Float], v: [Float])])?
        public var log = TrainingLog()

        public init(modelConfig: ViTConfig, normalization: Normalization, classNames: [String], optimizer: Attribute,
                    augmentation: AugmentationSettings, seed: Int, epochsCompleted: Int, stepsCompleted: Int) {
            self.modelConfig = modelConfig
            self.normalization = normalization
            self.classNames = classNames
            self.optimizer = optimizer
            self.augmentation = augmentation
            self.seed = seed
            self.epochsCompleted = epochsCompleted
            self.stepsCompleted = stepsCompleted
        }
    }

    /// Writes `contents` into an artifact's root group (the caller commits the artifact).
    public static func write(_ contents: Contents, to root: HDF5Group) throws {
        var attributes = contents.attributes
        attributes["model_config"] = try .json(contents.modelConfig)
        attributes["normalization"] = try .json(contents.normalization)
        attributes["class_names"] = try .json(contents.classNames)
        attributes["optimizer"] = contents.optimizer
        attributes["augmentation"] = try .json(contents.augmentation)
        attributes["seed"] = .integer(contents.seed)
        attributes["epochs_completed"] = .integer(contents.epochsCompleted)
        attributes["steps_completed"] = .integer(contents.stepsCompleted)
        for (name, value) in attributes.sorted(by: { $0.key < $1.key }) {
            switch value {
            case .text(let text): try root.setAttribute(name, text)
            case .integer(let value): try root.setAttribute(name, Int64(value))
            case .number(let value): try root.setAttribute(name, value)
            }
        }
        for (name, tensors) in contents.groups.sorted(by: { $0.key < $1.key }) {
            let group = try root.createGroup(name)
            for t in tensors {
                try group.write(t.name, UnsafeBufferPointer(start: t.data, count: t.shape.reduce(1, *)), shape: t.shape)
            }
        }
        if let state = contents.optimizerState {
            let group = try root.createGroup("optimizer")
            try group.setAttribute("step", Int64(state.step))
            for moment in state.moments {
                try group.write("m/\(moment.name)", moment.m, shape: moment.shape)
                try group.write("v/\(moment.name)", moment.v, shape: moment.shape)
            }
        }
        try contents.log.write(to: root)
    }

    /// The AdamW moments stored for resuming, in the order of `names`.
    public func optimizerMoments(names: [String]) throws -> (step: Int, moments: [(m: [Float], v: [Float])]) {
        let group = try reader.root.group("optimizer")
        let moments = try names.map { name -> (m: [Float], v: [Float]) in
            (try group.read("m/\(name)", as: Float.self).values, try group.read("v/\(name)", as: Float.self).values)
        }
        return (Int(try group.int64Attribute("step")), moments)
    }

    public static func canonicalJSON<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    public static func readJSON<T: Decodable>(_ root: HDF5Group, _ name: String, as type: T.Type) throws -> T {
        let text = try root.stringAttribute(name)
        do {
            return try JSONDecoder().decode(T.self, from: Data(text.utf8))
        } catch {
            throw StoreError(path: root.file.path, "attribute '\(name)' is not valid \(T.self) JSON: \(error)")
        }
    }
}

/// Per-epoch training log, stored under /log: one float64 array per series, plus step_loss.
public struct TrainingLog {
    public var series: [String: [Double]] = [:]
    public var stepLoss: [Double] = []

    public init() {}

    public mutating func append(_ key: String, _ value: Double) { series[key, default: []].append(value) }

    public static func read(from root: HDF5Group) throws -> TrainingLog {
        var log = TrainingLog()
        guard root.contains("log") else { return log }
        let group = try root.group("log")
        for name in try group.childNames() {
            let values = try group.read(name, as: Double.self).values
            if name == "step_loss" { log.stepLoss = values } else { log.series[name] = values }
        }
        return log
    }

    public func write(to root: HDF5Group) throws {
        let group = try root.createGroup("log")
        for (name, values) in series.sorted(by: { $0.key < $1.key }) { try group.write(name, values, shape: [values.count]) }
        try group.write("step_loss", stepLoss, shape: [stepLoss.count])
    }
}
