#!/usr/bin/env bash
# vit-dist ring all-reduce vs PyTorch 2.13's gloo, same machine, same run.
# Prints ms per all-reduce and bus GB/s for both, the vit-dist/gloo bus bandwidth ratio, the ring
# with bf16 on the wire (reduce-scatter in bf16, all-gather in fp32; its bus GB/s counts the
# float32 payload, so that it compares with the others at equal work), and the ring over loopback
# TCP. The ring's links go over Unix sockets, as a worker's do between ranks on one machine
# (src/comm/local-socket.ts); gloo has only TCP. Each cell runs them back to back; the load
# average at the start and end says how busy the machine was. REPEATS=K (default 3) runs the ring
# and gloo alternately K times per cell and reports the median of each (and every run's ratio),
# each run the median of ITERATIONS (default 30) all-reduces: where the ranks share the cores, a
# run of 5 all-reduces moved a cell's ratio by 10-20%. ALSO="" leaves out the bf16 and TCP columns
# (default ALSO="bf16 tcp"). The whole grid takes about half an hour on 2 cores.
#   WORKERS="2 4 8" FLOATS="5000000 22000000 86000000" ITERATIONS=30 REPEATS=3 bench/allreduce-vs-gloo.sh
# PYTHON= picks another torch (default: bench/torch-venv.sh's PyTorch 2.13 CPU venv).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-"2 4 8"}
FLOATS=${FLOATS:-"5000000 22000000 86000000"}
ITERATIONS=${ITERATIONS:-30}
REPEATS=${REPEATS:-3}
ALSO=${ALSO-"bf16 tcp"}
PYTHON=${PYTHON:-$(bench/torch-venv.sh)}

field() { # field NAME JSON -> the number
  sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"
}
ring() { # ring N S WIRE TRANSPORT -> ms per all-reduce
  field msPerAllreduce "$(node --import tsx src/comm/bench-allreduce.ts --workers "$1" --floats "$2" --iterations "$ITERATIONS" --wire "$3" --ring-transport "$4" --json | tail -n 1)"
}
gloo() { # gloo N S -> ms per all-reduce
  field msPerAllreduce "$("$PYTHON" bench/gloo_allreduce.py --workers "$1" --floats "$2" --iterations "$ITERATIONS" | tail -n 1)"
}
median() { # median X... -> the middle value (mean of the two middle ones)
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
bus() { # bus N S MS -> bus GB/s: 2(N-1)/N x 4S bytes per all-reduce
  awk -v n="$1" -v s="$2" -v ms="$3" 'BEGIN { printf "%.3f", 2 * (n - 1) / n * 4 * s / (ms / 1000) / 1e9 }'
}
ratio() { # ratio MS_OURS MS_GLOO -> gloo time / ours = ratio of bus bandwidths
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'
}

echo "gloo: $("$PYTHON" -c 'import torch; print("PyTorch", torch.__version__)'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-3s %-9s | %10s %9s | %10s %9s | %6s | %-14s | %12s %9s | %10s | %10s %9s | %9s\n' N floats 'vit-dist ms' 'GB/s' 'gloo ms' 'GB/s' ratio 'run ratios' \
  'bf16 wire ms' 'GB/s' 'bf16 ratio' 'TCP ms' 'GB/s' 'TCP ratio'
for n in $WORKERS; do
  for s in $FLOATS; do
    ours_runs=() gloo_runs=() ratios=()
    for ((r = 0; r < REPEATS; r++)); do
      ours_runs+=("$(ring "$n" "$s" fp32 auto)")
      gloo_runs+=("$(gloo "$n" "$s")")
      ratios+=("$(ratio "${ours_runs[r]}" "${gloo_runs[r]}")")
    done
    ours_ms=$(median "${ours_runs[@]}")
    gloo_ms=$(median "${gloo_runs[@]}")
    extra=()
    for column in bf16 tcp; do
      if [[ " $ALSO " == *" $column "* ]]; then
        case $column in
          bf16) ms=$(ring "$n" "$s" bf16 auto) ;;
          tcp) ms=$(ring "$n" "$s" fp32 tcp) ;;
        esac
        extra+=("$(printf '%12.1f %9s | %10s' "$ms" "$(bus "$n" "$s" "$ms")" "$(ratio "$ms" "$gloo_ms")")")
      else
        extra+=("$(printf '%12s %9s | %10s' - - -)")
      fi
    done
    printf '%-3s %-9s | %10.1f %9s | %10.1f %9s | %6s | %-14s | %s | %s\n' "$n" "$s" "$ours_ms" "$(bus "$n" "$s" "$ours_ms")" \
      "$gloo_ms" "$(bus "$n" "$s" "$gloo_ms")" "$(ratio "$ours_ms" "$gloo_ms")" "$(IFS=,; echo "${ratios[*]}")" "${extra[0]}" "${extra[1]}"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
