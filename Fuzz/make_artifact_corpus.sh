#!/usr/bin/env bash
# Rewrites the artifact target's seed corpus (Fuzz/Corpus/artifact) with the stages of this build
# at toy size: a dataset of 3 scenes at 16 px, a 1-block classifier, its CAMs and pseudo labels.
# Run after a change of the artifact format (the seeds must be what the stages write today).
# Usage: Fuzz/make_artifact_corpus.sh [BIN]   (BIN: folder of the stage executables, default .build/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.build/debug}
out=Fuzz/Corpus/artifact
work=$(mktemp -d /tmp/wsss-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$bin/prepare-data" --out dataset="$work/dataset.h5" --out contact_sheet="$work/sheet.png" \
  --param image_size=16 --param train_count=2 --param val_count=1 > /dev/null
"$bin/classify-train" --in dataset="$work/dataset.h5" --out checkpoint="$work/checkpoint.h5" \
  --param backbone=scratch --param stem=patch --param depth=1 --param dim=8 --param heads=1 --param image_size=16 \
  --param patch_size=8 --param epochs=1 --param batch_size=2 --param threads=1 --param save_optimizer_state=false > /dev/null
"$bin/extract-attention" --in dataset="$work/dataset.h5" --in checkpoint="$work/checkpoint.h5" \
  --out cams="$work/cams.h5" --out attention="$work/attention.h5" --out samples="$work/samples.png" \
  --param split=train --param limit=2 --param batch_size=2 --param samples=1 > /dev/null
"$bin/pseudo-label" --in dataset="$work/dataset.h5" --in cams="$work/cams.h5" \
  --out labels="$work/labels.h5" --out samples="$work/labels.png" > /dev/null
for name in dataset checkpoint cams labels; do cp "$work/$name.h5" "$out/$name.h5"; done
ls -l "$out"
