#!/usr/bin/env python3
"""Writes Tests/EngineTests/Fixtures/checkpoints/: small random ViT checkpoints in each layout
Scripts/import_checkpoint.py reads, and references.h5 with, for each, a float64 PyTorch forward
(Tests/Fixtures/vit_torch.py) of one fixed image: the final normalised tokens and every layer's
attention probabilities. All models: width 16, 2 heads, depth 2, MLP 64, GELU erf.

    timm_p16.pth            timm's plain state dict (with a classification head), patch 16
    deit_p16.pth            DeiT's {"model": state dict}, patch 16
    dino_p16.pth            a DINO training checkpoint: {"teacher": backbone.* + DINO head,
                            "student": module.backbone.* (other tokens), "epoch", "args": Namespace}
    dinov2_hub_p14.pth      DINOv2 hub: LayerScale, mask_token [1, D], chunked blocks (blocks.C.N.),
                            pos_embed stored at 3x3 and evaluated at 2x2 (bicubic resampling)
    hf_dinov2_p14.safetensors  transformers' Dinov2Model names (query/key/value apart), float32
    hf_vit_p16.safetensors  transformers' ViTForImageClassification names under `vit.`, float16,
                            LayerNorm eps 1e-12
    unsupported_pickle.pth  a pickle holding an arbitrary class instance (must be refused)

Run: /tmp/torchenv/bin/python Tests/Fixtures/make_checkpoint_fixtures.py [OUTPUT_FOLDER]
(needs torch, h5py, hdf5plugin, numpy)
"""
import argparse
import collections
import json
import math
import os
import struct
import sys

import h5py
import hdf5plugin
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_torch  # noqa: E402

DIM, HEADS, DEPTH, MLP_RATIO = 16, 2, 2, 4
SEED = 2026


def random_weights(gen, patch, grid, layer_scale, fp16=False):
    """timm-named float32-representable (float16 with fp16) weights, scaled so that every term moves the output."""
    model = vit_torch.ViT(grid * patch, patch, DIM, DEPTH, HEADS, MLP_RATIO, 1, layer_scale=layer_scale, gelu="erf")
    sd = collections.OrderedDict()
    for name, p in model.named_parameters():
        if name.startswith(("cam_head", "cls_head")):
            continue
        if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight" or name.endswith("gamma"):
            v = 1 + 0.3 * torch.randn(p.shape, generator=gen)
        elif p.dim() == 1:
            v = 0.1 * torch.randn(p.shape, generator=gen)
        elif name in ("cls_token", "pos_embed"):
            v = 0.5 * torch.randn(p.shape, generator=gen)
        else:
            v = torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel())
        sd[name] = v.half().float() if fp16 else v.float()
    return sd


def reference(sd, patch, image_size, layer_scale, eps, gen):
    """(image, final tokens, [attention probabilities per layer]) of a float64 forward at image_size."""
    vit_torch.LAYERNORM_EPS = eps
    model = vit_torch.ViT(image_size, patch, DIM, DEPTH, HEADS, MLP_RATIO, 1, layer_scale=layer_scale, gelu="erf").double()
    weights = {k: v.double() for k, v in sd.items()}
    grid, stored = image_size // patch, int(round(math.sqrt(sd["pos_embed"].shape[1] - 1)))
    if grid != stored:  # as PretrainedViTWeights.stateDict: bicubic, align_corners=False, no antialias
        pos = weights["pos_embed"]
        g = pos[:, 1:].reshape(1, stored, stored, DIM).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(grid, grid), mode="bicubic", align_corners=False)
        weights["pos_embed"] = torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, grid * grid, DIM)], dim=1)
    missing, _ = model.load_state_dict(weights, strict=False)
    assert set(missing) <= {"cam_head.weight", "cls_head.weight", "cls_head.bias"}, missing
    for block in model.blocks:
        block.attn.keep = True
    image = torch.randn(1, image_size, image_size, 3, generator=gen).float().double()
    with torch.no_grad():
        _, _, kept = model(image)
    return image, kept["norm"], [b.attn.kept["probs"] for b in model.blocks]


def with_head(sd, gen):
    out = collections.OrderedDict(sd)
    out["head.weight"] = torch.randn(7, DIM, generator=gen)
    out["head.bias"] = torch.randn(7, generator=gen)
    return out


def dinov2_hub(sd, gen):
    """DINOv2 hub names: block_chunks = depth puts block N under blocks.N.N. (Identity padding)."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        out[k.replace("blocks.", "blocks.{}.".format(k.split(".")[1]), 1) if k.startswith("blocks.") else k] = v
    out["mask_token"] = torch.randn(1, DIM, generator=gen)
    return out


HF_DINOV2 = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "attn.proj": "attention.output.dense", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
HF_VIT = {"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
          "mlp.fc2": "output.dense", "attn.proj": "attention.output.dense"}


def hugging_face(sd, parts, gen, prefix=""):
    """transformers' names: q, k and v split out of qkv, embeddings and layernorm renamed."""
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k in top:
            out[prefix + top[k]] = v
            continue
        _, i, rest = k.split(".", 2)
        layer = f"{prefix}encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"{layer}attention.attention.{name}.{kind}"] = part.clone()
            continue
        module, kind = (rest, None) if rest.endswith("gamma") else rest.rsplit(".", 1)
        out[layer + parts[module] + ("." + kind if kind else "")] = v
    return out


def save_safetensors(path, sd, dtype="F32"):
    """The format by hand: 8-byte little-endian header length, JSON header, raw bytes."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in sd.items():
        raw = v.numpy().astype(np.float16 if dtype == "F16" else np.float32).tobytes()
        header[k] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class Trainer:
    """Stands for the arbitrary objects a full-model pickle holds."""


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "Tests/EngineTests/Fixtures/checkpoints"
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    cases = []  # (file, format, patch, image size, layer scale, eps, timm weights)

    sd = random_weights(gen, 16, 2, False)
    torch.save(with_head(sd, gen), os.path.join(out, "timm_p16.pth"))
    cases.append(("timm_p16.pth", "timm-pth", 16, 32, False, 1e-6, sd))

    sd = random_weights(gen, 16, 2, False)
    torch.save({"model": with_head(sd, gen)}, os.path.join(out, "deit_p16.pth"))
    cases.append(("deit_p16.pth", "deit-pth", 16, 32, False, 1e-6, sd))

    sd = random_weights(gen, 16, 2, False)
    # The student (other weights; here only its tokens, to keep the file small) must not be the one read.
    student = {"module.backbone." + k: sd[k] + 0.1 for k in ("cls_token", "pos_embed")}
    teacher = {"backbone." + k: v for k, v in sd.items()}
    teacher["head.mlp.0.weight"] = torch.randn(8, DIM, generator=gen)
    teacher["head.last_layer.weight_g"] = torch.randn(5, 1, generator=gen)
    torch.save({"student": student, "teacher": teacher, "epoch": 3,
                "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=5e-4)}, os.path.join(out, "dino_p16.pth"))
    cases.append(("dino_p16.pth", "dino", 16, 32, False, 1e-6, sd))

    sd = random_weights(gen, 14, 3, True)
    torch.save(dinov2_hub(sd, gen), os.path.join(out, "dinov2_hub_p14.pth"))
    cases.append(("dinov2_hub_p14.pth", "dinov2-hub", 14, 28, True, 1e-6, sd))

    sd = random_weights(gen, 14, 2, True)
    hf = hugging_face(sd, HF_DINOV2, gen)
    hf["embeddings.mask_token"] = torch.randn(1, DIM, generator=gen)
    save_safetensors(os.path.join(out, "hf_dinov2_p14.safetensors"), hf)
    cases.append(("hf_dinov2_p14.safetensors", "safetensors", 14, 28, True, 1e-6, sd))

    sd = random_weights(gen, 16, 2, False, fp16=True)
    hf = hugging_face(sd, HF_VIT, gen, prefix="vit.")
    hf["classifier.weight"], hf["classifier.bias"] = torch.randn(3, DIM, generator=gen), torch.randn(3, generator=gen)
    save_safetensors(os.path.join(out, "hf_vit_p16.safetensors"), hf, dtype="F16")
    cases.append(("hf_vit_p16.safetensors", "safetensors", 16, 32, False, 1e-12, sd))

    torch.save({"model": {"cls_token": torch.zeros(1, 1, 4)}, "trainer": Trainer()}, os.path.join(out, "unsupported_pickle.pth"))

    with h5py.File(os.path.join(out, "references.h5"), "w", libver=("v110", "v110")) as f:
        f.attrs["generator"] = "Tests/Fixtures/make_checkpoint_fixtures.py"
        f.attrs["torch_version"] = str(torch.__version__)
        for file, fmt, patch, size, layer_scale, eps, sd in cases:
            image, tokens, probs = reference(sd, patch, size, layer_scale, eps, gen)
            g = f.create_group(file)
            for key, value in dict(format=fmt, patch_size=patch, image_size=size, layer_scale=int(layer_scale),
                                   heads=HEADS, dim=DIM, depth=DEPTH, layernorm_eps=eps,
                                   pos_embed_grid=int(round(math.sqrt(sd["pos_embed"].shape[1] - 1)))).items():
                g.attrs[key] = value
            compress = dict(**hdf5plugin.Zstd(clevel=19))
            g.create_dataset("image", data=image.float().numpy(), **compress)
            g.create_dataset("tokens", data=tokens.float().numpy(), **compress)
            for i, p in enumerate(probs):
                g.create_dataset(f"attention/{i}", data=p.float().numpy(), **compress)
    sizes = {n: os.path.getsize(os.path.join(out, n)) for n in sorted(os.listdir(out))}
    print(f"wrote {out}: " + ", ".join(f"{n} {s // 1024} KB" for n, s in sizes.items()) + f"; {sum(sizes.values()) // 1024} KB in all")


if __name__ == "__main__":
    main()
