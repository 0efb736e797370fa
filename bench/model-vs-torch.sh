#!/usr/bin/env bash
# One model replica's forward+backward speed, vit-dist (wasm backend, 1 thread, as a worker runs)
# beside PyTorch (1 thread, OpenBLAS) on the same shapes, same machine, same run.
# Prints images/s for both and the vit-dist/torch ratio per config, and the BLAS torch loaded.
#   CONFIGS="vit_fmnist_tiny:128 vit_tiny_patch16_224:8" SECONDS_EACH=25 bench/model-vs-torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-"vit_fmnist_tiny:128 vit_tiny_patch16_224:8"} # model:micro-batch
SECONDS_EACH=${SECONDS_EACH:-25} # timed seconds per measurement, after 2 warm-up passes
PYTHON=${PYTHON:-/usr/bin/python3}
# Debian's torch links libblas.so.3, which is the reference BLAS unless update-alternatives says
# otherwise; put OpenBLAS first on the path so the comparison is against a fast BLAS either way.
# One thread everywhere: torch.set_num_threads(1) covers torch's own pool, these cover OpenBLAS's.
OPENBLAS_DIR=${OPENBLAS_DIR:-/usr/lib/x86_64-linux-gnu/openblas-pthread}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

field() { # field NAME JSON -> the number
  sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"
}

echo "load average at start: $(cut -d ' ' -f 1-3 /proc/loadavg) on $(getconf _NPROCESSORS_ONLN) cores" # not nproc: it obeys OMP_NUM_THREADS
printf '%-22s %5s | %12s %12s | %6s\n' model batch 'vit-dist im/s' 'torch im/s' ratio
blas=
for entry in $CONFIGS; do
  model=${entry%%:*}; batch=${entry##*:}
  ours=$(node --import tsx bench/model_speed.ts --model "$model" --batch "$batch" --seconds "$SECONDS_EACH" | tail -n 1)
  config=$(sed -E 's/.*"config":(\{[^}]*\}).*/\1/' <<<"$ours") # VitConfig is flat: no nested braces
  theirs=$(LD_LIBRARY_PATH="$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PYTHON" bench/torch_model_speed.py --config "$config" --batch "$batch" --seconds "$SECONDS_EACH" | tail -n 1)
  ours_ips=$(field imagesPerSec "$ours"); torch_ips=$(field imagesPerSec "$theirs")
  blas=$(sed -E 's/.*"blas": "([^"]*)".*/\1/' <<<"$theirs")
  ratio=$(awk -v a="$ours_ips" -v b="$torch_ips" 'BEGIN { printf "%.2f", a / b }')
  printf '%-22s %5s | %12.2f %12.2f | %6s\n' "$model" "$batch" "$ours_ips" "$torch_ips" "$ratio"
done
echo "vit-dist: $(sed -E 's/.*"backend":"([^"]*)".*/\1/' <<<"$ours")"
echo "torch: $(field threads "$theirs") thread, BLAS loaded: $blas"
