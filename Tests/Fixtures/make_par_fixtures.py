"""Writes Tests/LocalizationTests/Fixtures/par.h5: PAR inputs and PyTorch outputs for the Swift
parity test. Run with a Python that has torch, h5py and hdf5plugin:
    python Tests/Fixtures/make_par_fixtures.py
"""
import os
import sys

import h5py
import hdf5plugin
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from par_reference import refine  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "LocalizationTests", "Fixtures", "par.h5")

torch.manual_seed(0)
with h5py.File(OUT, "w") as f:
    for name, (h, w, k) in {"small": (24, 20, 3), "wide": (30, 52, 2)}.items():
        # A blocky image with noise, so affinities are far from uniform.
        base = torch.rand(3, h // 6 + 1, w // 6 + 1, dtype=torch.float64)
        image = torch.nn.functional.interpolate(base[None], size=(h, w), mode="nearest")[0]
        image = (image + 0.05 * torch.rand(3, h, w, dtype=torch.float64)) * 255
        maps = torch.softmax(torch.randn(k, h, w, dtype=torch.float64) * 2, dim=0)
        refined, weights = refine(image[None], maps[None])
        g = f.create_group(name)
        z = hdf5plugin.Zstd()
        g.create_dataset("image", data=image.permute(1, 2, 0).numpy().astype(np.float32), **z)
        g.create_dataset("maps", data=maps.numpy().astype(np.float32), **z)
        g.create_dataset("affinity", data=weights[0, 0].numpy().astype(np.float32), **z)
        g.create_dataset("refined", data=refined[0].numpy().astype(np.float32), **z)

    # The confident-label flow of refine_cams_with_bkg_v2 (AFA/ToCo/FSR): maps of the present
    # classes resized to the image, a constant background channel, halved, softmaxed, PAR, resized
    # back, argmax; with a high and a low background score combined into {class, 0, 255}.
    F = torch.nn.functional
    h, w, high, low = 28, 36, 0.55, 0.35
    base = torch.rand(3, 5, 6, dtype=torch.float64)
    image = (F.interpolate(base[None], size=(h, w), mode="nearest")[0] * 200 + 20 * torch.rand(3, h, w, dtype=torch.float64)).round()
    classes = torch.tensor([2, 5, 7])
    maps = torch.rand(len(classes), 7, 9, dtype=torch.float64) ** 2
    full = F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False)
    small_image = F.interpolate(image[None], size=(h // 2, w // 2), mode="bilinear", align_corners=False)

    def label(background):
        with_bg = torch.cat([torch.full((1, 1, h, w), background, dtype=torch.float64), full], dim=1)
        small = F.interpolate(with_bg, size=(h // 2, w // 2), mode="bilinear", align_corners=False).softmax(dim=1)
        refined, _ = refine(small_image, small)
        refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
        keys = torch.cat([torch.tensor([0]), classes])
        return keys[refined.argmax(dim=1)[0]]

    label_h, label_l = label(high), label(low)
    labels = label_h.clone()
    labels[label_h == 0] = 255
    labels[(label_h + label_l) == 0] = 0
    g = f.create_group("confident_labels")
    g.attrs["high_background"] = high
    g.attrs["low_background"] = low
    g.create_dataset("image", data=image.permute(1, 2, 0).numpy().astype(np.uint8))
    g.create_dataset("maps", data=maps.numpy().astype(np.float32))
    g.create_dataset("classes", data=classes.numpy().astype(np.int32))
    g.create_dataset("labels", data=labels.numpy().astype(np.uint8))
print("wrote", os.path.normpath(OUT))
