"""Peak memory of ``fastattr run`` against the number of images it streams.

Writes ``--images`` small PNGs into a temporary folder, then runs ``fastattr
run`` (saliency, a small CNN given as ``module:callable``) in a fresh process on
the first N of them for each N of ``--counts``, and reports each run's peak RSS
(``ru_maxrss`` of the child) and wall time; the largest run's RSS is also
sampled every ``--sample`` seconds (from ``/proc/PID/status``), so a table shows
whether memory stays flat while the images stream through. Each N writes its
own output folder, so every run computes every image::

    python benchmarks/job_memory.py --images 10000 --counts 1000 2500 5000 10000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

MODEL_SOURCE = '''
import torch
from torch import nn


def classifier(classes=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))
'''


def make_images(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"part{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(sub / f"img{i:06d}.png")


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run(n: int, data: Path, out: Path, env: dict, size: int, shard_size: int, sample: float | None):
    cmd = [sys.executable, "-m", "fastattr", "run", "--model", "fa_mem_model:classifier", "--data", str(data),
           "--method", "saliency", "--out", str(out), "--limit", str(n), "--input-size", str(size),
           "--batch-size", "64", "--shard-size", str(shard_size), "--threads", "1", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    samples = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if sample is not None:
            kib = rss_kib(proc.pid)
            if kib is not None:
                samples.append((time.perf_counter() - t0, kib))
        time.sleep(sample or 0.05)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fastattr run failed for N={n}")
    return usage.ru_maxrss, seconds, samples  # ru_maxrss: KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 2500, 5000, 10000])
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples of the largest run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mods").mkdir()
        (tmp / "mods" / "fa_mem_model.py").write_text(MODEL_SOURCE)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp / "mods"), str(ROOT / "python")] +
                                            [p for p in [env.get("PYTHONPATH")] if p])
        t0 = time.perf_counter()
        make_images(tmp / "data", args.images, args.size)
        print(f"wrote {args.images} PNGs of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
        print("| images | peak RSS (MiB) | wall (s) | images/s |")
        print("|---:|---:|---:|---:|")
        samples = []
        for n in args.counts:
            peak, seconds, s = run(n, tmp / "data", tmp / f"out{n}", env, args.size, args.shard_size,
                                   args.sample if n == max(args.counts) else None)
            samples = s or samples
            print(f"| {n} | {peak / 1024:.1f} | {seconds:.1f} | {n / seconds:.0f} |", flush=True)
        if samples:
            print(f"\nRSS of the {max(args.counts)}-image run, sampled every {args.sample} s "
                  "(time s: MiB), every ~10% of the run:")
            step = max(1, len(samples) // 10)
            print(", ".join(f"{t:.0f}: {k / 1024:.1f}" for t, k in samples[::step] + [samples[-1]]))
            tail = [k for t, k in samples[len(samples) // 5:]]
            print(f"after the first 20% of the run: min {min(tail) / 1024:.1f} MiB, max {max(tail) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
