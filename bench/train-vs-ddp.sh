#!/usr/bin/env bash
# The main job's training speed: vit-dist (`launch --workers 2`, TensorFlow engine, one thread per
# worker) beside PyTorch 2.13 DDP (gloo, 2 ranks, one thread each; bench/torch_ddp_train.py) on the
# same recipe, model and Fashion-MNIST files, alternating in the same window. Prints images/s of each
# run and the vit-dist/DDP ratio per round and over all rounds.
#   RECIPE=recipes/fmnist-vit-tiny.json STEPS=40 WARMUP_STEPS=10 ROUNDS=2 BACKEND=tensorflow bench/train-vs-ddp.sh
#
# images/s, both sides alike: steps WARMUP_STEPS+1..STEPS times the global batch, divided by the wall
# time from the end of step WARMUP_STEPS to the end of step STEPS (vit-dist: the coordinator's `time`
# of those steps in metrics.jsonl; DDP: rank 0's clock after each optimizer step). Start-up (process
# launch, data loading, the first steps' warm-up) and vit-dist's final evaluation and checkpoint lie
# outside the window.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=${RECIPE:-recipes/fmnist-vit-tiny.json}
STEPS=${STEPS:-40}
WARMUP_STEPS=${WARMUP_STEPS:-10}
ROUNDS=${ROUNDS:-2}
BACKEND=${BACKEND:-tensorflow}
PYTHON=${PYTHON:-$(bench/torch-venv.sh)}
# One compute thread per worker and per rank: TensorFlow's pools, and torch's OpenMP.
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2

field() { # field NAME JSON -> the number
  sed -E "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/" <<<"$2"
}

model=$(sed -nE 's/^ *"model": *"([^"]*)".*/\1/p' "$RECIPE")
config=$(node --import tsx --input-type=module -e "import { createModelConfig } from './src/model/registry.ts'; console.log(JSON.stringify(createModelConfig('$model')))")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

ours_images_per_sec() { # ours_images_per_sec METRICS_JSONL -> images/s over the window
  node -e '
    const [file, warmup, steps] = process.argv.slice(1);
    const lines = require("fs").readFileSync(file, "utf8").trim().split("\n").map(JSON.parse).filter((l) => l.kind === "step");
    const at = (s) => { const l = lines.find((x) => x.step === s); if (!l) throw new Error(`no step ${s} in ${file}`); return Date.parse(l.time); };
    const batch = JSON.parse(require("fs").readFileSync(process.argv[4], "utf8")).globalBatch;
    console.log(((steps - warmup) * batch * 1000) / (at(Number(steps)) - at(Number(warmup))));
  ' "$1" "$WARMUP_STEPS" "$STEPS" "$RECIPE"
}

echo "load average at start: $(cut -d ' ' -f 1-3 /proc/loadavg) on $(getconf _NPROCESSORS_ONLN) cores"
echo "recipe $RECIPE ($model), $STEPS steps, images/s over steps $((WARMUP_STEPS + 1))-$STEPS"
printf '%-5s | %16s | %16s | %6s\n' round "vit-dist im/s" "DDP im/s" ratio
sum_ours=0; sum_ddp=0
for round in $(seq 1 "$ROUNDS"); do
  run_dir="$out/run-$round"
  node bin/vit-dist.js launch --workers 2 --backend "$BACKEND" --recipe "$RECIPE" --steps "$STEPS" --out "$run_dir" >"$out/vit-dist-$round.log" 2>&1 \
    || { echo "vit-dist failed; its output:" >&2; cat "$out/vit-dist-$round.log" >&2; exit 1; }
  ours=$(ours_images_per_sec "$run_dir/metrics.jsonl")
  ddp_json=$("$PYTHON" bench/torch_ddp_train.py --recipe "$RECIPE" --config "$config" --steps "$STEPS" --warmup-steps "$WARMUP_STEPS" | tail -n 1)
  ddp=$(field imagesPerSec "$ddp_json")
  ratio=$(awk -v a="$ours" -v b="$ddp" 'BEGIN { printf "%.2f", a / b }')
  printf '%-5s | %16.1f | %16.1f | %6s\n' "$round" "$ours" "$ddp" "$ratio"
  sum_ours=$(awk -v a="$sum_ours" -v b="$ours" 'BEGIN { print a + b }'); sum_ddp=$(awk -v a="$sum_ddp" -v b="$ddp" 'BEGIN { print a + b }')
done
printf '%-5s | %16.1f | %16.1f | %6s\n' mean "$(awk -v a="$sum_ours" -v n="$ROUNDS" 'BEGIN { print a / n }')" "$(awk -v a="$sum_ddp" -v n="$ROUNDS" 'BEGIN { print a / n }')" "$(awk -v a="$sum_ours" -v b="$sum_ddp" 'BEGIN { printf "%.2f", a / b }')"
echo "vit-dist: $(grep -m 1 'ring of' "$out/vit-dist-1.log")"
echo "torch: $(sed -E 's/.*"torch": "([^"]*)".*/\1/' <<<"$ddp_json") DDP, gloo, 2 ranks x 1 thread"
echo "load average at end: $(cut -d ' ' -f 1-3 /proc/loadavg)"
