"""Perturbation methods end to end: RISE against a mask-materialising RISE and
the model-forward limit; occlusion and feature ablation against Captum.

    python benchmarks/perturbation.py --out table.md [--rounds 5] [--quick] [--only rise|ablation|memory]
    python benchmarks/perturbation.py --peak-memory rise resnet18-224 4000 fastattr   # one case, fresh process

RISE (grid 7, p = 0.5, "torch" up-sampling in both implementations so that
they compute the same masks): torchvision resnet18 (random init) at 224x224
with B = 1, and the bundled shapes-vgg at 64x64 with B = 16, at N = 1000 and
4000 masks.
- "fastattr": ``fastattr.rise`` at its default batch size.
- "materialising": what the original RISE does, in plain PyTorch: all N masks
  up-sampled and cropped at once (N, H, W), then per image all N masked images
  (N, C, H, W), forward in batches of the same size, ``Pᵀ M / (N p)``.
- "model limit": the N x B bare forward passes (no grad, softmax included) at
  the fastest of a few batch sizes: what any implementation must spend.
Peak memory is measured in a fresh process per case, on a second call after a
warm-up call: the growth of VmHWM over the resident size between the calls
(VmHWM reset through ``/proc/self/clear_refs``, glibc's mmap threshold fixed
at 128 KiB so that freed tensors leave RSS) on the CPU, of
``max_memory_allocated`` on CUDA. "one forward batch" is that of one bare
forward pass of fastattr's default batch size.

Occlusion and feature ablation (shapes-vgg at 64x64, B = 4; resnet18 at
224x224, B = 1) against Captum at its default (``perturbations_per_eval=1``)
and at equal batch (``perturbations_per_eval`` = fastattr's rows per pass / B).

Times: every implementation of a case runs once per round in a shuffled order
after a warm-up (e2e.py's ``_interleaved``); medians over rounds, and ratios as
medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RISE_CASES = {"resnet18-224": (1, 224), "small-cnn-64": (16, 64)}
GRID, P = 7, 0.5


def _model(case: str, device):
    return e2e.CASES[case].model(device)


def _inputs(case: str, batch: int, size: int, device):
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, size, size, generator=g).to(device)


def _draws(n, size, device):
    from fastattr.methods.perturbation import rise_draws

    grids, shifts = rise_draws(n, GRID, P, (size, size), torch.Generator().manual_seed(2))
    return grids.to(device), shifts.to(device)


def rise_runner(case: str, n: int, impl: str, device):
    import fastattr
    from fastattr.methods.perturbation import rise_geometry

    batch, size = RISE_CASES[case]
    model = _model(case, device)
    x = _inputs(case, batch, size, device)
    with torch.no_grad():
        target = model(x).argmax(1)
    grids, shifts = _draws(n, size, device)
    rows = fastattr.engine.default_batch_size(x, forward_only=True)
    if impl == "fastattr":
        return lambda: fastattr.rise(model, x, target, grids=grids, shifts=shifts, grid_size=GRID, p=P,
                                     upsample="torch")
    if impl == "materialising":
        _, up = rise_geometry((size, size), GRID)

        def run():
            with torch.no_grad():
                big = F.interpolate(grids[:, None], size=up, mode="bilinear", align_corners=False)[:, 0]
                masks = torch.stack([big[i, r:r + size, c:c + size] for i, (r, c) in enumerate(shifts.tolist())])
                out = []
                for b in range(batch):
                    stack = x[b] * masks[:, None]
                    probs = torch.cat([torch.softmax(model(stack[i:i + rows]), 1)[:, target[b]]
                                       for i in range(0, n, rows)])
                    out.append(probs @ masks.view(n, -1) / (n * P))
                return torch.stack(out).view(batch, 1, size, size)

        return run
    per_pass = int(impl.split("@")[1])  # "limit@ROWS"

    def limit():
        with torch.no_grad():
            done = 0
            while done < n * batch:
                k = min(per_pass, n * batch - done)
                xb = x.repeat((k + batch - 1) // batch, 1, 1, 1)[:k]
                torch.softmax(model(xb), 1)
                done += k

    return limit


def ablation_runner(method: str, case: str, impl: str, device):
    import fastattr

    batch, size = (4, 64) if case == "small-cnn-64" else (1, 224)
    model = _model(case, device)
    x = _inputs(case, batch, size, device)
    with torch.no_grad():
        target = model(x).argmax(1)
    rows = fastattr.engine.default_batch_size(x, forward_only=True)
    if method == "occlusion":
        side = size // 8
        kw = dict(sliding_window_shapes=(3, side, side), strides=(3, side // 2, side // 2))
    else:
        cells = torch.arange(size) * 8 // size
        kw = dict(feature_mask=(cells[:, None] * 8 + cells[None])[None, None].expand(1, 3, size, size).to(device))
    if impl == "fastattr":
        fn = getattr(fastattr, method)
        return lambda: fn(model, x, target, **kw)
    from captum.attr import FeatureAblation, Occlusion

    cls = Occlusion if method == "occlusion" else FeatureAblation
    ppe = 1 if impl == "captum" else max(1, rows // batch)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(model).attribute(x, target=target, perturbations_per_eval=ppe, **kw)

    return run


def peak_memory_mb(kind: str, case: str, arg: str, impl: str, device: str) -> float:
    cmd = [sys.executable, __file__, "--peak-memory", kind, case, arg, impl, "--device", device]
    # glibc keeps freed blocks below its (adaptive) mmap threshold for reuse, so
    # RSS would follow the allocator's history rather than live tensors: a fixed
    # 128 KiB threshold returns every tensor-sized block to the OS on free.
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def _measure_peak_here(kind, case, arg, impl, device) -> float:
    fn = rise_runner(case, int(arg), impl, device) if kind == "rise" else ablation_runner(arg, case, impl, device)
    # CPU: a warm-up call first (one-time costs are not the method's); CUDA: none.
    return e2e.peak_growth_mib(fn, device, warmup=torch.device(device).type != "cuda")


def _med(v):
    return statistics.median(v) if v else float("nan")


def memory_table(device, ns) -> list[str]:
    """Peak memory only (no timing): fastattr, the materialising RISE and one
    bare forward batch of fastattr's default size, per case and N."""
    import fastattr

    lines = ["| case | N | fastattr (MiB) | materialising (MiB) | one forward batch (MiB) | fastattr / one batch |",
             "|---|---:|---:|---:|---:|---:|"]
    for case, (batch, size) in RISE_CASES.items():
        rows = fastattr.engine.default_batch_size(_inputs(case, batch, size, device), forward_only=True)
        one = peak_memory_mb("rise", case, str(max(1, rows // batch)), f"limit@{rows}", device)
        for n in ns:
            ours = peak_memory_mb("rise", case, str(n), "fastattr", device)
            mat = peak_memory_mb("rise", case, str(n), "materialising", device)
            lines.append(f"| {case} (B={batch}, {rows} rows/pass) | {n} | {ours:.0f} | {mat:.0f} | {one:.0f} | "
                         f"{ours / one:.2f} |")
    return lines


def rise_table(device, rounds, ns) -> list[str]:
    import fastattr

    lines = ["| case | N | impl | time (s) | time / model limit | peak mem (MiB) | peak / one forward batch |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for case, (batch, size) in RISE_CASES.items():
        rows = fastattr.engine.default_batch_size(_inputs(case, batch, size, device), forward_only=True)
        # one bare forward pass of `rows` rows (N = rows / B masks)
        one_batch = peak_memory_mb("rise", case, str(max(1, rows // batch)), f"limit@{rows}", device)
        for n in ns:
            sizes = sorted({min(r, n * batch) for r in (rows, 2 * rows, 4 * rows)})
            runners = {"fastattr": lambda c=case, n=n: rise_runner(c, n, "fastattr", device),
                       "materialising": lambda c=case, n=n: rise_runner(c, n, "materialising", device)}
            for s in sizes:
                runners[f"limit@{s}"] = lambda c=case, n=n, s=s: rise_runner(c, n, f"limit@{s}", device)
            print(f"RISE {case} N={n}: {list(runners)}", file=sys.stderr, flush=True)
            times, failures = e2e._interleaved(runners, device, rounds)
            best = min((k for k in runners if k.startswith("limit") and times[k]), key=lambda k: _med(times[k]))
            for impl in ("fastattr", "materialising", best):
                peak = peak_memory_mb("rise", case, str(n), impl, device)
                ratio = e2e._median_ratio(times[impl], times[best]) if times[impl] else float("nan")
                label = impl if impl != best else f"model limit ({impl.split('@')[1]} rows/pass)"
                t = f"{_med(times[impl]):.3f}" if times[impl] else f"fails: {failures.get(impl, '')}"
                lines.append(f"| {case} (B={batch}) | {n} | {label} | {t} | {ratio:.2f} | {peak:.0f} | "
                             f"{peak / one_batch:.2f} |")
        lines.append(f"| {case} (B={batch}) | - | one forward batch of {rows} rows | - | - | {one_batch:.0f} | 1.00 |")
    return lines


def ablation_table(device, rounds) -> list[str]:
    lines = ["| method | case | impl | time (s) | time / fastattr | peak mem (MiB) |", "|---|---|---|---:|---:|---:|"]
    for method in ("occlusion", "feature_ablation"):
        for case in ("small-cnn-64", "resnet18-224"):
            impls = ("fastattr", "captum", "captum_equal_batch")
            runners = {i: (lambda i=i, c=case, m=method: ablation_runner(m, c, i, device)) for i in impls}
            print(f"{method} {case}", file=sys.stderr, flush=True)
            times, failures = e2e._interleaved(runners, device, rounds)
            for impl in impls:
                peak = peak_memory_mb("ablation", case, method, impl, device)
                ratio = e2e._median_ratio(times[impl], times["fastattr"]) if times[impl] else float("nan")
                t = f"{_med(times[impl]):.3f}" if times[impl] else f"fails: {failures.get(impl, '')}"
                lines.append(f"| {method} | {case} | {impl} | {t} | {ratio:.2f} | {peak:.0f} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="N = 100 and 400, 2 rounds (a dry run)")
    p.add_argument("--only", choices=["rise", "ablation", "memory"])
    p.add_argument("--out", type=Path)
    p.add_argument("--peak-memory", nargs=4, metavar=("KIND", "CASE", "ARG", "IMPL"))
    args = p.parse_args(argv)
    if args.peak_memory:
        print(json.dumps({"peak_mb": _measure_peak_here(*args.peak_memory, args.device)}))
        return
    rounds = 2 if args.quick else args.rounds
    ns = (100, 400) if args.quick else (1000, 4000)
    lines = []
    if args.only == "memory":
        lines += memory_table(args.device, ns)
    if args.only in (None, "rise"):
        lines += rise_table(args.device, rounds, ns) + [""]
    if args.only in (None, "ablation"):
        lines += ablation_table(args.device, rounds)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
