#!/usr/bin/env bash
# DeiT's distillation ablation at small scale (docs/experiments.md, "Distillation"): one convnet
# teacher, then the same distilled student (deit_fmnist_tiny_distilled) with the same epochs and seeds
# under three objectives: none (the distillation token trained on the labels), soft, hard. With
# VIT_TEACHER=1, also DeiT's Table 2 question: the same student hard-distilled from a ViT teacher
# (the main job's recipe, fmnist-vit-tiny) instead of the convnet (runs hard-vit-seedS).
#   bash bench/experiments/distillation.sh            rerunnable: finished runs are skipped
# Knobs (environment): STUDENT_EPOCHS (1), TEACHER_EPOCHS (2), SEEDS ("0 1 2"), MODES ("none soft hard"),
# VIT_TEACHER (0), VIT_TEACHER_EPOCHS (6), OUT (runs/experiments/distillation), RESULTS_DIR (docs/experiments/results).
source "$(dirname "$0")/lib.sh"
STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-2}
SEEDS=${SEEDS:-0 1 2}
MODES=${MODES:-none soft hard}
VIT_TEACHER=${VIT_TEACHER:-0}
VIT_TEACHER_EPOCHS=${VIT_TEACHER_EPOCHS:-6}
OUT=${OUT:-$REPO/runs/experiments/distillation}
RESULTS_DIR=${RESULTS_DIR:-$REPO/docs/experiments/results}
mkdir -p "$OUT" "$RESULTS_DIR"

train "$OUT/teacher" --recipe fmnist-convnet-teacher --epochs "$TEACHER_EPOCHS" --micro-batch 256
[[ $VIT_TEACHER == 1 ]] && train "$OUT/teacher-vit" --recipe fmnist-vit-tiny --epochs "$VIT_TEACHER_EPOCHS"
for seed in $SEEDS; do
  for mode in $MODES; do
    teacher=()
    [[ $mode != none ]] && teacher=(--teacher "$OUT/teacher")
    train "$OUT/$mode-seed$seed" --recipe fmnist-deit-tiny-distilled --distillation "$mode" "${teacher[@]}" \
      --epochs "$STUDENT_EPOCHS" --micro-batch 256 --seed "$seed"
  done
  if [[ $VIT_TEACHER == 1 ]]; then
    train "$OUT/hard-vit-seed$seed" --recipe fmnist-deit-tiny-distilled --distillation hard --teacher "$OUT/teacher-vit" \
      --epochs "$STUDENT_EPOCHS" --micro-batch 256 --seed "$seed"
  fi
done
node "$REPO/bench/experiments/summarize.mjs" distillation "$OUT" "$RESULTS_DIR"
