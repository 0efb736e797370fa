#!/usr/bin/env bash
# A WAN on one machine (issue #17): the coordinator and each worker in a network namespace of its
# own, joined by veth pairs to a bridge in a hub namespace; tbf caps every link at RATE in both
# directions, and a delay proxy in each namespace (bench/delay-proxy.mjs; there is no netem here)
# holds every chunk DELAY_MS on the way into the ring and control ports. It trains RECIPE on WORKERS
# workers twice over that WAN, lockstep and DiLoCo (H = INNER_STEPS, --wire WIRE), for the same
# images, and prints for each: bytes on the wire, wall time (start-up and evaluations included),
# compute utilisation (each worker's compute time over the training loop's wall time from the end
# of step 1 to the end of the last step, the mean over workers) and the final test accuracy.
# Traffic stays inside the namespaces this script makes (10.231.0.0/24); everything it starts
# and makes is removed on exit. Needs root, iproute2 (ip, tc) and the data set.
#   RECIPE=fmnist-vit-tiny WORKERS=4 RATE=20mbit DELAY_MS=25 INNER_STEPS=50 WIRE=bf16 EXTRA="--steps 40"
#   OUTER_MOMENTUM=0.5 (default: DiLoCo's 0.9); OUTER_OVERLAP=5 (default: --outer-overlap 5, each
#   exchange during the next round's first 5 inner steps; 0: at the round's end); RUNS="lockstep diloco" (either alone: two invocations
#   in parallel measure both in the same window; each makes namespaces of its own); KEEP=DIR keeps
#   the run directories and logs there (else they are removed with the rest)
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-fmnist-vit-tiny}
WORKERS=${WORKERS:-4}
RATE=${RATE:-20mbit}
DELAY_MS=${DELAY_MS:-25}
INNER_STEPS=${INNER_STEPS:-50}
WIRE=${WIRE:-bf16}
OUTER_MOMENTUM=${OUTER_MOMENTUM:-}
OUTER_OVERLAP=${OUTER_OVERLAP:-5}
RUNS=${RUNS:-lockstep diloco}
EXTRA=${EXTRA:-}
RUN_TIMEOUT=${RUN_TIMEOUT:-7200}
KEEP=${KEEP:-}
PREFIX=vdwan$$
HUB=${PREFIX}hub
OUT=$(mktemp -d -t vit-dist-wan-XXXXXX)
CONTROL_PORT=29500 # the coordinator listens here; its delay proxy on CONTROL_PORT + 1
RING_PORT=29600    # each worker's ring server; its delay proxy on RING_PORT + 1
export VIT_DIST_TOKEN=$(openssl rand -hex 24)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for i in $(seq 0 "$WORKERS"); do ip netns delete "${PREFIX}n$i" 2>/dev/null || true; done
  ip netns delete "$HUB" 2>/dev/null || true
  if [[ -n $KEEP ]]; then mkdir -p "$KEEP" && cp -r "$OUT"/. "$KEEP"/; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

address() { echo "10.231.0.$(($1 + 1))"; }

# Namespace 0 holds the coordinator, 1..WORKERS one worker each.
ip netns add "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
for i in $(seq 0 "$WORKERS"); do
  ns=${PREFIX}n$i
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "${PREFIX}a$i" netns "$ns" type veth peer name "${PREFIX}b$i" netns "$HUB"
  ip -n "$ns" link set "${PREFIX}a$i" name eth0
  ip -n "$ns" addr add "$(address "$i")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$HUB" link set "${PREFIX}b$i" master br0 up
  # tbf on both ends: the namespace's sending and its receiving are each capped at RATE.
  ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst 32kbit latency 400ms
  ip netns exec "$HUB" tc qdisc add dev "${PREFIX}b$i" root tbf rate "$RATE" burst 32kbit latency 400ms
done
# Always started in the background: exec makes $! the command's own pid (ip netns exec execs it
# too), so the clean-up's kill reaches the node processes, not a subshell that leaves them running.
in_ns() {
  local i=$1
  shift
  exec ip netns exec "${PREFIX}n$i" "$@"
}

in_ns 0 node bench/delay-proxy.mjs "$(address 0)" $((CONTROL_PORT + 1)) "$CONTROL_PORT" "$DELAY_MS" &
pids+=($!)
for i in $(seq 1 "$WORKERS"); do
  in_ns "$i" node bench/delay-proxy.mjs "$(address "$i")" $((RING_PORT + 1)) "$RING_PORT" "$DELAY_MS" &
  pids+=($!)
done

train() { # name, flags...
  local name=$1
  shift
  local run=$OUT/$name start end
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  in_ns 0 timeout "$RUN_TIMEOUT" node bin/vit-dist.js coordinator --workers "$WORKERS" --recipe "$RECIPE" --host 127.0.0.1 \
    --port "$CONTROL_PORT" --out "$run" $EXTRA "$@" >"$run.log" 2>&1 &
  local coordinator=$!
  pids+=("$coordinator")
  sleep 2
  local workers=()
  for i in $(seq 1 "$WORKERS"); do
    in_ns "$i" timeout "$RUN_TIMEOUT" node bin/vit-dist.js worker --coordinator "ws://$(address 0):$((CONTROL_PORT + 1))" \
      --ring-host 127.0.0.1 --ring-port "$RING_PORT" --advertise "$(address "$i"):$((RING_PORT + 1))" \
      --threads 1 >"$run-worker$i.log" 2>&1 &
    workers+=($!)
    pids+=($!)
  done
  wait "$coordinator" || { echo "$name failed:"; tail -20 "$run.log"; exit 1; }
  for pid in "${workers[@]}"; do wait "$pid" || true; done
  end=$(date +%s.%N)
  node bench/run-summary.mjs "$run" "$name" "$(echo "$end - $start" | bc)" >>"$OUT/results.jsonl"
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $WORKERS workers, $RATE links, ${DELAY_MS} ms proxy delay per hop"
case " $RUNS " in *" lockstep "*) train lockstep ;; esac
echo "load average between the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
case " $RUNS " in *" diloco "*)
  train "diloco-h$INNER_STEPS-$WIRE${OUTER_MOMENTUM:+-m$OUTER_MOMENTUM}-k$OUTER_OVERLAP" --sync diloco \
    --inner-steps "$INNER_STEPS" --wire "$WIRE" ${OUTER_MOMENTUM:+--outer-momentum "$OUTER_MOMENTUM"} --outer-overlap "$OUTER_OVERLAP"
  ;;
esac
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
node bench/run-summary.mjs --table "$OUT/results.jsonl"
