#!/usr/bin/env bash
# The main job's recipe (fmnist-vit-tiny, its 6 epochs) trained on WORKERS local workers in
# lockstep and with DiLoCo, one after the other on loopback: for each, the bytes the ring sent
# (all ranks, all steps, from metrics.jsonl), the wall time, compute utilisation and the final
# test accuracy, and the ratio of lockstep's bytes to each DiLoCo run's (bench/run-summary.mjs).
#   WORKERS=2 (default)   DILOCO="50:bf16 50:int8" (inner steps:wire per DiLoCo run)
#   OUTER_LR, OUTER_MOMENTUM: DiLoCo's outer optimizer (defaults 0.7 and 0.9); OUTER_OVERLAP: its
#   --outer-overlap (default 0: the exchange at the round's end); EXTRA: more flags for every run
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-2}
DILOCO=${DILOCO:-"50:bf16 50:int8"}
OUTER_LR=${OUTER_LR:-0.7}
OUTER_MOMENTUM=${OUTER_MOMENTUM:-0.9}
OUTER_OVERLAP=${OUTER_OVERLAP:-0}
EXTRA=${EXTRA:-}
OUT=$(mktemp -d -t vit-dist-diloco-XXXXXX)
trap 'rm -rf "$OUT"' EXIT

train() { # name, flags...
  local name=$1
  shift
  local start end
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  timeout 3600 node bin/vit-dist.js launch --workers "$WORKERS" --recipe fmnist-vit-tiny --out "$OUT/$name" $EXTRA "$@" >"$OUT/$name.log" 2>&1 ||
    { echo "$name failed:"; tail -20 "$OUT/$name.log"; exit 1; }
  end=$(date +%s.%N)
  node bench/run-summary.mjs "$OUT/$name" "$name" "$(echo "$end - $start" | bc)" | tee -a "$OUT/results.jsonl"
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
train lockstep
for run in $DILOCO; do
  h=${run%%:*}
  wire=${run##*:}
  train "diloco-h$h-$wire" --sync diloco --inner-steps "$h" --wire "$wire" --outer-lr "$OUTER_LR" --outer-momentum "$OUTER_MOMENTUM" \
    --outer-overlap "$OUTER_OVERLAP"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
node bench/run-summary.mjs --table "$OUT/results.jsonl"
