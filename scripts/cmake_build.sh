#!/usr/bin/env bash
# Configure and build the C++-only library (CMakeLists.txt) into build/cmake,
# against the torch of the project's Python (.venv/bin/python, else python3,
# or $PYTHON), then run the C++ smoke program on it.
#
#   scripts/cmake_build.sh                  # CPU kernels only (the CI default)
#   FASTATTR_CMAKE_CUDA=1 scripts/cmake_build.sh   # CPU + CUDA kernels
#
# Environment: BUILD_DIR (default build/cmake), CMAKE_BUILD_PARALLEL_LEVEL
# (default 2), TORCH_CUDA_ARCH_LIST (default 9.0; needed by Torch's CMake
# config with a CUDA build of torch even for the CPU-only library),
# CUDA_HOME (default /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
BUILD_DIR=${BUILD_DIR:-build/cmake}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
WITH_CUDA=OFF
case "${FASTATTR_CMAKE_CUDA:-0}" in 1|ON|on|true|yes) WITH_CUDA=ON ;; esac

command -v cmake >/dev/null || { echo "cmake_build.sh: cmake not found" >&2; exit 1; }

# One Python call gathers what CMake needs to know about this torch:
# line 1: cmake prefix path; line 2: CUDA version or "None"; line 3: ';'-joined
# nvidia/*/include folders; line 4: libnvrtc path (may be empty).
mapfile -t TORCH_INFO < <("$PY" - <<'PYEOF'
import glob, os, sysconfig, torch
sites = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                os.path.dirname(os.path.dirname(torch.__file__))})
inc = sorted({d for s in sites for d in glob.glob(os.path.join(s, "nvidia", "*", "include"))})
nvrtc = sorted(f for s in sites for f in glob.glob(os.path.join(s, "nvidia", "*", "lib", "libnvrtc.so*"))
               if "builtins" not in f and ".alt." not in f)
print(torch.utils.cmake_prefix_path)
print(torch.version.cuda)
print(";".join(inc))
print(nvrtc[0] if nvrtc else "")
PYEOF
)
TORCH_PREFIX=${TORCH_INFO[0]}
TORCH_CUDA=${TORCH_INFO[1]}
NV_INCLUDES=${TORCH_INFO[2]:-}
NVRTC=${TORCH_INFO[3]:-}

ARGS=(-S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
      -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DWITH_CUDA="$WITH_CUDA")
if command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD_DIR/Makefile" ]; then
  # (the generator of an existing build folder cannot change)
  ARGS+=(-G Ninja)
fi
if [ "$TORCH_CUDA" != "None" ]; then
  # A CUDA build of torch makes Torch's CMake config look for the toolkit even
  # for the CPU-only library; point it at the system toolkit plus the headers
  # and nvrtc that the torch wheel ships (see the build notes).
  ARGS+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCUDAToolkit_ROOT="$CUDA_HOME"
         -DCUDA_INCLUDE_DIRS="$CUDA_HOME/include${NV_INCLUDES:+;$NV_INCLUDES}")
  [ -n "$NVRTC" ] && ARGS+=(-DCUDA_nvrtc_LIBRARY="$NVRTC")
  if [ "$WITH_CUDA" = ON ]; then
    ARGS+=(-DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc")
  fi
elif [ "$WITH_CUDA" = ON ]; then
  echo "cmake_build.sh: FASTATTR_CMAKE_CUDA=1 but torch is a CPU-only build" >&2
  exit 1
fi

echo "cmake_build.sh: torch at $TORCH_PREFIX (CUDA $TORCH_CUDA), WITH_CUDA=$WITH_CUDA, into $BUILD_DIR"
mkdir -p "$BUILD_DIR"
cmake "${ARGS[@]}" >"$BUILD_DIR/configure.log" 2>&1 || {
  cat "$BUILD_DIR/configure.log" >&2
  echo "cmake_build.sh: configure failed (log above)" >&2; exit 1; }
cmake --build "$BUILD_DIR"

LIB=$(ls "$BUILD_DIR"/libfastattr.so 2>/dev/null || true)
[ -n "$LIB" ] || { echo "cmake_build.sh: $BUILD_DIR/libfastattr.so was not built" >&2; exit 1; }
"$BUILD_DIR/fastattr_smoke" "$LIB"
