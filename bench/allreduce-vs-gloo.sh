#!/usr/bin/env bash
# vit-dist ring all-reduce vs PyTorch 2.13's gloo, same machine, same run.
# Prints ms per all-reduce and bus GB/s for both, the vit-dist/gloo bus bandwidth ratio, the ring
# with bf16 on the wire (reduce-scatter in bf16, all-gather in fp32; its bus GB/s counts the
# float32 payload, so that it compares with the others at equal work), and the ring over loopback
# TCP. The ring's links go over Unix sockets, as a worker's do between ranks on one machine
# (src/comm/local-socket.ts); gloo has only TCP. Each cell runs the four back to back; the load
# average at the start and end says how busy the machine was.
#   WORKERS="2 4 8" FLOATS="5000000 22000000 86000000" ITERATIONS=10 bench/allreduce-vs-gloo.sh
# PYTHON= picks another torch (default: bench/torch-venv.sh's PyTorch 2.13 CPU venv).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-"2 4 8"}
FLOATS=${FLOATS:-"5000000 22000000 86000000"}
ITERATIONS=${ITERATIONS:-10}
PYTHON=${PYTHON:-$(bench/torch-venv.sh)}

field() { # field NAME JSON -> the number
  sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"
}
ring() { # ring N S WIRE TRANSPORT -> JSON line
  node --import tsx src/comm/bench-allreduce.ts --workers "$1" --floats "$2" --iterations "$ITERATIONS" --wire "$3" --ring-transport "$4" --json | tail -n 1
}

echo "gloo: $("$PYTHON" -c 'import torch; print("PyTorch", torch.__version__)'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-3s %-9s | %10s %9s | %10s %9s | %6s | %12s %9s | %10s | %10s %9s | %9s\n' N floats 'vit-dist ms' 'GB/s' 'gloo ms' 'GB/s' ratio 'bf16 wire ms' 'GB/s' 'bf16 ratio' 'TCP ms' 'GB/s' 'TCP ratio'
for n in $WORKERS; do
  for s in $FLOATS; do
    ours=$(ring "$n" "$s" fp32 auto)
    gloo=$("$PYTHON" bench/gloo_allreduce.py --workers "$n" --floats "$s" --iterations "$ITERATIONS" | tail -n 1)
    bf16=$(ring "$n" "$s" bf16 auto)
    tcp=$(ring "$n" "$s" fp32 tcp)
    ours_ms=$(field msPerAllreduce "$ours"); ours_bw=$(field busGBps "$ours")
    gloo_ms=$(field msPerAllreduce "$gloo"); gloo_bw=$(field busGBps "$gloo")
    bf16_ms=$(field msPerAllreduce "$bf16"); bf16_bw=$(field busGBps "$bf16")
    tcp_ms=$(field msPerAllreduce "$tcp"); tcp_bw=$(field busGBps "$tcp")
    ratio=$(awk -v a="$ours_bw" -v b="$gloo_bw" 'BEGIN { printf "%.2f", a / b }')
    bf16_ratio=$(awk -v a="$bf16_bw" -v b="$gloo_bw" 'BEGIN { printf "%.2f", a / b }')
    tcp_ratio=$(awk -v a="$tcp_bw" -v b="$gloo_bw" 'BEGIN { printf "%.2f", a / b }')
    printf '%-3s %-9s | %10.1f %9.3f | %10.1f %9.3f | %6s | %12.1f %9.3f | %10s | %10.1f %9.3f | %9s\n' \
      "$n" "$s" "$ours_ms" "$ours_bw" "$gloo_ms" "$gloo_bw" "$ratio" "$bf16_ms" "$bf16_bw" "$bf16_ratio" "$tcp_ms" "$tcp_bw" "$tcp_ratio"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
