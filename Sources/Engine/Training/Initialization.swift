import Primitives
/// Weight initialisations for training a ViT from scratch.
public enum ViTInitialization {
    /// Re-draws the weight matrices of the patch embedding and of every block (qkv, proj, fc1,
    /// fc2) from Xavier/Glorot uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), as MAE
    /// and the original ViT code do; biases, LayerNorms, tokens, position embedding and heads keep
    /// the spec's init. Why: from the spec's trunc-normal(0.02), products of two small matrices
    /// (q k^T, fc2 gelu(fc1)) start near a saddle and a small model on a few thousand images sits
    /// at the label prior for hundreds of steps; at Xavier scale it starts learning at once
    /// (measured on fashion-scenes, see the classify-train notes).
    public static func xavierUniform(_ model: ViT, seed: UInt64) {
        var rng = SplitMix64(seed: seed, stream: 0x1417, index: 0)
        for p in model.parameters where p.value.rank >= 2 && isBlockOrEmbeddingMatrix(p.name) {
            let fanOut = p.value.shape[0]
            let fanIn = p.value.count / fanOut
            let a = (6.0 / Double(fanIn + fanOut)).squareRoot()
            for i in 0..<p.value.count { p.value.data[i] = Float(rng.uniform(-a, a)) }
        }
    }

    static func isBlockOrEmbeddingMatrix(_ name: String) -> Bool {
        name == "patch_embed.proj.weight" || (name.hasPrefix("blocks.") && name.hasSuffix(".weight")
            && !name.hasSuffix("norm1.weight") && !name.hasSuffix("norm2.weight"))
    }
}
