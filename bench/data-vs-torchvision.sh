#!/usr/bin/env bash
# The training data pipeline's speed per core: vit-dist (one loader thread: read, decode with sharp,
# DeiT's transforms in TypeScript) beside torchvision (one process, one thread: PIL decode and the
# equivalent torchvision transforms) on the same generated JPEG folder, same machine, same run.
# Each side reports images/s of wall-clock time and images per second of its process's CPU time:
# the second is the same figure on an idle machine, and other processes on a shared one disturb
# it less. torchvision runs twice: with RandAugment warping as timm does for DeiT (bicubic, mean
# fill: the equivalent of vit-dist's pipeline), and with torchvision's RandAugment defaults
# (nearest-neighbour warps, less work than DeiT's).
#   IMAGES=1024 FILES=2000 bench/data-vs-torchvision.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=${FILES:-2000}   # JPEGs generated (ImageNet-sized, varied)
IMAGES=${IMAGES:-1024} # images timed per side, after a warm-up
PYTHON=${PYTHON:-/usr/bin/python3}
DIR=${DIR:-/tmp/vit-dist-bench-jpegs-$FILES}
PIPELINE='random_resized_crop(224)|flip_lr|rand_augment(rand-m9-mstd0.5-inc1)|normalize(imagenet)|random_erasing(0.25)'
export OMP_NUM_THREADS=1

field() { # field NAME JSON -> the number
  sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"
}
ratio() { # ratio A B -> A / B to two decimals
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}
load() {
  echo "$(cut -d ' ' -f 1-3 /proc/loadavg) on $(getconf _NPROCESSORS_ONLN) cores"
}

if [ ! -d "$DIR/train" ]; then node --import tsx bench/make_image_folder.ts --out "$DIR" --images "$FILES"; fi
echo "load average at start: $(load)"
ours=$(node bin/vit-dist.js data bench --data "$DIR" --format imagefolder --pipeline "$PIPELINE" --threads 1 --images "$IMAGES" --json | tail -n 1)
timm=$("$PYTHON" bench/torchvision_pipeline.py --data "$DIR" --images "$IMAGES" --randaugment timm | tail -n 1)
plain=$("$PYTHON" bench/torchvision_pipeline.py --data "$DIR" --images "$IMAGES" --randaugment default | tail -n 1)
echo "load average at end:   $(load)"
version=$(sed -E 's/.*"torchvision": "([^"]*)".*/\1/' <<<"$timm")
ours_wall=$(field imagesPerSecPerThread "$ours"); ours_cpu=$(field imagesPerCpuSecond "$ours")
timm_wall=$(field imagesPerSec "$timm"); timm_cpu=$(field imagesPerCpuSecond "$timm")
plain_wall=$(field imagesPerSec "$plain"); plain_cpu=$(field imagesPerCpuSecond "$plain")
echo "pipeline: $PIPELINE"
printf '%-52s %12s %12s\n' 'images/s per core' 'wall clock' 'CPU time'
printf '%-52s %12.1f %12.1f\n' 'vit-dist (sharp + TypeScript, 1 loader thread)' "$ours_wall" "$ours_cpu"
printf '%-52s %12.1f %12.1f\n' "torchvision $version (PIL; RandAugment as timm's)" "$timm_wall" "$timm_cpu"
printf '%-52s %12.1f %12.1f\n' "torchvision $version (PIL; RandAugment defaults)" "$plain_wall" "$plain_cpu"
echo "ratio vit-dist/torchvision, equivalent transforms: $(ratio "$ours_wall" "$timm_wall") wall clock, $(ratio "$ours_cpu" "$timm_cpu") CPU time"
echo "ratio vit-dist/torchvision, torchvision's RandAugment defaults: $(ratio "$ours_wall" "$plain_wall") wall clock, $(ratio "$ours_cpu" "$plain_cpu") CPU time"
