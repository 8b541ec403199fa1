"""``fastattr bench``: every method end to end against a plain-PyTorch loop and Captum.

The baselines are what one writes without fastattr: a Python loop with one
forward and one backward pass per path step / noise sample, plain autograd, no
hooks; guided rules come from a ``TorchFunctionMode`` that swaps ReLU (and, for
GNL, 2-D max-pool) for ``torch.autograd.Function``s written with ordinary torch
ops (:mod:`fastattr.reference`). Stochastic methods get the same unit noise in
all three implementations, so the ``max|Δ|`` column compares like with like.
Times are medians over ``repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from .. import reference
from .._ops import pool2d_arguments
from ..guidance import GuidedMode

# --------------------------------------------------------------------------- pure-PyTorch guided rules


class _RefGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mode, upper):
        out = x.clamp(0, upper) if upper is not None else x.clamp_min(0)
        ctx.save_for_backward(out)
        ctx.mode, ctx.upper = mode, upper
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return reference.guided_relu_backward(grad, out, ctx.mode, ctx.upper), None, None


class _RefGuidedMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, idx = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
        ctx.save_for_backward(idx)
        ctx.args = (tuple(x.shape), kernel_size, stride, padding, dilation)
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        (idx,) = ctx.saved_tensors
        shape, k, s, p, d = ctx.args
        return reference.guided_max_pool2d_backward(grad, idx, shape, k, s, p, d, "reference"), None, None, None, None, None


class RefGuided(GuidedMode):
    """Guided backprop / deconvnet (and GNL's max-pool rule) in plain PyTorch: the
    routing of ``fastattr.guided`` (one table, :mod:`fastattr.guidance`), with
    every rerouted call computed by ``torch.autograd.Function``s written with
    ordinary torch ops (:mod:`fastattr.reference`) instead of fastattr's ops."""

    def __init__(self, mode: str = "guided", maxpool: bool = False):
        super().__init__(mode, "reference" if maxpool else None)

    def apply_relu(self, call):
        out = _RefGuidedReLU.apply(call.x, self.relu_mode, call.upper)
        return call.x.copy_(out) if call.inplace else out

    def apply_pool(self, call):
        k, s, p, d = pool2d_arguments(call.kernel_size, call.stride, call.padding, call.dilation)
        return _RefGuidedMaxPool.apply(call.x, k, s, p, d, call.ceil_mode)


# --------------------------------------------------------------------------- pure-PyTorch baselines


def _grad(model, x, t, context=contextlib.nullcontext):
    with torch.enable_grad(), context():
        xi = x.detach().requires_grad_(True)
        score = model(xi).gather(1, t[:, None]).sum()
        (g,) = torch.autograd.grad(score, xi)
    return g


def _ig_loop(model, x, t, n_steps=50, method="gausslegendre", context=contextlib.nullcontext, **_):
    from ..methods.quadrature import nodes_and_weights

    alphas, weights = nodes_and_weights(method, n_steps)
    total = torch.zeros_like(x)
    for a, w in zip(alphas, weights):
        total += w * _grad(model, a * x, t, context)  # zero baseline
    return total * x


def _smooth_loop(model, x, t, noise, n_samples=5, stdevs=1.0, **_):
    eps = noise.view(x.shape[0], n_samples, *x.shape[1:])
    total = torch.zeros_like(x)
    for i in range(n_samples):
        total += _grad(model, x + stdevs * eps[:, i], t).abs()
    return total / n_samples


def _taylor_loop(model, x, t, noise, n_roots=150, noise_scale=0.5, **_):
    eps = noise.view(x.shape[0], n_roots, *x.shape[1:])
    total = torch.zeros_like(x)
    for i in range(n_roots):
        z = x + noise_scale * eps[:, i]
        total += (x - z) * _grad(model, z, t)
    return total / n_roots


BASELINES = {
    "saliency": lambda m, x, t, **o: _grad(m, x, t).abs(),
    "input_x_gradient": lambda m, x, t, **o: _grad(m, x, t) * x,
    "guided_backprop": lambda m, x, t, **o: _grad(m, x, t, lambda: RefGuided("guided")),
    "deconvnet": lambda m, x, t, **o: _grad(m, x, t, lambda: RefGuided("deconvnet")),
    "integrated_gradients": _ig_loop,
    "gnl_integrated_gradients": lambda m, x, t, **o: _ig_loop(m, x, t, context=lambda: RefGuided("guided", True), **o),
    "smooth_grad": _smooth_loop,
    "smooth_taylor": _taylor_loop,
}


def _captum_calls():
    try:
        from captum import attr as ca
    except ImportError:
        return {}

    def ig(m, x, t, n_steps=50, method="gausslegendre", **_):
        return ca.IntegratedGradients(m).attribute(x, target=t, n_steps=n_steps, method=method)

    def sg(m, x, t, noise=None, n_samples=5, stdevs=1.0, **_):
        return ca.NoiseTunnel(ca.Saliency(m)).attribute(x, target=t, nt_type="smoothgrad", nt_samples=n_samples,
                                                        stdevs=stdevs)

    return {
        "saliency": lambda m, x, t, **o: ca.Saliency(m).attribute(x, target=t, abs=True),
        "input_x_gradient": lambda m, x, t, **o: ca.InputXGradient(m).attribute(x, target=t),
        "guided_backprop": lambda m, x, t, **o: ca.GuidedBackprop(m).attribute(x, target=t),
        "deconvnet": lambda m, x, t, **o: ca.Deconvolution(m).attribute(x, target=t),
        "integrated_gradients": ig,
        "smooth_grad": sg,  # Captum draws its own noise: timed, not compared
    }


# --------------------------------------------------------------------------- timing


def _time(fn, repeats: int, device) -> tuple[float, torch.Tensor]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _options(method: str, n: int) -> dict:
    if method in ("integrated_gradients", "gnl_integrated_gradients"):
        return {"n_steps": n}
    if method == "smooth_grad":
        return {"n_samples": n, "stdevs": 0.15}
    if method == "smooth_taylor":
        return {"n_roots": n, "noise_scale": 0.15}
    return {}


def _inputs(model_spec: str, info: dict, desc: dict, batch: int, size=None):
    from .loading import input_size

    size = size or input_size(info) or desc.get("input_size") or (224, 224)
    name = info.get("dataset")
    if name:
        try:
            from .. import data

            ds = data.load(name, split="test")
            images = torch.stack([ds[i][0] for i in range(batch)])
            if tuple(images.shape[-2:]) == tuple(size):
                return images, f"bundled:{name}"
        except (ImportError, ValueError, KeyError):
            pass
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, *size, generator=g), "random in [0, 1]"


def run_bench(model: str = "shapes-vgg", methods: list[str] | None = None, quick: bool = True,
              batch: int | None = None, n_steps: int | None = None, repeats: int | None = None,
              device: str = "cpu", captum: bool = True, json_out: str | None = None, input_size=None,
              threads: int | None = None, file=None) -> list[dict]:
    """Time every method (or ``methods``) and print a table; returns its rows."""
    n_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench(model, methods, quick, batch, n_steps, repeats, device, captum, json_out, input_size, file)
    finally:
        torch.set_num_threads(n_threads)


def _bench(model, methods, quick, batch, n_steps, repeats, device, captum, json_out, input_size, file):
    from ..methods import METHODS
    from .loading import load_model, model_info
    from .spec import JobError

    file = file or sys.stdout
    batch = batch or (4 if quick else 16)
    n = n_steps or (16 if quick else 50)
    repeats = repeats or (2 if quick else 5)
    dev = torch.device(device)
    names = methods or sorted(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise JobError(f"unknown methods {unknown}; choose from: {', '.join(sorted(METHODS))}")
    net, desc = load_model(model, dev, torch.float32)
    info = model_info(model)
    x, source = _inputs(model, info, desc, batch, input_size)
    x = x.to(dev)
    with torch.no_grad():
        out = net(x)
    if out.dim() != 2:
        raise JobError(f"fastattr bench needs a classification model; {model} outputs {tuple(out.shape)}")
    t = out.argmax(1)
    capt = _captum_calls() if captum else {}
    print(f"fastattr bench: {model}, {batch} images of {tuple(x.shape[1:])} ({source}), {n} steps/samples, "
          f"median of {repeats}, {dev}, {torch.get_num_threads()} threads", file=file)
    rows = []
    for name in names:
        opts = _options(name, n)
        fn = METHODS[name]
        kw = dict(opts)
        if name in ("smooth_grad", "smooth_taylor"):
            g = torch.Generator().manual_seed(0)
            kw["noise"] = torch.randn((batch * n,) + tuple(x.shape[1:]), generator=g).to(dev)
        row = {"method": name, "options": opts}
        row["fastattr_s"], ref = _time(lambda: fn(net, x, target=t, **kw), repeats, dev)
        if name in BASELINES:
            row["baseline_s"], base = _time(lambda: BASELINES[name](net, x, t, **kw), repeats, dev)
            scale = float(base.abs().max()) or 1.0
            row["max_rel_diff"] = float((ref - base).abs().max()) / scale
        if name in capt:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Captum's notes about requires_grad and ReLU hooks
                row["captum_s"], _ = _time(lambda: capt[name](net, x, t, **kw), repeats, dev)
        rows.append(row)

    def ms(v):
        return f"{v * 1e3:9.1f}" if v is not None else f"{'-':>9}"

    def ratio(a, b):
        return f"{a / b:6.2f}x" if a is not None and b else f"{'-':>7}"

    head = (f"{'method':<26} {'fastattr ms':>11} {'baseline ms':>11} {'speedup':>8} {'captum ms':>11} "
            f"{'speedup':>8} {'max|Δ|/max':>11}")
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        f, b, c = r["fastattr_s"], r.get("baseline_s"), r.get("captum_s")
        diff = f"{r['max_rel_diff']:11.1e}" if "max_rel_diff" in r else f"{'-':>11}"
        print(f"{r['method']:<26} {ms(f):>11} {ms(b):>11} {ratio(b, f):>8} {ms(c):>11} {ratio(c, f):>8} {diff}",
              file=file)
    print("speedup = other time / fastattr time; max|Δ|/max: fastattr vs the baseline, relative to the baseline's "
          "largest value", file=file)
    if captum and not capt:
        print("captum is not installed: its columns are empty", file=file)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"model": model, "batch": batch, "n": n, "repeats": repeats, "device": str(dev),
                       "inputs": source, "rows": rows}, f, indent=1)
    return rows
