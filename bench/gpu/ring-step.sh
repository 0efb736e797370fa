#!/usr/bin/env bash
# bench/gpu-check.sh's last part: a 2-worker ring (`vit-dist launch --backend webgpu`, both workers on
# the one GPU) on generated JPEGs; metrics.jsonl's step lines hold each step's compute, copy and comm
# times. Run from the code's root (a checkout or the unpacked app/).
#   bash bench/gpu/ring-step.sh SCRATCH OUT IMAGES RECIPE_ARGS...
set -uo pipefail
scratch=$1 out=$2 images=$3
shift 3
data=$scratch/images run=$scratch/ring
node --import tsx bench/make_image_folder.ts --out "$data" --images "$images" --classes 4 &&
  node --import tsx bench/make_image_folder.ts --out "$scratch/val" --images 8 --classes 4 --seed 1 &&
  mv "$scratch/val/train" "$data/val" || exit 1
node bin/vit-dist.js launch --workers 2 --backend webgpu --data "$data" --out "$run" "$@"
rc=$?
cp "$run/metrics.jsonl" "$out/ring-metrics.jsonl" 2>/dev/null
for log in "$run"/logs/worker-*.log; do
  [ -f "$log" ] || continue
  echo "-- $(basename "$log"), last lines:"
  tail -n 4 "$log"
done
exit "$rc"
