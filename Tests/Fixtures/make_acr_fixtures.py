#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/acr_parity.h5: a PyTorch reference for ACR's training terms
and its gradient localisation.

Written from the ACR paper (sec. 3.2, eq. 1-2 and 6-8) and checked against the released code
(OpenNLPLab/ACR_WSSS, DPT/ACR.py forward_cls / getam, train_acr.py, infer_cam.py):
- Second view f(x): horizontal flip (the code) or rot90 (numpy.rot90, the paper's rotation).
  The view's head-mean attention is brought back to the image's token order by permuting rows AND
  columns; the permutation is derived here from the grid geometry, not from the Swift code.
- L_act = mean |A[:, 0, 1:] - f^-1(A')[:, 0, 1:]|, L_aff = mean |A[:, 1:, 1:] - f^-1(A')[:, 1:, 1:]|,
  means over images, layers and entries. The objective's share of eq. 6:
  L_cls(view) + alpha L_act + beta L_aff, L_cls = multi-label soft margin on both heads.
  Stored with the gradient of that share with respect to every parameter.
- Gradient localisation (eq. 7-8): for each present class, d cls_logit / d A_l (post-softmax),
  head mean of row 0 to the patches, ReLU (the code clamps; the paper leaves the sign implicit),
  mean over layers from START_LAYER, times the mean patch-to-patch attention of all layers as the
  paper writes it, M x A_bar (out[j] = sum_i M[i] A[i, j]; the code multiplies A x M instead),
  then ReLU + min-max.

ViT of vit_torch.py in float64 from float32-representable weights; ALPHA, BETA are not the
defaults so that swapped weights show.

Run: python Tests/Fixtures/make_acr_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import randomise  # noqa: E402
from vit_torch import ViT  # noqa: E402

torch.set_default_dtype(torch.float64)
SEED = 77
IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES = 16, 4, 16, 3, 2, 2, 3
LABELS = [[1, 0, 1], [0, 1, 0]]
ALPHA, BETA = 0.7, 1.3
START_LAYER = 1
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def view(images, kind):
    """images [B, H, W, C] -> the second view."""
    return images.flip(2) if kind == "flip" else torch.rot90(images, 1, dims=(1, 2))


def original_to_view(grid, kind):
    """For each original token (r, c), row-major, the index of the same patch in the view."""
    order = []
    for r in range(grid):
        for c in range(grid):
            # flip: (r, c) -> (r, g-1-c); rot90 (counter-clockwise): (r, c) -> (g-1-c, r).
            i, j = (r, grid - 1 - c) if kind == "flip" else (grid - 1 - c, r)
            order.append(i * grid + j)
    return torch.tensor([0] + [1 + k for k in order])


def consistency(model, images, labels, kind):
    for block in model.blocks:
        block.attn.keep = True
    model(images)
    first = [block.attn.kept["probs"].mean(1) for block in model.blocks]
    cam2, cls2, _ = model(view(images, kind))
    second = [block.attn.kept["probs"].mean(1) for block in model.blocks]
    order = original_to_view(IMAGE // PATCH, kind)
    act, aff = 0, 0
    for a1, a2 in zip(first, second):
        restored = a2[:, order][:, :, order]
        act = act + (a1[:, 0, 1:] - restored[:, 0, 1:]).abs().mean() / DEPTH
        aff = aff + (a1[:, 1:, 1:] - restored[:, 1:, 1:]).abs().mean() / DEPTH
    view_cls = F.multilabel_soft_margin_loss(cam2, labels) + F.multilabel_soft_margin_loss(cls2, labels)
    return act, aff, view_cls


def normalise(maps):
    maps = maps.clamp(min=0)
    low, high = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
    return (maps - low) / (high - low)


def localisation(model, images):
    """Per image: gradients [K, L, n] (ReLU of the head-mean row 0), the maps [K, n] as eq. 8
    writes them (M x A), and as infer_cam.py computes them (A x M: torch.matmul(patch_aff, cam))."""
    for block in model.blocks:
        block.attn.keep = True
    out = []
    for b in range(images.shape[0]):
        present = [c for c in range(CLASSES) if LABELS[b][c]]
        grads = []
        for c in present:
            model.zero_grad()
            _, cls, _ = model(images[b:b + 1])
            probs = [block.attn.kept["probs"] for block in model.blocks]
            cls[0, c].backward()
            grads.append(torch.stack([p.grad[0].mean(0)[0, 1:].clamp(min=0) for p in probs]))
        grads = torch.stack(grads)  # [K, L, n]
        attention = torch.stack([p.detach()[0].mean(0)[1:, 1:] for p in probs]).mean(0)
        mean = grads[:, START_LAYER:].mean(1)
        out.append((grads, normalise(mean @ attention), normalise(mean @ attention.T)))
    return out


def make_model_and_inputs():
    """The fixture's model, pixels (uint8), normalised images and multi-hot labels."""
    gen = torch.Generator().manual_seed(SEED)
    model = ViT(IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES)
    randomise(model, gen)
    pixels = torch.randint(0, 256, (len(LABELS), IMAGE, IMAGE, 3), generator=gen, dtype=torch.uint8)
    images = (pixels.double() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    images = images.float().double()
    return model, pixels, images, torch.tensor(LABELS, dtype=torch.float64)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "MethodsTests", "Fixtures", "acr_parity.h5")
    model, pixels, images, labels = make_model_and_inputs()
    with h5py.File(out, "w") as f:
        cfg = f.create_group("config")
        for key, value in dict(image_size=IMAGE, patch_size=PATCH, dim=DIM, depth=DEPTH, heads=HEADS, mlp_ratio=MLP,
                               num_classes=CLASSES).items():
            cfg.attrs[key] = np.int64(value)
        cfg.attrs["layernorm_eps"] = 1e-6
        f.attrs.update(dict(alpha=ALPHA, beta=BETA, start_layer=START_LAYER))
        for name, p in model.named_parameters():
            f[f"weights/{name}"] = p.detach().float().numpy()
        f["input/pixels"] = pixels.numpy()
        f["input/images"] = images.float().numpy()
        f["input/labels"] = labels.float().numpy()
        for kind in ("flip", "rot90"):
            model.zero_grad()
            act, aff, view_cls = consistency(model, images, labels, kind)
            (view_cls + ALPHA * act + BETA * aff).backward()
            g = f.create_group(kind)
            g["act"], g["aff"], g["view_cls"] = act.item(), aff.item(), view_cls.item()
            for name, p in model.named_parameters():
                g[f"grads/{name}"] = p.grad.numpy()
            print(f"{kind}: act {act.item():.6f} aff {aff.item():.6f} view cls {view_cls.item():.6f}")
        for b, (grads, maps, released) in enumerate(localisation(model, images)):
            f[f"localisation/{b}/gradients"] = grads.numpy()
            f[f"localisation/{b}/maps"] = maps.numpy()
            f[f"localisation/{b}/maps_released_code"] = released.numpy()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
