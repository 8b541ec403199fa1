"""Achieved memory bandwidth of every fastattr op, relative to a large
device-to-device copy (the practical ceiling for these memory-bound kernels).

    python benchmarks/bandwidth.py OUT.md [--device cuda] [--dtypes float32,float16,bfloat16]
                                          [--small] [--reps 50]

Ops are discovered from the dispatcher (``torch.ops.fastattr``); every op must
have a case in ``benchmarks/op_cases.py`` (the script fails otherwise). Bytes
are the op's minimal traffic (each input read once, each output written once),
so "% of copy" says how close a kernel gets to the copy's bandwidth
(bytes read + written per second). The timed call is the registered op
(``torch.ops.fastattr.<op>.default``) on contiguous inputs; "baseline" is the
case's reference, or for the max-pool forward ATen's max_pool2d_with_indices.
Correctness against the reference is asserted before timing. Prints a markdown table and writes it to OUT.md.
``--device cpu --small`` is a quick dry run for machines without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import op_cases  # noqa: E402


def time_fn(fn, args, device, reps, warmup):
    """Median seconds per call: CUDA events around each call on the GPU,
    perf_counter on the CPU."""
    for _ in range(warmup):
        fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            fn(*args)
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, nbytes, reps, warmup):
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), (), device, reps, warmup)
    return 2 * src.numel() * 4 / seconds, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="markdown file to write the table to")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--small", action="store_true", help="tiny inputs (dry run)")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--copy-mib", type=int, default=1024, help="size of the copy buffer")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible (use --device cpu --small for a dry run)")
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    cases = op_cases.cases_for_registered_ops()  # LookupError if an op has no case

    copy_bytes = (16 if args.small else args.copy_mib) * 2**20
    copy_bw, copy_s = copy_bandwidth(device, copy_bytes, args.reps, args.warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"Device: {name}; torch {torch.__version__}; fastattr CUDA build {op_cases.ops.cuda_version()}.",
        f"Copy: {copy_bytes / 2**20:.0f} MiB device-to-device, {copy_s * 1e3:.3f} ms, "
        f"{copy_bw / 1e9:.1f} GB/s (bytes read + written).",
        "",
        "| op | inputs | dtype | time (ms) | GB/s | % of copy | baseline (ms) | speedup |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        for dtype in dtypes:
            if dtype not in case.dtypes:
                continue
            inputs = case.args(device, dtype, small=args.small)
            op_cases.check_case(case, inputs, dtype)
            t = time_fn(case.run, inputs, device, args.reps, args.warmup)
            t_ref = time_fn(case.timed_baseline, inputs, device, max(3, args.reps // 5), 1)
            bw = case.bytes_moved(*inputs) / t
            lines.append(
                f"| {case.id} | {case.name + (' [--small]' if args.small else '')} | "
                f"{str(dtype).removeprefix('torch.')} | {t * 1e3:.3f} | "
                f"{bw / 1e9:.1f} | {100 * bw / copy_bw:.0f}% | {t_ref * 1e3:.3f} | {t_ref / t:.2f}x |")
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
