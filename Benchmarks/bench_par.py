"""Times PAR (Tests/Fixtures/par_reference.py, PyTorch) on one SIZE x SIZE image with K maps, as
engine-bench par does in Swift: affinity plus 10 iterations, median of REPS runs after a warm-up.
    python Benchmarks/bench_par.py --size 512 --maps 3 --threads 2
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures"))
from par_reference import refine  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--size", type=int, default=512)
parser.add_argument("--maps", type=int, default=3)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--reps", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(args.threads)
g = torch.Generator().manual_seed(3)
image = torch.rand(1, 3, args.size, args.size, generator=g) * 255
maps = torch.rand(1, args.maps, args.size, args.size, generator=g)
with torch.no_grad():
    refine(image, maps)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        refine(image, maps)
        times.append(time.perf_counter() - t0)
print("PyTorch PAR %dx%d, %d maps, 10 iterations, %d threads: %.1f ms" % (args.size, args.size, args.maps, args.threads, sorted(times)[len(times) // 2] * 1000))
