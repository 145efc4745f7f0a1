#!/usr/bin/env python3
"""PyTorch CPU side of `make bench` (Benchmarks/bench.sh): the ViT of Tests/Fixtures/vit_torch.py
with the backbone of a pretrained-ViT file (vit_torch.pretrained_vit: DINOv2 ViT-S/14 from
Artifacts/pretrained/dinov2-vits14.h5, LayerScale, erf GELU, LayerNorm eps 1e-6), explicit
attention (the WSSS methods read the probabilities). Each --task prints one JSON line:

  train:IMAGE:BATCH:STEPS    a training step as classify-train's default config runs it: forward,
                             the two multi-label soft-margin losses, backward, clipping of the
                             global gradient norm at 1, AdamW (lr 1e-4, heads x10, weight decay
                             0.05); the embedding and the first --frozen blocks have requires_grad
                             False and are not in the optimiser (vit_torch.freeze)
  forward:IMAGE:BATCH:STEPS  extract-attention's forward: inference mode, every layer's attention
                             probabilities and logits kept (Attention.keep), both heads

Times are per step (batch); after --warmup untimed steps, STEPS timed ones; the JSON has the
median and the best. peak_rss_mb is the process's peak resident memory so far.

    bench_pytorch.py --weights Artifacts/pretrained/dinov2-vits14.h5 --threads 2 \
        --task train:112:32:5 --task forward:224:16:4
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures"))
from vit_torch import adamw, freeze, loss_fn, pretrained_vit  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def timed(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def run_task(args, kind, image, batch, steps):
    torch.manual_seed(args.seed)
    model = pretrained_vit(args.weights, image, args.classes)
    images = torch.randn(batch, image, image, 3)
    if kind == "train":
        freeze(model, args.frozen)
        model.train()
        opt = adamw(model, 1e-4, 10.0, (0.9, 0.999), 1e-8, 0.05)
        trainable = [p for p in model.parameters() if p.requires_grad]
        labels = (torch.rand(batch, args.classes) < 0.3).float()

        def step():
            opt.zero_grad(set_to_none=True)
            cam, cls, _ = model(images)
            loss = loss_fn(cam, cls, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            return loss.item()
    else:
        model.eval()
        for block in model.blocks:
            block.attn.keep = True

        def step():
            with torch.inference_mode():
                cam, cls, _ = model(images)
                probs = [block.attn.kept["probs"] for block in model.blocks]
            return float(cls[0, 0]) + float(probs[-1][0, 0, 0, 0])

    times = timed(step, args.warmup, steps)
    median, best = times[len(times) // 2], times[0]
    return {
        "engine": "pytorch", "task": kind, "image": image, "tokens": (image // model.patch) ** 2 + 1, "batch": batch,
        "steps": len(times), "median_s": median, "best_s": best,
        "images_per_s": batch / median, "best_images_per_s": batch / best,
        "frozen_blocks": args.frozen if kind == "train" else None,
        "torch": str(torch.__version__), "threads": torch.get_num_threads(), "attention": "explicit",
        "peak_rss_mb": peak_rss_mb(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="Artifacts/pretrained/dinov2-vits14.h5")
    ap.add_argument("--task", action="append", required=True, help="train|forward:IMAGE:BATCH:STEPS (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--frozen", type=int, default=8, help="frozen blocks of a training step (and the embedding)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.task:
        kind, image, batch, steps = spec.split(":")
        if kind not in ("train", "forward"):
            sys.exit(f"bench_pytorch.py: unknown task '{spec}' (train|forward:IMAGE:BATCH:STEPS)")
        print(json.dumps(run_task(args, kind, int(image), int(batch), int(steps))), flush=True)


if __name__ == "__main__":
    main()
