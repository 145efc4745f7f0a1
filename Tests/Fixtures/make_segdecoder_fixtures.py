#!/usr/bin/env python3
"""Writes Tests/EngineTests/Fixtures/segdecoder_parity.h5: the segmentation decoder in PyTorch.

Built from nn.Conv2d / F.interpolate as SegDecoderConfig documents it (ASPP-lite: a 1x1 branch and
one 3x3 branch per dilation, padding = dilation, ReLU each; concatenation; 1x1 fuse + ReLU; 1x1
classifier), and with the detail branch (two 3x3 stride-2 pad-1 convolutions + ReLU on the image;
the fused grid features bilinearly upsampled, align_corners=False, to that 1/4 size, concatenated
[grid features, detail features], a 3x3 pad-1 merge + ReLU, then the classifier).
A non-square 5 x 6 grid and a 28 x 36 image (detail size 7 x 9: a non-integer upsampling factor).
The loss is sum(logits * R) with a fixed random R, so every logit has its own gradient.
Stored per variant (plain, detail): weights under the Swift names, logits [B, h, w, K] (channels
last), the gradients of every parameter and of the input features.

Run: python Tests/Fixtures/make_segdecoder_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
SEED = 11
B, GH, GW, D, CHANNELS, DILATIONS, CLASSES, DETAIL, IH, IW = 2, 5, 6, 6, 4, (1, 2), 3, 4, 28, 36


class Decoder(nn.Module):
    def __init__(self, detail):
        super().__init__()
        self.aspp = nn.ModuleList([nn.Conv2d(D, CHANNELS, 1)] + [nn.Conv2d(D, CHANNELS, 3, padding=d, dilation=d) for d in DILATIONS])
        self.fuse = nn.Conv2d(CHANNELS * (1 + len(DILATIONS)), CHANNELS, 1)
        self.classifier = nn.Conv2d(CHANNELS, CLASSES, 1)
        if detail:
            self.detail = nn.ModuleList([nn.Conv2d(3, DETAIL // 2, 3, stride=2, padding=1),
                                         nn.Conv2d(DETAIL // 2, DETAIL, 3, stride=2, padding=1)])
            self.merge = nn.Conv2d(CHANNELS + DETAIL, CHANNELS, 3, padding=1)
        else:
            self.detail = None

    def forward(self, features, image):
        x = features.permute(0, 3, 1, 2)
        fused = F.relu(self.fuse(torch.cat([F.relu(branch(x)) for branch in self.aspp], 1)))
        if self.detail is not None:
            y = image.permute(0, 3, 1, 2)
            for conv in self.detail:
                y = F.relu(conv(y))
            up = F.interpolate(fused, size=y.shape[-2:], mode="bilinear", align_corners=False)
            fused = F.relu(self.merge(torch.cat([up, y], 1)))
        return self.classifier(fused).permute(0, 2, 3, 1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "EngineTests", "Fixtures", "segdecoder_parity.h5")
    gen = torch.Generator().manual_seed(SEED)
    features = torch.randn(B, GH, GW, D, generator=gen).float().double().requires_grad_(True)
    image = torch.randn(B, IH, IW, 3, generator=gen).float().double()
    with h5py.File(out, "w") as f:
        f.attrs.update(dict(batch=B, grid_height=GH, grid_width=GW, in_channels=D, channels=CHANNELS, num_classes=CLASSES,
                            detail_channels=DETAIL))
        f.attrs["dilations"] = np.array(DILATIONS, dtype=np.float64)
        f["input/features"] = features.detach().float().numpy()
        f["input/image"] = image.float().numpy()
        for variant in ("plain", "detail"):
            model = Decoder(variant == "detail")
            with torch.no_grad():
                for p in model.parameters():
                    # Biases non-zero, weights large enough that ReLUs cut on both sides.
                    p.copy_((0.5 * torch.randn(p.shape, generator=gen)).float().double())
            logits = model(features, image if variant == "detail" else None)
            weights = torch.randn(logits.shape, generator=gen)
            features.grad = None
            (logits * weights).sum().backward()
            g = f.create_group(variant)
            g["loss_weights"] = weights.float().numpy()
            g["logits"] = logits.detach().numpy()
            g["grad_features"] = features.grad.numpy()
            for name, p in model.named_parameters():
                g[f"weights/decoder.{name}"] = p.detach().float().numpy()
                g[f"grads/decoder.{name}"] = p.grad.numpy()
            print(f"{variant}: logits {tuple(logits.shape)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
