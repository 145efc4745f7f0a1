#!/usr/bin/env bash
# `make bench`: a training step (forward, loss, backward, clipping, AdamW) of classify-train's
# default model at its default input size and batch, timed in the Swift engine and in PyTorch CPU
# side by side: same model, batch and thread count, alternating rounds in one run so that drift
# on a shared machine hits both sides alike. The best round of each counts. Prints the sgemm rate
# measured in the same run, the AVX2-only (Haswell) rate for comparison, and last the line
#   RATIO train-step-vs-pytorch X      (X = our images/s / PyTorch's images/s)
#
# Environment: BENCH_THREADS (2), BENCH_BATCH (64), BENCH_ROUNDS (3), BENCH_SECONDS (8 per round),
# BENCH_PYTHON (a Python with torch; default .venv-bench, made from /opt/wheels if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${BENCH_THREADS:-2}
BATCH=${BENCH_BATCH:-32}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_PER_ROUND=${BENCH_SECONDS:-8}
# classify-train's default model (Sources/classify-train/main.swift): the hybrid ViT, whose frozen
# pretrained stem both sides run (Scripts/import_pretrained.py makes the weights file).
STEM=${BENCH_STEM:-Artifacts/pretrained/efficientnet-lite0-stem.h5}
MODEL=(--image 64 --patch 8 --dim 128 --depth 4 --heads 4 --mlp-ratio 4 --classes 10 --stem-weights "$STEM")

PY=${BENCH_PYTHON:-.venv-bench/bin/python}
if ! "$PY" -c "import torch, h5py" >/dev/null 2>&1; then
  wheel=$(ls /opt/wheels/torch-*.whl 2>/dev/null | head -1 || true)
  [ -n "$wheel" ] || { echo "bench: needs PyTorch: no BENCH_PYTHON with torch and no wheel in /opt/wheels" >&2; exit 1; }
  echo "bench: creating .venv-bench with $(basename "$wheel")" >&2
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check "$wheel" numpy h5py
  PY=.venv-bench/bin/python
fi

swift build -c release --product bench-train-step >&2
swift build -c release --product engine-bench >&2
BIN=.build/release/bench-train-step

# Both sides get the same number of threads: OpenBLAS and our own loops, torch's intra-op pool.
export OPENBLAS_NUM_THREADS=$THREADS WSSS_ENGINE_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round/$ROUNDS" >&2
  WSSS_BLAS_CORE=auto "$BIN" "${MODEL[@]}" --batch "$BATCH" --threads "$THREADS" --seconds "$SECONDS_PER_ROUND" --steps 5 | tee -a "$LOG" >&2
  "$PY" Benchmarks/bench_pytorch.py "${MODEL[@]}" --batch "$BATCH" --threads "$THREADS" --seconds "$SECONDS_PER_ROUND" --steps 5 | tee -a "$LOG" >&2
done
# The AVX2 kernels that this machine kind's OPENBLAS_CORETYPE=Haswell pin would give, for the record.
WSSS_BLAS_CORE=Haswell "$BIN" "${MODEL[@]}" --batch "$BATCH" --threads "$THREADS" --seconds "$SECONDS_PER_ROUND" --steps 5 \
  | sed 's/"engine":"swift"/"engine":"swift-haswell"/' | tee -a "$LOG" >&2

# PAR (pseudo-label's refinement) on a 512x512 image, the Swift kernel and the PyTorch reference.
PAR_SWIFT=$(.build/release/engine-bench par --size 512 --maps 3 | grep '^PAR' | sed 's/.*: \([0-9.]*\) ms/\1/')
PAR_TORCH=$("$PY" Benchmarks/bench_par.py --size 512 --maps 3 --threads "$THREADS" | sed 's/.*: \([0-9.]*\) ms/\1/')
echo "PAR 512x512, 3 maps, 10 iterations: swift ${PAR_SWIFT} ms (one thread), pytorch ${PAR_TORCH} ms ($THREADS threads)"
echo "RATIO par-512-vs-pytorch $("$PY" -c "print(f'{$PAR_TORCH / $PAR_SWIFT:.2f}')")"

"$PY" - "$LOG" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def best(engine):
    runs = [r for r in rows if r["engine"] == engine]
    return max(runs, key=lambda r: r["images_per_s"]) if runs else None
swift, torch, haswell = best("swift"), best("pytorch"), best("swift-haswell")
print(f"model: hybrid ViT (frozen EfficientNet-Lite0 stem, stride 8) dim 128, depth 4, heads 4, 64x64 input, 10 classes; batch {swift['batch']}, {swift['threads']} threads")
print(f"swift  : {swift['images_per_s']:7.1f} img/s  ({swift['blas']})")
print(f"pytorch: {torch['images_per_s']:7.1f} img/s  (torch {torch['torch']}, {torch['threads']} threads, explicit attention)")
if haswell:
    print(f"swift with AVX2 (Haswell) kernels: {haswell['images_per_s']:7.1f} img/s, sgemm 1024^3 {haswell['sgemm_gflops_1024']:.0f} GFLOP/s")
print(f"training step: {swift['step_gflop']:.1f} GFLOP per step; achieved {swift['achieved_gflops']:.0f} GFLOP/s "
      f"vs sgemm {swift['sgemm_gflops_1024']:.0f} GFLOP/s at 1024^3, {swift['sgemm_gflops_fc1']:.0f} at the MLP's fc1 shape, "
      f"{swift['sgemm_gflops_fc2']:.0f} at fc2 ({100 * swift['achieved_gflops'] / swift['sgemm_gflops_fc1']:.0f}% of the fc1 rate)")
print(f"RATIO train-step-vs-pytorch {swift['images_per_s'] / torch['images_per_s']:.2f}")
PY
