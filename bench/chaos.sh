#!/usr/bin/env bash
# The chaos run of issue #15: a local cluster of 4 workers (the micro recipe on wasm) trains for
# DURATION seconds while seeded faults of every kind hit it, one every INTERVAL seconds on average
# (kill -9, SIGSTOP then SIGCONT, a cut ring link, a cut control link, a worker slowed to a fraction
# of a core, the coordinator killed with -9 and restarted); then a fault-free run of the same length.
# Prints each fault with its detection and recovery times, a table per kind, the throughput against
# the fault-free run and both digests; exits 1 unless the run ended cleanly on the fault-free digest.
# Run it on a quiet machine: it measures recovery times, which other jobs on the cores stretch.
#   DURATION=1200 INTERVAL=30 SEED=1 HEARTBEAT=5 bench/chaos.sh   (the 20-minute run, about 45 min in all)
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx test/chaos/main.ts \
  --duration "${DURATION:-1200}" --interval "${INTERVAL:-30}" --seed "${SEED:-1}" \
  --heartbeat-timeout "${HEARTBEAT:-5}" --workers "${WORKERS:-4}" --spares "${SPARES:-1}" --backend "${BACKEND:-wasm}" \
  ${OUT:+--out "$OUT"} ${JSON:+--json "$JSON"}
