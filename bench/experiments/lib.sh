# Shared by the bench/experiments/*.sh scripts (sourced, not run). Every training runs under
# `nice -n 15` on one local worker with all the cores' TensorFlow threads (results do not depend on
# the worker count), is skipped when a previous run of the script finished it (its `.done` marker),
# and appends its wall time to RESULTS_DIR/walltimes.jsonl. The figures are accuracies; wall times are
# measured on whatever else the machine was doing (say so beside them).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VIT_DIST=("$REPO/bin/vit-dist.js")
THREADS=${THREADS:-$(nproc)}

# train RUN_DIR LAUNCH_ARGS...: one training run, skipped when RUN_DIR/.done exists; resumes an
# interrupted run from its newest checkpoint (launch does when --out holds checkpoints).
train() {
  local dir=$1
  shift
  if [[ -e "$dir/.done" ]]; then
    echo "skip (done): $dir"
    return 0
  fi
  mkdir -p "$dir"
  echo "train: $dir ($*) load $(cut -d' ' -f1-3 /proc/loadavg)"
  local start=$SECONDS
  nice -n 15 node "${VIT_DIST[@]}" launch --workers 1 --threads "$THREADS" --out "$dir" "$@" >"$dir.log" 2>&1 || {
    echo "FAILED: $dir (log: $dir.log)" >&2
    tail -20 "$dir.log" >&2
    return 1
  }
  local wall=$((SECONDS - start))
  printf '{"run":"%s","wallSeconds":%d,"loadAtEnd":"%s"}\n' "$dir" "$wall" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS_DIR/walltimes.jsonl"
  touch "$dir/.done"
  echo "  done in ${wall}s: $(grep -o 'final test accuracy [0-9.]*%' "$dir.log" || true)"
}
