"""PAR (pixel-adaptive refinement) in PyTorch, written from the algorithm as the AFA/ToCo/FSR/AReAM
code runs it: neighbours of a 3x3 window (centre excluded) at several dilations with replicate
padding, intensity affinity |I_i - I_j| / (std of the neighbours + 1e-8) / w1, squared, negated,
averaged over channels, softmax over neighbours; plus w2 times a softmax position term; iterate.

Used by make_par_fixtures.py (parity fixture) and Benchmarks/bench_par.py (speed reference).
"""
import math

import torch
import torch.nn.functional as F

WINDOW = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def neighbours(x, dilations):
    """x: [B, C, H, W] -> [B, C, 8 * len(dilations), H, W] by replicate-padded shifts."""
    b, c, h, w = x.shape
    out = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode="replicate")
        for dy, dx in WINDOW:
            out.append(padded[:, :, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
    return torch.stack(out, dim=2)


def affinity(image, dilations=(1, 2, 4, 8, 12, 24), w1=0.3, w2=0.01):
    """image: [B, 3, H, W] -> weights [B, 1, N, H, W]."""
    near = neighbours(image, dilations)
    diff = (near - image.unsqueeze(2)).abs()
    std = near.std(dim=2, keepdim=True)
    intensity = (-(diff / (std + 1e-8) / w1) ** 2).mean(dim=1, keepdim=True)
    dist = torch.tensor(
        [d * (math.sqrt(2) if dy != 0 and dx != 0 else 1.0) for d in dilations for dy, dx in WINDOW],
        dtype=image.dtype,
    ).view(1, 1, -1, 1, 1)
    position = -(dist / (dist.std(dim=2, keepdim=True) + 1e-8) / w1) ** 2
    return F.softmax(intensity, dim=2) + w2 * F.softmax(position, dim=2)


def refine(image, maps, iterations=10, dilations=(1, 2, 4, 8, 12, 24), w1=0.3, w2=0.01):
    weights = affinity(image, dilations, w1, w2)
    for _ in range(iterations):
        maps = (neighbours(maps, dilations) * weights).sum(dim=2)
    return maps, weights
