#!/usr/bin/env python3
"""A numpy forward of the pretrained DINOv2 ViT-S/14 written by Scripts/import_vit.py: the math
the Swift engine must reproduce, checked against onnxruntime's outputs (Scripts/vit_reference.py).
Needs numpy and h5py only.

    python Tests/Fixtures/vit_numpy_reference.py --weights Artifacts/pretrained/dinov2-vits14.h5 \
        --images IMAGES.npy --ref REF.h5 [--dtype float64|float32]

prints the max absolute and relative differences of tokens, attention probabilities and the
interpolated position embedding against REF.h5.

The forward (x: [B, 224, 224, 3] NHWC, normalised with input_mean / input_std of the file):
  1. patch embedding: conv 14x14, stride 14, no padding, with bias -> [B, 16*16, 384] row-major
     over (row, column) of the patch grid; the class token cls_token is prepended -> 257 tokens.
  2. position embedding: pos_embed is [1, 1 + 37*37, 384]; entry 0 (class) is kept, the 37x37
     grid is resized to (H // 14) x (W // 14) = 16x16 by `resize_bicubic` below (the graph's ONNX
     Resize: mode cubic, cubic_coeff_a -0.75, coordinate_transformation_mode half_pixel,
     exclude_outside 0, target given as `sizes`, no antialiasing), and the sum is added to tokens.
  3. 12 pre-norm blocks: x = x + ls1.gamma * proj(attn(norm1(x)));
                         x = x + ls2.gamma * fc2(gelu(fc1(norm2(x))))
     LayerNorm: (x - mean) / sqrt(var + 1e-6) * weight + bias, var the biased variance over 384.
     attn: qkv = x @ qkv.weight^T + qkv.bias, rows 0..383 q, 384..767 k, 768..1151 v, each split
     into 6 heads of 64 (head h = columns 64h..64h+63); probs = softmax(q k^T / sqrt(64)) over the
     key axis; out = probs v, heads concatenated back in order. (The graph scales q and k each by
     64^-1/4 = 0.35355338 before the product; same math.) gelu: exact, 0.5 x (1 + erf(x / sqrt 2)).
  4. final LayerNorm norm (eps 1e-6) -> tokens [B, 257, 384].

resize_bicubic (PyTorch's upsample_bicubic2d with align_corners=False and an explicit output
size, which is what ONNX Runtime's cubic/half_pixel Resize computes too), per axis, separably:
  scale = in / out (37 / 16 here: from the sizes, not from a scale factor);
  for output index i: x = (i + 0.5) * scale - 0.5  (not clamped; may be negative)
                      x0 = floor(x), t = x - x0
                      taps x0-1, x0, x0+1, x0+2, each index clamped to [0, in-1] (edge replicate)
                      weights K(t+1), K(t), K(1-t), K(2-t), not renormalised, where Keys' kernel
                      K(s) = (A+2)|s|^3 - (A+3)|s|^2 + 1        for |s| <= 1
                           = A|s|^3 - 5A|s|^2 + 8A|s| - 4A       for 1 < |s| < 2,  A = -0.75.
  Downsampling 37 -> 16 uses these 4 taps only (no antialias widening).
"""
import argparse
import math
import re
import sys
import time

import numpy as np


def load_weights(path):
    """{timm name: array} and the root attributes of an import_vit.py file."""
    import h5py
    tensors = {}
    with h5py.File(path, "r") as h:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                tensors[name.replace("/", ".")] = obj[()]
        h.visititems(visit)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}
    if attrs.get("kind") != "pretrained":
        raise ValueError(f"{path}: root attribute kind is {attrs.get('kind')!r}, expected 'pretrained'")
    return tensors, attrs


def keys_kernel(s, a=-0.75):
    s = np.abs(s)
    return np.where(s <= 1, ((a + 2) * s - (a + 3)) * s * s + 1,
                    np.where(s < 2, ((a * s - 5 * a) * s + 8 * a) * s - 4 * a, 0.0))


def bicubic_matrix(n_in, n_out, a=-0.75):
    """[n_out, n_in] matrix of one axis of resize_bicubic (see the module docstring)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        x = (i + 0.5) * scale - 0.5
        x0 = math.floor(x)
        t = x - x0
        for k in (-1, 0, 1, 2):
            m[i, min(max(x0 + k, 0), n_in - 1)] += keys_kernel(k - t, a)
    return m


def resize_bicubic(grid, out_h, out_w, a=-0.75):
    """grid [h, w, C] -> [out_h, out_w, C]."""
    mh, mw = bicubic_matrix(grid.shape[0], out_h, a), bicubic_matrix(grid.shape[1], out_w, a)
    return np.einsum("ih,hwc,jw->ijc", mh, grid, mw)


def interpolate_pos_embed(pos_embed, grid, gh, gw, a=-0.75):
    """[1, 1 + grid*grid, D] -> [1, 1 + gh*gw, D]."""
    d = pos_embed.shape[-1]
    cls, patches = pos_embed[:, :1], pos_embed[0, 1:].reshape(grid, grid, d)
    return np.concatenate([cls, resize_bicubic(patches, gh, gw, a).reshape(1, gh * gw, d)], axis=1)


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x):
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype)


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def forward(t, attrs, images, dtype=np.float64):
    """images [B, H, W, 3] normalised NHWC -> (tokens [B, 1+N, D], [probs [B, heads, T, T]] per
    block, interpolated pos_embed [1, 1+N, D])."""
    t = {k: v.astype(dtype) for k, v in t.items()}
    p, heads, eps = int(attrs["patch_size"]), int(attrs["heads"]), float(attrs["layernorm_eps"])
    depth, grid = int(attrs["depth"]), int(attrs["pos_embed_grid"])
    if attrs["gelu"] != "erf":
        raise ValueError(f"gelu {attrs['gelu']!r}: this reference implements the exact (erf) form")
    x = images.astype(dtype)
    b, h, w, _ = x.shape
    gh, gw = h // p, w // p
    d = t["cls_token"].shape[-1]
    # Patch embedding as a matrix product over 14x14x3 patches (weight [D, 3, p, p]).
    patches = x[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, gh * gw, 3 * p * p)
    tok = patches @ t["patch_embed.proj.weight"].reshape(d, -1).T + t["patch_embed.proj.bias"]
    tok = np.concatenate([np.broadcast_to(t["cls_token"], (b, 1, d)), tok], axis=1)
    pos = interpolate_pos_embed(t["pos_embed"], grid, gh, gw).astype(dtype)
    tok = tok + pos
    n, dh = tok.shape[1], d // heads
    probs_all = []
    for i in range(depth):
        blk = lambda name: t[f"blocks.{i}.{name}"]  # noqa: E731
        y = layer_norm(tok, blk("norm1.weight"), blk("norm1.bias"), eps)
        qkv = (y @ blk("attn.qkv.weight").T + blk("attn.qkv.bias")).reshape(b, n, 3, heads, dh).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        logits = logits - logits.max(-1, keepdims=True)
        e = np.exp(logits)
        probs = e / e.sum(-1, keepdims=True)
        probs_all.append(probs)
        a = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        tok = tok + blk("ls1.gamma") * (a @ blk("attn.proj.weight").T + blk("attn.proj.bias"))
        y = layer_norm(tok, blk("norm2.weight"), blk("norm2.bias"), eps)
        y = gelu_erf(y @ blk("mlp.fc1.weight").T + blk("mlp.fc1.bias"))
        tok = tok + blk("ls2.gamma") * (y @ blk("mlp.fc2.weight").T + blk("mlp.fc2.bias"))
    return layer_norm(tok, t["norm.weight"], t["norm.bias"], eps), probs_all, pos


def differences(ours, ref):
    """max |ours - ref|, that over max |ref|, and the max elementwise relative difference over
    the entries with |ref| >= 1e-3 * max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    diff = np.abs(ours - ref)
    scale = np.abs(ref).max()
    big = np.abs(ref) >= 1e-3 * scale
    return diff.max(), diff.max() / scale, (diff[big] / np.abs(ref[big])).max()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="Artifacts/pretrained/dinov2-vits14.h5")
    ap.add_argument("--images", required=True, help="[B,224,224,3] float32 normalised NHWC (.npy)")
    ap.add_argument("--ref", required=True, help="the REF.h5 of Scripts/vit_reference.py for the same images")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a = ap.parse_args()
    import h5py
    tensors, attrs = load_weights(a.weights)
    images = np.load(a.images)
    start = time.perf_counter()
    tokens, probs, pos = forward(tensors, attrs, images, np.dtype(a.dtype))
    elapsed = time.perf_counter() - start
    worst = {}
    with h5py.File(a.ref, "r") as h:
        rows = [("pos_embed_interpolated", pos, h["pos_embed_interpolated"][()]),
                ("tokens", tokens, h["tokens"][()])]
        rows += [(f"attention/{i}", p, h[f"attention/{i}"][()]) for i, p in enumerate(probs)]
    print(f"numpy forward ({a.dtype}, B={images.shape[0]}): {elapsed:.1f} s")
    print(f"{'tensor':24s} {'max abs':>10s} {'abs/max|ref|':>13s} {'max rel':>10s}")
    for name, ours, ref in rows:
        if ours.shape != ref.shape:
            print(f"error: {name}: shape {list(ours.shape)} vs reference {list(ref.shape)}", file=sys.stderr)
            sys.exit(1)
        d = differences(ours, ref)
        key = re.sub(r"/\d+$", "/*", name)
        worst[key] = tuple(max(x, y) for x, y in zip(worst.get(key, (0, 0, 0)), d))
        print(f"{name:24s} {d[0]:10.3e} {d[1]:13.3e} {d[2]:10.3e}")
    for key, d in worst.items():
        print(f"worst {key:18s} {d[0]:10.3e} {d[1]:13.3e} {d[2]:10.3e}")


if __name__ == "__main__":
    main()
