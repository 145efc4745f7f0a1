#!/usr/bin/env python3
"""Writes Tests/PSATests/Fixtures/psa_parity.h5: a PyTorch reference for PSA / AffinityNet.

Written from the PSA paper (Ahn & Kwak 2018, sec. 3.2-3.4) and checked against jiwoon-ahn/psa
(tool/imutils.ExtractAffinityLabelInRadius, network/resnet38_aff.py, train_aff.py, infer_aff.py):
- Pairs within a radius: the half disc of offsets (0, dx) for 0 < dx < r and (dy, dx) for
  0 < dy < r, |dx| < r, dx^2 + dy^2 < r^2; both ends labelled (255 ignored); equal labels are
  background-positive (0) or foreground-positive, different labels negative.
- Affinity head f = W2 relu(W1 x + b1) + b2 (our small head on frozen features), a_ij =
  exp(-mean_c |f_i - f_j|); loss = mean_bg(-log(a + 1e-5)) / 4 + mean_fg(-log(a + 1e-5)) / 4 +
  mean_neg(-log(1 + 1e-5 - a)) / 2, each over its own count.
- Random walk: background (1 - max_c M_c)^alpha prepended to the class maps; affinities a^beta
  between tokens within the radius (both directions), 1 on the diagonal, 0 elsewhere; columns
  normalised (trans = aff / aff.sum(0)); T squared logt times; refined = maps x T.
A non-square 6 x 7 grid so that transposed indices show. float64 from float32-representable values.

Run: python Tests/Fixtures/make_psa_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch

torch.set_default_dtype(torch.float64)
SEED = 5
H, W, D, HIDDEN, F, RADIUS, BETA, LOGT, ALPHA = 6, 7, 5, 8, 4, 3, 8.0, 3, 4.0
LABELS = [
    [0, 0, 0, 255, 1, 1, 1],
    [0, 0, 255, 1, 1, 1, 255],
    [0, 2, 2, 1, 1, 0, 0],
    [255, 2, 2, 2, 0, 0, 0],
    [0, 2, 2, 255, 0, 0, 255],
    [0, 0, 0, 0, 0, 0, 0],
]


def f32(t):
    return t.float().double()


def offsets(radius):
    out = [(0, dx) for dx in range(1, radius)]
    out += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius * radius]
    return out


def pairs(labels):
    kinds = {"background_positive": [], "foreground_positive": [], "negative": []}
    for y in range(H):
        for x in range(W):
            for dy, dx in offsets(RADIUS):
                y2, x2 = y + dy, x + dx
                if not (0 <= y2 < H and 0 <= x2 < W):
                    continue
                a, b = labels[y][x], labels[y2][x2]
                if a == 255 or b == 255:
                    continue
                kind = "negative" if a != b else ("background_positive" if a == 0 else "foreground_positive")
                kinds[kind].append((y * W + x, y2 * W + x2))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in kinds.items()}


def affinity(f, i, j):
    return torch.exp(-(f[i] - f[j]).abs().mean(-1))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "PSATests", "Fixtures", "psa_parity.h5")
    gen = torch.Generator().manual_seed(SEED)
    x = f32(torch.randn(H * W, D, generator=gen))
    params = {
        "w1": f32(torch.randn(HIDDEN, D, generator=gen) / D ** 0.5).requires_grad_(True),
        "b1": f32(0.1 * torch.randn(HIDDEN, generator=gen)).requires_grad_(True),
        "w2": f32(torch.randn(F, HIDDEN, generator=gen) / HIDDEN ** 0.5).requires_grad_(True),
        "b2": f32(0.1 * torch.randn(F, generator=gen)).requires_grad_(True),
    }
    f = torch.relu(x @ params["w1"].T + params["b1"]) @ params["w2"].T + params["b2"]
    kinds = pairs(LABELS)
    parts = {}
    for kind, p in kinds.items():
        a = affinity(f, p[:, 0], p[:, 1])
        parts[kind] = (-torch.log(1 + 1e-5 - a) if kind == "negative" else -torch.log(a + 1e-5)).mean()
    loss = parts["background_positive"] / 4 + parts["foreground_positive"] / 4 + parts["negative"] / 2
    loss.backward()

    # The walk on the head's features.
    fd = f.detach()
    n = H * W
    dense = torch.zeros(n, n)
    every = [(y * W + x, (y + dy) * W + x + dx) for y in range(H) for x in range(W) for dy, dx in offsets(RADIUS)
             if 0 <= y + dy < H and 0 <= x + dx < W]
    for i, j in every:
        dense[i, j] = dense[j, i] = affinity(fd, i, j) ** BETA
    dense += torch.eye(n)
    trans = dense / dense.sum(0, keepdim=True)
    for _ in range(LOGT):
        trans = trans @ trans
    maps = f32(torch.rand(2, n, generator=gen))
    background = (1 - maps.max(0).values).clamp(min=0) ** ALPHA
    walked = torch.cat([background.unsqueeze(0), maps]) @ trans

    with h5py.File(out, "w") as h:
        h.attrs.update(dict(height=H, width=W, radius=RADIUS, beta=BETA, logt=LOGT, alpha=ALPHA))
        h["input/labels"] = np.array(LABELS, dtype=np.uint8).reshape(-1)
        h["input/features"] = x.float().numpy()
        h["input/maps"] = maps.float().numpy()
        for name, p in params.items():
            h[f"weights/{name}"] = p.detach().float().numpy()
            h[f"grads/{name}"] = p.grad.numpy()
        for kind, p in kinds.items():
            h[f"pairs/{kind}"] = p.numpy().astype(np.int32)
            h[f"loss/{kind}"] = parts[kind].item()
        h["loss/total"] = loss.item()
        h["output/affinity_features"] = fd.numpy()
        h["output/walked"] = walked.numpy()
    print(f"wrote {out}: pairs " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()) + f", loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
