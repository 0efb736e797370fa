#!/usr/bin/env bash
# Where a DeiT-S-sized training step's time goes, with and without overlapping the ring with the
# backward pass, fp32 against bf16 on the wire: `vit-dist launch` on Fashion-MNIST with DeiT-S's
# width and depth (embedDim 384, depth 12, 6 heads, MLP ratio 4: 21.3M parameters, 85 MB of fp32
# gradient) at 28 px with 4-px patches (50 tokens; DeiT-S at 224 px has 197, so this step has
# about a quarter of the compute per image around the same gradient: a hard case for hiding it).
# Per configuration: the median over steps 2..STEPS of the step's wall time (the coordinator's
# clock between step records), computeMs, the exposed communication and its share of the step, and
# the ring bytes all ranks sent per step. Exposed communication is the step's wait on the ring
# after its last gradient was computed: the smallest of the ranks' `exposedCommMs`, the wait of
# the rank whose backward pass ended last, for what the ring had left once every gradient
# existed. The longest of them (the step record's `exposedCommMs`) is printed too: the rank that
# finished computing first waits for the others' backward passes as well as for the ring (on this
# machine the workers share 2 cores, so their compute times differ by hundreds of ms). Each run is
# stopped once its last step is recorded (the final evaluation of a model this size on 10,000 test
# images is not what is measured).
#   WORKERS="2 4" STEPS=4 GLOBAL_BATCH=16 MICRO_BATCH=4 BACKEND=tensorflow bench/step-overlap.sh
# WIRES="fp32" BUCKETS="0 25" narrow the grid (default both wires, overlap off and 25 MB);
# TRANSPORTS="auto tcp" adds the ring over loopback TCP (default auto: Unix sockets between the
# local workers, src/comm/local-socket.ts);
# HEARTBEAT_TIMEOUT=120 (seconds) keeps workers from being declared lost on a heavily loaded machine.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-"2 4"}
STEPS=${STEPS:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
MICRO_BATCH=${MICRO_BATCH:-4}
BACKEND=${BACKEND:-tensorflow}
WIRES=${WIRES:-"fp32 bf16"}
BUCKETS=${BUCKETS:-"0 25"}
TRANSPORTS=${TRANSPORTS:-auto}
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-30}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-900}
export TF_CPP_MIN_LOG_LEVEL=2

out=$(mktemp -d)
cleanup() { [[ -n "${pid:-}" ]] && kill -KILL -- "-$pid" 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT

summary() { # summary METRICS_JSONL -> one table row's figures
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse).filter((l) => l.kind === "step");
    const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
    const timed = lines.slice(1).map((l, i) => ({ ...l, stepMs: Date.parse(l.time) - Date.parse(lines[i].time) }));
    const stepMs = median(timed.map((l) => l.stepMs));
    const computeMs = median(timed.map((l) => l.computeMs));
    const exposedMs = median(timed.map((l) => Math.min(...l.ranks.map((r) => r.exposedCommMs))));
    const longestWaitMs = median(timed.map((l) => l.exposedCommMs));
    const bytes = median(timed.map((l) => l.ranks.reduce((sum, r) => sum + r.bytesSent, 0)));
    const pct = (x) => ((100 * x) / stepMs).toFixed(1) + "%";
    console.log([stepMs.toFixed(0), computeMs.toFixed(0), exposedMs.toFixed(0), pct(exposedMs), longestWaitMs.toFixed(0), pct(longestWaitMs), (bytes / 1e6).toFixed(1)].join(" "));
  ' "$1"
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-2s %-8s %-5s %-4s | %8s %10s %11s %8s | %15s %8s | %9s\n' N overlap wire ring 'step ms' 'compute ms' 'exposed ms' exposed 'longest wait ms' share 'MB sent'
for n in $WORKERS; do
  for wire in $WIRES; do
    for bucket in $BUCKETS; do
      for transport in $TRANSPORTS; do
        dir="$out/n$n-$wire-$bucket-$transport"
        setsid node bin/vit-dist.js launch --workers "$n" --recipe fmnist-vit-tiny --backend "$BACKEND" \
          --set modelArgs.embedDim=384 --set modelArgs.depth=12 --set modelArgs.numHeads=6 --set modelArgs.mlpRatio=4 \
          --set modelArgs.patchSize=4 --steps "$STEPS" --global-batch "$GLOBAL_BATCH" --micro-batch "$MICRO_BATCH" \
          --checkpoint-every 100000 --wire "$wire" --bucket-mb "$bucket" --ring-transport "$transport" --heartbeat-timeout "$HEARTBEAT_TIMEOUT" --out "$dir" >"$out/log" 2>&1 &
        pid=$!
        started=$SECONDS
        until [[ -f "$dir/metrics.jsonl" ]] && (($(grep -c '"kind":"step"' "$dir/metrics.jsonl") >= STEPS)); do
          if ! kill -0 "$pid" 2>/dev/null; then echo "launch failed:" >&2; tail -20 "$out/log" >&2; exit 1; fi
          if ((SECONDS - started > RUN_TIMEOUT_S)); then echo "run took over ${RUN_TIMEOUT_S} s" >&2; exit 1; fi
          sleep 2
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
        read -r step compute exposed share longest longest_share mb <<<"$(summary "$dir/metrics.jsonl")"
        printf '%-2s %-8s %-5s %-4s | %8s %10s %11s %8s | %15s %8s | %9s\n' "$n" "$([[ $bucket == 0 ]] && echo off || echo "${bucket}MB")" "$wire" \
          "$([[ $transport == auto ]] && echo unix || echo tcp)" "$step" "$compute" "$exposed" "$share" "$longest" "$longest_share" "$mb"
      done
    done
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
