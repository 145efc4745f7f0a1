#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/ptc_parity.h5: a PyTorch reference for ToCo's patch token
contrast (PTC), the term FSR's single-stage frame keeps against over-smoothing.

Written from the ToCo paper (Ru et al., CVPR 2023, eq. 3) and its released code: pseudo labels
brought to the token grid by F.interpolate(mode='nearest'); label_to_aff_mask (1 where two tokens
share a label, 0 where they differ, 255 on the diagonal and for every pair with a token labelled
255); get_masked_ptc_loss (absolute cosine similarity of F.normalize'd tokens;
0.5 (1 - sum_pos / (P + 1)) + 0.5 sum_neg / (Q + 1)). Float64 throughout.
Stored: input/tokens [B, N, D] (N = GH * GW, row-major grid), input/labels [B, H, W] (uint8),
output/token_labels [B, GH, GW] (uint8), output/loss, output/grad [B, N, D] (d loss / d tokens).

Run: python Tests/Fixtures/make_ptc_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.manual_seed(2023)
B, D, GH, GW, H, W = 2, 5, 3, 4, 9, 10
IGNORE = 255


def label_to_aff_mask(cam_label, ignore_index=IGNORE):
    b, h, w = cam_label.shape
    flat = cam_label.reshape(b, 1, -1)
    rep = flat.repeat([1, flat.shape[-1], 1])
    rep_t = rep.permute(0, 2, 1)
    aff = (rep == rep_t).long()
    for i in range(b):
        aff[i, :, rep[i, 0, :] == ignore_index] = ignore_index
        aff[i, rep[i, 0, :] == ignore_index, :] = ignore_index
    aff[:, range(h * w), range(h * w)] = ignore_index
    return aff


def masked_ptc_loss(inputs, mask):
    b, c, h, w = inputs.shape
    inputs = inputs.reshape(b, c, h * w)
    x = F.normalize(inputs, p=2, dim=1, eps=1e-8)
    cos = torch.abs(torch.matmul(x.transpose(1, 2), x))
    pos = mask == 1
    neg = mask == 0
    return 0.5 * (1 - torch.sum(pos * cos) / (pos.sum() + 1)) + 0.5 * torch.sum(neg * cos) / (neg.sum() + 1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "MethodsTests", "Fixtures", "ptc_parity.h5")
    labels = torch.randint(0, 3, (B, H, W))
    labels[0, 0:3, 0:3] = IGNORE          # an ignored corner: its tokens take part in no pair
    labels[1, :, 7:] = 2
    labels = labels.to(torch.uint8)
    token_labels = F.interpolate(labels.unsqueeze(1).double(), size=(GH, GW), mode="nearest").squeeze(1).long()
    tokens = torch.randn(B, GH * GW, D)
    tokens[1, 3] = -tokens[1, 2] * 0.5    # a pair with negative cosine (|cos| bends there)
    tokens.requires_grad_(True)
    fmap = tokens.transpose(1, 2).reshape(B, D, GH, GW)
    loss = masked_ptc_loss(fmap, label_to_aff_mask(token_labels))
    loss.backward()
    with h5py.File(out, "w") as f:
        f.create_dataset("input/tokens", data=tokens.detach().numpy())
        f.create_dataset("input/labels", data=labels.numpy())
        f.create_dataset("output/token_labels", data=token_labels.numpy().astype(np.uint8))
        f.create_dataset("output/loss", data=np.array([loss.item()]))
        f.create_dataset("output/grad", data=tokens.grad.numpy())
    print(f"wrote {out}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
