import Engine
import StageKit

/// The parameters both segmentation trainers (seg-train, single-stage-train) share: the network,
/// its optimisation, augmentation and val predictions. Each stage decodes them from its own flat
/// parameter object next to its own (`init(from:)` of the stage's parameters calls this one's).
public struct SegmentationParameters: Codable, Equatable {
    public var seed = 0
    public var epochs = 3
    public var batchSize = 32
    public var lr = 1e-3
    public var backboneLRMultiplier = 0.1
    public var weightDecay = 0.01
    public var clipGradNorm = 1.0
    public var polyPower = 0.9
    /// Linear warm-up over this fraction of the steps from warmup_ratio x lr (ToCo: 1500 of
    /// 20000 iterations from 1e-6; FSR: from 0.1), then lr_decay: poly (ToCo) or cosine (FSR).
    public var warmupFraction = 0.0
    public var warmupRatio = 0.1
    public var lrDecay = SegLRSchedule.Decay.poly
    public var scaleMin = 0.75
    public var scaleMax = 1.5
    public var flip = true
    public var colorJitter = 0.2
    public var decoderChannels = 64
    public var dilations = [1, 2, 3]
    /// Width of the decoder's image detail branch (0: none, logits on the token grid; see SegDecoderConfig).
    public var detailChannels = 0
    /// Backbone shape when there is no `init` checkpoint (image_size 0: the dataset's image size).
    public var imageSize = 0
    public var patchSize = 8
    public var depth = 4
    public var dim = 128
    public var heads = 4
    /// Fresh backbone only: "patch" or a frozen pretrained stem ("efficientnet_lite0", weights from
    /// the `stem_weights` input; classify-train's default). With `init` the stem comes from the checkpoint.
    public var stem = "efficientnet_lite0"
    /// Without `init`: a backbone trained from scratch (the shape above) or the pretrained ViT of
    /// the `vit_weights` input (image_size then must be a multiple of its patch size).
    public var backbone = BackboneSource.scratch
    /// Layer-wise freezing of the backbone: its embeddings and first n blocks are not trained.
    public var frozenBlocks = 0
    /// Inference: scales relative to the training size, and horizontal-flip averaging.
    public var evalScales = [1.0]
    public var evalFlip = false
    /// Validation mIoU after every n-th epoch (0: only after the last one).
    public var valEvery = 1
    /// Pictures (image | truth | prediction) in the samples output.
    public var samples = 8

    /// Accepted ranges (see ParameterRule), shared by seg-train and single-stage-train.
    public static let rules: [String: ParameterRule] = [
        "seed": .nonNegative, "epochs": .atLeast(1), "batch_size": .atLeast(1), "lr": .positive, "backbone_lr_mult": .nonNegative,
        "weight_decay": .nonNegative, "clip_grad_norm": .nonNegative, "poly_power": .nonNegative, "scale_min": .positive,
        "warmup_fraction": .probability, "warmup_ratio": .probability,
        "scale_max": .positive, "color_jitter": .nonNegative, "decoder_channels": .atLeast(1), "dilations": .atLeast(1),
        "detail_channels": .nonNegative, "image_size": .between(0, 4096), "patch_size": .atLeast(1), "depth": .atLeast(1),
        "dim": .atLeast(1), "heads": .atLeast(1), "frozen_blocks": .nonNegative, "eval_scales": .between(0.1, 8),
        "val_every": .nonNegative, "samples": .nonNegative,
    ]

    public init() {}

    enum CodingKeys: String, CodingKey {
        case seed, epochs, batchSize = "batch_size", lr, backboneLRMultiplier = "backbone_lr_mult"
        case weightDecay = "weight_decay", clipGradNorm = "clip_grad_norm", polyPower = "poly_power"
        case warmupFraction = "warmup_fraction", warmupRatio = "warmup_ratio", lrDecay = "lr_decay"
        case scaleMin = "scale_min", scaleMax = "scale_max", flip, colorJitter = "color_jitter"
        case decoderChannels = "decoder_channels", dilations, detailChannels = "detail_channels", imageSize = "image_size", patchSize = "patch_size"
        case depth, dim, heads, stem, backbone, frozenBlocks = "frozen_blocks", evalScales = "eval_scales", evalFlip = "eval_flip", valEvery = "val_every", samples
    }

    /// Refuses batch sizes and inference scales whose activations could not fit in memory.
    public func checkMemory(backbone config: ViTConfig) throws {
        try MemoryBudget.check(bytes: config.activationBytes(batch: batchSize, imageSide: config.imageSize), parameter: "batch_size",
                               what: "training batches of \(batchSize) images at \(config.imageSize) px")
        let largest = Int((Double(config.imageSize) * (evalScales.max() ?? 1)).rounded())
        try MemoryBudget.check(bytes: config.activationBytes(batch: batchSize, imageSide: largest), parameter: "eval_scales",
                               what: "validation batches of \(batchSize) images at \(largest) px")
    }

    /// The augmentation of training views (colour jitter on brightness, contrast and saturation alike).
    public var augmentation: AugmentationSettings {
        AugmentationSettings(scaleMin: scaleMin, scaleMax: scaleMax, flip: flip,
                             brightness: colorJitter, contrast: colorJitter, saturation: colorJitter)
    }

    public func validate() throws {
        guard epochs >= 1, batchSize >= 1, lr > 0, backboneLRMultiplier >= 0, decoderChannels >= 1,
              !evalScales.isEmpty, evalScales.allSatisfy({ $0 > 0 }), samples >= 0, valEvery >= 0, frozenBlocks >= 0 else {
            throw StageError("epochs, batch_size, decoder_channels must be >= 1, lr > 0, eval_scales non-empty and positive, frozen_blocks >= 0")
        }
        do { try augmentation.validate() } catch { throw StageError("\(error)") }
    }

    public var freshBackbone: SegmentationBackbone.Fresh {
        .init(imageSize: imageSize, patchSize: patchSize, depth: depth, dim: dim, heads: heads, stem: stem, source: backbone)
    }

    /// Optimiser settings for `totalSteps` steps.
    public func optimizer(totalSteps: Int) -> SegOptimizerSettings {
        var settings = SegOptimizerSettings()
        settings.lr = lr
        settings.backboneLRMultiplier = backboneLRMultiplier
        settings.weightDecay = weightDecay
        settings.clipGradNorm = clipGradNorm
        settings.polyPower = polyPower
        settings.totalSteps = totalSteps
        settings.warmupSteps = Int((Double(totalSteps) * warmupFraction).rounded())
        settings.warmupRatio = warmupRatio
        settings.decay = lrDecay
        return settings
    }

    public var schedule: SegmentationSchedule {
        SegmentationSchedule(epochs: epochs, batchSize: batchSize, valEvery: valEvery, samples: samples)
    }

    /// The decoder for `backbone` predicting background + `classes` classes, and the network.
    public func network(backbone: ViT, classes: Int) throws -> (SegNetwork, SegDecoderConfig) {
        guard frozenBlocks <= backbone.config.depth else {
            throw StageError("frozen_blocks \(frozenBlocks) exceeds the backbone's \(backbone.config.depth) blocks")
        }
        backbone.frozenBlocks = frozenBlocks
        let config = SegDecoderConfig(inChannels: backbone.config.dim, channels: decoderChannels, dilations: dilations,
                                      numClasses: classes + 1, detailChannels: detailChannels)
        do {
            return (try SegNetwork(backbone: backbone, decoder: try SegDecoder(config: config, seed: UInt64(seed) &+ 1)), config)
        } catch { throw StageError("decoder: \(error)") }
    }
}
