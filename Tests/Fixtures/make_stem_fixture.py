#!/usr/bin/env python3
"""Writes a pretrained-stem file with RANDOM weights in the layout of Scripts/import_pretrained.py
(EfficientNet-Lite0 stem + blocks 0-4, BatchNorm folded) plus a PyTorch reference forward.

    make_stem_fixture.py [OUT.h5] [--full]

Default: Tests/EngineTests/Fixtures/stem.h5 with reduced channel counts (the Swift loader reads
every count from the shapes), a batch of raw RGB images (0..255, [B, H, W, 3]) under
parity/input_rgb and the reference output [B, H/8, W/8, C] under parity/output, computed in
float64 from the float32 weights. --full: the real channel counts (for timing runs).
Needs torch, h5py, numpy."""
import sys
import h5py
import numpy as np
import torch
import torch.nn.functional as F

full = "--full" in sys.argv
args = [a for a in sys.argv[1:] if not a.startswith("--")]
out = args[0] if args else "Tests/EngineTests/Fixtures/stem.h5"

KS = [(3, 1), (3, 2), (3, 1), (5, 2), (5, 1)]
if full:
    stem_c, outs, ratios = 32, [16, 24, 24, 40, 40], [1, 6, 6, 6, 6]
else:
    stem_c, outs, ratios = 8, [4, 6, 6, 10, 10], [1, 3, 3, 3, 3]

g = torch.Generator().manual_seed(1234)


def conv_w(cout, cin, k):
    # He-scaled so ReLU6 neither saturates nor dies everywhere.
    std = (2.0 / (cin * k * k)) ** 0.5
    return (torch.randn(cout, cin, k, k, generator=g) * std).float()


def bias(c):
    return (torch.randn(c, generator=g) * 0.1).float()


W = {"stem/conv.weight": conv_w(stem_c, 3, 3), "stem/conv.bias": bias(stem_c)}
cin = stem_c
for i, ((k, s), cout, r) in enumerate(zip(KS, outs, ratios)):
    cexp = cin * r
    if r != 1:
        W[f"blocks/{i}/expand.weight"] = conv_w(cexp, cin, 1)
        W[f"blocks/{i}/expand.bias"] = bias(cexp)
    W[f"blocks/{i}/depthwise.weight"] = conv_w(cexp, 1, k)
    W[f"blocks/{i}/depthwise.bias"] = bias(cexp)
    W[f"blocks/{i}/project.weight"] = conv_w(cout, cexp, 1)
    W[f"blocks/{i}/project.bias"] = bias(cout)
    cin = cout


def stem(x, W):  # the reference forward of the brief; x NCHW already (rgb - 127) / 128
    x = F.relu6(F.conv2d(x, W["stem/conv.weight"], W["stem/conv.bias"], 2, 1))
    for i, (k, s) in enumerate(KS):
        inp = x
        if f"blocks/{i}/expand.weight" in W:
            x = F.relu6(F.conv2d(x, W[f"blocks/{i}/expand.weight"], W[f"blocks/{i}/expand.bias"]))
        x = F.relu6(F.conv2d(x, W[f"blocks/{i}/depthwise.weight"], W[f"blocks/{i}/depthwise.bias"], s, k // 2,
                             groups=x.shape[1]))
        x = F.conv2d(x, W[f"blocks/{i}/project.weight"], W[f"blocks/{i}/project.bias"])
        if s == 1 and x.shape == inp.shape:
            x = x + inp
    return x


# Non-square on purpose (24 x 16) so a transposed height/width cannot pass.
rgb = torch.randint(0, 256, (2, 24, 16, 3), generator=g).double()
ref = stem((rgb.permute(0, 3, 1, 2) - 127) / 128, {k: v.double() for k, v in W.items()})

with h5py.File(out, "w") as f:
    for name, value in W.items():
        f.create_dataset(name, data=value.numpy().astype(np.float32))
    f.attrs["kind"] = "pretrained_stem"
    f.attrs["architecture"] = "efficientnet_lite0"
    f.attrs["blocks"] = 5
    f.attrs["stride"] = 8
    f.attrs["out_channels"] = outs[-1]
    f.attrs["input_mean"] = [127.0, 127.0, 127.0]
    f.attrs["input_std"] = [128.0, 128.0, 128.0]
    f.attrs["random_weights"] = 1  # a fixture, not ImageNet weights
    f.create_dataset("parity/input_rgb", data=rgb.numpy().astype(np.float32))
    f.create_dataset("parity/output", data=ref.permute(0, 2, 3, 1).numpy().astype(np.float32))
print(f"wrote {out}: output {tuple(ref.shape)}, |out| mean {ref.abs().mean().item():.3f}, "
      f"zero fraction {(ref == 0).double().mean().item():.3f}")
