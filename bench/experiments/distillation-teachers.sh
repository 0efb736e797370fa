#!/usr/bin/env bash
# DeiT's teacher comparison at small scale (docs/experiments.md, "Distillation"): the same student
# hard-distilled from a convnet teacher and from a ViT teacher of about the same test accuracy
# (DeiT, Table 2: the convnet is the better teacher). The ViT teacher is the main job (fmnist-vit-tiny,
# 6 epochs, 87.4% there); the convnet teacher is fmnist-convnet-teacher trained for CONVNET_EPOCHS (1).
#   bash bench/experiments/distillation-teachers.sh            rerunnable: finished runs are skipped
# Knobs (environment): STUDENT_EPOCHS (1), CONVNET_EPOCHS (1), VIT_EPOCHS (6), SEEDS ("0 1 2"),
# OUT (runs/experiments/distillation-teachers), RESULTS_DIR (docs/experiments/results).
source "$(dirname "$0")/lib.sh"
STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
CONVNET_EPOCHS=${CONVNET_EPOCHS:-1}
VIT_EPOCHS=${VIT_EPOCHS:-6}
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-$REPO/runs/experiments/distillation-teachers}
RESULTS_DIR=${RESULTS_DIR:-$REPO/docs/experiments/results}
mkdir -p "$OUT" "$RESULTS_DIR"

train "$OUT/teacher-convnet" --recipe fmnist-convnet-teacher --epochs "$CONVNET_EPOCHS" --micro-batch 256
train "$OUT/teacher-vit" --recipe fmnist-vit-tiny --epochs "$VIT_EPOCHS"
for seed in $SEEDS; do
  for teacher in convnet vit; do
    train "$OUT/hard-$teacher-seed$seed" --recipe fmnist-deit-tiny-distilled --distillation hard --teacher "$OUT/teacher-$teacher" \
      --epochs "$STUDENT_EPOCHS" --micro-batch 256 --seed "$seed"
  done
done
node "$REPO/bench/experiments/summarize.mjs" teachers "$OUT" "$RESULTS_DIR"
