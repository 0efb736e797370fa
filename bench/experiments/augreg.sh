#!/usr/bin/env bash
# AugReg's trade-off at small scale (docs/experiments.md, "AugReg"): vit_fmnist_tiny (the main job's
# recipe, fmnist-vit-tiny) on 10% and 100% of Fashion-MNIST's training images, a short and a long
# schedule, and big_vision's augmentation levels none, light1, medium1 (configs/vit_i1k.py: every
# level crops (inception_crop) and flips; light1 adds randaug(2,0), medium1 randaug(2,15) and mixup
# p 0.2; dropout and stochastic depth 0). The schedules are counted in images seen, the same for
# both data sizes: short SHORT_STEPS steps of 512 images (5 epochs of 10%, half an epoch of 100%),
# long LONG_STEPS (4x: 20 and 2 epochs); the warmup is the main job's share of its run (60 of 702 steps).
#   bash bench/experiments/augreg.sh            rerunnable: finished runs are skipped
# Knobs (environment): SHORT_STEPS (59), LONG_STEPS (234), LEVELS ("none light1 medium1"; also "plain":
# no augmentation at all, the main job's pipeline), LONG_DATA ("10 100": the data sizes that get the long
# schedule), SEED (0), OUT (runs/experiments/augreg),
# RESULTS_DIR (docs/experiments/results).
source "$(dirname "$0")/lib.sh"
SHORT_STEPS=${SHORT_STEPS:-59}
LONG_STEPS=${LONG_STEPS:-234}
LEVELS=${LEVELS:-none light1 medium1}
SEED=${SEED:-0}
LONG_DATA=${LONG_DATA:-10 100}
OUT=${OUT:-$REPO/runs/experiments/augreg}
RESULTS_DIR=${RESULTS_DIR:-$REPO/docs/experiments/results}
mkdir -p "$OUT" "$RESULTS_DIR"
cd "$REPO"

FULL=/usr/share/datasets/fashion-mnist
TENTH=$OUT/fmnist-10-percent
[[ -e $TENTH/train-labels-idx1-ubyte ]] ||
  node --import tsx bench/experiments/make-subset.ts --from "$FULL" --out "$TENTH" --fraction 0.1 --seed 0

# AugReg's randaug constants are pixel sizes for 224-pixel images (translate 100, cutout 40), scaled
# by 28/224 as in fmnist-vit-tiny-augreg-medium.
CROP='inception_crop(28)|flip_lr'
NORM='normalize(fashion-mnist)'
level_args() {
  case $1 in
    plain) echo "--set data.trainPipeline=$NORM" ;;
    none) echo "--set data.trainPipeline=$CROP|$NORM" ;;
    light1) echo "--set data.trainPipeline=$CROP|randaug(2,0,12.5,5)|$NORM" ;;
    medium1) echo "--set data.trainPipeline=$CROP|randaug(2,15,12.5,5)|$NORM --set data.mixup={\"kind\":\"big_vision\",\"p\":0.2}" ;;
    *) echo "unknown level $1" >&2 && exit 2 ;;
  esac
}

# Short schedules first (the whole short column), then the long ones.
for steps in "$SHORT_STEPS" "$LONG_STEPS"; do
  sizes="10 100"
  [[ $steps == "$LONG_STEPS" ]] && sizes=$LONG_DATA
  for data in $sizes; do
    path=$FULL
    [[ $data == 10 ]] && path=$TENTH
    for level in $LEVELS; do
      read -r -a args <<<"$(level_args "$level")"
      train "$OUT/data$data-steps$steps-$level" --recipe fmnist-vit-tiny --data "$path" --steps "$steps" --seed "$SEED" \
        --set schedule.warmupSteps=$(((steps * 60 + 351) / 702)) "${args[@]}"
    done
  done
done
node bench/experiments/summarize.mjs augreg "$OUT" "$RESULTS_DIR"
