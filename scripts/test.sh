#!/usr/bin/env bash
# The test command: set up from scratch, build the C++ library with CMake too,
# and run the test suite (GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/cmake_build.sh
# Where nvcc exists the CUDA kernels must have been compiled; a test checks it.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export FASTATTR_EXPECT_CUDA_KERNELS=1
fi
.venv/bin/python -m pytest -q tests "$@"
