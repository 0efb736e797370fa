#!/usr/bin/env bash
# AugReg's trade-off at small scale (docs/experiments.md, "AugReg"): vit_fmnist_tiny (the main job's
# recipe, fmnist-vit-tiny) on 10% and 100% of Fashion-MNIST's training images, a short and a long
# schedule counted in epochs of each data size (issue 16: 6 epochs, and 30 epochs on 10%), and
# big_vision's augmentation levels none, light1, medium1 (configs/vit_i1k.py: every level crops
# (inception_crop) and flips; light1 adds randaug(2,0), medium1 randaug(2,15) and mixup p 0.2;
# dropout and stochastic depth 0), each over SEEDS. The warmup is the main job's share of its run
# (60 of 702 steps). An epoch is floor(images / 512) steps: 11 on 10%, 117 on 100%.
#   bash bench/experiments/augreg.sh            rerunnable: finished runs are skipped
# Knobs (environment): SHORT_EPOCHS (6), LONG_EPOCHS (30), LONG_DATA ("10": the data sizes that get the
# long schedule), LEVELS ("plain none light1 medium1"; plain, outside AugReg's levels: no augmentation at all, the
# main job's pipeline; padcrop, also outside them: the usual light augmentation of small images, a
# 28-pixel crop of the image padded by 2 pixels, and a flip), SEEDS ("0 1 2"), OUT (runs/experiments/augreg-epochs), RESULTS_DIR (docs/experiments/results).
source "$(dirname "$0")/lib.sh"
SHORT_EPOCHS=${SHORT_EPOCHS:-6}
LONG_EPOCHS=${LONG_EPOCHS:-30}
LONG_DATA=${LONG_DATA:-10}
LEVELS=${LEVELS:-plain none light1 medium1}
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-$REPO/runs/experiments/augreg-epochs}
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
    padcrop) echo "--set data.trainPipeline=pad_random_crop(28,2)|flip_lr|$NORM" ;;
    none) echo "--set data.trainPipeline=$CROP|$NORM" ;;
    light1) echo "--set data.trainPipeline=$CROP|randaug(2,0,12.5,5)|$NORM" ;;
    medium1) echo "--set data.trainPipeline=$CROP|randaug(2,15,12.5,5)|$NORM --set data.mixup={\"kind\":\"big_vision\",\"p\":0.2}" ;;
    *) echo "unknown level $1" >&2 && exit 2 ;;
  esac
}

# Seed by seed, so that a cut-short run leaves whole grids; in each, the short schedules first.
for seed in $SEEDS; do
  for epochs in "$SHORT_EPOCHS" "$LONG_EPOCHS"; do
    sizes="10 100"
    [[ $epochs == "$LONG_EPOCHS" ]] && sizes=$LONG_DATA
    for data in $sizes; do
      path=$FULL
      [[ $data == 10 ]] && path=$TENTH
      steps=$((epochs * ((data == 10 ? 6000 : 60000) / 512)))
      for level in $LEVELS; do
        read -r -a args <<<"$(level_args "$level")"
        train "$OUT/data$data-epochs$epochs-$level-seed$seed" --recipe fmnist-vit-tiny --data "$path" --epochs "$epochs" \
          --seed "$seed" --set schedule.warmupSteps=$(((steps * 60 + 351) / 702)) "${args[@]}"
      done
    done
  done
done
node bench/experiments/summarize.mjs augreg "$OUT" "$RESULTS_DIR"
