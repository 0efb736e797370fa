#!/usr/bin/env bash
# DeiT's distillation ablation at small scale (docs/experiments.md, "Distillation"): one convnet
# teacher, then the same distilled student (deit_fmnist_tiny_distilled) with the same epochs and seeds
# under three objectives: none (the distillation token trained on the labels), soft, hard.
#   bash bench/experiments/distillation.sh            rerunnable: finished runs are skipped
# Knobs (environment): STUDENT_EPOCHS (1), TEACHER_EPOCHS (2), SEEDS ("0 1 2"), MODES ("none soft hard"), OUT (runs/experiments/distillation),
# RESULTS_DIR (docs/experiments/results).
source "$(dirname "$0")/lib.sh"
STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-2}
SEEDS=${SEEDS:-0 1 2}
MODES=${MODES:-none soft hard}
OUT=${OUT:-$REPO/runs/experiments/distillation}
RESULTS_DIR=${RESULTS_DIR:-$REPO/docs/experiments/results}
mkdir -p "$OUT" "$RESULTS_DIR"

train "$OUT/teacher" --recipe fmnist-convnet-teacher --epochs "$TEACHER_EPOCHS" --micro-batch 256
for seed in $SEEDS; do
  for mode in $MODES; do
    teacher=()
    [[ $mode != none ]] && teacher=(--teacher "$OUT/teacher")
    train "$OUT/$mode-seed$seed" --recipe fmnist-deit-tiny-distilled --distillation "$mode" "${teacher[@]}" \
      --epochs "$STUDENT_EPOCHS" --micro-batch 256 --seed "$seed"
  done
done
node "$REPO/bench/experiments/summarize.mjs" distillation "$OUT" "$RESULTS_DIR"
