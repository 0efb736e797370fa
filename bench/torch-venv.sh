#!/usr/bin/env bash
# The peers' Python: a venv with PyTorch 2.13 CPU (and numpy, which the reference model's module
# imports) at .venv-bench/, made on first use from pip's configured index; prints its python's path.
# No torchvision: the index's build of it is CUDA-only. TORCH_SPEC= picks another torch.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-bench
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
if ! "$VENV/bin/python" -c 'import numpy, torch' 2>/dev/null; then
  echo "making $VENV with $TORCH_SPEC (once)" >&2
  python3 -m venv "$VENV" >&2
  # --retries 0 --timeout 2: give up at once on any index this machine cannot reach.
  "$VENV/bin/pip" install --retries 0 --timeout 2 --quiet "$TORCH_SPEC" numpy >&2
fi
echo "$PWD/$VENV/bin/python"
