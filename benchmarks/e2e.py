"""End-to-end attribution benchmark: fastattr against Captum and against the
bare model (the "model limit": n_steps x B forward+backward passes at the best
batch size, i.e. what any implementation must at least spend).

Used by bench_methods.py (pytest-benchmark) and runnable on its own:

    python benchmarks/e2e.py --device cpu --out table.md
    python benchmarks/e2e.py --peak-memory resnet18-224 integrated_gradients fastattr   # one case, in a fresh process
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    size: int
    n_steps: int

    def model(self, device, dtype=torch.float32):
        torch.manual_seed(0)
        if self.name.startswith("resnet18"):
            import torchvision

            m = torchvision.models.resnet18()
        elif self.name.startswith("resnet50"):
            import torchvision

            m = torchvision.models.resnet50()
        else:
            import fastattr.models

            m = fastattr.models.load("shapes-vgg")
        return m.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def inputs(self, device, dtype=torch.float32):
        g = torch.Generator().manual_seed(1)
        return torch.rand(self.batch, 3, self.size, self.size, generator=g).to(device=device, dtype=dtype)


CASES = {
    c.name: c
    for c in (
        Case("resnet18-224", batch=4, size=224, n_steps=32),
        Case("small-cnn-64", batch=16, size=64, n_steps=32),
        Case("resnet50-224", batch=32, size=224, n_steps=32),
    )
}
METHODS = ("integrated_gradients", "gnl_integrated_gradients", "guided_backprop")
IMPLS = ("fastattr", "captum", "captum_batched")
# fastattr under torch.compile(model) and under bf16 autocast (CUDA only).
VARIANTS = ("compile", "bf16", "channels_last")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def gnl_hooks(model):
    """Register the GNL reference rules (spec §1.2) as module backward hooks, the
    way the official implementation runs them under Captum. Returns the handles."""
    import torch.nn.functional as F

    handles = []

    def relu_hook(module, grad_input, grad_output):
        return (F.relu(grad_input[0]),)

    def pool_hook(module, grad_input, grad_output):
        g_in = grad_input[0]
        mask = F.interpolate((grad_output[0] > 0).to(g_in.dtype), size=g_in.shape[2:], mode="nearest")
        return (g_in * mask,)

    for m in model.modules():
        if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)):
            handles.append(m.register_full_backward_hook(relu_hook))
        elif isinstance(m, torch.nn.MaxPool2d):
            handles.append(m.register_full_backward_hook(pool_hook))
    return handles


def _variant_model(model, variant):
    if variant == "compile":
        return torch.compile(model)
    if variant == "channels_last":
        return model.to(memory_format=torch.channels_last)
    return model


def _variant_inputs(x, variant):
    return x.contiguous(memory_format=torch.channels_last) if variant == "channels_last" else x


def _autocast(device, variant):
    import contextlib

    if variant == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_runner(case: Case, method: str, impl: str, device, batch_size=None):
    """A zero-argument callable that computes the attributions once.
    ``impl`` is fastattr, fastattr+compile, fastattr+bf16, fastattr+channels_last, captum or captum_batched."""
    model = case.model(device)
    x = case.inputs(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    if impl.startswith("fastattr"):
        import fastattr

        variant = impl.partition("+")[2]
        model = _variant_model(model, variant)
        x = _variant_inputs(x, variant)
        fn = getattr(fastattr, method)
        kwargs = {} if method == "guided_backprop" else dict(n_steps=case.n_steps)
        if batch_size is not None:
            kwargs["batch_size"] = batch_size

        def run():
            with _autocast(device, variant):
                return fn(model, x, target=target, **kwargs)

        return run
    from captum.attr import GuidedBackprop, IntegratedGradients

    if method == "guided_backprop":
        gb = GuidedBackprop(model)
        return lambda: gb.attribute(x, target=target)
    ig = IntegratedGradients(model)
    internal = None
    if impl == "captum_batched":
        internal = batch_size if batch_size is not None else default_batch_size(case, x)
    if method == "integrated_gradients":
        return lambda: ig.attribute(x, target=target, n_steps=case.n_steps, internal_batch_size=internal)

    def gnl():
        handles = gnl_hooks(model)
        try:
            return ig.attribute(x, target=target, n_steps=case.n_steps, internal_batch_size=internal)
        finally:
            for h in handles:
                h.remove()

    return gnl


def default_batch_size(case: Case, x) -> int:
    """The batch size fastattr's IG picks by default for this input."""
    from fastattr.engine import default_batch_size as pick

    return pick(x)


def time_callable(fn, device, repeats=3, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pass_sizes(case: Case, device) -> list[int]:
    """Candidate samples per pass for the model limit: B times powers of two up
    to all n_steps*B points at once, plus the pass size fastattr's default chunk
    gives (so the limit is never above what fastattr's own pass size allows)."""
    total = case.batch * case.n_steps
    sizes = {total}
    k = 1
    while case.batch * k < total:
        sizes.add(case.batch * k)
        k *= 2
    chunk = default_batch_size(case, case.inputs(device))
    rows = min(case.batch, chunk)
    sizes.add(rows * max(1, chunk // rows))
    return sorted(sizes)


def limit_runner(case: Case, device, per_pass: int, variant=""):
    """n_steps*B forward+backward passes (to the input) of ``per_pass`` samples each."""
    model = _variant_model(case.model(device), variant)
    x = _variant_inputs(case.inputs(device), variant)
    total = case.batch * case.n_steps

    def run():
        done = 0
        while done < total:
            n = min(per_pass, total - done)
            xb = x.repeat((n + case.batch - 1) // case.batch, 1, 1, 1)[:n].requires_grad_(True)
            with _autocast(device, variant):
                out = model(xb)
            (g,) = torch.autograd.grad(out[:, 0].float().sum(), xb)
            done += n
        return g

    return run


def fastest_pass_sizes(case: Case, device, repeats=2, variant="", keep=3) -> list[tuple[float, int]]:
    """The ``keep`` fastest (seconds, samples per pass) of :func:`pass_sizes`, fastest first."""
    timed = []
    for per_pass in pass_sizes(case, device):
        try:
            t = time_callable(limit_runner(case, device, per_pass, variant), device, repeats=repeats)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        timed.append((t, per_pass))
    return sorted(timed)[:keep]


def model_limit(case: Case, device, repeats=3, variant="") -> tuple[float, int]:
    """Fastest time for n_steps*B forward+backward passes (to the input) over
    pass sizes; returns (seconds, best samples per pass)."""
    return fastest_pass_sizes(case, device, repeats=repeats, variant=variant, keep=1)[0]


def peak_memory_mb(case_name: str, method: str, impl: str, device: str) -> float:
    """Peak extra memory of one attribution call, measured in a fresh process:
    CUDA: max_memory_allocated growth; CPU: peak RSS growth."""
    cmd = [sys.executable, __file__, "--peak-memory", case_name, method, impl, "--device", device]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return float("nan")  # out of memory or failed: reported as such
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def _measure_peak_here(case_name, method, impl, device) -> float:
    case = CASES[case_name]
    fn = make_runner(case, method, impl, device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # VmHWM is this process's own high-water mark (ru_maxrss would carry the
    # parent's across fork+exec).
    base_kb = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - base_kb) / 1024


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _interleaved(runners: dict, device, rounds: int) -> dict[str, list[float]]:
    """Time every runner once per round, in a shuffled order, after one warm-up each.
    On a shared machine the speed drifts by 10-20% over minutes; interleaving
    puts each round's runs under the same conditions, so per-round ratios are
    far steadier than ratios of separately taken medians. Returns the times per
    runner and, for a runner that fails (out of memory, Captum's hooks on
    in-place ReLUs), the reason instead of times."""
    times = {name: [] for name in runners}
    live, failures = {}, {}
    for name, factory in runners.items():
        try:
            fn = factory()
            fn()
            _sync(device)
            live[name] = fn
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            print(f"  {name} -> failed: {str(exc).splitlines()[0][:160]}", flush=True)
            times[name] = []
            failures[name] = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else str(exc).splitlines()[0][:60]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    order = list(live)
    for r in range(rounds):
        random.Random(r).shuffle(order)  # no runner always follows the same one
        for name in order:
            fn = live[name]
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times, failures


def _median_ratio(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return float("nan")
    return statistics.median(x / y for x, y in zip(a, b))


def report(device: str, cases, methods, repeats: int, variants=()) -> str:
    rows = [
        "| case | method | impl | time (s) | peak mem (MiB) | time / fastattr | time / model limit |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name in cases:
        case = CASES[name]
        # The model limit: the three fastest pass sizes of a quick search are
        # timed in the rounds too, and the one with the lowest median is it.
        runners, candidates = {}, {}
        for variant in ("",) + tuple(variants):
            candidates[variant] = []
            for _, per_pass in fastest_pass_sizes(case, device, variant=variant):
                key = f"limit+{variant}@{per_pass}"
                runners[key] = (lambda p=per_pass, v=variant: limit_runner(case, device, p, v))
                candidates[variant].append((key, per_pass))
        entries = []
        for method in methods:
            impls = ("fastattr", "captum") if method == "guided_backprop" else IMPLS
            for impl in impls + tuple(f"fastattr+{v}" for v in variants):
                key = f"{method}:{impl}"
                runners[key] = (lambda m=method, i=impl: make_runner(case, m, i, device))
                entries.append((key, method, impl))
        times, failures = _interleaved(runners, device, repeats)
        limits = {}
        for variant in ("",) + tuple(variants):
            key, per_pass = min(candidates[variant], key=lambda c: statistics.median(times[c[0]] or [float("inf")]))
            limits[variant] = times[key]
            tried = ", ".join(f"{p}: {statistics.median(times[k]):.3f} s" for k, p in candidates[variant] if times[k])
            rows.append(
                f"| {name} | model limit{' +' + variant if variant else ''} ({case.batch}x{case.n_steps} fwd+bwd, "
                f"best {per_pass}/pass; {tried}) | - | {statistics.median(times[key]):.3f} | - | - | 1.00 |"
            )
        for key, method, impl in entries:
            if key in failures:
                rows.append(f"| {name} | {method} | {impl} | fails: {failures[key]} | - | - | - |")
                print(rows[-1], flush=True)
                continue
            t = statistics.median(times[key])
            mem = peak_memory_mb(name, method, impl, device)
            own = times[f"{method}:fastattr"]
            limit = limits[impl.partition("+")[2]]
            ratio_limit = f"{_median_ratio(times[key], limit):.2f}" if method != "guided_backprop" else "-"
            rows.append(
                f"| {name} | {method} | {impl} | {t:.3f} | {mem:.0f} | {_median_ratio(times[key], own):.2f} | {ratio_limit} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", nargs="+", default=["resnet18-224", "small-cnn-64"], choices=sorted(CASES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--variants", nargs="*", default=[], choices=VARIANTS,
                   help="also time fastattr with torch.compile(model) and/or bf16 autocast")
    p.add_argument("--out", type=Path)
    p.add_argument("--peak-memory", nargs=3, metavar=("CASE", "METHOD", "IMPL"))
    args = p.parse_args(argv)
    if args.peak_memory:
        print(json.dumps({"peak_mb": _measure_peak_here(*args.peak_memory, args.device)}))
        return
    table = report(args.device, args.cases, args.methods, args.repeats, args.variants)
    header = f"device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, torch {torch.__version__}, threads {torch.get_num_threads()}\n\n"
    print(header + table)
    if args.out:
        args.out.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
