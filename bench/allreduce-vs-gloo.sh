#!/usr/bin/env bash
# vit-dist ring all-reduce vs PyTorch gloo, loopback, same machine, same run.
# Prints ms per all-reduce and bus GB/s for both, and the vit-dist/gloo bus bandwidth ratio.
#   WORKERS="2 4 8" FLOATS="1000000 5000000 22000000" ITERATIONS=10 bench/allreduce-vs-gloo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-"2 4 8"}
FLOATS=${FLOATS:-"1000000 5000000 22000000"}
ITERATIONS=${ITERATIONS:-10}
PYTHON=${PYTHON:-/usr/bin/python3}

field() { # field NAME JSON -> the number
  sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"
}

printf '%-3s %-9s | %10s %9s | %10s %9s | %6s\n' N floats 'vit-dist ms' 'GB/s' 'gloo ms' 'GB/s' ratio
for n in $WORKERS; do
  for s in $FLOATS; do
    ours=$(node --import tsx src/comm/bench-allreduce.ts --workers "$n" --floats "$s" --iterations "$ITERATIONS" --json | tail -n 1)
    gloo=$("$PYTHON" bench/gloo_allreduce.py --workers "$n" --floats "$s" --iterations "$ITERATIONS" | tail -n 1)
    ours_ms=$(field msPerAllreduce "$ours"); ours_bw=$(field busGBps "$ours")
    gloo_ms=$(field msPerAllreduce "$gloo"); gloo_bw=$(field busGBps "$gloo")
    ratio=$(awk -v a="$ours_bw" -v b="$gloo_bw" 'BEGIN { printf "%.2f", a / b }')
    printf '%-3s %-9s | %10.1f %9.3f | %10.1f %9.3f | %6s\n' "$n" "$s" "$ours_ms" "$ours_bw" "$gloo_ms" "$gloo_bw" "$ratio"
  done
done
