#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/fsr_parity.h5: a PyTorch reference for FSR's head and losses.

Modelled on the FSR paper (eq. 1, 5-9) and its reference code (DINO-style projector, FSRLoss):
- aggregation: a learned class token through 2 blocks of c <- c + MCA(LN1(c), LN1(X)),
  c <- c + MLP(LN2(c)) (multi-head cross-attention from the class token to the patch tokens that
  the keep mask allows), then a final LayerNorm;
- projector: Linear-GELU-Linear-GELU-Linear, L2 normalisation (F.normalize), bias-free last layer
  with weight norm and g = 1 (rows of v normalised);
- losses: teacher targets softmax((t - centre) / tau_t), student log softmax(s / tau_s);
  L_c = mean over images of CE(teacher class target, student aggregated token),
  L_u = mean over images of the mean CE over that image's masked patch tokens;
  total = w_c L_c + w_u L_u.
GELU is the tanh approximation (the engine's GELU). Evaluated in float64 from float32-representable
weights. Stored (float64): weights under the Swift names (fsr.*), patches [B, N, D], keep [B, N]
(uint8, 1 = attended; masked = not kept), teacher logits and centres, temperatures and weights as
attributes, the aggregated tokens, the projector outputs of [aggregated; masked patches], the
losses, and the gradients of the total with respect to the patches and every parameter.

Run: python Tests/Fixtures/make_fsr_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
SEED = 4321
B, N, D, HEADS, BLOCKS, MLP, HIDDEN, BOTTLENECK, OUT = 2, 6, 8, 2, 2, 2, 10, 5, 7
EPS = 1e-6
TEACHER_T, STUDENT_T, W_CLASS, W_PATCH = 0.05, 0.1, 0.3, 0.7
KEEP = [[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0]]


def f32(t):
    return t.float().double()


def make_params(gen):
    p = {}

    def add(name, shape, kind):
        if kind == "one":
            t = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif kind == "bias":
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        p["fsr." + name] = f32(t).requires_grad_(True)

    add("aggregate.cls_token", (1, 1, D), "w")
    for i in range(BLOCKS):
        pre = f"aggregate.blocks.{i}."
        add(pre + "norm1.weight", (D,), "one"); add(pre + "norm1.bias", (D,), "bias")
        add(pre + "attn.q.weight", (D, D), "w"); add(pre + "attn.q.bias", (D,), "bias")
        add(pre + "attn.kv.weight", (2 * D, D), "w"); add(pre + "attn.kv.bias", (2 * D,), "bias")
        add(pre + "attn.proj.weight", (D, D), "w"); add(pre + "attn.proj.bias", (D,), "bias")
        add(pre + "norm2.weight", (D,), "one"); add(pre + "norm2.bias", (D,), "bias")
        add(pre + "mlp.fc1.weight", (MLP * D, D), "w"); add(pre + "mlp.fc1.bias", (MLP * D,), "bias")
        add(pre + "mlp.fc2.weight", (D, MLP * D), "w"); add(pre + "mlp.fc2.bias", (D,), "bias")
    add("aggregate.norm.weight", (D,), "one"); add("aggregate.norm.bias", (D,), "bias")
    add("projector.mlp.0.weight", (HIDDEN, D), "w"); add("projector.mlp.0.bias", (HIDDEN,), "bias")
    add("projector.mlp.2.weight", (HIDDEN, HIDDEN), "w"); add("projector.mlp.2.bias", (HIDDEN,), "bias")
    add("projector.mlp.4.weight", (BOTTLENECK, HIDDEN), "w"); add("projector.mlp.4.bias", (BOTTLENECK,), "bias")
    add("projector.last_layer.weight_v", (OUT, BOTTLENECK), "w")
    return p


def gelu(x):
    return F.gelu(x, approximate="tanh")


def aggregate(p, x, keep):
    c = p["fsr.aggregate.cls_token"].expand(B, 1, D)
    dh = D // HEADS
    for i in range(BLOCKS):
        pre = f"fsr.aggregate.blocks.{i}."
        ln = lambda t: F.layer_norm(t, (D,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], EPS)  # noqa: E731
        q = F.linear(ln(c), p[pre + "attn.q.weight"], p[pre + "attn.q.bias"]).reshape(B, 1, HEADS, dh).transpose(1, 2)
        kv = F.linear(ln(x), p[pre + "attn.kv.weight"], p[pre + "attn.kv.bias"]).reshape(B, N, 2, HEADS, dh)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, H, N, dh]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # [B, H, 1, N]
        logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, 1, D)
        c = c + F.linear(out, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
        h = F.layer_norm(c, (D,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], EPS)
        c = c + F.linear(gelu(F.linear(h, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])), p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
    return F.layer_norm(c, (D,), p["fsr.aggregate.norm.weight"], p["fsr.aggregate.norm.bias"], EPS).reshape(B, D)


def project(p, x):
    h = gelu(F.linear(x, p["fsr.projector.mlp.0.weight"], p["fsr.projector.mlp.0.bias"]))
    h = gelu(F.linear(h, p["fsr.projector.mlp.2.weight"], p["fsr.projector.mlp.2.bias"]))
    z = F.normalize(F.linear(h, p["fsr.projector.mlp.4.weight"], p["fsr.projector.mlp.4.bias"]), dim=-1)
    v = p["fsr.projector.last_layer.weight_v"]
    return F.linear(z, v / v.norm(dim=1, keepdim=True))


def main(out_path):
    gen = torch.Generator().manual_seed(SEED)
    p = make_params(gen)
    x = f32(torch.randn(B, N, D, generator=gen)).requires_grad_(True)
    keep = torch.tensor(KEEP, dtype=torch.bool)
    masked = ~keep
    teacher_class = f32(torch.randn(B, OUT, generator=gen))
    teacher_patch = f32(torch.randn(B, N, OUT, generator=gen))
    class_centre = f32(0.3 * torch.randn(OUT, generator=gen))
    patch_centre = f32(0.3 * torch.randn(OUT, generator=gen))

    agg = aggregate(p, x, keep)
    rows = torch.cat([agg, x[masked]], dim=0)  # [B + masked, D], masked rows in row-major order
    s = project(p, rows)
    t_class = F.softmax((teacher_class - class_centre) / TEACHER_T, dim=-1)
    t_patch = F.softmax((teacher_patch[masked] - patch_centre) / TEACHER_T, dim=-1)
    logp = F.log_softmax(s / STUDENT_T, dim=-1)
    class_loss = -(t_class * logp[:B]).sum(-1).mean()
    ce_patch = -(t_patch * logp[B:]).sum(-1)
    image_of = torch.arange(B)[:, None].expand(B, N)[masked]
    counts = masked.sum(1).double()
    patch_loss = (ce_patch / counts[image_of]).sum() / B
    total = W_CLASS * class_loss + W_PATCH * patch_loss
    total.backward()

    with h5py.File(out_path, "w") as f:
        f.attrs["teacher_temp"] = TEACHER_T
        f.attrs["student_temp"] = STUDENT_T
        f.attrs["class_weight"] = W_CLASS
        f.attrs["patch_weight"] = W_PATCH
        cfg = f.create_group("config")
        for key, value in [("dim", D), ("heads", HEADS), ("blocks", BLOCKS), ("mlp_ratio", MLP), ("projector_hidden", HIDDEN),
                           ("bottleneck", BOTTLENECK), ("out_dim", OUT)]:
            cfg.attrs[key] = value
        cfg.attrs["layernorm_eps"] = EPS
        w, g = f.create_group("weights"), f.create_group("grads")
        for name, t in p.items():
            w[name] = t.detach().numpy()
            g[name] = t.grad.numpy()
        f["input/patches"] = x.detach().numpy()
        f["input/keep"] = keep.numpy().astype(np.uint8)
        f["input/teacher_class"] = teacher_class.numpy()
        f["input/teacher_patch"] = teacher_patch.numpy()
        f["input/class_centre"] = class_centre.numpy()
        f["input/patch_centre"] = patch_centre.numpy()
        f["output/aggregated"] = agg.detach().numpy()
        f["output/projected"] = s.detach().numpy()
        f["output/class_loss"] = np.array([class_loss.item()])
        f["output/patch_loss"] = np.array([patch_loss.item()])
        f["output/total"] = np.array([total.item()])
        f["output/grad_patches"] = x.grad.numpy()
    print(f"wrote {out_path}: total {total.item():.6f}")


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "MethodsTests", "Fixtures", "fsr_parity.h5")
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.normpath(default))
