#!/usr/bin/env python3
"""Imports a ViT checkpoint you already have -- timm / DeiT / DINO / DINOv2 .pth files,
safetensors with timm or Hugging Face (ViTModel, Dinov2Model) names -- into the pretrained-ViT
HDF5 file every stage reads (layout: Scripts/vit_layout.py). Needs numpy and h5py only: .pth files
are read without torch by a restricted unpickler that refuses anything but tensors and containers.

    python Scripts/import_checkpoint.py deit_small_patch16_224-cd65a155.pth --out Artifacts/pretrained/deit-s16.h5

What is read (after unwrapping and prefix stripping):
  - the checkpoint object: a state dict, or a dict holding one under --checkpoint-key, else under
    the first of "model" (DeiT), "state_dict", "teacher" (DINO training checkpoints), "student";
  - tensor names: timm's (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.attn.qkv`, ...,
    `blocks.N.ls1.gamma` with LayerScale; DINOv2 hub's chunked `blocks.C.N.` too) or Hugging Face's
    (`embeddings.*`, `encoder.layer.N.*`, `layernorm`), under any prefix (`module.`, `backbone.`,
    `dinov2.`, `vit.`, ...), found as whatever precedes the class token's name;
  - patch size, width, depth, MLP width, LayerScale and the stored position grid come from the
    shapes; the head count cannot, so it is --heads or the usual one for the width (192: 3,
    384: 6, 768: 12, 1024: 16).
Classification heads (`head.*`, `classifier.*`, `pooler.*`, DINO's projection head) are dropped;
anything else the engine's ViT has no place for (register or distillation tokens, SwiGLU MLPs,
q/k norms) is refused. All these families use the exact (erf) GELU and, except transformers'
ViTModel (1e-12), LayerNorm eps 1e-6; inputs are normalised with ImageNet's mean and std. Each
can be overridden. A failure prints one line naming the file and writes nothing.
"""
import argparse
import hashlib
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrained_files import (PretrainedFileError, is_safetensors, is_torch_checkpoint,  # noqa: E402
                              read_safetensors, read_torch_checkpoint)
from vit_layout import (BLOCK_PARTS, HF_DINOV2_BLOCK, HF_EMBEDDINGS, HF_VIT_BLOCK, IMAGENET_MEAN,  # noqa: E402
                        IMAGENET_STD, LAYER_SCALE_PARTS, dataset_path, expected_shapes, hf_block, write_vit_file)

DEFAULT_LICENCE = "unknown (user-supplied checkpoint)"
WRAPPER_KEYS = ["model", "state_dict", "teacher", "student"]
HEADS_BY_DIM = {192: 3, 384: 6, 768: 12, 1024: 16}
SIZE_BY_DIM = {192: "tiny", 384: "small", 768: "base", 1024: "large"}
# Tensors with no place in the backbone, dropped on purpose (timm/DeiT heads, transformers' pooler
# and classifier); DINO's projection head lies outside the `backbone.` prefix and is never read.
DROPPED = re.compile(r"^(head|head_dist|fc_norm|pooler|classifier)\.")
# Tensors the engine's ViT cannot represent: refused rather than silently ignored.
UNSUPPORTED = {"register_tokens": "register tokens", "reg_token": "register tokens",
               "dist_token": "a distillation token (distilled DeiT)",
               "embeddings.register_tokens": "register tokens", "embeddings.distillation_token": "a distillation token"}


def state_dict_of(obj, name, key):
    """(state dict, the key it was found under or None) of an unpickled checkpoint."""
    if not isinstance(obj, dict):
        raise PretrainedFileError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    if key is not None:
        if not isinstance(obj.get(key), dict):
            raise PretrainedFileError(f"{name}: has no state dict under key {key!r} (keys: {sorted(map(str, obj))[:8]})")
        return obj[key], key
    if any(isinstance(v, np.ndarray) for v in obj.values()):
        return obj, None
    for k in WRAPPER_KEYS:
        if isinstance(obj.get(k), dict):
            return obj[k], k
    raise PretrainedFileError(f"{name}: not a recognised checkpoint (no tensors, and none of the keys "
                              f"{WRAPPER_KEYS} holds a state dict; keys: {sorted(map(str, obj))[:8]})")


def strip_prefix(state, name):
    """(naming "timm" | "hf", prefix, {name below the prefix: array}): the prefix is whatever
    precedes the class token's name; tensors outside it (e.g. DINO's projection head) are left out."""
    arrays = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    found = []
    for key in arrays:
        if key.endswith("embeddings.cls_token"):
            found.append(("hf", key[:-len("embeddings.cls_token")]))
        elif key.endswith("cls_token"):
            found.append(("timm", key[:-len("cls_token")]))
    if len(found) != 1 or (found[0][1] and not found[0][1].endswith(".")):
        what = "no class token (cls_token)" if not found else f"class tokens {[p + 'cls_token' for _, p in found]}"
        raise PretrainedFileError(f"{name}: not a recognised ViT checkpoint ({what})")
    naming, prefix = found[0]
    return naming, prefix, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def unchunk(state):
    """DINOv2 with block_chunks > 0 names block N `blocks.C.N.` (N is global): drop the chunk index."""
    if any(re.match(r"^blocks\.\d+\.\d+\.", k) for k in state):
        return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}, True
    return state, False


def block_count(state, pattern, name):
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if not indices:
        raise PretrainedFileError(f"{name}: not a recognised ViT checkpoint (no transformer blocks)")
    depth = max(indices) + 1
    if len(indices) != depth:
        raise PretrainedFileError(f"{name}: missing tensor: block {min(set(range(depth)) - indices)} of {depth} is absent")
    return depth


def timm_tensors(state, naming, name):
    """{timm name: array} of the backbone, the HF names mapped (q, k, v fused into qkv)."""
    for key, what in UNSUPPORTED.items():
        if key in state:
            raise PretrainedFileError(f"{name}: unsupported: the checkpoint has {what} ({key})")
    if naming == "timm":
        depth = block_count(state, r"^blocks\.(\d+)\.", name)
        layer_scale = "blocks.0.ls1.gamma" in state
        sources = {k: [k] for k in ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight",
                                    "patch_embed.proj.bias", "norm.weight", "norm.bias"]}
        for i in range(depth):
            sources.update({f"blocks.{i}.{p}": [f"blocks.{i}.{p}"]
                            for p in BLOCK_PARTS + (LAYER_SCALE_PARTS if layer_scale else [])})
    else:
        depth = block_count(state, r"^encoder\.layer\.(\d+)\.", name)
        layer_scale = "encoder.layer.0.layer_scale1.lambda1" in state
        mapping = HF_VIT_BLOCK if "encoder.layer.0.layernorm_before.weight" in state else HF_DINOV2_BLOCK
        sources = {timm: [hf] for timm, hf in HF_EMBEDDINGS.items()}
        for i in range(depth):
            sources.update({f"blocks.{i}.{p}": s for p, s in hf_block(mapping, f"encoder.layer.{i}.", layer_scale).items()})
    tensors, used = {}, set()
    for timm, keys in sources.items():
        missing = [k for k in keys if k not in state]
        if missing:
            if timm == "mask_token":
                continue
            raise PretrainedFileError(f"{name}: missing tensor {missing[0]}")
        try:
            tensors[timm] = np.concatenate([np.asarray(state[k], dtype=np.float32) for k in keys], axis=0)
        except ValueError:
            raise PretrainedFileError(f"{name}: inconsistent shapes: {keys} {[list(state[k].shape) for k in keys]} do not concatenate")
        used.update(keys)
    left = sorted(k for k in set(state) - used if not DROPPED.match(k))
    if left:
        raise PretrainedFileError(f"{name}: unsupported: tensors the engine's ViT has no place for: {left[:4]}"
                                  f"{' ...' if len(left) > 4 else ''}")
    dropped = sorted(k for k in set(state) - used if DROPPED.match(k))
    return tensors, depth, layer_scale, dropped


def infer(tensors, depth, layer_scale, args, name, hf_vit):
    """The shape facts, checked against every tensor (shapes, finiteness)."""
    patch_w = tensors["patch_embed.proj.weight"]
    if patch_w.ndim != 4 or patch_w.shape[1] != 3 or patch_w.shape[2] != patch_w.shape[3]:
        raise PretrainedFileError(f"{name}: inconsistent shapes: patch_embed.proj.weight is {list(patch_w.shape)}, expected [D, 3, P, P]")
    dim, patch = int(patch_w.shape[0]), int(patch_w.shape[2])
    mlp = int(tensors["blocks.0.mlp.fc1.weight"].shape[0])
    tokens = tensors["pos_embed"].shape[1] - 1 if tensors["pos_embed"].ndim == 3 else -1
    grid = int(round(np.sqrt(max(tokens, 0))))
    if tokens < 1 or grid * grid != tokens:
        raise PretrainedFileError(f"{name}: inconsistent shapes: pos_embed is {list(tensors['pos_embed'].shape)}, "
                                  f"expected [1, 1 + G*G, {dim}] (a class entry and a square grid)")
    if "mask_token" in tensors:  # DINOv2 hub stores it as [1, D]
        tensors["mask_token"] = tensors["mask_token"].reshape(1, 1, -1) if tensors["mask_token"].size == dim else tensors["mask_token"]
    heads = args.heads or HEADS_BY_DIM.get(dim)
    if heads is None:
        raise PretrainedFileError(f"{name}: width {dim} is not a standard ViT's; give the head count with --heads")
    if dim % heads or mlp % dim:
        raise PretrainedFileError(f"{name}: unsupported: width {dim} with {heads} heads and MLP width {mlp} "
                                  f"(the head count must divide the width, the width the MLP width)")
    shapes = expected_shapes(dim, depth, patch, grid, mlp, layer_scale, "mask_token" in tensors)
    for key, value in tensors.items():
        if list(value.shape) != shapes[key]:
            raise PretrainedFileError(f"{name}: inconsistent shapes: {key} is {list(value.shape)}, expected {shapes[key]}")
        if not np.all(np.isfinite(value)):
            raise PretrainedFileError(f"{name}: non-finite values in {key}")
    eps = args.layernorm_eps if args.layernorm_eps is not None else (1e-12 if hf_vit else 1e-6)
    return dict(patch_size=patch, dim=dim, depth=depth, heads=heads, mlp_hidden=mlp, pos_embed_grid=grid,
                layernorm_eps=eps, gelu=args.gelu, layer_scale=layer_scale,
                input_mean=args.input_mean, input_std=args.input_std)


def source_format(container, naming, key, prefix, layer_scale, tensors, hf_vit, chunked):
    if container == "safetensors":
        return "safetensors"
    if naming == "hf":
        return "hf-vit-pth" if hf_vit else "hf-dinov2-pth"
    if layer_scale or "mask_token" in tensors or chunked:
        return "dinov2-hub"
    if key in ("teacher", "student") or "backbone." in prefix:
        return "dino"
    return "deit-pth" if key == "model" else "timm-pth"


def architecture_name(facts, fmt, naming):
    """timm-style: vit_small_patch16, vit_base_patch14_dinov2; vit_d16_depth2_patch16 for other sizes."""
    size = SIZE_BY_DIM.get(facts["dim"]) if facts["depth"] in (12, 24) else None
    base = f"vit_{size}" if size else f"vit_d{facts['dim']}_depth{facts['depth']}"
    family = "_dinov2" if fmt == "dinov2-hub" or naming == "hf-dinov2" else "_dino" if fmt == "dino" else ""
    return f"{base}_patch{facts['patch_size']}{family}"


def convert(path, args):
    """(tensors, facts, attributes) of the checkpoint at `path`; errors name it as given."""
    name = path
    with open(path, "rb") as f:
        data = f.read()
    # safetensors first: a legacy pickle's 9th byte is never '{', a safetensors header length may begin 0x80 0x02
    if is_safetensors(data):
        container, state, key = "safetensors", read_safetensors(data, name), None
    elif is_torch_checkpoint(data):
        container, (state, key) = "pth", state_dict_of(read_torch_checkpoint(data, name), name, args.checkpoint_key)
    else:
        raise PretrainedFileError(f"{name}: not a recognised checkpoint (neither a PyTorch .pth nor a safetensors file)")
    naming, prefix, state = strip_prefix(state, name)
    state, chunked = unchunk(state)
    hf_vit = naming == "hf" and "encoder.layer.0.layernorm_before.weight" in state
    tensors, depth, layer_scale, dropped = timm_tensors(state, naming, name)
    facts = infer(tensors, depth, layer_scale, args, name, hf_vit)
    fmt = source_format(container, naming, key, prefix, layer_scale, tensors, hf_vit, chunked)
    naming = "timm" if naming == "timm" else ("hf-vit" if hf_vit else "hf-dinov2")
    attrs = {"architecture": args.architecture or architecture_name(facts, fmt, naming),
             "source": os.path.basename(path), "source_sha256": hashlib.sha256(data).hexdigest(), "format": fmt,
             "tensor_names": naming + (f" under prefix {prefix!r}" if prefix else "")
             + (f", state dict under key {key!r}" if key else ""),
             "dropped": ", ".join(dropped) if dropped else "none",
             "licence": args.licence, "producer": "Scripts/import_checkpoint.py"}
    return tensors, facts, attrs


def three_floats(text):
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers (R,G,B)")
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a .pth (zip or legacy pickle) or .safetensors file")
    ap.add_argument("--out", required=True, help="the pretrained-ViT HDF5 file to write")
    ap.add_argument("--heads", type=int, help="attention heads (default: the usual count for the width)")
    ap.add_argument("--architecture", help="name stored in the file (default: from the shapes, e.g. vit_small_patch16_dino)")
    ap.add_argument("--checkpoint-key", help="the key of a wrapping dict that holds the state dict (default: model, "
                                             "state_dict, teacher, student -- the first present)")
    ap.add_argument("--layernorm-eps", type=float, help="LayerNorm epsilon (default 1e-6; 1e-12 for transformers' ViTModel)")
    ap.add_argument("--gelu", choices=["erf", "tanh"], default="erf", help="the MLP's GELU (default erf, the exact form)")
    ap.add_argument("--input-mean", type=three_floats, default=IMAGENET_MEAN, help="R,G,B mean of the input (default ImageNet's)")
    ap.add_argument("--input-std", type=three_floats, default=IMAGENET_STD, help="R,G,B std of the input (default ImageNet's)")
    ap.add_argument("--licence", default=DEFAULT_LICENCE, help=f"the weights' licence, stored in the file (default {DEFAULT_LICENCE!r})")
    ap.add_argument("--list", action="store_true", help="print every tensor with its shape")
    a = ap.parse_args()
    try:
        tensors, facts, attrs = convert(a.checkpoint, a)
        write_vit_file(a.out, tensors, facts, attrs)
    except (PretrainedFileError, OSError) as error:
        message = str(error) if isinstance(error, PretrainedFileError) else f"{error.filename or a.checkpoint}: {error.strerror or error}"
        print(f"error: import_checkpoint: {message}", file=sys.stderr)
        sys.exit(1)
    if a.list:
        for name, value in tensors.items():
            print(f"  {dataset_path(name):32s} {list(value.shape)}")
    print(f"import_checkpoint: {a.out}: {attrs['format']} ({attrs['tensor_names']}), {attrs['architecture']}: "
          f"patch {facts['patch_size']}, width {facts['dim']}, depth {facts['depth']}, heads {facts['heads']}, "
          f"MLP {facts['mlp_hidden']}, LayerScale {'yes' if facts['layer_scale'] else 'no'}, "
          f"grid {facts['pos_embed_grid']}x{facts['pos_embed_grid']}, {sum(v.size for v in tensors.values())} parameters; "
          f"dropped: {attrs['dropped']}")


if __name__ == "__main__":
    main()
