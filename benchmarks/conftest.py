"""Benchmark helpers: devices (CUDA cases skip without a GPU), a synchronising
wrapper for timed callables, and a markdown summary of op vs reference.

    pytest benchmarks/ --benchmark-only [--ops-table results.md]

The summary (one row per op case, device and dtype: fastattr and reference
medians, speedup, achieved GB/s) is printed at the end of the run and, with
``--ops-table PATH``, written to PATH.
"""

from __future__ import annotations

import types

import pytest
import torch

# (op id, device, dtype) -> {"fastattr": seconds, "reference": seconds, "bytes": int, "extra": [dicts]}
RESULTS: dict[tuple[str, str, str], dict] = {}


def pytest_addoption(parser):
    parser.addoption("--ops-table", default=None, help="write the op-vs-reference markdown table to this path")


def pytest_collect_file(file_path, parent):
    # Benchmark modules are bench_*.py, so that `pytest tests` never sees them;
    # `pytest benchmarks/` collects them here (paths given explicitly on the
    # command line are collected by pytest itself).
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def synchronized(fn, device):
    """The timed callable: on CUDA it waits for the kernels it launched."""
    if torch.device(device).type == "cuda":
        def timed(*args):
            out = fn(*args)
            torch.cuda.synchronize()
            return out
        return timed
    return fn


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)


def _record(key, impl, benchmark, nbytes):
    """Store this run's median; when both impls of a case have run, put the
    speedup into both benchmarks' extra_info (serialised at session end)."""
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    median = benchmark.stats.stats.median
    entry = RESULTS.setdefault(key, {"bytes": nbytes, "extra": []})
    entry[impl] = median
    benchmark.extra_info.update(median_s=median, bytes_moved=nbytes, GBps=nbytes / median / 1e9)
    entry["extra"].append(benchmark.extra_info)
    if "fastattr" in entry and "reference" in entry:
        speedup = entry["reference"] / entry["fastattr"]
        for extra in entry["extra"]:
            extra["speedup_vs_reference"] = speedup


@pytest.fixture
def bench_tools():
    """Helpers for benchmark modules (a fixture, so that they share this
    conftest's RESULTS whatever the import mode)."""
    return types.SimpleNamespace(record=_record, synchronized=synchronized, is_oom=is_oom)


def ops_table() -> str:
    lines = [
        "| op | device | dtype | fastattr (ms) | reference (ms) | speedup | fastattr GB/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (op, device, dtype), e in sorted(RESULTS.items()):
        ours, ref = e.get("fastattr"), e.get("reference")
        fmt = lambda s: f"{s * 1e3:.3f}" if s is not None else "—"  # noqa: E731
        speedup = f"{ref / ours:.2f}x" if ours and ref else "—"
        gbps = f"{e['bytes'] / ours / 1e9:.1f}" if ours else "—"
        lines.append(f"| {op} | {device} | {dtype} | {fmt(ours)} | {fmt(ref)} | {speedup} | {gbps} |")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    table = ops_table()
    terminalreporter.write_sep("-", "fastattr ops vs reference (median)")
    terminalreporter.write(table)
    path = config.getoption("--ops-table")
    if path:
        with open(path, "w") as f:
            f.write(table)
        terminalreporter.write_line(f"ops table written to {path}")
