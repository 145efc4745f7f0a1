#!/usr/bin/env python3
"""Writes Tests/MethodsTests/Fixtures/fsr_step.h5 and fsr_seg_step.h5: one optimiser step of
single-stage training with FSR, in PyTorch, for SingleStageTrainer.trainStep; the first with
segmentation off, the second with the segmentation branch on as well (same model, views, mask and
FSR terms: the decoder's weights and the pseudo labels come from a generator of their own).

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
- torch.optim.AdamW with four groups (backbone and FSR's aggregation blocks x0.1 lr: the
  reference's aggregation lives inside its encoder; heads / fsr.projector.* full lr; decay only on
  matrices other than cls_token, pos_embed, mask_token, fsr.aggregate.cls_token);
- then the centres (momentum 0.9 toward the batch mean of the teacher's outputs) and the teacher
  EMA (momentum 0.9995 at step 0 of the cosine schedule) toward the updated student.
Segmentation (fsr_seg_step.h5 only), as SingleStageTrainer does it: the decoder of
make_segdecoder_fixtures.py (its Decoder class, imported: ASPP-lite with dilations (1, 2), 4 channels,
and the image detail branch on, 4 channels) on the student's unmasked patch features [B, 4, 4, D]
and the view (the detail features are 4 x 4 too, so the decoder's inner upsampling is the identity
here: make_segdecoder_fixtures.py checks a non-integer factor); its logits [B, K, 4, 4] (K = 1 + classes) resized to the 16 x 16 labels with
F.interpolate(mode="bilinear", align_corners=False) (Kernels.bilinearResizeForward's convention:
source = (o + 0.5) * in / out - 0.5, clamped at 0); F.cross_entropy with ignore_index=255 (mean over
the labelled pixels) on fixed random pseudo labels with about a quarter 255; loss += seg_weight *
L_seg (0.4, unlike the other weights). Its gradient reaches the backbone through the features
together with the classification and FSR terms. The decoder's parameters (decoder.*) are heads
(full lr; decay on matrices only); the teacher has no decoder.
Note: the released FSR/ToCo code (models/losses.py get_seg_loss) averages a background-only and a
foreground-only cross-entropy, (CE over label 0 + CE over labels > 0) / 2; the trainer (and this
reference) uses the plain mean over all labelled pixels, as the project's notes describe.
Stored: weights, inputs, the mask, the losses, every gradient, the updated student, teacher and
centres; with segmentation also the pseudo labels (uint8), seg_loss, the decoder's weights, gradients
and updated values, and the decoder's shape as config attributes. float64 from float32-representable
values.

Run: python Tests/Fixtures/make_fsr_step_fixtures.py [OUTPUT_FOLDER]   (needs torch, h5py, numpy;
writes both files, by default into Tests/MethodsTests/Fixtures)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fsr_fixtures as fsr  # noqa: E402
import make_segdecoder_fixtures as segdec  # noqa: E402
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
# The decoder of make_segdecoder_fixtures.py (its widths, dilations (1, 2), detail branch) on these
# features, background + CLASSES outputs.
segdec.D, segdec.CLASSES = DIM, CLASSES + 1
SEG_SEED, SEG_WEIGHT, IGNORED_FRACTION = 7, 0.4, 0.25


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


def reference_step(seg):
    """The step; with `seg`, the segmentation branch too. Returns what the fixture stores."""
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
    if seg:  # its own generator: the FSR part of the step is the same in both fixtures
        seg_gen = torch.Generator().manual_seed(SEG_SEED)
        decoder = segdec.Decoder(detail=True)
        with torch.no_grad():
            for p in decoder.parameters():
                p.copy_((0.5 * torch.randn(p.shape, generator=seg_gen)).float().double())
        student.update({f"decoder.{name}": p for name, p in decoder.named_parameters()})
        pseudo = torch.randint(0, CLASSES + 1, (BATCH, IMAGE, IMAGE), generator=seg_gen)
        pseudo[torch.rand(pseudo.shape, generator=seg_gen) < IGNORED_FRACTION] = 255
    before = {name: p.detach().clone() for name, p in student.items()}

    cam_logits, cls_logits, scores, view_features = forward(model, mask_token, view)
    cls_loss = F.multilabel_soft_margin_loss(cam_logits, labels) + F.multilabel_soft_margin_loss(cls_logits, labels)
    cam = normalised_cam(scores.detach(), labels)
    mask = (cam > LOW) & (cam < HIGH)
    ratio = float(mask.sum(1)[0]) / N
    seg_loss = torch.zeros(())
    if seg:
        g = IMAGE // PATCH
        logits = decoder(view_features.reshape(BATCH, g, g, DIM), view).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)
        seg_loss = F.cross_entropy(logits, pseudo, ignore_index=255)

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
    if seg:
        loss = loss + SEG_WEIGHT * seg_loss
    loss.backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for name, p in student.items()}

    def group(name, p):
        head_param = name.startswith(("cam_head.", "cls_head.", "fsr.projector.", "decoder."))
        decay = p.dim() > 1 and name not in NO_DECAY
        return (1.0 if head_param else BACKBONE_MULT, decay)
    groups = {}
    for name, p in student.items():
        groups.setdefault(group(name, p), []).append(p)
    optimizer = torch.optim.AdamW([dict(params=ps, lr=LR * mult, weight_decay=WD if decay else 0.0) for (mult, decay), ps in groups.items()],
                                  lr=LR, betas=BETAS, eps=EPS)
    optimizer.step()
    # The teacher copies the backbone and the FSR head, not the decoder.
    teacher = {name: TEACHER_MOMENTUM * before[name] + (1 - TEACHER_MOMENTUM) * p.detach()
               for name, p in student.items() if not name.startswith("decoder.")}
    class_centre = CENTRE_MOMENTUM * class_centre + (1 - CENTRE_MOMENTUM) * t_class.mean(0)
    patch_centre = CENTRE_MOMENTUM * patch_centre + (1 - CENTRE_MOMENTUM) * t_patch.mean(0)
    step = dict(seed=seed, ratio=ratio, student=student, before=before, grads=grads, teacher=teacher, view=view, second=second,
                labels=labels, mask=mask, class_centre=class_centre, patch_centre=patch_centre,
                losses=dict(loss=loss, cls_loss=cls_loss, class_loss=class_loss, patch_loss=patch_loss))
    if seg:
        step["losses"]["seg_loss"] = seg_loss
        step["pseudo"] = pseudo
    return step


def write(out, seg):
    s = reference_step(seg)
    with h5py.File(out, "w") as f:
        cfg = f.create_group("config")
        for key, value in dict(image_size=IMAGE, patch_size=PATCH, dim=DIM, depth=DEPTH, heads=HEADS, mlp_ratio=MLP, num_classes=CLASSES,
                               fsr_heads=fsr.HEADS, fsr_blocks=fsr.BLOCKS, fsr_mlp_ratio=fsr.MLP, projector_hidden=fsr.HIDDEN,
                               bottleneck=fsr.BOTTLENECK, out_dim=fsr.OUT).items():
            cfg.attrs[key] = np.int64(value)
        cfg.attrs["layernorm_eps"] = 1e-6
        if seg:
            for key, value in dict(decoder_channels=segdec.CHANNELS, decoder_detail_channels=segdec.DETAIL).items():
                cfg.attrs[key] = np.int64(value)
            cfg.attrs["decoder_dilations"] = np.array(segdec.DILATIONS, dtype=np.float64)
            f.attrs["seg_weight"] = SEG_WEIGHT
        f.attrs.update(dict(mask_ratio=s["ratio"], uncertain_low=LOW, uncertain_high=HIGH, lr=LR, backbone_lr_multiplier=BACKBONE_MULT,
                            weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], eps=EPS, class_weight=W_CLASS, patch_weight=W_PATCH,
                            teacher_temp=TEACHER_T, student_temp=STUDENT_T, centre_momentum=CENTRE_MOMENTUM,
                            teacher_momentum=TEACHER_MOMENTUM))
        for name in s["student"]:
            f[f"weights/{name}"] = s["before"][name].float().numpy()
            f[f"grads/{name}"] = s["grads"][name].numpy()
            f[f"updated/{name}"] = s["student"][name].detach().numpy()
            if name in s["teacher"]:
                f[f"teacher/{name}"] = s["teacher"][name].numpy()
        f["input/view"] = s["view"].float().numpy()
        f["input/second_view"] = s["second"].float().numpy()
        f["input/labels"] = s["labels"].float().numpy()
        if seg:
            f["input/pseudo_labels"] = s["pseudo"].numpy().astype(np.uint8)
        f["output/mask"] = s["mask"].numpy().astype(np.uint8)
        for name, value in s["losses"].items():
            f[f"output/{name}"] = value.item()
        f["output/class_centre"] = s["class_centre"].numpy()
        f["output/patch_centre"] = s["patch_centre"].numpy()
    losses = ", ".join(f"{k} {v.item():.6f}" for k, v in s["losses"].items())
    print(f"wrote {out}: seed {s['seed']}, mask ratio {s['ratio']}, {losses}")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "MethodsTests", "Fixtures")
    write(os.path.join(folder, "fsr_step.h5"), seg=False)
    write(os.path.join(folder, "fsr_seg_step.h5"), seg=True)


if __name__ == "__main__":
    main()
