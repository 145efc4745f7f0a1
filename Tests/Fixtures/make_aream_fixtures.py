#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/aream_parity.h5: a PyTorch reference for AReAM's training term.

Written from the paper (AReAM, "Mitigating over-smoothing", sec. 4.3, eq. 7-9, 13-16) and checked
against the released code (Jessie459/AReAM main_voc_mctformer.py, losses.py, tools/camutils.py):
1. CAMs of the present classes from the CAM head's patch scores, ReLU + per-class min-max (eq. 1-2).
2. Layer entropies (eq. 7-8): refine the CAMs with each layer's head-mean patch attention
   (CAM x A^T), sum over classes, softmax over positions, Shannon entropy / log n.
   Weights as the code makes them (`AReAMWeighting.code`): the entropies averaged over the images
   with classes (the batch stands in for the code's training-set average), min-max normalised
   across layers: loss weight = that, fusion weight = 1 - that.
3. Fused labels (eq. 9): CAM x (sum_l w(l) A(l))^T over all layers (the paper's sum; the code
   fuses only the shallow layers), ReLU + min-max, then the code's cam_to_seg twice (background
   score 0.55 and 0.35: bilinear to the image, background channel, x0.5, softmax, PAR, back up,
   argmax) and the eq. 13 combination {class, 0, 255}.
4. Token labels by nearest sampling, pair labels 1 / 0 / 255 (eq. 14).
5. Eq. 15 on the head-mean RAW logits of the supervised layers (2, 3 of 4: the code's 7-11 of 12),
   mean over positives of 1 - sigmoid plus mean over negatives of sigmoid (the code instead takes
   0.5 * each half and divides by count + 1), eq. 16 weighted by the loss weights, averaged over
   the supervised layers, times the term weight 0.1.

The tiny ViT (vit_torch.py) runs in float64 from float32-representable weights. The fixture asserts
that no label decision is within MARGIN of a tie, so float32 rounding in Swift cannot flip one.
Stored: config, weights, images [B, S, S, 3], multi-hot labels; the label maker's inputs per image
(cams [K, n], attention [L, n, n]); token labels, fusion and loss weights, pair counts; the term
(weighted) and the gradient of it with respect to every parameter.

Run: python Tests/Fixtures/make_aream_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import randomise  # noqa: E402
import par_reference  # noqa: E402
from vit_torch import ViT  # noqa: E402

torch.set_default_dtype(torch.float64)
SEED = 2028  # chosen so the labels hold classes, background and ignored tokens
IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES = 32, 4, 16, 4, 2, 2, 3
LABELS = [[1, 0, 0], [0, 1, 1]]
HIGH_BACKGROUND, LOW_BACKGROUND, TERM_WEIGHT = 0.55, 0.35, 0.1
LAYERS = list(range(DEPTH * 7 // 12, DEPTH))
MARGIN = 1e-4


def make_images(gen):
    """A flat background and one or two coloured rectangles per image, plus a little noise."""
    images = 0.1 * torch.randn(len(LABELS), IMAGE, IMAGE, 3, generator=gen)
    images[0, 8:24, 6:20] += torch.tensor([1.5, -0.5, 0.2])
    images[1, 2:14, 4:28] += torch.tensor([-1.0, 1.2, 0.4])
    images[1, 18:30, 10:22] += torch.tensor([0.8, 0.8, -1.2])
    return images.float().double()


def point_cam_head_at_regions(model, features):
    """A random CAM head localises nothing, and the labels would be all background or all ignored.
    Point class c's head at the mean feature of the tokens inside its rectangle minus the mean of
    the others, so the labels have classes, background and ignored tokens."""
    grid = IMAGE // PATCH
    inside = torch.zeros(len(LABELS), grid, grid, dtype=torch.bool)
    masks = {(0, 0): inside[0].clone(), (1, 1): inside[1].clone(), (1, 2): inside[1].clone()}
    masks[(0, 0)][8 // PATCH:24 // PATCH, 6 // PATCH:20 // PATCH] = True
    masks[(1, 1)][2 // PATCH:14 // PATCH, 4 // PATCH:28 // PATCH] = True
    masks[(1, 2)][18 // PATCH:30 // PATCH, 10 // PATCH:22 // PATCH] = True
    weight = model.cam_head.weight
    for (b, c), mask in masks.items():
        mask = mask.reshape(-1)
        direction = features[b][mask].mean(0) - features[b][~mask].mean(0)
        weight[c, :, 0, 0] = (direction / direction.norm() * 2).float().double()


def normalise(maps):
    """ReLU, then per-map min-max to [0, 1]; an all-zero map stays zero (AReAM eq. 2)."""
    maps = maps.clamp(min=0)
    low = maps.min(dim=-1, keepdim=True).values
    span = maps.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(maps))


def refined_entropy(cams, attention):
    """Eq. 7-8 for one layer: entropy (nats) / log n of softmax over positions of sum_c CAM x A^T."""
    p = (cams @ attention.T).sum(0).softmax(0)
    return float(-(p * p.clamp(min=1e-300).log()).sum()) / math.log(p.numel())


def cam_to_seg(image, maps, classes, background):
    """The code's cam_to_seg for one image: image [3, S, S], maps [K, S, S] -> labels [S, S]."""
    s = image.shape[-1]
    planes = torch.cat([torch.full((1, s, s), background), maps], 0).unsqueeze(0)
    half = [s // 2, s // 2]
    small_image = F.interpolate(image.unsqueeze(0), size=half, mode="bilinear", align_corners=False)
    small = F.interpolate(planes, size=half, mode="bilinear", align_corners=False).softmax(1)
    refined, _ = par_reference.refine(small_image, small)
    refined = F.interpolate(refined, size=[s, s], mode="bilinear", align_corners=False)[0]
    top2 = refined.topk(2, dim=0).values
    keys = torch.tensor([0] + classes)
    return keys[refined.argmax(0)], top2[0] - top2[1]


def labels_for_batch(scores, probs, images):
    """Steps 1-4: token labels [B, n], fusion / loss weights, and the smallest decision margin at the
    sampled pixels."""
    b_count, n = scores.shape[0], scores.shape[1]
    grid = int(round(math.sqrt(n)))
    cams, attention = [], []
    for b in range(b_count):
        present = [c for c in range(CLASSES) if LABELS[b][c]]
        cams.append(normalise(scores[b][:, present].T))
        attention.append(torch.stack([p[b].mean(0)[1:, 1:] for p in probs]))
    entropies = torch.tensor([[refined_entropy(cams[b], attention[b][l]) for l in range(DEPTH)] for b in range(b_count)]).mean(0)
    entropies = (entropies - entropies.min()) / (entropies.max() - entropies.min())
    loss_weights = entropies
    fusion = (1 - entropies) / (1 - entropies).sum()
    token_labels, margin = [], math.inf
    sample = [i * IMAGE // grid for i in range(grid)]
    for b in range(b_count):
        present = [c for c in range(CLASSES) if LABELS[b][c]]
        affinity = (fusion.view(-1, 1, 1) * attention[b]).sum(0)
        fused = normalise(cams[b] @ affinity.T).view(len(present), 1, grid, grid)
        maps = F.interpolate(fused, size=[IMAGE, IMAGE], mode="bilinear", align_corners=False)[:, 0]
        image = images[b].permute(2, 0, 1)
        classes = [c + 1 for c in present]
        high, high_gap = cam_to_seg(image, maps, classes, HIGH_BACKGROUND)
        low, low_gap = cam_to_seg(image, maps, classes, LOW_BACKGROUND)
        seg = torch.where(high != 0, high, torch.where(low == 0, torch.zeros_like(low), torch.full_like(low, 255)))
        rows = torch.tensor(sample)
        token_labels.append(seg[rows][:, rows].reshape(-1))
        margin = min(margin, float(high_gap[rows][:, rows].min()), float(low_gap[rows][:, rows].min()))
    return torch.stack(token_labels), fusion, loss_weights, margin, cams, attention


def pair_labels(tokens):
    """Eq. 14: 1 same label, 0 different, 255 where either token is 255 (diagonal included)."""
    same = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).long()
    ignored = (tokens == 255)
    same[ignored.unsqueeze(2).expand_as(same)] = 255
    same[ignored.unsqueeze(1).expand_as(same)] = 255
    return same


def affinity_loss(logits, pairs):
    """Eq. 15 on head-mean raw logits [B, H, T, T] of one layer."""
    a = torch.sigmoid(logits.mean(1)[:, 1:, 1:])
    positive, negative = pairs == 1, pairs == 0
    loss = torch.zeros(())
    if positive.any():
        loss = loss + (1 - a[positive]).mean()
    if negative.any():
        loss = loss + a[negative].mean()
    return loss


def released_code_affinity_loss(logits, pairs):
    """Jessie459/AReAM losses.get_aff_loss: 0.5 * each half, each divided by its count + 1."""
    a = torch.sigmoid(logits.mean(1)[:, 1:, 1:])
    positive, negative = (pairs == 1).double(), (pairs == 0).double()
    return 0.5 * (positive * (1 - a)).sum() / (positive.sum() + 1) + 0.5 * (negative * a).sum() / (negative.sum() + 1)


def make_model_and_images():
    """The fixture's model (CAM head pointed at the rectangles) and images."""
    gen = torch.Generator().manual_seed(SEED)
    model = ViT(IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES)
    randomise(model, gen)
    for block in model.blocks:
        block.attn.keep = True
    images = make_images(gen)
    with torch.no_grad():
        _, _, kept = model(images)
        point_cam_head_at_regions(model, kept["norm"][:, 1:])
    return model, images


def objective(model, images):
    """One forward and the term (eq. 16, before TERM_WEIGHT) with what the fixture stores; also the
    forward's CAM and class-token logits (make_aream_step_fixtures.py adds the classification losses)."""
    cam_logits, cls_logits, kept = model(images)
    logits = [block.attn.kept["logits"] for block in model.blocks]
    probs = [block.attn.kept["probs"].detach() for block in model.blocks]
    tokens, fusion, loss_weights, margin, cams, attention = labels_for_batch(kept["patch_scores"].detach(), probs, images)
    assert margin > MARGIN, f"a label decision is within {margin:g} of a tie: pick another seed"
    pairs = pair_labels(tokens)
    layer_losses = [affinity_loss(logits[l], pairs) for l in LAYERS]
    term = sum(loss_weights[l] * loss for l, loss in zip(LAYERS, layer_losses)) / len(LAYERS)
    released = sum(loss_weights[l] * released_code_affinity_loss(logits[l], pairs) for l in LAYERS) / len(LAYERS)
    return dict(cam_logits=cam_logits, cls_logits=cls_logits, kept=kept, tokens=tokens, fusion=fusion, loss_weights=loss_weights,
                margin=margin, attention=attention, pairs=pairs, layer_losses=layer_losses, term=term, released=released)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "MethodsTests", "Fixtures", "aream_parity.h5")
    model, images = make_model_and_images()
    o = objective(model, images)
    kept, tokens, fusion, loss_weights, margin = o["kept"], o["tokens"], o["fusion"], o["loss_weights"], o["margin"]
    attention, pairs, layer_losses, term, released = o["attention"], o["pairs"], o["layer_losses"], o["term"], o["released"]
    model.zero_grad()
    (TERM_WEIGHT * term).backward()

    with h5py.File(out, "w") as f:
        cfg = f.create_group("config")
        for key, value in dict(image_size=IMAGE, patch_size=PATCH, dim=DIM, depth=DEPTH, heads=HEADS, mlp_ratio=MLP,
                               num_classes=CLASSES).items():
            cfg.attrs[key] = np.int64(value)
        cfg.attrs["layernorm_eps"] = 1e-6
        f.attrs.update(dict(high_background=HIGH_BACKGROUND, low_background=LOW_BACKGROUND, term_weight=TERM_WEIGHT,
                            label_margin=margin))
        f.attrs["layers"] = np.array(LAYERS, dtype=np.float64)
        for name, p in model.named_parameters():
            f[f"weights/{name}"] = p.detach().float().numpy()
            f[f"grads/{name}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().numpy()
        f["input/images"] = images.float().numpy()
        f["input/labels"] = np.array(LABELS, dtype=np.float32)
        for b in range(len(LABELS)):
            f[f"labeller/{b}/cams_raw"] = kept["patch_scores"].detach()[b].T[[c for c in range(CLASSES) if LABELS[b][c]]].float().numpy()
            f[f"labeller/{b}/attention"] = attention[b].float().numpy()
        f["output/token_labels"] = tokens.numpy().astype(np.uint8)
        f["output/fusion_weights"] = fusion.numpy()
        f["output/loss_weights"] = loss_weights.numpy()
        f["output/positives"] = np.int64((pairs == 1).sum())
        f["output/negatives"] = np.int64((pairs == 0).sum())
        f["output/layer_losses"] = torch.stack(layer_losses).detach().numpy()
        f["output/term"] = np.float64(term.detach())
        f["output/term_released_code"] = np.float64(released.detach())
    print(f"wrote {out}: margin {margin:.3g}, term {float(term.detach()):.6f}, token labels {tokens.tolist()}")


if __name__ == "__main__":
    main()
