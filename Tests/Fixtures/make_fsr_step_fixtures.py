#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/fsr_step.h5: one optimiser step of single-stage training with
FSR, in PyTorch, for SingleStageTrainer.trainStep (segmentation off: its decoder has its own
reference, make_segdecoder_fixtures.py).

From the FSR paper (sec. 3.2-3.4, eq. 1-9) and Jessie459/feature-self-reinforcement (ToCo-based
train_final_voc.py, MaskGenerator, FSRLoss, DINO-style teacher):
- student forward of the view: multi-label soft margin on the CAM and class-token logits;
- normalised CAM (max over present classes of ReLU(score) / (max score + 1e-5)); patches with CAM
  strictly between 0.2 and 0.7 are uncertain and are masked first. The fixture is chosen so that
  every image has exactly floor(ratio * N) uncertain patches, so the mask is deterministic;
- the student sees the view again with those patch embeddings replaced by the mask token; the
  FSR head aggregates the unmasked tokens into a class token (make_fsr_fixtures.aggregate) and
  projects it and the masked patch tokens;
- the teacher (EMA copy: equal to the student at step 0) sees the unmasked view (patch targets)
  and a second view (aggregated class-token target); targets softmax((t - centre) / tau_t),
  centres start at 0;
- L_c = mean over images of CE, L_u = per image mean CE over its masked patches, mean over images;
  loss = L_cls(cam) + L_cls(cls) + w_c L_c + w_u L_u;
- torch.optim.AdamW with four groups (backbone x0.1 lr, heads / fsr.* full lr; decay only on
  matrices other than cls_token, pos_embed, mask_token, fsr.aggregate.cls_token);
- then the centres (momentum 0.9 toward the batch mean of the teacher's outputs) and the teacher
  EMA (momentum 0.9995 at step 0 of the cosine schedule) toward the updated student.
Stored: weights, inputs, the mask, the losses, every gradient, the updated student, teacher and
centres. float64 from float32-representable values.

Run: python Tests/Fixtures/make_fsr_step_fixtures.py [OUTPUT]   (needs torch, h5py, numpy)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fsr_fixtures as fsr  # noqa: E402
from make_parity_fixtures import randomise  # noqa: E402
from vit_torch import ViT  # noqa: E402

torch.set_default_dtype(torch.float64)
IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES, BATCH = 16, 4, 8, 2, 2, 2, 3, 2
N = (IMAGE // PATCH) ** 2
LABELS = [[1, 0, 1], [0, 1, 0]]
LOW, HIGH = 0.2, 0.7
LR, BACKBONE_MULT, WD, BETAS, EPS = 1e-3, 0.1, 0.05, (0.9, 0.999), 1e-8
W_CLASS, W_PATCH, TEACHER_T, STUDENT_T = 0.3, 0.7, 0.06, 0.1
CENTRE_MOMENTUM, TEACHER_MOMENTUM = 0.9, 0.9995
NO_DECAY = {"cls_token", "pos_embed", "mask_token", "fsr.aggregate.cls_token"}
# The FSR head of make_fsr_fixtures.py, sized to this backbone.
fsr.B, fsr.N, fsr.D, fsr.HEADS, fsr.BLOCKS = BATCH, N, DIM, 2, 1


def forward(model, mask_token, images, mask=None):
    """vit_torch.ViT.forward with masked patch embeddings replaced by the mask token."""
    x = model.patch_embed(images.permute(0, 3, 1, 2))
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), mask_token.expand_as(x), x)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], 1) + model.pos_embed
    for block in model.blocks:
        x = block(x)
    x = model.norm(x)
    b, t, d = x.shape
    g = IMAGE // PATCH
    scores = model.cam_head(x[:, 1:].transpose(1, 2).reshape(b, d, g, g)).flatten(2).transpose(1, 2)
    return scores.mean(1), model.cls_head(x[:, 0]), scores, x[:, 1:]


def normalised_cam(scores, labels):
    top = scores.max(1, keepdim=True).values.clamp(min=0)
    cam = scores.clamp(min=0) / (top + 1e-5) * labels.unsqueeze(1)
    return cam.max(-1).values


def find_seed():
    """A seed whose images have the same number k of uncertain patches, well clear of the bounds."""
    for seed in range(1000):
        gen = torch.Generator().manual_seed(seed)
        model = ViT(IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES)
        randomise(model, gen)
        images = torch.randn(BATCH, IMAGE, IMAGE, 3, generator=gen).float().double()
        with torch.no_grad():
            cam = normalised_cam(forward(model, None, images)[2], torch.tensor(LABELS, dtype=torch.float64))
        uncertain = (cam > LOW) & (cam < HIGH)
        counts = uncertain.sum(1)
        clearance = torch.minimum((cam - LOW).abs(), (cam - HIGH).abs()).min()
        if counts[0] == counts[1] and 2 <= counts[0] <= N // 2 and clearance > 1e-3:
            return seed
    raise SystemExit("no seed found")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "MethodsTests", "Fixtures", "fsr_step.h5")
    seed = find_seed()
    gen = torch.Generator().manual_seed(seed)
    model = ViT(IMAGE, PATCH, DIM, DEPTH, HEADS, MLP, CLASSES)
    randomise(model, gen)
    view = torch.randn(BATCH, IMAGE, IMAGE, 3, generator=gen).float().double()
    second = torch.randn(BATCH, IMAGE, IMAGE, 3, generator=gen).float().double()
    mask_token = fsr.f32(0.5 * torch.randn(1, 1, DIM, generator=gen)).requires_grad_(True)
    head = fsr.make_params(gen)
    labels = torch.tensor(LABELS, dtype=torch.float64)
    student = dict(model.named_parameters())
    student["mask_token"] = mask_token
    student.update(head)
    before = {name: p.detach().clone() for name, p in student.items()}

    cam_logits, cls_logits, scores, _ = forward(model, mask_token, view)
    cls_loss = F.multilabel_soft_margin_loss(cam_logits, labels) + F.multilabel_soft_margin_loss(cls_logits, labels)
    cam = normalised_cam(scores.detach(), labels)
    mask = (cam > LOW) & (cam < HIGH)
    ratio = float(mask.sum(1)[0]) / N

    with torch.no_grad():  # the teacher is the student at step 0
        t_patch = fsr.project(before, forward(model, mask_token, view)[3].reshape(BATCH * N, DIM))
        t_class = fsr.project(before, fsr.aggregate(before, forward(model, mask_token, second)[3], torch.ones(BATCH, N, dtype=torch.bool)))
    features = forward(model, mask_token, view, mask)[3]
    rows = torch.cat([fsr.aggregate(head, features, ~mask), features[mask]], 0)
    logp = F.log_softmax(fsr.project(head, rows) / STUDENT_T, -1)
    class_centre, patch_centre = torch.zeros(fsr.OUT), torch.zeros(fsr.OUT)
    target_class = F.softmax((t_class - class_centre) / TEACHER_T, -1)
    target_patch = F.softmax((t_patch.reshape(BATCH, N, -1)[mask] - patch_centre) / TEACHER_T, -1)
    class_loss = -(target_class * logp[:BATCH]).sum(-1).mean()
    image_of = torch.arange(BATCH)[:, None].expand(BATCH, N)[mask]
    patch_loss = (-(target_patch * logp[BATCH:]).sum(-1) / mask.sum(1)[image_of]).sum() / BATCH
    loss = cls_loss + W_CLASS * class_loss + W_PATCH * patch_loss
    loss.backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for name, p in student.items()}

    def group(name, p):
        head_param = name.startswith(("cam_head.", "cls_head.", "fsr."))
        decay = p.dim() > 1 and name not in NO_DECAY
        return (1.0 if head_param else BACKBONE_MULT, decay)
    groups = {}
    for name, p in student.items():
        groups.setdefault(group(name, p), []).append(p)
    optimizer = torch.optim.AdamW([dict(params=ps, lr=LR * mult, weight_decay=WD if decay else 0.0) for (mult, decay), ps in groups.items()],
                                  lr=LR, betas=BETAS, eps=EPS)
    optimizer.step()
    teacher = {name: TEACHER_MOMENTUM * before[name] + (1 - TEACHER_MOMENTUM) * p.detach() for name, p in student.items()}
    class_centre = CENTRE_MOMENTUM * class_centre + (1 - CENTRE_MOMENTUM) * t_class.mean(0)
    patch_centre = CENTRE_MOMENTUM * patch_centre + (1 - CENTRE_MOMENTUM) * t_patch.mean(0)

    with h5py.File(out, "w") as f:
        cfg = f.create_group("config")
        for key, value in dict(image_size=IMAGE, patch_size=PATCH, dim=DIM, depth=DEPTH, heads=HEADS, mlp_ratio=MLP, num_classes=CLASSES,
                               fsr_heads=fsr.HEADS, fsr_blocks=fsr.BLOCKS, fsr_mlp_ratio=fsr.MLP, projector_hidden=fsr.HIDDEN,
                               bottleneck=fsr.BOTTLENECK, out_dim=fsr.OUT).items():
            cfg.attrs[key] = np.int64(value)
        cfg.attrs["layernorm_eps"] = 1e-6
        f.attrs.update(dict(mask_ratio=ratio, uncertain_low=LOW, uncertain_high=HIGH, lr=LR, backbone_lr_multiplier=BACKBONE_MULT,
                            weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], eps=EPS, class_weight=W_CLASS, patch_weight=W_PATCH,
                            teacher_temp=TEACHER_T, student_temp=STUDENT_T, centre_momentum=CENTRE_MOMENTUM,
                            teacher_momentum=TEACHER_MOMENTUM))
        for name in student:
            f[f"weights/{name}"] = before[name].float().numpy()
            f[f"grads/{name}"] = grads[name].numpy()
            f[f"updated/{name}"] = student[name].detach().numpy()
            f[f"teacher/{name}"] = teacher[name].numpy()
        f["input/view"] = view.float().numpy()
        f["input/second_view"] = second.float().numpy()
        f["input/labels"] = labels.float().numpy()
        f["output/mask"] = mask.numpy().astype(np.uint8)
        for name, value in dict(loss=loss, cls_loss=cls_loss, class_loss=class_loss, patch_loss=patch_loss).items():
            f[f"output/{name}"] = value.item()
        f["output/class_centre"] = class_centre.numpy()
        f["output/patch_centre"] = patch_centre.numpy()
    print(f"wrote {out}: seed {seed}, mask ratio {ratio}, loss {loss.item():.6f} (L_c {class_loss.item():.6f}, L_u {patch_loss.item():.6f})")


if __name__ == "__main__":
    main()
