#!/usr/bin/env python3
"""Writes Tests/EngineTests/Fixtures/max_pooled_head.h5: a PyTorch reference for the classification
heads of ToCo and FSR (`top_classifier` / `aux_classifier`) and for the token labels FSR's code
makes from the auxiliary CAM for its patch token contrast.

Written from the FSR code's description (Jessie459/feature-self-reinforcement, models/network.py
and utils/camutils.py): the tokens of a hidden state (its class token dropped) as a [B, D, GH, GW]
map; logits = Conv2d(D, C, 1, bias=False)(adaptive_max_pool2d(map, 1)); multi-label soft margin
loss; CAM = ReLU(conv2d(map, W)), min-max normalised per image and class (`multi_scale_cam` at
one scale: cam + max_pool(-cam), then / (max_pool(cam) + 1e-5)); `cam_to_label(ignore_mid=True)`:
the present classes' largest value v and its class k, label k + 1, 255 where v <= high, 0 where
v <= low. Float64 throughout.
Stored: input/hidden [B, T, D] (T = 1 + GH * GW, row 0 the class token), input/weight [C, D],
input/labels [B, C], attributes grid_height, grid_width, high, low; output/logits [B, C],
output/loss, output/grad_hidden [B, T, D], output/grad_weight [C, D], output/token_labels
[B, GH, GW] (uint8).

Run: python Tests/Fixtures/make_toco_head_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.manual_seed(2024)
B, D, C, GH, GW = 3, 7, 5, 3, 4
N, T = GH * GW, GH * GW + 1
HIGH, LOW, IGNORE = 0.55, 0.3, 255


def cam_to_label(cam, cls_label, high_thre, low_thre, ignore_index):
    b, c, h, w = cam.shape
    valid_cam = cls_label.unsqueeze(-1).unsqueeze(-1).repeat([1, 1, h, w]) * cam
    cam_value, pseudo = valid_cam.max(dim=1, keepdim=False)
    pseudo += 1
    pseudo[cam_value <= high_thre] = ignore_index
    pseudo[cam_value <= low_thre] = 0
    return pseudo


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "EngineTests", "Fixtures", "max_pooled_head.h5")
    hidden = torch.randn(B, T, D)
    weight = torch.randn(C, D) * 0.5
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.float64)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    fmap = hidden[:, 1:].transpose(1, 2).reshape(B, D, GH, GW)
    logits = F.conv2d(F.adaptive_max_pool2d(fmap, (1, 1)), weight.view(C, D, 1, 1)).flatten(1)
    loss = F.multilabel_soft_margin_loss(logits, labels)
    loss.backward()
    with torch.no_grad():
        cam = F.relu(F.conv2d(fmap, weight.view(C, D, 1, 1)))
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        cam = cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)
        token_labels = cam_to_label(cam, labels, HIGH, LOW, IGNORE)
    kinds = set(token_labels.flatten().tolist())
    assert 0 in kinds and IGNORE in kinds and len(kinds - {0, IGNORE}) >= 2, f"the fixture must show every kind of label: {kinds}"
    with h5py.File(out, "w") as f:
        f.attrs["grid_height"] = GH
        f.attrs["grid_width"] = GW
        f.attrs["high"] = HIGH
        f.attrs["low"] = LOW
        f.create_dataset("input/hidden", data=hidden.detach().numpy())
        f.create_dataset("input/weight", data=weight.detach().numpy())
        f.create_dataset("input/labels", data=labels.numpy())
        f.create_dataset("output/logits", data=logits.detach().numpy())
        f.create_dataset("output/loss", data=np.array([loss.item()]))
        f.create_dataset("output/grad_hidden", data=hidden.grad.numpy())
        f.create_dataset("output/grad_weight", data=weight.grad.numpy())
        f.create_dataset("output/token_labels", data=token_labels.numpy().astype(np.uint8))
    print(f"wrote {out}: loss {loss.item():.6f}, token labels {sorted(kinds)}")


if __name__ == "__main__":
    main()
