#!/usr/bin/env python3
"""Writes Tests/EngineTests/Fixtures/vit_parity.h5: a PyTorch reference for the Swift ViT.

The model follows /work/vit-spec.md (DeiT-style pre-norm ViT with a CAM head over patch tokens and a
class-token head). It is evaluated in float64 from float32-representable weights, so the stored
values are the exact answer the Swift float32 engine approximates. Stored: weights under their
state-dict names, channels-last input images [B, H, W, 3], labels, per-layer raw attention logits
and probabilities, hidden states, patch scores, cam/cls logits, the loss, every parameter gradient,
the gradient with respect to each layer's attention probabilities, two torch.optim.AdamW steps with
four parameter groups (backbone / heads x decay / no decay), and logits at a larger input size
(position embedding bilinearly interpolated, align_corners=False).

`--variant dinov2` writes Tests/EngineTests/Fixtures/vit_parity_dinov2.h5 instead: the same model
with DINOv2's block (LayerScale gammas `blocks.N.ls1.gamma` / `ls2.gamma`, exact erf GELU).

Run: python Tests/Fixtures/make_parity_fixtures.py [--variant deit|dinov2] [OUTPUT]
(needs torch, h5py, hdf5plugin, numpy)
"""
import math
import os
import sys

import h5py
import hdf5plugin
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vit_torch import ViT, adamw, loss_fn, parameter_groups  # noqa: E402

SEED = 1234
IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES, BATCH = 16, 4, 24, 2, 3, 4, 5, 2
INTERP_IMAGE = 24
# Optimiser settings of the fixture. The betas are deliberately not the defaults, so swapped or
# hard-coded betas fail; wd is large enough that the decoupled decay is visible in the step.
LR, HEAD_LR_MULT, BETAS, ADAM_EPS, WD = 1e-3, 10.0, (0.8, 0.95), 1e-8, 0.1


def randomise(model, gen):
    # Scales well away from the training init so every term (biases, LayerNorm affine, position
    # embedding) moves the outputs and a missing or misplaced term shows in the comparison.
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            p.copy_(p.float().double())  # float32-representable


def to_np(t):
    return t.detach().to(torch.float32).numpy()


def param_np(name, t):
    # The CAM head is a 1x1 convolution in PyTorch ([C, D, 1, 1]); the spec stores it as [C, D].
    array = to_np(t)
    return array.reshape(array.shape[:2]) if name == "cam_head.weight" else array


def main():
    args = sys.argv[1:]
    variant = "deit"
    if args[:1] == ["--variant"]:
        variant, args = args[1], args[2:]
    assert variant in ("deit", "dinov2"), variant
    dinov2 = variant == "dinov2"
    default = "Tests/EngineTests/Fixtures/vit_parity_dinov2.h5" if dinov2 else "Tests/EngineTests/Fixtures/vit_parity.h5"
    out_path = args[0] if args else default
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = ViT(IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES, layer_scale=dinov2, gelu="erf" if dinov2 else "tanh")
    for block in model.blocks:
        block.attn.keep = True
    randomise(model, gen)
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    def batch(generator):
        images = torch.randn(BATCH, IMAGE, IMAGE, 3, generator=generator).float().double()
        labels = (torch.rand(BATCH, CLASSES, generator=generator) < 0.4).double()
        labels[:, 0] = torch.maximum(labels[:, 0], (labels.sum(1) == 0).double())  # at least one positive
        return images, labels

    images, labels = batch(gen)
    cam_logits, cls_logits, kept = model(images)
    loss = loss_fn(cam_logits, cls_logits, labels)
    loss.backward()

    compression = dict(**hdf5plugin.Zstd(clevel=19))
    with h5py.File(out_path, "w", libver=("v110", "v110")) as f:
        def put(path, array):
            array = np.ascontiguousarray(array)
            if array.size >= 1024:
                f.create_dataset(path, data=array, **compression)
            else:
                f.create_dataset(path, data=array)

        cfg = f.create_group("config")
        for key, value in dict(image_size=IMAGE, patch_size=PATCH, dim=DIM, depth=DEPTH, heads=HEADS,
                               mlp_ratio=MLP, num_classes=CLASSES, batch=BATCH, seed=SEED,
                               interp_image_size=INTERP_IMAGE).items():
            cfg.attrs[key] = value
        cfg.attrs["layernorm_eps"] = 1e-6
        cfg.attrs["layer_scale"] = int(dinov2)
        cfg.attrs["gelu"] = "erf" if dinov2 else "tanh"
        cfg.attrs["torch_version"] = str(torch.__version__)
        cfg.attrs["generator"] = "Tests/Fixtures/make_parity_fixtures.py"

        for name in names:
            put(f"weights/{name}", param_np(name, params[name]))
        put("input/images", to_np(images))
        put("input/labels", to_np(labels))
        for i, block in enumerate(model.blocks):
            put(f"forward/attn_logits.{i}", to_np(block.attn.kept["logits"]))
            put(f"forward/attn_probs.{i}", to_np(block.attn.kept["probs"]))
            put(f"grads_attn_probs/{i}", to_np(block.attn.kept["probs"].grad))
        for key in ["embed"] + [f"block.{i}" for i in range(DEPTH)] + ["norm", "patch_scores"]:
            put(f"forward/{key}", to_np(kept[key]))
        put("forward/cam_logits", to_np(cam_logits))
        put("forward/cls_logits", to_np(cls_logits))
        f.create_dataset("forward/loss", data=np.array([loss.item()], dtype=np.float64))
        for name in names:
            put(f"grads/{name}", param_np(name, params[name].grad))
        grad_norm = torch.sqrt(sum((params[n].grad ** 2).sum() for n in names)).item()
        f["grads"].attrs["global_norm"] = grad_norm

        # Two AdamW steps; the second one uses gradients at the updated weights on a second batch,
        # so the moment estimates and bias corrections of step 2 are exercised, not only step 1's
        # (which reduces to lr * sign(g) when eps is negligible).
        groups = parameter_groups(model)
        opt = adamw(model, LR, HEAD_LR_MULT, BETAS, ADAM_EPS, WD)
        adam = f.create_group("adamw")
        for key, value in dict(lr=LR, head_lr_mult=HEAD_LR_MULT, beta1=BETAS[0], beta2=BETAS[1],
                               eps=ADAM_EPS, weight_decay=WD).items():
            adam.attrs[key] = value
        for key, member_names in groups.items():
            adam.attrs["group_" + key] = ",".join(member_names)
        opt.step()
        for name in names:
            put(f"adamw/step1/{name}", param_np(name, params[name]))
        opt.zero_grad()
        images2, labels2 = batch(gen)
        c2, k2, _ = model(images2)
        loss2 = loss_fn(c2, k2, labels2)
        loss2.backward()
        for name in names:
            put(f"adamw/grads2/{name}", param_np(name, params[name].grad))
        # The step-2 input batch goes with it so the forward at the updated weights can be checked too.
        put("adamw/input2/images", to_np(images2))
        put("adamw/input2/labels", to_np(labels2))
        f.create_dataset("adamw/loss2", data=np.array([loss2.item()], dtype=np.float64))
        opt.step()
        for name in names:
            put(f"adamw/step2/{name}", param_np(name, params[name]))

        # A larger input: the position embedding is interpolated over the patch grid. Evaluated
        # with the ORIGINAL weights (reloaded from the file's copies).
        with torch.no_grad():
            for name in names:
                params[name].copy_(torch.from_numpy(f[f"weights/{name}"][...]).double().reshape(params[name].shape))
            big = torch.randn(BATCH, INTERP_IMAGE, INTERP_IMAGE, 3, generator=gen).float().double()
            cam_big, cls_big, _ = model(big)
            grid = INTERP_IMAGE // PATCH
            put("interp/images", to_np(big))
            put("interp/pos_embed", to_np(model.position_embedding(grid)))
            put("interp/cam_logits", to_np(cam_big))
            put("interp/cls_logits", to_np(cls_big))
    print(f"wrote {out_path}: {len(names)} parameters, loss {loss.item():.6f}, grad norm {grad_norm:.4f}")


if __name__ == "__main__":
    main()
