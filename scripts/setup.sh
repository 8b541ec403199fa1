#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with torch, the test tools
# and fastattr built against that torch (CUDA kernels too when nvcc is present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -r requirements-dev.txt
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  export PATH="$CUDA_HOME/bin:$PATH"
  # No GPU on CI: compile for Hopper (H100/H200) unless told otherwise.
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
fi
.venv/bin/pip install -q --no-build-isolation -e .
