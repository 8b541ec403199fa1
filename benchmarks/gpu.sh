#!/usr/bin/env bash
# Everything that needs the GPU machine, in one script: build fastattr against
# that machine's python3/torch, run the whole test suite (CUDA tests included),
# compute-sanitizer memcheck + racecheck over each op's CUDA tests, the op
# benchmarks (CUDA), the bandwidth table and, if present, the method
# benchmarks. Logs and tables go to $OUT, in at most 8 files:
#
#   summary.md      environment + one row per step (status, seconds, result)
#   build.log       the build
#   tests.log       pytest -q tests
#   sanitizer.log   memcheck and racecheck, every op test file
#   bench.md        op-vs-reference table (CUDA), bandwidth table, methods table
#   bench.log       raw benchmark output
#   bench_ops.json  pytest-benchmark JSON of the op benchmarks
#
# Usage: benchmarks/gpu.sh [PHASE...]   PHASE in build tests bench sanitize (default: all, in that order)
#
# One device command may run 10 minutes at most: every step runs under a
# timeout taken from what is left of FASTATTR_GPU_BUDGET_S (default 570 s),
# so the script always ends with its summary; phases can also be run in
# separate calls (the build stays on the machine while it is warm).
#
# Environment: OUT (default ./gpu-out), PYTHON (default python3),
# FASTATTR_GPU_DRYRUN=1 (check the script on a machine without a GPU: no build,
# a small test subset, CPU benchmarks, sanitizers only if installed),
# SANITIZE_K (pytest -k for the sanitizer runs), TORCH_CUDA_ARCH_LIST (9.0).
# It only queries the GPU (nvidia-smi --query-gpu); it changes no settings.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)
BUDGET=${FASTATTR_GPU_BUDGET_S:-570}
DRYRUN=${FASTATTR_GPU_DRYRUN:-0}
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
if [ "$DRYRUN" = 1 ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export FASTATTR_EXPECT_CUDA_KERNELS=1
[ "$DRYRUN" = 1 ] && export FASTATTR_EXPECT_CUDA_KERNELS=0
SANITIZE_K=${SANITIZE_K:-cuda and not compile}
PYTEST=("$PY" -m pytest -p no:cacheprovider)

PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(build tests bench sanitize)
want() { local p; for p in "${PHASES[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

ROWS=()
# step NAME LOG CMD...: run CMD under the remaining budget, append its output
# to LOG and record a summary row (pytest / sanitizer result lines).
STEP_TMP=$(mktemp)
trap 'rm -f "$STEP_TMP"' EXIT
step() {
  local name=$1 log=$2; shift 2
  local now left t0 rc detail status
  now=$(date +%s); left=$((BUDGET - (now - START) - 20))
  if [ "$left" -lt 20 ]; then
    ROWS+=("| $name | skipped | 0 | out of time budget |"); return 0
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$left" "$@" >"$STEP_TMP" 2>&1
  rc=$?
  { echo; echo "===== $name: $* (rc $rc, $(( $(date +%s) - t0 )) s) ====="; cat "$STEP_TMP"; } >>"$log"
  detail="$(grep -E "[0-9]+ (passed|failed|errors?|skipped|deselected)" "$STEP_TMP" | tail -1) $(grep -E "(ERROR|RACECHECK) SUMMARY" "$STEP_TMP" | tail -1)"
  [ -z "${detail// /}" ] && detail=$(grep -v '^\s*$' "$STEP_TMP" | tail -1)
  detail=$(echo "$detail" | tr -d '=|' | sed 's/^ *//; s/ *$//' | cut -c1-160)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then detail="timed out after ${left}s; $detail"; fi
  if [ "$rc" = 0 ]; then status=ok; else status="FAIL (rc $rc)"; fi
  ROWS+=("| $name | $status | $(( $(date +%s) - t0 )) | $detail |")
  return "$rc"
}

# --- environment --------------------------------------------------------------
{
  echo "# fastattr GPU run ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; else echo "no nvidia-smi"; fi
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available())" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -1
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -2 | tail -1
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  echo '```'
} >"$OUT/summary.md"

# Captum, if shipped as wheels next to the repository (no network there).
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >>"$OUT/build.log" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# --- build --------------------------------------------------------------------
if want build; then
  if [ "$DRYRUN" = 1 ]; then
    step "build (dry run: import only)" "$OUT/build.log" "$PY" -c "import fastattr; print('fastattr ops:', fastattr.ops.has_ops())"
  else
    # In place (python/fastattr/_C*.so), found through PYTHONPATH: nothing is
    # installed into that machine's site-packages.
    step "build" "$OUT/build.log" "$PY" setup.py build_ext --inplace
  fi
  step "import + CUDA kernels" "$OUT/build.log" "$PY" -c "
import torch, fastattr
print('fastattr', fastattr.__file__, 'cuda_version', fastattr.ops.cuda_version(), 'cuda kernels', fastattr.ops.has_cuda_kernels())
assert fastattr.ops.has_cuda_kernels() or '$DRYRUN' == '1'
"
fi

# --- tests --------------------------------------------------------------------
if want tests; then
  if [ "$DRYRUN" = 1 ]; then
    step "pytest tests (dry run subset)" "$OUT/tests.log" "${PYTEST[@]}" -q tests/test_build.py
  else
    step "pytest tests" "$OUT/tests.log" "${PYTEST[@]}" -q -rs tests
  fi
fi

# --- benchmarks ---------------------------------------------------------------
if want bench; then
  BENCH_DEV=cuda; BENCH_K="cuda"; BW_ARGS=()
  if [ "$DRYRUN" = 1 ]; then BENCH_DEV=cpu; BENCH_K="cpu and guided_relu- and float32"; BW_ARGS=(--small --reps 3 --warmup 1); fi
  {
    echo "# fastattr GPU benchmarks"
    echo
    echo "## Ops vs reference ($BENCH_DEV)"
    echo
  } >"$OUT/bench.md"
  step "bench_ops ($BENCH_DEV)" "$OUT/bench.log" "${PYTEST[@]}" -q benchmarks/bench_ops.py --benchmark-only \
    -k "$BENCH_K" --benchmark-json "$OUT/bench_ops.json" --ops-table "$OUT/ops_table.tmp" --benchmark-columns=min,median,max,rounds
  [ -f "$OUT/ops_table.tmp" ] && cat "$OUT/ops_table.tmp" >>"$OUT/bench.md" && rm -f "$OUT/ops_table.tmp"
  { echo; echo "## Bandwidth ($BENCH_DEV)"; echo; } >>"$OUT/bench.md"
  step "bandwidth.py ($BENCH_DEV)" "$OUT/bench.log" "$PY" benchmarks/bandwidth.py "$OUT/bandwidth.tmp" --device "$BENCH_DEV" "${BW_ARGS[@]}"
  [ -f "$OUT/bandwidth.tmp" ] && cat "$OUT/bandwidth.tmp" >>"$OUT/bench.md" && rm -f "$OUT/bandwidth.tmp"
  if [ -f benchmarks/bench_methods.py ]; then
    { echo; echo "## Methods"; echo; echo '```'; } >>"$OUT/bench.md"
    METHODS_ARGS=(--benchmark-only --benchmark-columns=min,median,max,rounds)
    [ "$DRYRUN" = 1 ] && METHODS_ARGS=(--benchmark-disable -k cpu)
    step "bench_methods" "$OUT/bench.log" "${PYTEST[@]}" -q benchmarks/bench_methods.py "${METHODS_ARGS[@]}"
    # the pytest-benchmark table of that run
    awk '/===== bench_methods/{f=1} f' "$OUT/bench.log" | grep -E "^(Name|-{5,}|test_)" | head -200 >>"$OUT/bench.md"
    echo '```' >>"$OUT/bench.md"
  else
    ROWS+=("| bench_methods | skipped | 0 | benchmarks/bench_methods.py not present |")
  fi
fi

# --- sanitizers ---------------------------------------------------------------
if want sanitize; then
  if ! command -v compute-sanitizer >/dev/null 2>&1 || { [ "$DRYRUN" = 1 ] && ! "$PY" -c "import torch,sys; sys.exit(not torch.cuda.is_available())"; }; then
    ROWS+=("| compute-sanitizer | skipped | 0 | no compute-sanitizer or no GPU |")
  else
    : >"$OUT/sanitizer.log"
    for tool in memcheck racecheck; do
      for f in tests/test_op_*.py; do
        # No caching allocator under memcheck, so that an overrun past a
        # tensor's end is outside any allocation and gets reported.
        step "$tool $(basename "$f")" "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=$([ $tool = memcheck ] && echo 1 || echo 0) \
          compute-sanitizer --tool "$tool" --error-exitcode 86 --print-limit 50 \
          "${PYTEST[@]}" -q -x "$f" -k "$SANITIZE_K"
      done
    done
  fi
fi

# --- summary ------------------------------------------------------------------
{
  echo
  echo "| step | status | seconds | result |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Total: $(( $(date +%s) - START )) s. Files: $(cd "$OUT" && ls | tr '\n' ' ')"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
grep -q "FAIL" "$OUT/summary.md" && exit 1
exit 0
