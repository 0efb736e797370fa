#!/usr/bin/env bash
# One model replica's forward+backward speed per thread, as a worker runs it, on both of vit-dist's
# CPU engines (wasm, TensorFlow on one thread) beside PyTorch 2.13 CPU on one thread
# (bench/torch-venv.sh makes its venv on first use), on the same shapes, the three interleaved per
# config in the same run. Prints images/s, each engine's ratio to torch, and peak resident memory.
# An engine that fails on a config (wasm's crash on 224-pixel models, issue #19) shows "failed".
#   CONFIGS="vit_fmnist_tiny:128 vit_tiny_patch16_224:16" SECONDS_EACH=20 bench/model-vs-torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-"vit_fmnist_tiny:128 vit_tiny_patch16_224:16"} # model:micro-batch
SECONDS_EACH=${SECONDS_EACH:-20} # timed seconds per measurement, after 2 warm-up passes
PYTHON=${PYTHON:-$(bench/torch-venv.sh)}
# One thread everywhere: torch.set_num_threads(1) covers torch's own pool, these cover OpenMP's and TensorFlow's.
export OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2

field() { # field NAME JSON -> the number, or "failed" without a JSON line
  if [[ $2 == \{* ]]; then sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"; else echo failed; fi
}
ratio() { # ratio A B -> A / B to 2 decimals, or "-"
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "failed" || b == "failed") print "-"; else printf "%.2f", a / b }'
}
vit_dist() { # vit_dist BACKEND MODEL BATCH -> the JSON line, or nothing when the run fails
  node --import tsx bench/model_speed.ts --backend "$1" --model "$2" --batch "$3" --seconds "$SECONDS_EACH" 2>/dev/null | tail -n 1 | grep '^{' || true
}

echo "load average at start: $(cut -d ' ' -f 1-3 /proc/loadavg) on $(getconf _NPROCESSORS_ONLN) cores" # not nproc: it obeys OMP_NUM_THREADS
printf '%-22s %5s | %9s %10s %9s | %8s %8s | %s\n' model batch 'wasm' 'tensorflow' 'torch' 'wasm/t' 'tf/t' 'peak RSS MiB (wasm, tf, torch)'
for entry in $CONFIGS; do
  model=${entry%%:*}; batch=${entry##*:}
  tf_json=$(vit_dist tensorflow "$model" "$batch")
  [[ -n $tf_json ]] || { echo "the tensorflow engine failed on $model:$batch (is @tensorflow/tfjs-node built? see README)" >&2; exit 1; }
  config=$(sed -E 's/.*"config":(\{[^}]*\}).*/\1/' <<<"$tf_json") # VitConfig is flat: no nested braces
  torch_json=$("$PYTHON" bench/torch_model_speed.py --config "$config" --batch "$batch" --seconds "$SECONDS_EACH" | tail -n 1)
  wasm_json=$(vit_dist wasm "$model" "$batch")
  wasm=$(field imagesPerSec "$wasm_json"); tf=$(field imagesPerSec "$tf_json"); torch=$(field imagesPerSec "$torch_json")
  printf '%-22s %5s | %9s %10.2f %9.2f | %8s %8s | %s, %.0f, %.0f\n' "$model" "$batch" \
    "$([[ $wasm == failed ]] && echo failed || printf '%.2f' "$wasm")" "$tf" "$torch" "$(ratio "$wasm" "$torch")" "$(ratio "$tf" "$torch")" \
    "$([[ $wasm == failed ]] && echo - || printf '%.0f' "$(field peakRssMB "$wasm_json")")" "$(field peakRssMB "$tf_json")" "$(field peakRssMB "$torch_json")"
done
echo "torch: $(sed -E 's/.*"torch": "([^"]*)".*/\1/' <<<"$torch_json"), $(field threads "$torch_json") thread, MKL $(sed -E 's/.*"mkl": ([a-z]+).*/\1/' <<<"$torch_json"), BLAS libraries loaded: $(sed -E 's/.*"blas": "([^"]*)".*/\1/' <<<"$torch_json")"
echo "load average at end: $(cut -d ' ' -f 1-3 /proc/loadavg)"
