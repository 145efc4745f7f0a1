#!/usr/bin/env python3
"""PyTorch CPU side of `make bench`: times a full training step (forward, loss, backward, AdamW)
of the ViT in Tests/Fixtures/vit_torch.py and prints one JSON line with images/s.

Usage: bench_pytorch.py --image 64 --patch 8 --dim 128 --depth 4 --heads 4 --classes 10 \
                        --batch 32 --threads 2 [--stem-weights F.h5] [--steps 20] [--warmup 3] [--fused]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures"))
from vit_torch import PretrainedStem, ViT, adamw, loss_fn  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    for key, default in dict(image=64, patch=8, dim=192, depth=6, heads=3, mlp_ratio=4, classes=10,
                             batch=64, threads=2, steps=20, warmup=3, seed=0).items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=default)
    ap.add_argument("--seconds", type=float, default=0, help="run at least this long (after warm-up)")
    ap.add_argument("--stem-weights", help="pretrained-stem HDF5 file: the hybrid ViT (frozen EfficientNet-Lite0 stem)")
    ap.add_argument("--fused", action="store_true", help="scaled_dot_product_attention (no probabilities)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stem = PretrainedStem(args.stem_weights) if args.stem_weights else None
    model = ViT(args.image, args.patch, args.dim, args.depth, args.heads, args.mlp_ratio, args.classes, fused=args.fused, stem=stem)
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.trunc_normal_(p, std=0.02)
    model.train()
    opt = adamw(model, 1e-3, 10.0, (0.9, 0.999), 1e-8, 0.05)
    images = torch.randn(args.batch, args.image, args.image, 3)
    labels = (torch.rand(args.batch, args.classes) < 0.3).float()

    def step():
        opt.zero_grad(set_to_none=True)
        cam, cls, _ = model(images)
        loss = loss_fn(cam, cls, labels)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < args.steps or time.perf_counter() - start < args.seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "engine": "pytorch", "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "attention": "sdpa" if args.fused else "explicit", "batch": args.batch, "steps": len(times),
        "median_step_s": median, "images_per_s": args.batch / median,
        "mean_images_per_s": args.batch * len(times) / sum(times),
    }))


if __name__ == "__main__":
    main()
