#!/usr/bin/env bash
# The GPU check (issue #12) for a short lease on a GPU machine that has Python with PyTorch and timm
# but no Node, no npm and no network. In at most BUDGET_S seconds (default 280) it prints:
#   1. the WebGPU adapter Dawn binds (Vulkan on NVIDIA), its features and limits;
#   2. our matMul kernels' TFLOP/s at the products of a DeiT-B step (bench/gpu/kernels.ts), fused
#      attention beside the unfused path at DeiT-B's shapes (bench/gpu/attention.ts), and per-kernel
#      GPU times of a DeiT-B forward+backward where the adapter has timestamp-query (bench/gpu/profile.ts;
#      without the feature it says so);
#   3. DeiT-Ti/S/B forward+backward images/s: vit-dist on webgpu (bench/model_speed.ts) beside
#      PyTorch on timm's deit_*_patch16_224, strict fp32 and TF32 allowed, same batch, same GPU;
#   4. two training steps of a 2-worker ring (`vit-dist launch --backend webgpu`, both workers on the
#      one GPU, DeiT-B on generated JPEGs) and each step's compute, copy and comm times;
# then a summary. Each part has its own time limit; a part that fails is reported and the next runs.
#
#   bash bench/gpu-check.sh [--cpu-test | --smoke]
#
# It runs from a checkout with Node 20 and node_modules, or from the folder bench/gpu/pack.sh stages
# (.gpu/, with Node and the code as archives): it then unpacks them under /tmp first.
# --cpu-test: the same parts at tiny sizes on llvmpipe (Dawn's OpenGL ES on Mesa), PyTorch on the CPU,
# so the whole script can be checked on a machine without a GPU (PYTHON names a Python with torch
# and timm; the model is a small ViT instead of DeiT).
# --smoke: a first look on the GPU in about two minutes: the adapter, one DeiT-B product (fc1) of ours,
# DeiT-B on webgpu and PyTorch's DeiT-B in strict fp32; no ring.
# Everything printed also goes to $OUT (default ./gpu-check-out): gpu-check.log, adapter.txt,
# kernels.txt, attention.txt, profile.txt, models.txt, ring.txt, ring-metrics.jsonl and summary.txt. Exit status: 0 when every
# part succeeded.
set -uo pipefail

MODE=gpu
case "${1:-}" in
  --cpu-test) MODE=cpu-test ;;
  --smoke) MODE=smoke ;;
  '') ;;
  *) echo "usage: $0 [--cpu-test | --smoke]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$PWD/gpu-check-out}
BUDGET_S=${BUDGET_S:-280}
PYTHON=${PYTHON:-python3}
SCRATCH=${SCRATCH:-/tmp/vit-dist-gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu-check.log") 2>&1

if [ "$MODE" != cpu-test ]; then
  ALLOW_SOFTWARE=()
  KERNEL_ARGS=()
  ATTENTION_ARGS=()
  PROFILE_ARGS=(--model deit_base_patch16_224 --batch 64)
  BATCH=${BATCH:-64}
  SECONDS_EACH=${SECONDS_EACH:-4}
  # vit-dist's model name = timm's; the order is the order of the summary.
  MODELS=(deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224)
  TORCH_ARGS=(--precisions fp32,tf32)
  RING_IMAGES=128
  RING_RECIPE=(--recipe deit-base --set modelArgs.numClasses=4 --global-batch 128 --micro-batch 64 --steps 2)
  if [ "$MODE" = smoke ]; then
    BUDGET_S=${BUDGET_S_SMOKE:-150}
    KERNEL_ARGS=(--only 'fc1 Y=XW')
    MODELS=(deit_base_patch16_224)
    TORCH_ARGS=(--precisions fp32)
  fi
  # The driver's Vulkan ICD and EGL vendor file, where the NVIDIA container runtime mounts them
  # (the device tool's README); a standard install finds them without these.
  NVIDIA_SHARE=/usr/local/nvidia/share
  if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$NVIDIA_SHARE/vulkan/icd.d/nvidia_icd.json" ]; then export VK_DRIVER_FILES=$NVIDIA_SHARE/vulkan/icd.d/nvidia_icd.json; fi
  if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$NVIDIA_SHARE/glvnd/egl_vendor.d/10_nvidia.json" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES=$NVIDIA_SHARE/glvnd/egl_vendor.d/10_nvidia.json; fi
else
  ALLOW_SOFTWARE=(--allow-software)
  KERNEL_ARGS=(--tiny)
  ATTENTION_ARGS=(--tiny)
  PROFILE_ARGS=(--model vit_fmnist_tiny --batch 8)
  BATCH=${BATCH:-8}
  SECONDS_EACH=${SECONDS_EACH:-1}
  MODELS=(vit_fmnist_tiny)
  TORCH_ARGS=(--precisions fp32 --device cpu)
  RING_IMAGES=32
  RING_RECIPE=(--recipe bench/gpu/ring-cpu-test.json)
fi

echo "gpu-check ($MODE) started $(date -u +%FT%TZ) on $(hostname), $(nproc) CPUs, budget ${BUDGET_S}s"

# --- Node and the code: a staged folder carries them as archives.
unpack() { # unpack ARCHIVE DIR: tar's xz where the machine has it, else Python's lzma
  if command -v xz >/dev/null; then
    tar -C "$2" -xJf "$1"
  else
    "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "data_filter") else {}))' "$1" "$2"
  fi
}
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
if [ -f "$ROOT/app.tar.xz" ]; then
  t0=$SECONDS
  unpack "$ROOT/node.tar.xz" "$SCRATCH" && unpack "$ROOT/app.tar.xz" "$SCRATCH" || { echo "gpu-check: unpacking $ROOT failed" >&2; exit 1; }
  export PATH="$SCRATCH/node/bin:$PATH"
  APP=$SCRATCH/app
  COMMIT=$(cat "$ROOT/commit")
  echo "unpacked Node and the code (commit $COMMIT) in $((SECONDS - t0))s"
else
  APP=$ROOT
  COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
fi
cd "$APP"
echo "node $(node --version) at $(command -v node), commit $COMMIT"
START=$SECONDS
FAILED=()

# part NAME CAP_S FILE CMD...: runs CMD for at most CAP_S seconds (less when the budget runs out),
# appending its output to $OUT/FILE; a failure is recorded and the script goes on.
part() {
  local name=$1 cap=$2 file=$3
  shift 3
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped, the ${BUDGET_S}s budget is spent"
    FAILED+=("$name (skipped)")
    return 1
  fi
  local limit=$((cap < left ? cap : left)) t0=$SECONDS
  echo "== $name (at most ${limit}s)"
  timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v -E "^Warning: Couldn't load Vulkan|BackendVk.cpp|^$|XDG_RUNTIME_DIR" | tee -a "$OUT/$file"
  local rc=${PIPESTATUS[0]}
  echo "== $name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc$([ "$rc" = 124 ] && echo ', time limit'))") after $((SECONDS - t0))s"
  [ "$rc" = 0 ] || FAILED+=("$name")
  return "$rc"
}

if [ "$MODE" != cpu-test ]; then
  part 'GPU (nvidia-smi, read only)' 20 adapter.txt nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  part 'Vulkan loader' 10 adapter.txt bash -c 'ldconfig -p | grep libvulkan || { echo "no libvulkan.so.1: unpack .gl/*.deb first"; exit 1; }'
fi
# Without the adapter the webgpu parts cannot run; PyTorch's still can.
webgpu=ok
part 'WebGPU adapter' 60 adapter.txt node --import tsx bench/gpu/adapter.ts "${ALLOW_SOFTWARE[@]}" || webgpu=

if [ -n "$webgpu" ]; then
  part 'our matMul kernels at DeiT-B shapes' 75 kernels.txt node --import tsx bench/gpu/kernels.ts "${KERNEL_ARGS[@]}" "${ALLOW_SOFTWARE[@]}"
  [ "$MODE" = smoke ] || part 'fused vs unfused attention at DeiT-B shapes' 30 attention.txt node --import tsx bench/gpu/attention.ts "${ATTENTION_ARGS[@]}" "${ALLOW_SOFTWARE[@]}"
fi

torch_models=()
for model in "${MODELS[@]}"; do
  if [ "$MODE" = cpu-test ]; then torch_models+=("$model=vit_tiny_patch16_224"); else torch_models+=("$model"); fi
done
torch_config=()
if [ "$MODE" = cpu-test ]; then
  torch_config=(--config "$(node --import tsx -e "import { createModelConfig } from './src/model/registry.ts'; console.log(JSON.stringify(createModelConfig('${MODELS[0]}')))")")
fi
part "PyTorch forward+backward, batch $BATCH" 90 models.txt env PYTHONUNBUFFERED=1 "$PYTHON" bench/gpu/torch_deit_speed.py \
  --models "$(IFS=,; echo "${torch_models[*]}")" --batch "$BATCH" --seconds "$SECONDS_EACH" "${TORCH_ARGS[@]}" "${torch_config[@]}"

ours() { # ours MODEL: vit-dist's forward+backward on webgpu, as a worker runs it
  part "vit-dist $1 forward+backward on webgpu, batch $BATCH" 60 models.txt node --import tsx bench/model_speed.ts --model "$1" --batch "$BATCH" --seconds "$SECONDS_EACH" --backend webgpu
}

if [ -n "$webgpu" ]; then
  # DeiT-B, the ring and DeiT-B's kernel profile first: if the budget runs short, the smaller models are what is lost.
  last=$((${#MODELS[@]} - 1))
  ours "${MODELS[$last]}"
  [ "$MODE" = smoke ] || part 'two steps of a 2-worker ring on the GPU' 100 ring.txt bash bench/gpu/ring-step.sh "$SCRATCH" "$OUT" "$RING_IMAGES" "${RING_RECIPE[@]}"
  [ "$MODE" = smoke ] || part 'per-kernel GPU times of a forward+backward pass' 40 profile.txt node --import tsx bench/gpu/profile.ts "${PROFILE_ARGS[@]}" "${ALLOW_SOFTWARE[@]}"
  for ((i = last - 1; i >= 0; i--)); do ours "${MODELS[$i]}"; done
fi

echo "== summary (commit $COMMIT, $(date -u +%FT%TZ), $((SECONDS - START))s of the ${BUDGET_S}s budget)"
node --import tsx bench/gpu/summary.ts --out "$OUT" --models "$(IFS=,; echo "${MODELS[*]}")" | tee "$OUT/summary.txt"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu-check: FAILED parts: $(IFS=';'; echo "${FAILED[*]}")" | tee -a "$OUT/summary.txt"
  exit 1
fi
echo "gpu-check: all parts ran" | tee -a "$OUT/summary.txt"
