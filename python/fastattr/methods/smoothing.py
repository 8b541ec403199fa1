"""Noise-averaged attributions: SmoothGrad / NoiseTunnel and SmoothTaylor.

Both draw ``n`` noisy copies of every input and average a per-copy quantity.
The noisy batch is laid out **sample-major**, like Captum's
``inputs.repeat_interleave(n, dim=0)``: row ``b * n + i`` is copy ``i`` of
example ``b``. A caller-supplied ``noise`` tensor uses the same layout.

Randomness (spec §0.2). ``noise`` is the *unit* draw ``ε`` of shape
``(B * n, *inputs.shape[1:])``; the perturbation added to the input is
``σ · ε`` (``σ = stdevs`` for SmoothGrad, ``noise_scale`` for SmoothTaylor).
With ``σ = 1`` (SmoothGrad's default) ``ε`` is added as is, so any noise can be
injected exactly. Without ``noise`` the whole ``ε`` is drawn at once with
``torch.randn(..., generator=generator)`` (on the generator's device, then
moved to the inputs' device), so a result depends on the generator's state
only, not on ``batch_size``.

Memory. ``batch_size`` bounds the number of noisy inputs given to the base
method at once (and is passed on to it, so that path methods such as IG also
evaluate at most ``batch_size`` rows per forward pass). Chunks hold either
whole examples (all their copies) or several copies of one example, so the
per-example sums are a left fold over the copies in their order (``ig_accumulate_``
with unit weights), so the result does not depend on ``batch_size``: with a
seeded generator and a batch-invariant model it is bit-identical for any chunking.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor

from .. import engine
from .. import _ops as ops
from ..targets import resolve
from ._common import Target, check_baselines, check_inputs, derived_inputs, memory_format
from .gradients import input_gradients

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")

# Registry entries that cannot serve as the base of a noise tunnel: they are
# stochastic themselves and have their own sample count (RISE and MFPP also
# return one map per image, not attributions shaped like the inputs; PdCR's
# causal ATE explains a segmentation region by interventions, one map per image).
_NOT_A_BASE = ("smooth_grad", "smooth_taylor", "rise", "mfpp", "causal_ate")


# --------------------------------------------------------------------------- checks


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"fastattr: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"fastattr: {name} must be >= 1, got {value}")
    return value


def _check_scale(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fastattr: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"fastattr: {name} must be a finite number >= 0, got {value}")
    return value


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"fastattr: generator must be a torch.Generator or None, got {type(generator).__name__}")


def _unit_noise(inputs: Tensor, n: int, noise, generator, name: str = "noise") -> Tensor:
    """The unit draw ε, shape (B*n, *inputs.shape[1:]), sample-major."""
    shape = (inputs.shape[0] * n,) + tuple(inputs.shape[1:])
    if noise is None:
        _check_generator(generator)
        device = generator.device if generator is not None else inputs.device
        eps = torch.randn(shape, generator=generator, device=device, dtype=inputs.dtype)
        return eps.to(inputs.device)
    if not isinstance(noise, Tensor):
        raise TypeError(f"fastattr: {name} must be a torch.Tensor or None, got {type(noise).__name__}")
    if tuple(noise.shape) != shape:
        raise ValueError(
            f"fastattr: {name} must have shape {shape} (batch {inputs.shape[0]} x {n} samples, sample-major, "
            f"then the input's shape), got {tuple(noise.shape)}"
        )
    if not noise.dtype.is_floating_point:
        raise TypeError(f"fastattr: {name} must be a floating-point tensor, got {noise.dtype}")
    if noise.device != inputs.device:
        raise ValueError(f"fastattr: {name} must be on {inputs.device} like inputs, got {noise.device}")
    if not torch.isfinite(noise).all():
        raise ValueError(f"fastattr: {name} contains NaN or infinite values")
    return noise.detach().to(inputs.dtype)


def _resolve_base(base) -> tuple[Callable, str]:
    if isinstance(base, str):
        from . import METHODS  # late import: the registry imports this module

        if base in _NOT_A_BASE or base not in METHODS:
            names = sorted(k for k in METHODS if k not in _NOT_A_BASE)
            raise ValueError(f"fastattr: unknown base {base!r}; expected one of {names} or a callable")
        return METHODS[base], base
    if callable(base):
        return base, getattr(base, "__name__", type(base).__name__)
    raise TypeError(f"fastattr: base must be a method name or a callable, got {type(base).__name__}")


# --------------------------------------------------------------------------- chunking


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rows(t: Tensor, b0: int, b1: int, reps: int) -> Tensor:
    """Per-example tensor rows b0..b1, each repeated ``reps`` times (sample-major)."""
    return t[b0:b1].repeat_interleave(reps, dim=0)


def _fold(total: Tensor, per_copy: Tensor) -> None:
    """``total[b] += per_copy[b, 0] + per_copy[b, 1] + ...`` added one copy at a
    time, in copy order: the rounding is the same however the copies are cut
    into chunks (a ``.sum(dim=1)`` per chunk would depend on the cut).
    ``per_copy``: (b, reps, ...) sample-major; ``total``: (b, ...), dense."""
    b, reps = per_copy.shape[:2]
    step_major = per_copy.transpose(0, 1).reshape((reps * b,) + tuple(per_copy.shape[2:]))
    ops.ig_accumulate_(total, step_major, torch.ones(reps, dtype=torch.float64, device=total.device))


def _grid(t: Tensor, batch: int, n: int, b0: int, b1: int, s0: int, s1: int) -> Tensor:
    """Rows of a sample-major (B*n, ...) tensor that fall in the rectangle."""
    return t.view((batch, n) + tuple(t.shape[1:]))[b0:b1, s0:s1].reshape((-1,) + tuple(t.shape[1:]))


class _Baselines:
    """Baselines for path bases: None / a number (passed through), a tensor
    broadcastable to the inputs (one per example, expanded to its copies), or a
    tensor of shape (B*n, ...) giving each noisy copy its own baseline."""

    def __init__(self, baselines, inputs: Tensor, n: int):
        self.kind = "pass"
        self.value = baselines
        if isinstance(baselines, Tensor):
            rows = inputs.shape[0] * n
            if n > 1 and baselines.dim() == inputs.dim() and baselines.shape[0] == rows:
                self.kind = "row"
                self.value = check_baselines(
                    baselines, inputs.new_empty((rows,) + tuple(inputs.shape[1:])), "baselines"
                )
            else:
                self.kind = "example"
                self.value = check_baselines(baselines, inputs, "baselines")

    def select(self, batch: int, n: int, b0: int, b1: int, s0: int, s1: int):
        if self.kind == "example":
            return _rows(self.value, b0, b1, s1 - s0)
        if self.kind == "row":
            return _grid(self.value, batch, n, b0, b1, s0, s1)
        return self.value


# --------------------------------------------------------------------------- SmoothGrad


def smooth_grad(
    model,
    inputs: Tensor,
    target: Target = None,
    base: Union[str, Callable] = "saliency",
    n_samples: int = 5,
    stdevs: float = 1.0,
    kind: str = "smoothgrad",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    batch_size: int | None = None,
    **base_kwargs,
):
    """SmoothGrad, SmoothGrad² and VarGrad over any attribution method
    (Captum's ``NoiseTunnel`` semantics).

    For each example ``x`` it evaluates ``A(x + σ ε_i)``, ``i = 1..n``, with
    ``A`` the base method, ``σ = stdevs`` (an absolute standard deviation, as in
    Captum, not a fraction of the input range) and ``ε_i ~ N(0, I)``, and returns

    - ``"smoothgrad"``:    ``mean_i A_i``
    - ``"smoothgrad_sq"``: ``mean_i A_i²``
    - ``"vargrad"``:       ``mean_i A_i² − (mean_i A_i)²`` (Captum's formula).

    Args:
        model: callable mapping a batch to scores.
        inputs: tensor (B, ...).
        target: as in every fastattr method. ``None`` resolves the model's top
            class **once, on the unperturbed inputs**, so that all noisy copies
            of an example explain the same class. (Captum's ``NoiseTunnel`` has
            no default class: with ``target=None`` it differentiates the raw
            output and requires one scalar per example; pass a callable target
            for that behaviour.) Class targets are expanded to the copies with
            ``repeat_interleave(n)`` like Captum's; callables score every row.
        base: a registry name (``"saliency"``, ``"input_x_gradient"``,
            ``"guided_backprop"``, ``"deconvnet"``, ``"integrated_gradients"``,
            ``"gnl_integrated_gradients"``, ...) or a callable with the method
            signature ``base(model, inputs, target=..., batch_size=..., **kw)``.
        n_samples: noisy copies per example (``nt_samples``).
        stdevs: standard deviation σ of the added noise, ``>= 0``.
        kind: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
        generator: ``torch.Generator`` used for the draw (the global RNG if None).
        noise: the unit draw ε itself, shape ``(B * n_samples, *inputs.shape[1:])``,
            sample-major (row ``b * n_samples + i``); the input of copy ``i`` is
            ``x_b + stdevs * noise[b * n_samples + i]``.
        batch_size: at most this many noisy inputs per call of the base (also
            passed on to the base, so IG evaluates at most this many path
            points per forward pass). ``None``: the gradient loop's default
            for these inputs (``fastattr.engine.default_batch_size``).
        **base_kwargs: forwarded to the base, e.g. ``abs=False`` for saliency,
            ``n_steps``/``method``/``baselines`` for IG. ``baselines`` is
            expanded like the targets; a tensor of shape ``(B * n_samples, ...)``
            gives each noisy copy its own baseline. If the base returns
            ``(attributions, delta)`` (``return_delta=True``), the result is
            ``(smoothed, delta)`` with ``delta`` of shape ``(B * n_samples,)``,
            sample-major.

    Returns:
        tensor shaped like ``inputs`` (or ``(tensor, delta)``, see above).
    """
    inputs = check_inputs(inputs).detach()
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"fastattr: unknown kind {kind!r}; expected one of {KINDS}")
    n = _check_count(n_samples, "n_samples")
    sigma = _check_scale(stdevs, "stdevs")
    rows = engine.check_batch_size(batch_size, inputs)
    fn, _ = _resolve_base(base)
    eps = _unit_noise(inputs, n, noise, generator)

    resolved = resolve(model, inputs, target, rows)
    baselines = _Baselines(base_kwargs.pop("baselines"), inputs, n) if "baselines" in base_kwargs else None

    batch = inputs.shape[0]
    total = total_sq = None
    deltas = None
    for tile in engine.plan(batch, n, rows, inner="points"):
        # engine samples are the examples b, its points their noisy copies s
        b0, b1, s0, s1 = tile.s0, tile.s1, tile.k0, tile.k1
        target_rows = resolved.subset(tile.sample_index(inputs.device))
        reps = s1 - s0
        noisy = _rows(inputs, b0, b1, reps) + sigma * _grid(eps, batch, n, b0, b1, s0, s1)
        kwargs = dict(base_kwargs)
        if baselines is not None:
            kwargs["baselines"] = baselines.select(batch, n, b0, b1, s0, s1)
        with derived_inputs():
            # A Bound model's per-example forward arguments follow the copies.
            out = fn(engine.subset_model(model, tile.sample_index(inputs.device)), noisy, target=target_rows,
                     batch_size=batch_size, **kwargs)
        delta = None
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError(f"fastattr: base returned a tuple of {len(out)} items; expected (attributions, delta)")
            out, delta = out
        if not isinstance(out, Tensor) or out.shape != noisy.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"fastattr: base must return attributions of shape {tuple(noisy.shape)}, got {shape}")
        with torch.no_grad():
            attr = out.detach().reshape((b1 - b0, reps) + tuple(inputs.shape[1:]))
            attr = attr.to(_accumulation_dtype(attr.dtype))
            if total is None:
                total = torch.zeros_like(inputs, dtype=attr.dtype, memory_format=memory_format(inputs))
                total_sq = torch.zeros_like(total) if kind != "smoothgrad" else None
            _fold(total[b0:b1], attr)
            if total_sq is not None:
                _fold(total_sq[b0:b1], attr * attr)
            if delta is not None:
                if deltas is None:
                    deltas = torch.zeros((batch, n), dtype=delta.dtype, device=delta.device)
                deltas[b0:b1, s0:s1] = delta.detach().reshape(b1 - b0, reps)

    mean = total / n
    if kind == "smoothgrad":
        result = mean
    elif kind == "smoothgrad_sq":
        result = total_sq / n
    else:
        result = total_sq / n - mean * mean
    result = result.to(out.dtype)
    if deltas is not None:
        return result, deltas.reshape(batch * n)
    return result


# --------------------------------------------------------------------------- SmoothTaylor


def smooth_taylor(
    model,
    inputs: Tensor,
    target: Target = None,
    n_roots: int = 150,
    noise_scale: float = 0.5,
    percent: bool = False,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """SmoothTaylor (Goh et al., ICPR 2020): a first-order Taylor expansion of
    ``f_c`` at ``x`` averaged over noisy roots.

    ``z_i = x + σ ε_i`` with ``ε_i ~ N(0, I)``, ``i = 1..N``, and
    ``ST(x) = (1/N) Σ_i (x − z_i) ⊙ ∇f_c(z_i)``.

    Args:
        model, inputs, target: as in every fastattr method; ``None`` is the
            top class of the **unperturbed** input (the reference explains the
            predicted logit).
        n_roots: N, the number of roots per example (reference default 150).
        noise_scale: σ (absolute, in the model's input space; default 0.5), or
            with ``percent=True`` a percentage ν: ``σ_b = (ν/100)·(max x_b − min x_b)``
            per example.
        generator, noise: as in :func:`smooth_grad`; ``noise`` is the unit
            draw ε, shape ``(B * n_roots, *inputs.shape[1:])``, sample-major.
        batch_size: at most this many roots per forward pass (``None``: the
            gradient loop's default for these inputs).

    Returns:
        tensor shaped like ``inputs`` (signed; sum over channels for a heatmap).
    """
    inputs = check_inputs(inputs).detach()
    n = _check_count(n_roots, "n_roots")
    scale = _check_scale(noise_scale, "noise_scale")
    if not isinstance(percent, bool):
        raise TypeError(f"fastattr: percent must be a bool, got {type(percent).__name__}")
    rows = engine.check_batch_size(batch_size, inputs)
    eps = _unit_noise(inputs, n, noise, generator)
    resolved = resolve(model, inputs, target, rows)

    batch = inputs.shape[0]
    bcast = (-1,) + (1,) * (inputs.dim() - 1)
    if percent:
        flat = inputs.reshape(batch, -1)
        sigma = (scale / 100.0) * (flat.amax(dim=1) - flat.amin(dim=1))
    else:
        sigma = inputs.new_full((batch,), scale)

    total = torch.zeros_like(inputs, dtype=_accumulation_dtype(inputs.dtype), memory_format=memory_format(inputs))
    for tile in engine.plan(batch, n, rows, inner="points"):
        # engine samples are the examples b, its points their noisy copies s
        b0, b1, s0, s1 = tile.s0, tile.s1, tile.k0, tile.k1
        target_rows = resolved.subset(tile.sample_index(inputs.device))
        reps = s1 - s0
        x = _rows(inputs, b0, b1, reps)
        roots = x + _rows(sigma, b0, b1, reps).view(bcast) * _grid(eps, batch, n, b0, b1, s0, s1)
        with derived_inputs():
            grads = input_gradients(engine.subset_model(model, tile.sample_index(inputs.device)), roots,
                                    target=target_rows, batch_size=rows)
        with torch.no_grad():
            term = (x - roots) * grads.detach()
            _fold(total[b0:b1], term.reshape((b1 - b0, reps) + tuple(inputs.shape[1:])).to(total.dtype))
    return (total / n).to(inputs.dtype)
