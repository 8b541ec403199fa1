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
    return peak_growth_mib(make_runner(case, method, impl, device), device)


def peak_growth_mib(fn, device, warmup: bool = False) -> float:
    """Peak memory growth (MiB) of one call of ``fn`` over what is held before it.

    CUDA: ``max_memory_allocated`` over ``memory_allocated``. CPU: this
    process's VmHWM over its VmRSS (VmHWM is the process's own high-water
    mark; ru_maxrss would carry the parent's across fork+exec). With
    ``warmup``, ``fn`` runs once first, so that one-time costs (thread pools,
    lazy library initialisation) are not counted, and on the CPU VmHWM is reset
    to the current RSS by writing 5 to /proc/self/clear_refs (Linux >= 4.0)."""
    cuda = torch.device(device).type == "cuda"
    if warmup:
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if warmup:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    base_kb = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - base_kb) / 1024


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _interleaved(runners: dict, device, rounds: int, measure_peak: bool = False):
    """Time every runner once per round, in a shuffled order, after one warm-up each.
    On a shared machine the speed drifts by 10-20% over minutes; interleaving
    puts each round's runs under the same conditions, so per-round ratios are
    far steadier than ratios of separately taken medians. Returns the times per
    runner and, for a runner that fails (out of memory, Captum's hooks on
    in-place ReLUs), the reason instead of times. With ``measure_peak`` (CUDA),
    also each runner's peak memory during its warm-up call (growth of
    ``max_memory_allocated`` over what was allocated before it), as a third
    element."""
    times = {name: [] for name in runners}
    live, failures, peaks = {}, {}, {}
    cuda = torch.device(device).type == "cuda"
    for name, factory in runners.items():
        try:
            fn = factory()
            if cuda and measure_peak:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            result = fn()
            _sync(device)
            if cuda and measure_peak:
                del result
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            live[name] = fn
        except (torch.OutOfMemoryError, RuntimeError, ValueError, TypeError) as exc:
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
    return (times, failures, peaks) if measure_peak else (times, failures)


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


# --------------------------------------------------------------------------- every method (GPU table)

# Settings per method for the every-method table. Perturbation methods use
# fewer masks / larger windows than their defaults so that one call stays in
# seconds at B=32 on a GPU; fastattr and Captum get the same settings.
def method_specs(case: Case, x, target, rows: int):
    """name -> (fastattr kwargs, Captum factory(model, per_eval) -> callable or None).

    ``per_eval``: None for Captum's defaults, else the batch settings equal to
    fastattr's (``rows`` samples per pass)."""
    import warnings

    b, size = x.shape[0], x.shape[-1]
    steps = case.n_steps
    side = size // 7
    cells = torch.arange(size, device=x.device) * 8 // size
    feature_mask = (cells[:, None] * 8 + cells[None])[None, None].expand(1, 3, size, size)

    def captum(cls_name, equal_kw, default_kw, wrap=None, **attr_kw):
        def factory(model, equal):
            import captum.attr as ca

            algo = getattr(ca, cls_name)(model)
            if wrap is not None:
                algo = ca.NoiseTunnel(algo)
            kw = dict(attr_kw, **(equal_kw if equal else default_kw))

            def run():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return algo.attribute(x, target=target, **kw)
            return run
        return factory

    per_image = max(1, rows // b)
    # Most telling first: the table is cut when the time budget runs out.
    return {
        "integrated_gradients": (dict(n_steps=steps),
                                 captum("IntegratedGradients", dict(internal_batch_size=rows), {}, n_steps=steps)),
        "gnl_integrated_gradients": (dict(n_steps=steps), None),
        "saliency": (dict(), captum("Saliency", {}, {})),
        "guided_backprop": (dict(), captum("GuidedBackprop", {}, {})),
        "deconvnet": (dict(), captum("Deconvolution", {}, {})),
        "input_x_gradient": (dict(), captum("InputXGradient", {}, {})),
        "smooth_grad": (dict(n_samples=8, stdevs=0.15),
                        captum("Saliency", dict(nt_samples_batch_size=per_image), {}, wrap=True,
                               nt_type="smoothgrad", nt_samples=8, stdevs=0.15)),
        "occlusion": (dict(sliding_window_shapes=(3, side, side), strides=(3, side // 2, side // 2)),
                      captum("Occlusion", dict(perturbations_per_eval=per_image), {},
                             sliding_window_shapes=(3, side, side), strides=(3, side // 2, side // 2))),
        "feature_ablation": (dict(feature_mask=feature_mask),
                             captum("FeatureAblation", dict(perturbations_per_eval=per_image), {},
                                    feature_mask=feature_mask)),
        "rise": (dict(n_masks=256), None),
        "smooth_taylor": (dict(n_roots=16), None),
        "mfpp": (dict(n_masks=256, masks_per_draw=32), None),
    }


def all_methods_table(device: str, case_name: str, rounds: int, budget_s: float, variants=(),
                      methods=None, out: Path | None = None) -> list[str]:
    """Every fastattr method on one case against Captum (its defaults and equal
    batch settings) and the bare model, timed in interleaved rounds per method;
    peak memory on CUDA in-process (max_memory_allocated growth during the
    warm-up call). Rows are written to ``out`` as they come, and methods left
    when ``budget_s`` is spent are listed as not run."""
    import fastattr

    start = time.perf_counter()
    case = CASES[case_name]
    base_model = case.model(device)
    x = case.inputs(device)
    with torch.no_grad():
        target = base_model(x).argmax(1)
    rows_default = default_batch_size(case, x)
    specs = method_specs(case, x, target, rows_default)
    names = [m for m in (methods or specs)]
    lines = [
        f"{case_name}: B={case.batch}, {x.shape[1]}x{x.shape[2]}x{x.shape[3]}, fastattr default rows/pass "
        f"{rows_default}; settings: IG/GNL-IG n_steps={case.n_steps}, SmoothGrad 8 samples (stdev 0.15), "
        "SmoothTaylor 16 roots, occlusion window 3x32x32 stride 16, feature ablation 8x8 grid, RISE and MFPP 256 masks.",
        "",
        "| method | impl | time (s) | peak mem (MiB) | time / fastattr | time / model limit |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def flush():
        if out is not None:
            out.write_text("\n".join(lines) + "\n")

    compiled = {}

    def model_for(variant):
        if variant == "compile":
            if "compile" not in compiled:
                compiled["compile"] = torch.compile(base_model)
            return compiled["compile"]
        return base_model

    limit_runners = {}
    for variant in ("",) + tuple(v for v in variants if v == "bf16"):
        timed = fastest_pass_sizes(case, device, repeats=2, variant=variant, keep=1)
        if timed:
            limit_runners[variant] = (f"limit{'+' + variant if variant else ''}@{timed[0][1]}",
                                      limit_runner(case, device, timed[0][1], variant))
    flush()
    for name in names:
        if time.perf_counter() - start > budget_s:
            lines.append(f"| {name} | (not run: benchmark time budget of {budget_s:.0f} s spent) | | | | |")
            continue
        fa_kwargs, captum_factory = specs[name]
        fn = getattr(fastattr, name)
        runners = {}

        def fa(variant, fn=fn, fa_kwargs=fa_kwargs):
            model = model_for(variant)

            def run():
                with _autocast(device, variant):
                    return fn(model, x, target, **fa_kwargs)
            return run

        runners["fastattr"] = lambda: fa("")
        for v in variants:
            if v != "compile":  # compiled: one method, at the end (a compile costs a minute)
                runners[f"fastattr+{v}"] = (lambda v=v: fa(v))
        if captum_factory is not None:
            runners["captum (defaults)"] = lambda f=captum_factory: f(base_model, False)
            if name in ("integrated_gradients", "smooth_grad", "occlusion", "feature_ablation"):
                runners["captum (equal batch)"] = lambda f=captum_factory: f(base_model, True)
        gradient_method = name in ("integrated_gradients", "gnl_integrated_gradients")
        if gradient_method:
            for variant, (key, r) in limit_runners.items():
                runners[key] = (lambda r=r: r)
        times, failures, peaks = _interleaved(runners, device, rounds, measure_peak=True)
        own = times.get("fastattr") or []
        for key in runners:
            if key.startswith("limit"):
                lines.append(f"| {name} | model limit {key} ({case.batch}x{case.n_steps} fwd+bwd) | "
                             f"{statistics.median(times[key]):.3f} | - | - | 1.00 |")
                continue
            if key in failures:
                lines.append(f"| {name} | {key} | fails: {failures[key]} | - | - | - |")
                continue
            variant = key.partition("+")[2] if key.startswith("fastattr") else ""
            limit = limit_runners.get("bf16" if variant == "bf16" else "")
            ratio_limit = (f"{_median_ratio(times[key], times[limit[0]]):.2f}"
                           if gradient_method and limit and variant != "compile" else "-")
            peak = peaks.get(key)
            lines.append(f"| {name} | {key} | {statistics.median(times[key]):.3f} | "
                         f"{'-' if peak is None else f'{peak:.0f}'} | {_median_ratio(times[key], own):.2f} | {ratio_limit} |")
        print("\n".join(lines[-len(runners):]), flush=True)
        flush()
    if "compile" in variants:
        name = "integrated_gradients"
        if time.perf_counter() - start > budget_s - 60:
            lines.append(f"| {name} | fastattr+compile (not run: time budget spent) | | | | |")
        else:
            fn, kw = fastattr.integrated_gradients, specs[name][0]
            model = model_for("compile")
            runners = {"fastattr": lambda: (lambda: fn(base_model, x, target, **kw)),
                       "fastattr+compile": lambda: (lambda: fn(model, x, target, **kw))}
            times, failures, peaks = _interleaved(runners, device, rounds, measure_peak=True)
            for key in runners:
                if key in failures:
                    lines.append(f"| {name} | {key} | fails: {failures[key]} | - | - | - |")
                    continue
                lines.append(f"| {name} | {key} (compile group) | {statistics.median(times[key]):.3f} | "
                             f"{peaks.get(key, float('nan')):.0f} | {_median_ratio(times[key], times['fastattr']):.2f} | - |")
            flush()
    lines.append("")
    lines.append(f"({time.perf_counter() - start:.0f} s in all; times are medians of {rounds} interleaved rounds after "
                 "one warm-up; ratios are medians of per-round ratios.)")
    flush()
    return lines


def chunk_sweep(device: str, case_name: str, sizes, rounds: int = 3, method: str = "integrated_gradients") -> list[str]:
    """fastattr ``method`` at several ``batch_size`` values (rows per pass)
    against the model limit at the same pass sizes, interleaved: what the
    default CUDA chunk should be."""
    case = CASES[case_name]
    x = case.inputs(device)
    runners = {}
    for rows in sizes:
        runners[f"{method}@{rows}"] = (lambda r=rows: make_runner(case, method, "fastattr", device, batch_size=r))
        runners[f"limit@{rows}"] = (lambda r=rows: limit_runner(case, device, r))
    runners[f"{method}@default"] = lambda: make_runner(case, method, "fastattr", device)
    times, failures, peaks = _interleaved(runners, device, rounds, measure_peak=True)
    best_limit = min((statistics.median(t) for k, t in times.items() if k.startswith("limit") and t), default=float("nan"))
    lines = [f"{case_name}, {method}: default rows/pass {default_batch_size(case, x)}; best limit {best_limit:.3f} s", "",
             "| rows/pass | fastattr (s) | peak mem (MiB) | limit at this pass size (s) | fastattr / best limit |",
             "|---:|---:|---:|---:|---:|"]
    for rows in list(sizes) + ["default"]:
        key = f"{method}@{rows}"
        if key in failures:
            lines.append(f"| {rows} | fails: {failures[key]} | - | - | - |")
            continue
        lim = times.get(f"limit@{rows}")
        t = statistics.median(times[key])
        lines.append(f"| {rows} | {t:.3f} | {peaks.get(key, float('nan')):.0f} | "
                     f"{statistics.median(lim) if lim else float('nan'):.3f} | {t / best_limit:.2f} |")
    return lines


def profile_table(device: str, case_name: str, methods=("integrated_gradients", "gnl_integrated_gradients"),
                  top: int = 12) -> list[str]:
    """torch.profiler of one call per method: where the host time goes."""
    from torch.profiler import ProfilerActivity, profile

    case = CASES[case_name]
    lines = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    for method in methods:
        run = make_runner(case, method, "fastattr", device)
        run()
        _sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            run()
            _sync(device)
        wall = time.perf_counter() - t0
        lines += [f"### {method} ({wall:.3f} s under the profiler)", "", "```",
                  prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48),
                  "```", ""]
    return lines


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
    p.add_argument("--all-methods", action="store_true",
                   help="every fastattr method on the first case vs Captum and the bare model (in-process CUDA peak memory)")
    p.add_argument("--sweep", type=int, nargs="*", metavar="ROWS",
                   help="IG at these batch sizes (rows per pass) vs the model limit at the same pass sizes")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one IG and one GNL-IG call")
    p.add_argument("--only-methods", nargs="+", metavar="METHOD", help="--all-methods for these methods only")
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="no new method of --all-methods starts after this many seconds of the whole run")
    args = p.parse_args(argv)
    if args.peak_memory:
        print(json.dumps({"peak_mb": _measure_peak_here(*args.peak_memory, args.device)}))
        return
    started = time.perf_counter()
    if args.all_methods or args.sweep is not None or args.profile:
        header = f"device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, torch {torch.__version__}\n"
        lines = [header]
        if args.sweep is not None:
            lines += ["## Default chunk: IG at several rows per pass", ""]
            lines += chunk_sweep(args.device, args.cases[0], args.sweep or [32, 64, 128, 256, 512], rounds=args.repeats) + [""]
            print("\n".join(lines), flush=True)
        if args.profile:
            lines += ["## Where the host time goes", ""] + profile_table(args.device, args.cases[0])
            print("\n".join(lines[-40:]), flush=True)
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")
        if args.all_methods:
            part = args.out.with_suffix(".methods.md") if args.out else None
            lines += ["## Every method", ""] + all_methods_table(
                args.device, args.cases[0], args.repeats, args.budget_s - (time.perf_counter() - started),
                args.variants, methods=args.only_methods, out=part)
            if args.out:
                args.out.write_text("\n".join(lines) + "\n")
                part.unlink(missing_ok=True)
        return
    table = report(args.device, args.cases, args.methods, args.repeats, args.variants)
    header = f"device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, torch {torch.__version__}, threads {torch.get_num_threads()}\n\n"
    print(header + table)
    if args.out:
        args.out.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
