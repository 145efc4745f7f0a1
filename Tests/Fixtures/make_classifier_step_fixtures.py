#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/aream_step.h5 and acr_step.h5: one optimiser step of
classify-train with method=areaM and method=acr, in PyTorch, for ClassifierTrainer.trainStep with
the method's objective hooked in (what Sources/classify-train/main.swift runs every batch).

The step, as ClassifierTrainer documents it:
- forward of the batch; loss = multi-label soft margin on the CAM logits + on the class-token logits
  (vit_torch.loss_fn's two terms) + the method's share:
  - AReAM (make_aream_fixtures.py: its model, images, online labels and eq. 15-16 term, imported):
    TERM_WEIGHT * term, the term on at step 0 (warm-up 0 steps);
  - ACR (make_acr_fixtures.py: its model, images and `consistency`, imported), flip view (the
    stage's default): L_cls(view) + alpha L_act + beta L_aff. `consistency` runs its own forward of
    the batch for the attention; the batch's classification loss comes from another forward of the
    same weights and images, which adds the same gradient as sharing one forward would;
- backward; torch.nn.utils.clip_grad_norm_ to CLIP (below the gradient's norm, so the clipping is
  active: coefficient CLIP / (norm + 1e-6), as GradientTools.clipByGlobalNorm);
- torch.optim.AdamW with the trainer's four groups (vit_torch.adamw: heads cam_head.* / cls_head.*
  at lr * HEAD_LR_MULT, no decay on vectors, cls_token and pos_embed) at the schedule's step-0
  learning rate: linear warm-up over WARMUP_STEPS, so LR / WARMUP_STEPS.
Stored (beside the imported scripts' config and weights layout): the settings as attributes, the
loss, its parts, the global gradient norm before clipping, the clipped gradients and the updated
weights (float64).

Run: python Tests/Fixtures/make_classifier_step_fixtures.py [OUTPUT_FOLDER]   (needs torch, h5py,
numpy; writes both files, by default into Tests/MethodsTests/Fixtures)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_acr_fixtures as acr  # noqa: E402
import make_aream_fixtures as aream  # noqa: E402
from vit_torch import adamw  # noqa: E402

torch.set_default_dtype(torch.float64)
LR, HEAD_LR_MULT, WD, BETAS, EPS = 1e-3, 10.0, 0.05, (0.9, 0.999), 1e-8
WARMUP_STEPS, TOTAL_STEPS, MIN_LR_FACTOR = 2, 10, 0.01
CLIP_FRACTION = 0.5  # CLIP is this fraction of the step's gradient norm, rounded to 3 digits


def aream_step():
    model, images = aream.make_model_and_images()
    labels = torch.tensor(aream.LABELS, dtype=torch.float64)
    o = aream.objective(model, images)
    cam_loss = F.multilabel_soft_margin_loss(o["cam_logits"], labels)
    cls_loss = F.multilabel_soft_margin_loss(o["cls_logits"], labels)
    loss = cam_loss + cls_loss + aream.TERM_WEIGHT * o["term"]
    attrs = dict(high_background=aream.HIGH_BACKGROUND, low_background=aream.LOW_BACKGROUND, term_weight=aream.TERM_WEIGHT,
                 layers=np.array(aream.LAYERS, dtype=np.float64))
    return model, images, labels, loss, dict(cam_loss=cam_loss, cls_loss=cls_loss, aff_loss=o["term"]), attrs, aream


def acr_step():
    model, _, images, labels = acr.make_model_and_inputs()
    cam_logits, cls_logits, _ = model(images)
    cam_loss = F.multilabel_soft_margin_loss(cam_logits, labels)
    cls_loss = F.multilabel_soft_margin_loss(cls_logits, labels)
    act, aff, view_cls = acr.consistency(model, images, labels, "flip")
    loss = cam_loss + cls_loss + view_cls + acr.ALPHA * act + acr.BETA * aff
    parts = dict(cam_loss=cam_loss, cls_loss=cls_loss, acr_act=act, acr_aff=aff, acr_view2_cls=view_cls)
    return model, images, labels, loss, parts, dict(alpha=acr.ALPHA, beta=acr.BETA), acr


def write(out, step):
    model, images, labels, loss, parts, attrs, module = step()
    names = [n for n, _ in model.named_parameters()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss.backward()
    params = dict(model.named_parameters())
    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params.values())))
    clip = float(f"{CLIP_FRACTION * norm:.3g}")
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grads = {n: params[n].grad.clone() for n in names}
    lr = LR * 1 / WARMUP_STEPS  # WarmupCosineSchedule at step 0
    adamw(model, lr, HEAD_LR_MULT, BETAS, EPS, WD).step()
    with h5py.File(out, "w") as f:
        cfg = f.create_group("config")
        for key, value in dict(image_size=module.IMAGE, patch_size=module.PATCH, dim=module.DIM, depth=module.DEPTH, heads=module.HEADS,
                               mlp_ratio=module.MLP, num_classes=module.CLASSES).items():
            cfg.attrs[key] = np.int64(value)
        cfg.attrs["layernorm_eps"] = 1e-6
        f.attrs.update(attrs)
        f.attrs.update(dict(lr=LR, head_lr_mult=HEAD_LR_MULT, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], eps=EPS,
                            warmup_steps=WARMUP_STEPS, total_steps=TOTAL_STEPS, min_lr_factor=MIN_LR_FACTOR, clip_grad_norm=clip))
        for name in names:
            f[f"weights/{name}"] = before[name].float().numpy()
            f[f"grads/{name}"] = grads[name].numpy()
            f[f"updated/{name}"] = params[name].detach().numpy()
        f["input/images"] = images.float().numpy()
        f["input/labels"] = labels.float().numpy()
        f["output/loss"] = loss.item()
        for key, value in parts.items():
            f[f"output/{key}"] = value.item()
        f["output/grad_norm"] = norm
        f["output/lr"] = lr
    print(f"wrote {out}: loss {loss.item():.6f} (" + ", ".join(f"{k} {v.item():.6f}" for k, v in parts.items())
          + f"), gradient norm {norm:.4f}, clipped to {clip}")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "MethodsTests", "Fixtures")
    write(os.path.join(folder, "aream_step.h5"), aream_step)
    write(os.path.join(folder, "acr_step.h5"), acr_step)


if __name__ == "__main__":
    main()
