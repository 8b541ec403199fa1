"""Each fastattr op against its pure-PyTorch reference (fastattr.reference) on
the realistic inputs of op_cases.py, on CPU and CUDA (skipped without a GPU).

    pytest benchmarks/bench_ops.py --benchmark-only [--ops-table table.md]

The timed call is the registered op, ``torch.ops.fastattr.<op>.default``, as
autograd calls it (no wrapper, no argument conversion or data-dependent check).
Correctness is asserted once before timing. Each benchmark's extra_info holds
the median, the minimal bytes moved, the achieved GB/s and (once both of a
case's impls have run) the speedup over the reference. CPU runs cover float32
only (low-precision CPU kernels are not the target); CUDA runs cover every
dtype of the case. Both run contiguous (NCHW) and channels_last inputs.
"""

from __future__ import annotations

import pytest
import torch

import op_cases

CASES = op_cases.cases_for_registered_ops()  # raises if an op has no case
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last")
ROUNDS = {"cpu": (1, 5), "cuda": (5, 30)}  # (warm-up rounds, timed rounds)


def devices():
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("impl", ["fastattr", "reference"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op(benchmark, bench_tools, case, device, dtype, layout, impl):
    if dtype not in case.dtypes or (device == "cpu" and dtype != torch.float32):
        pytest.skip(f"{case.id} is not benchmarked in {dtype} on {device}")
    if layout not in case.layouts:
        pytest.skip(f"{case.id} has no {layout} inputs")
    op_id = case.id if layout == "contiguous" else f"{case.id} ({layout})"
    benchmark.group = f"{op_id}-{device}-{_dtype_id(dtype)}"
    try:
        args = case.args(device, dtype, small=False, layout=layout)
        op_cases.check_case(case, args, dtype)  # correctness before timing
    except RuntimeError as exc:
        if bench_tools.is_oom(exc):
            pytest.skip(f"out of memory: {exc}")
        raise
    fn = bench_tools.synchronized(case.run if impl == "fastattr" else case.timed_baseline, device)
    warmup, rounds = ROUNDS[device]
    benchmark.extra_info.update(op=case.op, inputs=case.name, layout=layout, impl=impl)
    try:
        benchmark.pedantic(fn, args=args, rounds=rounds, warmup_rounds=warmup, iterations=1)
    except RuntimeError as exc:
        if bench_tools.is_oom(exc):
            pytest.skip(f"out of memory: {exc}")
        raise
    bench_tools.record((op_id, device, _dtype_id(dtype)), impl, benchmark, case.bytes_moved(*args))
    if device == "cuda":
        torch.cuda.empty_cache()
