"""Synthetic cam-refine inputs of realistic size for a dataset split (timing, not accuracy).

  make_refine_benchmark.py DATASET.h5 SPLIT OUT_DIR [--layers 6] [--patch 4] [--seed 0]

Writes OUT_DIR/seeds.h5 (kind "cams") and OUT_DIR/attention.h5 (kind "attention") in the layout of
Sources/Localization/MapArtifacts.swift, with the dataset's content hash, split, image order and
sizes, so `cam-refine` (also `--param analyse=true` with `--in dataset=DATASET.h5`) accepts them.
The content is simulated from the masks: seeds cover part of each object, attention mixes
same-label, local and "sink" terms, deeper layers drifting towards a few sink tokens (the
over-smoothing the AReAM paper describes). It is not a trained model's attention.
"""
import argparse
import hashlib
import json
import os

import h5py
import hdf5plugin
import numpy as np

ZSTD = dict(shuffle=True, **hdf5plugin.Zstd(clevel=3))


def content_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def ragged(group, name, items, dtype, chunk):
    g = group.create_group(name)
    flat = np.concatenate([np.asarray(i, dtype=dtype).ravel() for i in items]) if items else np.zeros(0, dtype)
    g.create_dataset("data", data=flat, chunks=(max(1024, min(chunk, 1 << 20)),), maxshape=(None,), **ZSTD)
    offsets = np.zeros(len(items) + 1, np.int64)
    offsets[1:] = np.cumsum([np.asarray(i).size for i in items])
    g.create_dataset("offsets", data=offsets, chunks=True, **ZSTD)
    g.create_dataset("shapes", data=np.array([np.asarray(i).shape for i in items], np.int64), chunks=True, **ZSTD)
    g.attrs["layout"] = "ragged"
    g.attrs["dtype"] = "float32" if dtype == np.float16 else np.dtype(dtype).name


def root_attrs(f, kind, context, params):
    f.attrs["kind"] = kind
    f.attrs["format_version"] = np.int64(1)
    f.attrs["producer"] = "make_refine_benchmark.py"
    f.attrs["params"] = json.dumps(params, sort_keys=True)
    f.attrs["inputs"] = json.dumps({"dataset": context["dataset_hash"]})
    f.attrs["created_at"] = "2026-01-01T00:00:00Z"
    f.attrs["split"] = context["split"]
    f.attrs["class_names"] = json.dumps(context["class_names"])
    f.attrs["num_classes"] = np.int64(len(context["class_names"]))
    f.attrs["dataset_hash"] = context["dataset_hash"]


def index_arrays(f, indices, sizes):
    f.create_dataset("image_index", data=np.array(indices, np.int64), chunks=(4096,), maxshape=(None,), **ZSTD)
    f.create_dataset("image_sizes", data=np.array(sizes, np.int32).reshape(-1, 2), chunks=(4096, 2), maxshape=(None, 2), **ZSTD)


def minmax(m):
    m = np.maximum(m, 0)
    lo, hi = m.min(axis=-1, keepdims=True), m.max(axis=-1, keepdims=True)
    return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("split")
    ap.add_argument("out_dir")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)

    with h5py.File(args.dataset, "r") as d:
        class_names = json.loads(d.attrs["class_names"])
        s = d[args.split]
        labels = s["labels"][()]
        mo, ms, md = s["masks/offsets"][()], s["masks/shapes"][()], s["masks/data"][()]
    context = {"split": args.split, "class_names": class_names, "dataset_hash": content_hash(args.dataset)}
    count, L, p = len(labels), args.layers, args.patch

    seeds, classes, patch, class_rows, gradients, sizes = [], [], [], [], [], []
    for i in range(count):
        H, W = (int(x) for x in ms[i])
        mask = md[mo[i]:mo[i + 1]].reshape(H, W)
        h, w = H // p, W // p
        n = h * w
        grid = mask[p // 2::p, p // 2::p][:h, :w].reshape(n).astype(np.int64)
        present = [int(c) + 1 for c in np.nonzero(labels[i])[0]]
        # Object fractions per token and class.
        frac = np.stack([(mask[:h * p, :w * p] == c).reshape(h, p, w, p).mean(axis=(1, 3)).reshape(n) for c in present]) if present else np.zeros((0, n))
        seed = minmax(frac * rng.uniform(0.2, 1.0, frac.shape) + 0.1 * rng.random(frac.shape))
        ys, xs = np.divmod(np.arange(n), w)
        dist = np.hypot(ys[:, None] - ys[None, :], xs[:, None] - xs[None, :])
        same = (grid[:, None] == grid[None, :]).astype(np.float64)
        sinks = np.zeros(n)
        sinks[rng.choice(n, size=2, replace=False)] = 1
        layers = []
        for l in range(L):
            depth = l / max(L - 1, 1)
            logits = (3 * (1 - depth) + 0.5) * same - 0.6 * dist * (1 - depth) + 6 * depth ** 2 * sinks[None, :] + 0.5 * rng.standard_normal((n, n))
            a = np.exp(logits - logits.max(axis=1, keepdims=True))
            layers.append(0.95 * a / a.sum(axis=1, keepdims=True))  # class-token column dropped
        att = np.stack(layers)
        grad = np.maximum(frac[:, None, :] * rng.uniform(0.5, 1.5, (len(present), L, 1)) + 0.2 * rng.standard_normal((len(present), L, n)), 0)
        seeds.append(seed.reshape(len(present), h, w))
        classes.append(np.array(present, np.int32))
        patch.append(att.astype(np.float16))
        class_rows.append(att.mean(axis=1))
        gradients.append(grad.astype(np.float16))
        sizes.append((H, W))
    n = patch[0].shape[-1]
    params = {"layers": L, "patch": p, "seed": args.seed, "split": args.split}

    with h5py.File(os.path.join(args.out_dir, "seeds.h5"), "w") as f:
        root_attrs(f, "cams", context, params)
        f.attrs["map_description"] = "synthetic seeds (make_refine_benchmark.py)"
        index_arrays(f, range(count), sizes)
        ragged(f, "maps", seeds, np.float16, 1 << 16)
        ragged(f, "classes", classes, np.int32, 4096)
    with h5py.File(os.path.join(args.out_dir, "attention.h5"), "w") as f:
        root_attrs(f, "attention", context, params)
        h, w = seeds[0].shape[1:]
        f.attrs["grid_height"], f.attrs["grid_width"], f.attrs["layers"] = np.int64(h), np.int64(w), np.int64(L)
        index_arrays(f, range(count), sizes)
        ragged(f, "patch_attention", patch, np.float16, L * n * n)
        ragged(f, "class_attention", class_rows, np.float16, 16 * L * n)
        ragged(f, "gradients", gradients, np.float16, 16 * L * n)
        ragged(f, "classes", classes, np.int32, 4096)
    print(f"wrote {count} images, {L} layers, {n} tokens to {args.out_dir}")


if __name__ == "__main__":
    main()
