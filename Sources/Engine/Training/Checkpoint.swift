import ArtifactStore
import Foundation

// Checkpoint artifacts (kind "checkpoint", format version 1), written by classify-train
// =================================================================================
//
//     /                  provenance (kind, format_version, producer, params, inputs, created_at)
//                        model_config   JSON of ViTConfig (snake_case keys, see vit-spec)
//                        normalization  JSON {"mean": [3], "std": [3]}: inputs are (rgb/255 - mean) / std
//                        class_names    JSON array of the C class names (the dataset's)
//                        optimizer      JSON of OptimizerSettings (lr, head_lr_mult, weight_decay,
//                                       betas, eps, clip_grad_norm, warmup/total steps, min_lr_factor, ema_decay)
//                        augmentation   JSON of AugmentationSettings
//                        seed           int64
//                        epochs_completed, steps_completed   int64
//     /weights/<name>    float32, PyTorch state-dict names and shapes (cam_head.weight is [C, D]);
//                        a model with a pretrained stem (model_config stem) also stores the frozen
//                        stem here as stem.* (ViT.frozenTensors), in ema_weights too
//     /ema_weights/<name>  the exponential moving average of the weights (when ema_decay > 0)
//     /optimizer/m/<name>, /optimizer/v/<name>   AdamW moments (for resuming), attribute step
//     /log/...           training log: per-epoch 1-D float64 arrays (epoch_loss, train_map,
//                        train_f1, val_map, val_f1, val_micro_f1, lr, epoch_seconds, ...) and
//                        step_loss (one value per optimiser step)

/// Reading and writing checkpoint artifacts (layout above).
public enum Checkpoint {
    public static let formatVersion = 1

    public static func writeTensors(_ group: HDF5Group, _ tensors: [(name: String, shape: [Int], data: UnsafePointer<Float>)]) throws {
        for t in tensors {
            try group.write(t.name, UnsafeBufferPointer(start: t.data, count: t.shape.reduce(1, *)), shape: t.shape)
        }
    }

    public static func writeJSON<T: Encodable>(_ root: HDF5Group, _ name: String, _ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try root.setAttribute(name, String(decoding: try encoder.encode(value), as: UTF8.self))
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

/// An opened checkpoint: configuration, class names, normalisation, and its weight groups.
public final class LoadedCheckpoint {
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
            result[name] = (array.shape, array.values)
        }
        return result
    }

    /// A model with the checkpoint's configuration and weights (the EMA weights when asked and
    /// present). A segmentation checkpoint serves too: its `decoder.*` weights are not the ViT's.
    /// A model with a pretrained stem rebuilds it from the group's `stem.*` tensors (with the
    /// checkpoint's normalisation as the stem's input normalisation).
    public func makeModel(useEMA: Bool = false) throws -> ViT {
        let weights = try tensors(useEMA && hasEMAWeights ? "ema_weights" : "weights", keep: { !$0.hasPrefix("decoder.") })
        do {
            let stem = config.hasPretrainedStem
                ? try PretrainedStem(architecture: config.stem, stateDict: weights, inputNormalization: normalization) : nil
            let model = try ViT(config: config, seed: 0, stem: stem)
            try model.load(weights)
            return model
        } catch let error as EngineError {
            throw StoreError(path: path, error.description)
        }
    }

    public func int(_ attribute: String) throws -> Int { Int(try reader.root.int64Attribute(attribute)) }
}
