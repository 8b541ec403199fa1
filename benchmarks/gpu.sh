#!/usr/bin/env bash
# Everything that needs the GPU machine, in one script that ends inside one
# device call (8 minutes by default) with its summary, even when a phase runs
# long: each phase runs under its own time budget, capped by what is left of
# the whole.
#
#   build      build fastattr in place against that machine's python3/torch
#   correct    at once, on one GPU: (a) the op tests, CPU and CUDA (every op
#              registered in torch.ops.fastattr has harness cases: the CUDA
#              tests are discovered from the package), in 8 processes;
#              (b) compute-sanitizer memcheck and racecheck over a small
#              float32 subset of each op's CUDA tests; (c) the C++
#              check-failure probe (benchmarks/abi_probe.py)
#   bandwidth  every kernel's bandwidth against a device-to-device copy
#   e2e        resnet50 B=32: default-chunk sweep, host-time profile of IG and
#              GNL-IG, every method against Captum and the bare model (+bf16
#              autocast, torch.compile for IG)
#
# Results, at most 8 files under $OUT:
#   summary.md     environment, one row per step (status, seconds, result)
#   build.log      the build
#   tests.log      pytest output and the probe's report
#   sanitizer.log  memcheck and racecheck
#   bandwidth.md   the bandwidth table
#   e2e.md         the end-to-end tables (e2e.methods.md holds rows so far if cut)
#   bench.log      raw benchmark output
#
# Usage: benchmarks/gpu.sh [PHASE...]      (default: all four, in order)
# Environment: OUT (default ./gpu-out), PYTHON (default python3),
#   FASTATTR_GPU_BUDGET_S (whole run, default 470),
#   BUDGET_BUILD / BUDGET_CORRECT / BUDGET_BANDWIDTH / BUDGET_E2E (seconds per phase),
#   E2E_SWEEP (rows per pass of the chunk sweep), E2E_ARGS (the rest of e2e.py's arguments),
#   FASTATTR_CXX / FASTATTR_CC (the compilers; default /usr/bin/g++ and gcc where present, see below),
#   FASTATTR_GPU_DRYRUN=1: rehearse on a machine without a GPU (no build, the
#   CPU tests of one op file, CPU bandwidth on small inputs, the e2e sweep on
#   the small CNN; CUDA-only steps are listed as skipped).
# It only queries the GPU (nvidia-smi --query-gpu); it changes no settings.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)
TOTAL=${FASTATTR_GPU_BUDGET_S:-470}
DRYRUN=${FASTATTR_GPU_DRYRUN:-0}
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
if [ "$DRYRUN" = 1 ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=${PYTHON:-python3}; fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export FASTATTR_EXPECT_CUDA_KERNELS=1
[ "$DRYRUN" = 1 ] && export FASTATTR_EXPECT_CUDA_KERNELS=0
PYTEST=("$PY" -m pytest -p no:cacheprovider)

PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(build correct bandwidth e2e)
want() { local p; for p in "${PHASES[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
left() { echo $((TOTAL - ($(date +%s) - START) - 10)); }
# phase_budget NAME DEFAULT: seconds for a phase, never more than what is left
phase_budget() { local b=$2 l; l=$(left); [ "$b" -gt "$l" ] && b=$l; echo "$b"; }

ROWS=()
# run_step NAME LOG SECONDS CMD...: CMD under a timeout, output appended to LOG,
# one summary row (pytest / sanitizer result lines). Safe to run in the background.
run_step() {
  local name=$1 log=$2 secs=$3; shift 3
  local t0 rc detail status tmp
  if [ "$secs" -lt 15 ]; then echo "| $name | skipped | 0 | out of time budget |" >"$OUT/.row.$BASHPID"; return 0; fi
  tmp=$(mktemp); t0=$(date +%s)
  timeout --kill-after=5 "$secs" "$@" >"$tmp" 2>&1
  rc=$?
  { echo; echo "===== $name: $* (rc $rc, $(( $(date +%s) - t0 )) s) ====="; cat "$tmp"; } >>"$log"
  detail="$(grep -E "[0-9]+ (passed|failed|errors?|skipped|deselected)" "$tmp" | tail -1) $(grep -E "(ERROR|RACECHECK) SUMMARY" "$tmp" | tail -1)"
  [ -z "${detail// /}" ] && detail=$(grep -v '^\s*$' "$tmp" | tail -1)
  detail=$(echo "$detail" | tr -d '=|' | sed 's/^ *//; s/ *$//' | cut -c1-160)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then detail="timed out after ${secs}s; $detail"; fi
  if [ "$rc" = 0 ]; then status=ok; else status="FAIL (rc $rc)"; fi
  rm -f "$tmp"
  echo "| $name | $status | $(( $(date +%s) - t0 )) | $detail |" >"$OUT/.row.$BASHPID"
  return "$rc"
}
# step: run_step in the foreground, its row collected at once
step() {
  local me=$BASHPID rc
  run_step "$@"; rc=$?
  ROWS+=("$(cat "$OUT/.row.$me")"); rm -f "$OUT/.row.$me"; return $rc
}
skip() { ROWS+=("| $1 | skipped | 0 | $2 |"); }

# --- environment --------------------------------------------------------------
{
  echo "# fastattr GPU run ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; else echo "no nvidia-smi"; fi
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available())" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -1
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -2 | tail -1
  echo "environment CXX: ${CXX:-unset}, CC: ${CC:-unset}"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  echo '```'
} >"$OUT/summary.md"

# Test and benchmark dependencies the machine lacks (Captum, expecttest), as wheels next to the repository.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$OUT/build.log" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# The C++ compiler. On the lent GPU machine the environment sets CXX to
# /opt/gcc/bin/g++, a wrapper that runs g++-real with -B/opt/gcc/... (its own
# startup files and libgcc); extensions it builds crash (SIGSEGV) when a
# failing TORCH_CHECK's message formats an integer, while Ubuntu's
# /usr/bin/g++ of the same version and libstdc++ raises normally
# (benchmarks/abi_probe.py, RESULTS.md). So build with FASTATTR_CXX /
# FASTATTR_CC, by default /usr/bin/g++ and /usr/bin/gcc where present,
# overriding the environment's CXX and CC (CC is also nvcc's host compiler).
FASTATTR_CXX=${FASTATTR_CXX:-$([ -x /usr/bin/g++ ] && echo /usr/bin/g++)}
FASTATTR_CC=${FASTATTR_CC:-$([ -x /usr/bin/gcc ] && echo /usr/bin/gcc)}
[ -n "$FASTATTR_CXX" ] && export CXX=$FASTATTR_CXX
[ -n "$FASTATTR_CC" ] && export CC=$FASTATTR_CC

HAVE_GPU=0
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null && HAVE_GPU=1

# --- build --------------------------------------------------------------------
if want build; then
  if [ "$DRYRUN" = 1 ]; then
    step "build (dry run: import only)" "$OUT/build.log" 60 "$PY" -c "import fastattr; print('fastattr ops:', fastattr.ops.has_ops())"
  else
    # In place (python/fastattr/_C*.so), found through PYTHONPATH: nothing is
    # installed into that machine's site-packages.
    step "build" "$OUT/build.log" "$(phase_budget "${BUDGET_BUILD:-200}" 200)" "$PY" setup.py build_ext --inplace
  fi
  step "import + CUDA kernels" "$OUT/build.log" 60 "$PY" -c "
import torch, fastattr
print('fastattr', fastattr.__file__, 'cuda_version', fastattr.ops.cuda_version(), 'cuda kernels', fastattr.ops.has_cuda_kernels())
assert fastattr.ops.has_cuda_kernels() or '$DRYRUN' == '1'
"
fi

# --- correctness: tests, sanitizers and the probe at once -----------------------
if want correct; then
  B=$(phase_budget "${BUDGET_CORRECT:-120}" 120)
  PIDS=()
  if [ "$DRYRUN" = 1 ]; then
    run_step "op tests (dry run: one file, CPU)" "$OUT/tests.log" "$B" "${PYTEST[@]}" -q tests/test_op_rise_masks.py -x -k "not compile" & PIDS+=($!)
  else
    # The CUDA tests of every op file and the harness (whose cases cover every
    # op registered in torch.ops.fastattr), plus the argument-error tests (the
    # check-failure crash); the CPU tests run in CI. xdist if present (a
    # crashing worker is reported, not fatal).
    XDIST=(); "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 12)
    run_step "op tests (CUDA + argument errors)" "$OUT/tests.log" "$B" "${PYTEST[@]}" -q -rf "${XDIST[@]}" \
      tests/test_op_*.py tests/test_build.py -k "cuda or error or reject or out_of_range" & PIDS+=($!)
  fi
  if [ "$HAVE_GPU" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    # One float32 contiguous case per op variant, CUDA against the float64
    # reference, and CPU/CUDA parity. No caching allocator under memcheck, so
    # that an overrun past a tensor's end is outside any allocation.
    # Plus the CUDA-only float32 tests of the op files (offsets, vector tails,
    # the max-pool backward's paths), without the largest inputs.
    SUBSET=(tests/test_op_*.py -m needs_cuda
            -k "not compile and not many and ((test_matches_reference or test_cpu_cuda_parity) and contiguous and float32 or (test_cuda_ or storage_offsets or vector_rows) and (float32 or dtype0))")
    for tool in memcheck racecheck; do
      run_step "compute-sanitizer $tool (harness: every op, float32)" "$OUT/sanitizer.$tool.tmp" "$B" \
        env PYTORCH_NO_CUDA_MEMORY_CACHING=$([ $tool = memcheck ] && echo 1 || echo 0) \
        compute-sanitizer --tool "$tool" --error-exitcode 86 --print-limit 50 "${PYTEST[@]}" -q "${SUBSET[@]}" & PIDS+=($!)
    done
  else
    skip "compute-sanitizer" "no compute-sanitizer or no GPU"
  fi
  run_step "C++ check-failure probe" "$OUT/probe.tmp" "$B" "$PY" benchmarks/abi_probe.py $([ "$DRYRUN" = 1 ] && echo --skip-build) & PIDS+=($!)
  for pid in "${PIDS[@]}"; do
    wait "$pid"
    ROWS+=("$(cat "$OUT/.row.$pid" 2>/dev/null || echo "| step $pid | lost | 0 | |")"); rm -f "$OUT/.row.$pid"
  done
  cat "$OUT"/sanitizer.*.tmp >>"$OUT/sanitizer.log" 2>/dev/null; rm -f "$OUT"/sanitizer.*.tmp
  { echo; cat "$OUT/probe.tmp"; } >>"$OUT/tests.log" 2>/dev/null; rm -f "$OUT/probe.tmp"
fi

# --- bandwidth ----------------------------------------------------------------
if want bandwidth; then
  BW_ARGS=(--device cuda)
  [ "$HAVE_GPU" = 1 ] || BW_ARGS=(--device cpu --small --reps 3 --warmup 1)
  step "bandwidth.py (${BW_ARGS[*]})" "$OUT/bench.log" "$(phase_budget "${BUDGET_BANDWIDTH:-60}" 60)" \
    "$PY" benchmarks/bandwidth.py "$OUT/bandwidth.md" "${BW_ARGS[@]}"
fi

# --- end to end ---------------------------------------------------------------
if want e2e; then
  if [ "$HAVE_GPU" = 1 ]; then
    E2E=(--device cuda --cases resnet50-224 --repeats 3 --sweep ${E2E_SWEEP:-64 128 256 512} ${E2E_ARGS:---profile --all-methods --variants bf16 compile})
  else
    E2E=(--device cpu --cases small-cnn-64 --repeats 1 --sweep 32 64 --all-methods --variants bf16)
  fi
  B=$(phase_budget "${BUDGET_E2E:-200}" 200)
  (cd benchmarks && step "e2e.py ${E2E[*]}" "$OUT/bench.log" "$B" "$PY" e2e.py "${E2E[@]}" --budget-s $((B - 60)) --out "$OUT/e2e.md"; \
   echo "${ROWS[-1]}" >"$OUT/.row.e2e")
  ROWS+=("$(cat "$OUT/.row.e2e")"); rm -f "$OUT/.row.e2e"
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
