"""A Captum drop-in: ``from fastattr.captum import X`` in place of
``from captum.attr import X``, or :func:`patch` for code that imports Captum.

Classes with Captum 0.9's constructors, ``attribute`` signatures, defaults and
results (within float tolerance), computed by fastattr's ops and chunked
engine: :class:`IntegratedGradients`, :class:`Saliency`,
:class:`InputXGradient`, :class:`GuidedBackprop`, :class:`Deconvolution`,
:class:`NoiseTunnel`, :class:`Occlusion` and :class:`FeatureAblation`; and in
the same style fastattr's own :class:`RISE`, :class:`GNLIntegratedGradients`
and :class:`CausalATE` (no Captum twins).

Supported, with Captum's semantics:

- ``inputs``: a tensor, or a tuple of tensors (the model takes them as
  positional arguments; each is attributed, and the result is a tuple).
- ``baselines``: ``None`` (zeros), a number, a tensor shaped like the input or
  with a batch dimension of 1, or a tuple of these with one per input.
- ``target``: ``None`` (the output must hold one scalar per example), an int
  or a tuple of ints (an index into the output's non-batch dimensions), a
  0-d tensor, a list or 1-D tensor of one class per example (2-D outputs), or
  a list of index tuples, one per example.
- ``additional_forward_args``: a value or a tuple, passed to the model after
  the inputs. Tensors whose first dimension is the batch size are
  per-example: every copy of example ``b`` (path steps, noisy or perturbed
  copies) sees row ``b``, which is what Captum's expansion amounts to. Other
  values are passed unchanged.
- ``internal_batch_size`` (IG), ``perturbations_per_eval`` (occlusion,
  ablation), ``nt_samples_batch_size`` (noise tunnel): rows per forward pass
  as in Captum, enforced by fastattr's engine. ``return_convergence_delta``,
  ``compute_convergence_delta``, ``multiply_by_inputs`` (IG, also ``False``),
  ``feature_mask`` tuples (ids shared by two inputs are one feature, as in
  Captum 0.9), ``show_progress`` (a tqdm count of forward passes).
- Invalid arguments raise Captum's exception type. Where Captum asserts, the
  error is a :class:`CaptumArgumentError`, both an ``AssertionError`` (as in
  Captum) and a ``ValueError`` (as everywhere in fastattr).

:func:`patch` makes ``captum.attr.X`` and the module defining ``X`` hold
fastattr's class for every ``X`` above that Captum has; :func:`unpatch`
restores Captum's objects. Captum's other classes stay Captum's; a
:class:`NoiseTunnel` over one of them runs Captum's own ``NoiseTunnel``.

Deliberate differences from Captum:

- ``GuidedBackprop`` / ``Deconvolution`` modify every ReLU / ReLU6 however it
  is called (Captum: ``nn.ReLU`` modules only, so functional and in-place
  ``F.relu`` get plain gradients there); results agree on models whose ReLUs
  are ``nn.ReLU`` modules.
- Random draws differ (Captum uses the global ``torch.normal`` and
  ``numpy.random.choice``). ``NoiseTunnel.attribute`` takes two extra
  keywords: ``generator`` (a ``torch.Generator`` for all draws) and ``noise``
  (the unit draw ε, shape ``(B * nt_samples, ...)`` sample-major, or a tuple
  of them for several inputs; noisy input ``x + stdevs * ε``), for exact
  reproducibility. The generator draws each input's ε first (unless ``noise``
  is given), then, with ``draw_baseline_from_distrib``, each input's baseline
  rows as ``randint(K, (B * nt_samples,))``. Every noisy sample draws its own
  baseline row (Captum reuses one draw for all full chunks of
  ``nt_samples_batch_size``).
- Forward-argument tensors whose first dimension is not the batch size are
  passed unchanged (Captum concatenates copies of every non-scalar tensor).
- ``Occlusion`` returns attributions in the inputs' dtype (Captum: float32).
- ``FeatureAblation`` / ``Occlusion`` need one score per example (Captum also
  attributes every element of a non-scalar output when ``target=None``).
- The classes do not derive from Captum's base classes (``isinstance(x,
  captum.attr.Attribution)`` is False).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from . import engine
from .methods._common import check_baselines
from .methods.causal import causal_ate
from .methods.gradients import deconvnet, guided_backprop, input_x_gradient, saliency
from .methods.integrated_gradients import ADAPTIVE, gnl_integrated_gradients, integrated_gradients
from .methods.perturbation import feature_ablation, occlusion, rise
from .methods.smoothing import KINDS, _check_count, _unit_noise, smooth_grad
from .targets import resolve

__all__ = [
    "CaptumArgumentError",
    "CausalATE",
    "Deconvolution",
    "FeatureAblation",
    "GNLIntegratedGradients",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "NoiseTunnel",
    "Occlusion",
    "RISE",
    "Saliency",
    "patch",
    "patched",
    "unpatch",
]


class CaptumArgumentError(AssertionError, ValueError):
    """An invalid argument that Captum rejects with an assertion."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CaptumArgumentError(f"fastattr.captum: {message}")


# --------------------------------------------------------------------------- formatting


def _format_inputs(inputs) -> tuple[tuple, bool]:
    """Captum's ``_format_tensor_into_tuples``: (tuple of tensors, was a tuple)."""
    if isinstance(inputs, tuple):
        _require(len(inputs) > 0 and all(isinstance(t, Tensor) for t in inputs),
                 f"inputs must be a tensor or a non-empty tuple of tensors, got "
                 f"({', '.join(type(t).__name__ for t in inputs)})")
        return inputs, True
    _require(isinstance(inputs, Tensor), f"inputs must be a torch.Tensor or a tuple of tensors, "
                                         f"got {type(inputs).__name__}")
    return (inputs,), False


def _one_or_tuple(xs: tuple):
    """What the functional API gets: the tensor itself for one input (no packing)."""
    return xs[0] if len(xs) == 1 else xs


def _format_output(is_tuple: bool, result, has_delta: bool = False):
    """The functional result (a tensor or a tuple, with a delta if asked) in Captum's form."""
    delta = None
    if has_delta:
        result, delta = result
    attrs = result if isinstance(result, tuple) else (result,)
    out = attrs if is_tuple else attrs[0]
    return out if delta is None else (out, delta)


def _format_baselines(baselines, xs: tuple, distribution: bool = False) -> tuple | None:
    """Captum's ``_format_baseline`` + ``_validate_input``: one baseline per input."""
    if baselines is None:
        return None
    if not isinstance(baselines, tuple):
        baselines = (baselines,)
    _require(len(baselines) == len(xs), f"baselines has {len(baselines)} entries for {len(xs)} input tensors "
                                        "(Input and baseline must have the same dimensions)")
    for i, (b, x) in enumerate(zip(baselines, xs)):
        number = isinstance(b, (int, float)) and not isinstance(b, bool)
        _require(number or isinstance(b, Tensor),
                 f"baselines[{i}] must be a torch.Tensor or a number, got {type(b).__name__}")
        if isinstance(b, Tensor):
            if distribution:
                _require(b.shape[1:] == x.shape[1:], f"baselines[{i}] of shape {tuple(b.shape)} must be a batch "
                                                     f"of samples shaped like the input's {tuple(x.shape[1:])}")
            else:
                _require(b.shape == x.shape or (b.dim() >= 1 and b.shape[0] == 1),
                         f"baselines[{i}] of shape {tuple(b.shape)} must have the input's shape "
                         f"{tuple(x.shape)} or a batch dimension of 1")
    return baselines


def _scalar_rows(out: Tensor) -> Tensor:
    _require(isinstance(out, Tensor) and out.dim() >= 1, "the model must return a tensor with a batch dimension")
    _require(out[0].numel() == 1,
             "Target not provided when necessary, cannot take gradient with respect to multiple outputs "
             f"(the output has shape {tuple(out.shape)}; pass target=...)")
    return out.reshape(out.shape[0])


class _Column:
    """Captum's int / tuple target: ``output[:, *index]``, one scalar per row."""

    def __init__(self, index: tuple):
        self.index = index

    def __call__(self, out: Tensor) -> Tensor:
        _require(len(self.index) <= out.dim() - 1,
                 f"cannot choose target {self.index} in an output of shape {tuple(out.shape)}")
        return _scalar_rows(out[(slice(None),) + self.index])


class _PerExample:
    """Captum's list of index tuples, one per example: row ``r`` of a chunk
    scores ``output[r, *target[sample(r)]]``."""

    def __init__(self, table: Tensor):
        self.table = table  # (B, k) int64

    def __call__(self, output: Tensor, index: Tensor) -> Tensor:
        _require(self.table.shape[1] <= output.dim() - 1,
                 f"cannot choose target tuples of {self.table.shape[1]} indices in an output of shape "
                 f"{tuple(output.shape)}")
        idx = self.table.to(output.device).index_select(0, index.to(output.device))
        rows = torch.arange(output.shape[0], device=output.device)
        return _scalar_rows(output[(rows,) + tuple(idx.unbind(1))])


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _convert_target(target, batch: int, device):
    """Captum's target forms (``_select_targets``) as a fastattr target."""
    if target is None:
        return _scalar_rows
    if _is_index(target):
        return _Column((target,))
    if isinstance(target, tuple):
        _require(all(_is_index(t) for t in target), f"a tuple target must hold ints, got {target!r}")
        return _Column(target)
    if isinstance(target, Tensor):
        if target.numel() == 1 and not target.dtype.is_floating_point and target.dtype != torch.bool:
            return _Column((int(target.reshape(()).item()),))
        _require(target.dim() == 1 and target.numel() == batch,
                 f"Tensor target dimension {tuple(target.shape)} is not valid for {batch} examples")
        return target.to(device)
    if isinstance(target, list):
        _require(len(target) == batch, f"Target list length does not match output! ({len(target)} targets for "
                                       f"{batch} examples)")
        if all(_is_index(t) for t in target):
            return torch.tensor(target, dtype=torch.long, device=device)
        if all(isinstance(t, tuple) and all(_is_index(i) for i in t) for t in target):
            _require(len({len(t) for t in target}) == 1, "the target tuples must all have the same length")
            return _PerExample(torch.tensor(target, dtype=torch.long, device=device))
        raise CaptumArgumentError(f"fastattr.captum: Target element type {type(target[0]).__name__} in list is "
                                  "not valid (expected ints or tuples of ints)")
    raise CaptumArgumentError(f"fastattr.captum: Target type {type(target).__name__} is not valid")


def _progress(forward_func, show_progress: bool, what: str):
    """``forward_func``, counting its calls on a tqdm bar when ``show_progress``."""
    if not show_progress:
        return forward_func, contextlib.nullcontext()
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"{what} forward passes", unit="pass")

    class Counted:
        __wrapped__ = forward_func  # engine._module: the model's checks still see the module

        def __call__(self, *args, **kwargs):
            out = forward_func(*args, **kwargs)
            bar.update()
            return out

    @contextlib.contextmanager
    def closing():
        try:
            yield
        finally:
            bar.close()

    return Counted(), closing()


def _check_batch_arg(value, name: str) -> None:
    if value is not None:
        _require(_is_index(value) and value >= 1, f"{name} must be None or an integer >= 1, got {value!r}")


# --------------------------------------------------------------------------- methods


class _Attribution:
    """Common part: the forward function, Captum's properties, and the call path
    ``attribute`` -> :meth:`_compute` (the functional method, one tensor or a
    tuple of tensors) -> Captum's output form."""

    _multiply_by_inputs = False

    def __init__(self, forward_func: Callable) -> None:
        if not callable(forward_func):
            raise TypeError(f"fastattr.captum: forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return False

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None, **kwargs):
        raise NotImplementedError  # each subclass calls its functional method

    def _run(self, inputs, target, additional_forward_args, show_progress=False, **kwargs):
        xs, is_tuple = _format_inputs(inputs)
        ft = _convert_target(target, xs[0].shape[0], xs[0].device)
        model, bar = _progress(self.forward_func, show_progress, type(self).__name__)
        with bar:
            result = self._compute(model, _one_or_tuple(xs), ft, additional_forward_args=additional_forward_args,
                                   **kwargs)
        return _format_output(is_tuple, result, kwargs.get("return_delta", False))


class Saliency(_Attribution):
    """Captum's ``Saliency``: the gradient (absolute value by default)."""

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None, abs=True):
        return saliency(model, x, target=target, abs=abs, batch_size=batch_size,
                        additional_forward_args=additional_forward_args)

    def attribute(self, inputs, target=None, abs: bool = True, additional_forward_args=None):
        return self._run(inputs, target, additional_forward_args, abs=abs)


class InputXGradient(_Attribution):
    """Captum's ``InputXGradient``: input times gradient."""

    _multiply_by_inputs = True

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None):
        return input_x_gradient(model, x, target=target, batch_size=batch_size,
                                additional_forward_args=additional_forward_args)

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self._run(inputs, target, additional_forward_args)


class _ModifiedRelu(_Attribution):
    _function = None

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"fastattr.captum: {type(self).__name__} needs an nn.Module (as in Captum), got {type(model).__name__}"
            )
        super().__init__(model)
        self.model = model

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None):
        return type(self)._function(model, x, target=target, batch_size=batch_size,
                                    additional_forward_args=additional_forward_args)

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self._run(inputs, target, additional_forward_args)


class GuidedBackprop(_ModifiedRelu):
    """Captum's ``GuidedBackprop``: ReLUs pass ``relu(grad)`` where their input
    is positive (every ReLU / ReLU6, functional and in-place ones too)."""

    _function = staticmethod(guided_backprop)


class Deconvolution(_ModifiedRelu):
    """Captum's ``Deconvolution``: ReLUs pass ``relu(grad)`` (every ReLU / ReLU6)."""

    _function = staticmethod(deconvnet)


_IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


class IntegratedGradients(_Attribution):
    """Captum's ``IntegratedGradients``, also with ``multiply_by_inputs=False``
    (the path integral of the gradient, without the factor ``x - x'``)."""

    _path = staticmethod(integrated_gradients)

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"fastattr.captum: multiply_by_inputs must be a bool, got "
                            f"{type(multiply_by_inputs).__name__}")
        self._multiply_by_inputs = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None, baselines=None,
                 n_steps=50, method="gausslegendre", return_delta=False, tolerance=None, max_evals=None):
        return type(self)._path(model, x, target=target, baselines=baselines, n_steps=n_steps, method=method,
                                batch_size=batch_size, return_delta=return_delta,
                                multiply_by_inputs=self._multiply_by_inputs,
                                additional_forward_args=additional_forward_args,
                                tolerance=tolerance, max_evals=max_evals)

    def _ig_kwargs(self, inputs, baselines, n_steps, method, internal_batch_size, return_convergence_delta,
                   tolerance=None, max_evals=None):
        xs, _ = _format_inputs(inputs)
        baselines = _format_baselines(baselines, xs)
        _require(_is_index(n_steps) and n_steps >= 1, f"n_steps must be a positive integer, got {n_steps!r}")
        _require(method in _IG_METHODS + (ADAPTIVE,), f"Approximation method must be one of "
                                                      f"{list(_IG_METHODS + (ADAPTIVE,))}, got {method!r}")
        _check_batch_arg(internal_batch_size, "internal_batch_size")
        return dict(baselines=None if baselines is None else _one_or_tuple(baselines), n_steps=n_steps,
                    method=method, batch_size=internal_batch_size, return_delta=bool(return_convergence_delta),
                    tolerance=tolerance, max_evals=max_evals)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size=None, return_convergence_delta: bool = False,
                  *, tolerance: float | None = None, max_evals: int | None = None):
        """Captum's ``attribute``; fastattr adds ``method="adaptive"`` with the
        keyword-only ``tolerance`` and ``max_evals`` (per-image nodes, see
        :func:`fastattr.integrated_gradients`; ``max_evals=None``: ``n_steps``)."""
        kw = self._ig_kwargs(inputs, baselines, n_steps, method, internal_batch_size, return_convergence_delta,
                             tolerance, max_evals)
        return self._run(inputs, target, additional_forward_args, **kw)

    def compute_convergence_delta(self, attributions, start_point, end_point, target=None,
                                  additional_forward_args=None) -> Tensor:
        """Captum's ``compute_convergence_delta``: per example, the sum of all
        attributions minus ``f(end_point) - f(start_point)``."""
        ends, _ = _format_inputs(end_point)
        attrs = attributions if isinstance(attributions, tuple) else (attributions,)
        _require(len(attrs) == len(ends) and all(isinstance(a, Tensor) for a in attrs),
                 f"attributions must hold one tensor per input ({len(ends)})")
        _require(all(a.shape[0] == ends[0].shape[0] for a in attrs),
                 "Attributions tensor and the end_point must match on the first dimension")
        starts = _format_baselines(start_point, ends) or (None,) * len(ends)
        starts = tuple(check_baselines(s, e, "start_point") for s, e in zip(starts, ends))
        b = ends[0].shape[0]
        ft = _convert_target(target, b, ends[0].device)
        args = engine.forward_args(additional_forward_args)
        gap = []
        for points in (ends, starts):
            flat, shapes = (points[0].detach(), None) if len(points) == 1 else engine.pack(points)
            model = engine.Bound(self.forward_func, shapes, args, b)
            gap.append(engine.forward_scores(model, flat, resolve(model, flat, ft)))
        total = sum(a.detach().reshape(b, -1).sum(1).to(gap[0].dtype) for a in attrs)
        return total - (gap[0] - gap[1])


class GNLIntegratedGradients(IntegratedGradients):
    """fastattr's GNL-IG (Kwon et al., 2020) in Captum's ``IntegratedGradients``
    form: the path gradients run with guided ReLUs and GNL's max-pool rule
    (see :func:`fastattr.gnl_integrated_gradients`). No Captum twin;
    completeness does not hold, so deltas need not vanish."""

    _path = staticmethod(gnl_integrated_gradients)


class _Perturbation(_Attribution):
    """Occlusion and feature ablation: ``perturbations_per_eval`` perturbations
    of the whole batch per forward pass (``batch_size`` = that x B rows)."""

    @staticmethod
    def _rows(perturbations_per_eval, xs) -> int:
        _require(_is_index(perturbations_per_eval) and perturbations_per_eval >= 1,
                 f"Perturbations per evaluation must be an integer and at least 1, got {perturbations_per_eval!r}")
        return perturbations_per_eval * xs[0].shape[0]


class FeatureAblation(_Perturbation):
    """Captum's ``FeatureAblation``: each feature (``feature_mask`` id; default
    each element) set to its baseline in turn, ``f(x) - f(ablated)``. Ids
    shared by several inputs' masks are ablated together, as in Captum 0.9."""

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None, baselines=None,
                 feature_mask=None):
        return feature_ablation(model, x, target=target, feature_mask=feature_mask, baselines=baselines,
                                batch_size=batch_size, additional_forward_args=additional_forward_args)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  perturbations_per_eval: int = 1, show_progress: bool = False, **kwargs):
        if kwargs:
            raise TypeError(f"fastattr.captum: FeatureAblation.attribute() got unexpected keyword arguments "
                            f"{sorted(kwargs)}")
        xs, _ = _format_inputs(inputs)
        baselines = _format_baselines(baselines, xs)
        if feature_mask is not None:
            masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
            _require(len(masks) == len(xs) and all(isinstance(m, Tensor) for m in masks),
                     f"feature_mask must hold one tensor per input ({len(xs)}), got {len(masks)}")
            feature_mask = _one_or_tuple(masks)
        rows = self._rows(perturbations_per_eval, xs)
        return self._run(inputs, target, additional_forward_args, show_progress, batch_size=rows,
                         baselines=None if baselines is None else _one_or_tuple(baselines),
                         feature_mask=feature_mask)


def _per_input(value, xs: tuple, name: str, default) -> tuple:
    """Captum's per-input shapes/strides (``_format_and_verify_*``)."""
    if value is None:
        value = tuple(default for _ in xs)
    if len(xs) == 1 and not (isinstance(value, tuple) and len(value) == 1):
        value = (value,)
    _require(isinstance(value, tuple) and len(value) == len(xs), f"{name} must be given for each input tensor "
                                                                f"({len(xs)})")
    out = []
    for i, (v, x) in enumerate(zip(value, xs)):
        if _is_index(v) and name == "strides":
            v = (v,) * (x.dim() - 1)
        _require(isinstance(v, tuple) and len(v) == x.dim() - 1 and all(_is_index(k) for k in v),
                 f"{name} for input {i} is {v!r}, which is invalid for an input of shape {tuple(x.shape)}: it "
                 f"must be {'an int or ' if name == 'strides' else ''}a tuple of {x.dim() - 1} ints")
        out.append(v)
    return tuple(out)


class Occlusion(_Perturbation):
    """Captum's ``Occlusion``: windows of ``sliding_window_shapes`` slide over
    each input (the others unchanged), replaced by the baseline; an element's
    attribution is ``f(x) - f(occluded)`` averaged over the windows covering it."""

    def attribute(self, inputs, sliding_window_shapes, strides=None, baselines=None, target=None,
                  additional_forward_args=None, perturbations_per_eval: int = 1, show_progress: bool = False):
        xs, _ = _format_inputs(inputs)
        if isinstance(sliding_window_shapes, tuple) and sliding_window_shapes and _is_index(sliding_window_shapes[0]):
            sliding_window_shapes = (sliding_window_shapes,)
        windows = _per_input(sliding_window_shapes, xs, "sliding_window_shapes", None)
        strides = _per_input(strides, xs, "strides", 1)
        for i, (x, w, s) in enumerate(zip(xs, windows, strides)):
            _require(all(k <= f for k, f in zip(w, x.shape[1:])),
                     f"Sliding window dimensions {w} cannot exceed input dimensions {tuple(x.shape[1:])}")
            _require(all(f == k or st <= k for k, f, st in zip(w, x.shape[1:], s)),
                     f"Stride dimension {s} cannot be larger than sliding window shape dimension {w}")
        baselines = _format_baselines(baselines, xs)
        rows = self._rows(perturbations_per_eval, xs)
        return self._run(inputs, target, additional_forward_args, show_progress, batch_size=rows,
                         sliding_window_shapes=_one_or_tuple(windows), strides=_one_or_tuple(strides),
                         baselines=None if baselines is None else _one_or_tuple(baselines))

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None, **kwargs):
        return occlusion(model, x, target=target, batch_size=batch_size,
                         additional_forward_args=additional_forward_args, **kwargs)


class RISE(_Attribution):
    """fastattr's RISE (Petsiuk et al., 2018) in Captum's class style: one
    (B, 1, H, W) saliency map per image (see :func:`fastattr.rise`; images
    only, one input tensor)."""

    def _compute(self, model, x, target, batch_size=None, additional_forward_args=None, **kwargs):
        _require(isinstance(x, Tensor), "RISE explains one input tensor of images")
        if additional_forward_args is not None:
            model = engine.Bound(model, None, engine.forward_args(additional_forward_args), x.shape[0])
        return rise(model, x, target=target, batch_size=batch_size, **kwargs)

    def attribute(self, inputs, target=None, additional_forward_args=None, n_masks=None, grid_size: int = 7,
                  p: float = 0.5, internal_batch_size=None, generator=None, upsample: str = "reference",
                  activation="auto", baselines=None, show_progress: bool = False):
        _check_batch_arg(internal_batch_size, "internal_batch_size")
        xs, _ = _format_inputs(inputs)
        baselines = _format_baselines(baselines, xs)
        return self._run(inputs, target, additional_forward_args, show_progress, batch_size=internal_batch_size,
                         n_masks=n_masks, grid_size=grid_size, p=p, generator=generator, upsample=upsample,
                         activation=activation, baselines=None if baselines is None else baselines[0])


class CausalATE(_Attribution):
    """fastattr's PdCR causal ATE map (a segmentation model's input-region
    effects, see :func:`fastattr.causal_ate`) in Captum's class style:
    ``attribute`` returns the (B, 1, H, W) maps; ``target`` is the output
    channel (``target_class``; ``None``: every channel)."""

    def attribute(self, inputs, ground_truth, roi, target=None, additional_forward_args=None, block=8,
                  patch_bank=None, mode: str = "patches", n_screen: int = 3, n_samples: int = 50,
                  tau: float = 0.02, outcome: str = "dice", threshold: float = 0.5, generator=None,
                  internal_batch_size=None, activation=None, show_progress: bool = False):
        _check_batch_arg(internal_batch_size, "internal_batch_size")
        xs, is_tuple = _format_inputs(inputs)
        _require(len(xs) == 1, "CausalATE explains one input tensor of images")
        if isinstance(target, Tensor):
            _require(target.numel() == 1, f"CausalATE takes one output channel as target, got a tensor of "
                                          f"shape {tuple(target.shape)}")
            target = int(target.reshape(()).item())
        _require(target is None or _is_index(target), f"CausalATE's target is an output channel (an int) or "
                                                      f"None, got {target!r}")
        model, bar = _progress(self.forward_func, show_progress, "CausalATE")
        if additional_forward_args is not None:
            args, b = engine.forward_args(additional_forward_args), xs[0].shape[0]
            # causal_ate runs image by image, outside the rows the engine tracks for a batch.
            if b > 1 and any(engine._per_example(a, b) for a in args):
                raise ValueError("fastattr.captum: CausalATE explains a batch image by image, so per-example "
                                 "additional_forward_args (tensors with a batch dimension) need one image per "
                                 "call: call attribute on each image (inputs[i:i+1]) with its own arguments")
            model = engine.Bound(model, None, args, b)
        with bar:
            result = causal_ate(model, xs[0], ground_truth, roi, block=block, patch_bank=patch_bank, mode=mode,
                                n_screen=n_screen, n_samples=n_samples, tau=tau, outcome=outcome,
                                threshold=threshold, target_class=target, generator=generator,
                                batch_size=internal_batch_size, activation=activation)
        return (result.map,) if is_tuple else result.map


# --------------------------------------------------------------------------- NoiseTunnel


def _captum_delta_order(delta: Tensor, batch: int, n: int, per_chunk: int) -> Tensor:
    """Sample-major deltas (row b*n+i) in Captum's order: chunk after chunk of
    ``per_chunk`` samples, each chunk sample-major, then the remainder."""
    grid = delta.view(batch, n)
    parts = [grid[:, s0:min(s0 + per_chunk, n)].reshape(-1) for s0 in range(0, n, per_chunk)]
    return torch.cat(parts)


_NOT_TUNNELED = (RISE, CausalATE, Occlusion, FeatureAblation)


def _flat(parts: tuple) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


class NoiseTunnel:
    """Captum's ``NoiseTunnel`` over one of this module's gradient classes
    (over another Captum class, Captum's own ``NoiseTunnel`` runs)."""

    def __init__(self, attribution_method) -> None:
        self._captum = None
        if not isinstance(attribution_method, _Attribution):
            original = _captum_original("NoiseTunnel")
            if original is None:
                raise TypeError(
                    "fastattr.captum: NoiseTunnel needs an attribution object from fastattr.captum "
                    f"(e.g. fastattr.captum.Saliency(model)), got {type(attribution_method).__name__}"
                )
            self._captum = original(attribution_method)
        elif isinstance(attribution_method, _NOT_TUNNELED):
            raise TypeError(f"fastattr.captum: NoiseTunnel runs over a gradient method, not "
                            f"{type(attribution_method).__name__}")
        self.attribution_method = attribution_method
        self.forward_func = attribution_method.forward_func
        self.is_delta_supported = attribution_method.has_convergence_delta()
        self.is_gradient_method = True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    def attribute(self, inputs, nt_type: str = "smoothgrad", nt_samples: int = 5, nt_samples_batch_size=None,
                  stdevs=1.0, draw_baseline_from_distrib: bool = False, *, generator: torch.Generator | None = None,
                  noise=None, **kwargs):
        if self._captum is not None:
            if generator is not None or noise is not None:
                raise TypeError("fastattr.captum: generator and noise need a fastattr attribution method; Captum's "
                                "NoiseTunnel draws from the global random state")
            return self._captum.attribute(inputs, nt_type=nt_type, nt_samples=nt_samples,
                                          nt_samples_batch_size=nt_samples_batch_size, stdevs=stdevs,
                                          draw_baseline_from_distrib=draw_baseline_from_distrib, **kwargs)
        xs, is_tuple = _format_inputs(inputs)
        _require(nt_type in KINDS, f"Noise types must be either `smoothgrad`, `smoothgrad_sq` or `vargrad`, "
                                   f"got {nt_type!r} (nt_type)")
        n = _check_count(nt_samples, "nt_samples")
        per_chunk = n if nt_samples_batch_size is None else min(n, _check_count(nt_samples_batch_size,
                                                                                "nt_samples_batch_size"))
        stdevs = stdevs if isinstance(stdevs, tuple) else (stdevs,) * len(xs)
        _require(len(stdevs) == len(xs), f"The number of input tensors ({len(xs)}) must be equal to the number "
                                         f"of stdevs values ({len(stdevs)})")
        for s in stdevs:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
                raise ValueError(f"fastattr.captum: stdevs must be finite numbers >= 0, got {stdevs!r}")
        target = kwargs.pop("target", None)
        args = kwargs.pop("additional_forward_args", None)
        show_progress = kwargs.pop("show_progress", False)
        inner = self.attribution_method
        if isinstance(inner, IntegratedGradients):
            allowed = ("baselines", "n_steps", "method", "internal_batch_size", "return_convergence_delta",
                       "tolerance", "max_evals")
        elif isinstance(inner, Saliency):
            allowed = ("abs",)
        else:
            allowed = ()
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise TypeError(f"fastattr.captum: {type(inner).__name__}.attribute() got unexpected keyword "
                            f"arguments {unknown}")
        base_kw = dict(kwargs)
        inner_batch = None
        return_delta = False
        baselines = None
        if isinstance(inner, IntegratedGradients):
            base_kw = inner._ig_kwargs(xs, None, base_kw.get("n_steps", 50), base_kw.get("method", "gausslegendre"),
                                       base_kw.get("internal_batch_size"),
                                       base_kw.get("return_convergence_delta", False),
                                       base_kw.get("tolerance"), base_kw.get("max_evals"))
            inner_batch = base_kw.pop("batch_size")
            return_delta = base_kw["return_delta"]
            base_kw.pop("baselines")
            baselines = _format_baselines(kwargs.get("baselines"), xs, draw_baseline_from_distrib)
        elif "baselines" in kwargs:
            raise TypeError("fastattr.captum: baselines is only a keyword of IntegratedGradients")
        b = xs[0].shape[0]

        # Unit draws per input, scaled by that input's stdev, packed like the inputs.
        if noise is not None and not isinstance(noise, tuple):
            noise = (noise,)
        if noise is not None and len(noise) != len(xs):
            raise ValueError(f"fastattr.captum: noise must hold one tensor per input ({len(xs)}), got {len(noise)}")
        eps = _flat(tuple(
            float(s) * _unit_noise(x.detach(), n, None if noise is None else noise[i], generator,
                                   "noise" if len(xs) == 1 else f"noise[{i}]")
            for i, (x, s) in enumerate(zip(xs, stdevs))))
        x = _flat(tuple(t.detach() for t in xs))
        shapes = None if len(xs) == 1 else tuple(tuple(t.shape[1:]) for t in xs)

        if baselines is not None:
            parts = []
            for i, (bl, xi) in enumerate(zip(baselines, xs)):
                if draw_baseline_from_distrib and isinstance(bl, Tensor):
                    device = generator.device if generator is not None else bl.device
                    idx = torch.randint(bl.shape[0], (b * n,), generator=generator, device=device)
                    parts.append(bl[idx.to(bl.device)].to(xi.dtype))  # one baseline row per noisy copy
                else:
                    rows = xi.new_empty((b * n,) + tuple(xi.shape[1:])) if draw_baseline_from_distrib else xi
                    bi = check_baselines(bl, rows, f"baselines[{i}]")
                    parts.append(bi if draw_baseline_from_distrib else bi.expand_as(xi))
            base_kw["baselines"] = _flat(tuple(parts))

        ft = _convert_target(target, b, x.device)
        model, bar = _progress(self.forward_func, show_progress, "NoiseTunnel")
        if shapes is not None or args is not None:
            model = engine.Bound(model, shapes, engine.forward_args(args), b)

        def base(model, inputs, target=None, batch_size=None, **kw):
            # smooth_grad's batch_size bounds the noisy samples per chunk; the base
            # uses Captum's internal_batch_size instead.
            return inner._compute(model, inputs, target, batch_size=inner_batch, **kw)

        with bar:
            result = smooth_grad(model, x, target=ft, base=base, n_samples=n, stdevs=1.0, kind=nt_type, noise=eps,
                                 batch_size=b * per_chunk, **base_kw)
        delta = None
        if return_delta:
            result, delta = result
            delta = _captum_delta_order(delta, b, n, per_chunk)
        attrs = (result,) if shapes is None else engine.unpack(result, shapes)
        out = attrs if is_tuple else attrs[0]
        return out if delta is None else (out, delta)


# --------------------------------------------------------------------------- patch


# Classes with a Captum twin of the same name (patch replaces those only).
_TWINS = ("IntegratedGradients", "Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution", "NoiseTunnel",
          "Occlusion", "FeatureAblation")
# (module name, attribute) -> Captum's object, while patched.
_ORIGINALS: dict[tuple[str, str], object] = {}


def _captum_original(name: str):
    """Captum's own class ``name`` (also while patched), or None without Captum."""
    if ("captum.attr", name) in _ORIGINALS:
        return _ORIGINALS[("captum.attr", name)]
    try:
        import captum.attr
    except ImportError:
        return None
    return getattr(captum.attr, name, None)


def patch() -> None:
    """Make Captum's classes of the same names fastattr's: ``captum.attr.X``
    and ``X`` in the module that defines it (``captum.attr._core...``), for
    every ``X`` in IntegratedGradients, Saliency, InputXGradient,
    GuidedBackprop, Deconvolution, NoiseTunnel, Occlusion and FeatureAblation.
    Code that imports them afterwards, from either place, gets fastattr's
    (names imported before the call keep what they hold). Idempotent;
    :func:`unpatch` restores Captum's objects."""
    try:
        import captum.attr
    except ImportError as e:
        raise ImportError("fastattr.captum.patch() needs Captum installed (pip install captum)") from e
    ours = sys.modules[__name__]
    for name in _TWINS:
        if ("captum.attr", name) in _ORIGINALS:
            continue  # already patched
        original = getattr(captum.attr, name)
        for module_name in ("captum.attr", original.__module__):
            module = sys.modules[module_name]
            if getattr(module, name, None) is original:
                _ORIGINALS[(module_name, name)] = original
                setattr(module, name, getattr(ours, name))


def unpatch() -> None:
    """Undo :func:`patch`: every patched name holds Captum's original object again."""
    for (module_name, name), original in list(_ORIGINALS.items()):
        setattr(sys.modules[module_name], name, original)
        del _ORIGINALS[(module_name, name)]


@contextlib.contextmanager
def patched():
    """``with fastattr.captum.patched(): ...`` patches Captum inside the block
    only (restoring whatever state it found)."""
    was = bool(_ORIGINALS)
    patch()
    try:
        yield
    finally:
        if not was:
            unpatch()
