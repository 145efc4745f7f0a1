#!/usr/bin/env bash
# Runner scaling: validates and orders generated chain pipelines of N stages (`wsss status` and
# `wsss run --dry-run`, which parse, bind every stage to its executable's --describe, order and
# check the cache) and prints the wall time of each, with the CPU model.
#   Benchmarks/bench_runner.sh [BIN_DIR] [N ...]     (default: .build/release, 5000 50000)
set -euo pipefail
BIN=$(cd "${1:-.build/release}" && pwd)
shift || true
SIZES=("${@:-5000 50000}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/Pipelines" "$WORK/data"
echo raw > "$WORK/data/raw.txt"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
for n in ${SIZES[@]}; do
  python3 - "$n" "$WORK/Pipelines/chain-$n.yaml" <<'PY'
import sys
n, out = int(sys.argv[1]), sys.argv[2]
lines = ["name: chain", "stages:"]
for i in range(n):
    source = "data/raw.txt" if i == 0 else f"s{i - 1}.out"
    lines += [f"  - name: s{i}", "    run: wsss-test-stage", f"    inputs: {{a: {source}}}",
              f"    outputs: {{out: A/s{i}.txt, metrics: A/s{i}.json}}"]
open(out, "w").write("\n".join(lines) + "\n")
PY
  for command in "status" "run --dry-run"; do
    start=$(date +%s.%N)
    (cd "$WORK" && "$BIN/wsss" $command "Pipelines/chain-$n.yaml" --bin "$BIN" > /dev/null)
    end=$(date +%s.%N)
    printf 'RUNNER %6d stages  wsss %-13s %6.2f s\n' "$n" "$command" "$(echo "$end - $start" | bc)"
  done
done
