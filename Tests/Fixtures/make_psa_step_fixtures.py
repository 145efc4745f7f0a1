#!/usr/bin/env python3
"""Writes Tests/PSATests/Fixtures/psa_step.h5: one training step of psa-refine's affinity head, in
PyTorch, for AffinityHead.trainStep (what Sources/psa-refine/main.swift runs every batch).

A batch of two images' frozen features, rows concatenated (image 0's 6 x 7 tokens, then image 1's),
pairs within the radius of each image's confident labels (make_psa_fixtures.pairs, imported; image
1's indices offset by its first row, as the stage's AffinityPairs.extract(base:)); the head and the
loss of make_psa_fixtures.py (affinity exp(-mean |f_i - f_j|); bg+ / 4 + fg+ / 4 + neg / 2, each mean
over its own pairs of the batch); backward; torch.optim.AdamW with the head's two groups (decay on
w1 and w2, none on the biases: AffinityHead.makeOptimizer), betas (0.9, 0.999), eps 1e-8, at the
stage's lr (no schedule, no clipping). WD is 0.1 rather than the stage's 1e-4 so that the decay moves
the weights by more than the test's tolerance.
Stored: the two label grids, features, pairs, weights, loss parts, gradients and updated weights.
float64 from float32-representable values.

Run: python Tests/Fixtures/make_psa_step_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_psa_fixtures as psa  # noqa: E402

torch.set_default_dtype(torch.float64)
SEED = 11
LR, WD, BETAS, EPS = 1e-3, 0.1, (0.9, 0.999), 1e-8
# Image 1: image 0's grid mirrored left-right with classes 1 and 2 swapped.
SECOND = [[{1: 2, 2: 1}.get(v, v) for v in reversed(row)] for row in psa.LABELS]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "PSATests", "Fixtures", "psa_step.h5")
    gen = torch.Generator().manual_seed(SEED)
    n, d, hidden, f_dim = psa.H * psa.W, psa.D, psa.HIDDEN, psa.F
    x = psa.f32(torch.randn(2 * n, d, generator=gen))
    params = {
        "w1": psa.f32(torch.randn(hidden, d, generator=gen) / d ** 0.5).requires_grad_(True),
        "b1": psa.f32(0.1 * torch.randn(hidden, generator=gen)).requires_grad_(True),
        "w2": psa.f32(torch.randn(f_dim, hidden, generator=gen) / hidden ** 0.5).requires_grad_(True),
        "b2": psa.f32(0.1 * torch.randn(f_dim, generator=gen)).requires_grad_(True),
    }
    before = {k: p.detach().clone() for k, p in params.items()}
    first, second = psa.pairs(psa.LABELS), psa.pairs(SECOND)
    kinds = {k: torch.cat([first[k], second[k] + n]) for k in first}
    f = torch.relu(x @ params["w1"].T + params["b1"]) @ params["w2"].T + params["b2"]
    parts = {}
    for kind, p in kinds.items():
        a = psa.affinity(f, p[:, 0], p[:, 1])
        parts[kind] = (-torch.log(1 + 1e-5 - a) if kind == "negative" else -torch.log(a + 1e-5)).mean()
    loss = parts["background_positive"] / 4 + parts["foreground_positive"] / 4 + parts["negative"] / 2
    loss.backward()
    grads = {k: p.grad.clone() for k, p in params.items()}
    torch.optim.AdamW([dict(params=[params["w1"], params["w2"]], weight_decay=WD), dict(params=[params["b1"], params["b2"]], weight_decay=0.0)],
                      lr=LR, betas=BETAS, eps=EPS).step()
    with h5py.File(out, "w") as h:
        h.attrs.update(dict(height=psa.H, width=psa.W, radius=psa.RADIUS, lr=LR, weight_decay=WD))
        h["input/labels"] = np.array([psa.LABELS, SECOND], dtype=np.uint8).reshape(2, -1)
        h["input/features"] = x.float().numpy()
        for name, p in params.items():
            h[f"weights/{name}"] = before[name].float().numpy()
            h[f"grads/{name}"] = grads[name].numpy()
            h[f"updated/{name}"] = p.detach().numpy()
        for kind in kinds:
            h[f"loss/{kind}"] = parts[kind].item()
        h["loss/total"] = loss.item()
    print(f"wrote {out}: pairs " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()) + f", loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
