#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets (Fuzz/Sources, declared in Package.swift when WSSS_FUZZ is
# set) with libFuzzer and AddressSanitizer in .build-fuzz, runs each for FUZZ_SECONDS over a
# scratch copy of its committed seed corpus (Fuzz/Corpus/<target>), prints executions per target
# and exits non-zero when any target found a crash, a leak, an out-of-memory or a timeout.
# Usage: Fuzz/run.sh [SECONDS] [TARGET...]   (targets: pipeline png jpeg idx artifact)
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${FUZZ_SECONDS:-60}}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pipeline png jpeg idx artifact)
scratch=${FUZZ_SCRATCH:-$(mktemp -d /tmp/wsss-fuzz.XXXXXX)}
mkdir -p "$scratch"

product() { case $1 in pipeline) echo FuzzPipeline;; png) echo FuzzPNG;; jpeg) echo FuzzJPEG;; idx) echo FuzzIDX;; artifact) echo FuzzArtifact;; *) echo "unknown fuzz target '$1'" >&2; exit 2;; esac; }
# Inputs up to a little above the largest seed; the artifact seeds are whole HDF5 files.
# libhdf5 (not instrumented, not ours) loops forever on some corrupt global heaps: the artifact
# target runs in fork mode, where a timeout is recorded (findings/timeout-*) but does not stop the
# run or fail it, and a huge malloc inside libhdf5 that is never touched is not an OOM (the RSS
# limit still holds); crashes, leaks and out-of-memory still do. README "Fuzzing" lists what is known.
mode() { case $1 in artifact) echo "-fork=1 -ignore_timeouts=1 -ignore_crashes=1 -malloc_limit_mb=1048576";; *) echo "";; esac; }

# Replays one finding and prints "libhdf5" when the first frame of its report outside the
# sanitizer runtime is inside libhdf5 (a bug of the library's own on a corrupt file), else "ours".
# An out-of-memory finding is replayed with a 1 GB malloc limit, so that the allocation that
# drove the RSS over its limit reports its own stack (an RSS overrun alone has none).
owner() {
  local frame limit=1048576
  case $(basename "$3") in oom-*) limit=1024;; esac
  frame=$(LSAN_OPTIONS="$2" ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
    timeout 60 .build-fuzz/debug/$1 -malloc_limit_mb=$limit -rss_limit_mb=2048 -timeout=30 "$3" 2>&1 \
    | sed -n '/ERROR: \(AddressSanitizer\|LeakSanitizer\|libFuzzer\)/,$p' | grep -E '^ +#[0-9]+ ' \
    | grep -v -E 'compiler-rt|libFuzzer|fuzzer::' | head -n 1)
  case $frame in *libhdf5*) echo libhdf5;; *) echo ours;; esac
}
max_len() { case $1 in artifact) echo 131072;; pipeline) echo 8192;; *) echo 4096;; esac; }

for t in "${targets[@]}"; do
  p=$(product "$t") || exit 2
  echo "building $p"
  WSSS_FUZZ=1 swift build -c debug --build-path .build-fuzz --product "$p" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld 2>&1 | grep -v "Cannot export local symbol" | tail -n 1
  [ -x .build-fuzz/debug/$p ] || { echo "build of $p failed"; exit 1; }
done

status=0
summary=()
for t in "${targets[@]}"; do
  p=$(product "$t")
  corpus=$scratch/$t/corpus; findings=$scratch/$t/findings
  rm -rf "$corpus" "$findings"; mkdir -p "$corpus" "$findings"
  cp Fuzz/Corpus/$t/* "$corpus"/
  echo "fuzzing $t for ${seconds}s (corpus copy: $corpus)"
  # A huge malloc inside a C library (libhdf5 sizing a buffer from a corrupt header) returns NULL
  # and becomes an HDF5 error, as in an ordinary build; giant Swift allocations still crash.
  lsan=$( [ "$t" = artifact ] && echo "suppressions=$PWD/Fuzz/lsan-suppressions.txt:print_suppressions=0" )
  LSAN_OPTIONS=$lsan \
  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
  timeout $((seconds + 120)) .build-fuzz/debug/$p "$corpus" \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$findings/" $(mode "$t") > "$scratch/$t/log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t/log" | tail -n 1 | grep -o '[0-9]*$')
  # Fork mode prints per-job stats; its parent's last "#N: cov: ..." line has the total.
  [ -n "$(mode "$t")" ] && runs=$(grep -o '^#[0-9]*: cov' "$scratch/$t/log" | tail -n 1 | tr -dc '0-9')
  hangs=$(ls "$findings" | grep -c '^timeout-')
  found=0; library=0
  for f in $(ls "$findings" | grep -v '^timeout-'); do
    if [ -n "$(mode "$t")" ] && [ "$(owner "$p" "$lsan" "$findings/$f")" = libhdf5 ]; then
      library=$((library + 1)); mv "$findings/$f" "$findings/libhdf5-$f"
    else
      found=$((found + 1))
    fi
  done
  line="$t: ${runs:-?} executions in ${seconds}s, $found finding(s)"
  [ "$library" -gt 0 ] && line="$line; inside libhdf5 (not counted, see README): $library"
  [ "$hangs" -gt 0 ] && line="$line; timeouts (not counted): $hangs"
  [ "$library" -gt 0 ] || [ "$hangs" -gt 0 ] && line="$line, kept in $findings"
  # Fork mode keeps going after crashes; only the project's own findings fail the run.
  [ -n "$(mode "$t")" ] && [ "$found" -eq 0 ] && rc=0
  if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
    status=1
    line="$line (exit $rc; log $scratch/$t/log)"
    grep -E '^SUMMARY|^==[0-9]+==ERROR|Fatal error|Test unit written' "$scratch/$t/log" | head -n 5 | sed 's/^/    /'
  fi
  echo "$line"; summary+=("$line")
done
echo "fuzz summary (scratch $scratch):"
printf '  %s\n' "${summary[@]}"
exit $status
