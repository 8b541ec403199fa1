"""A Captum-compatible front end: ``from fastattr.captum import X`` in place of
``from captum.attr import X``.

Classes: :class:`IntegratedGradients`, :class:`Saliency`,
:class:`InputXGradient`, :class:`GuidedBackprop`, :class:`Deconvolution` and
:class:`NoiseTunnel`, with Captum's constructors and ``attribute`` keywords
and defaults. Each call runs the corresponding fastattr method.

Supported, with Captum's semantics:

- ``inputs``: one tensor, or a tuple holding one tensor (the result is then a
  1-tuple, as in Captum). Several input tensors raise ``NotImplementedError``.
- ``target``: ``None`` (the output must hold one scalar per example; Captum
  has no default class either), an int or a tuple of ints (an index into the
  output's non-batch dimensions), a scalar tensor, a list or 1-D tensor of one
  class per example (2-D outputs), or a list of index tuples, one per example.
- ``additional_forward_args``: a value or a tuple, passed to the model after
  the input (``forward_func(x, *args)``). Tensors whose first dimension is the
  batch size are per-example arguments: every copy of example ``b`` (path
  steps, noisy samples) sees row ``b``, which is what Captum's expansions
  amount to. Those calls run one example at a time. Other arguments are passed
  unchanged.
- ``baselines``: ``None``, a number, or a tensor shaped like the inputs or
  with a batch dimension of 1 (or a 1-tuple of these).
- ``NoiseTunnel``: ``nt_type``, ``nt_samples``, ``nt_samples_batch_size``,
  ``stdevs`` (float or 1-tuple), ``draw_baseline_from_distrib`` and the base
  method's keywords. Deltas (``return_convergence_delta=True`` with IG) come in
  Captum's order (per chunk of ``nt_samples_batch_size`` samples).

Differences from Captum:

- Random draws differ (Captum uses the global ``torch.normal`` and
  ``numpy.random.choice``). ``NoiseTunnel.attribute`` takes two extra
  keywords: ``generator`` (a ``torch.Generator`` for all draws) and ``noise``
  (the unit draw ε, shape ``(B * nt_samples, ...)`` sample-major; noisy input
  ``x + stdevs * ε``), for exact reproducibility. The generator draws ε
  first (unless ``noise`` is given), then, with
  ``draw_baseline_from_distrib``, the baseline rows as
  ``randint(K, (B * nt_samples,))``.
- With ``draw_baseline_from_distrib=True`` every noisy sample draws its own
  baseline row (Captum reuses one draw for all full chunks of
  ``nt_samples_batch_size``).
- ``GuidedBackprop`` / ``Deconvolution`` modify every ReLU / ReLU6 however it
  is called (Captum: ``nn.ReLU`` modules only); results agree on models whose
  ReLUs are ``nn.ReLU`` modules.
- ``IntegratedGradients(..., multiply_by_inputs=False)`` is not supported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .methods._common import check_baselines
from .methods.gradients import deconvnet, guided_backprop, input_x_gradient, saliency
from .methods.integrated_gradients import integrated_gradients
from .methods.smoothing import KINDS, _check_count, _unit_noise, smooth_grad

__all__ = [
    "Deconvolution",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "NoiseTunnel",
    "Saliency",
]


# --------------------------------------------------------------------------- formatting


def _format_inputs(inputs) -> tuple[Tensor, bool]:
    if isinstance(inputs, Tensor):
        return inputs, False
    if isinstance(inputs, tuple):
        if len(inputs) == 1 and isinstance(inputs[0], Tensor):
            return inputs[0], True
        if len(inputs) > 1:
            raise NotImplementedError(
                f"fastattr.captum: inputs is a tuple of {len(inputs)} tensors; only one input tensor is "
                "supported (wrap the model so that it takes one tensor, or use captum.attr)"
            )
    raise TypeError(f"fastattr.captum: inputs must be a tensor or a 1-tuple of a tensor, got {type(inputs).__name__}")


def _format_output(is_tuple: bool, result):
    if isinstance(result, tuple):
        attr, delta = result
        return ((attr,) if is_tuple else attr), delta
    return (result,) if is_tuple else result


def _unwrap_single(value, name: str):
    """Captum passes per-input values as tuples; only 1-tuples are supported."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise NotImplementedError(
                f"fastattr.captum: {name} is a tuple of {len(value)} values; only one input tensor is supported"
            )
        return value[0]
    return value


def _format_args(additional_forward_args) -> tuple | None:
    if additional_forward_args is None:
        return None
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _scalar_rows(out: Tensor) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() == 0:
        raise ValueError("fastattr.captum: the model must return a tensor with a batch dimension")
    if out[0].numel() != 1:
        raise ValueError(
            "fastattr.captum: Target not provided when necessary, cannot take gradient with respect to multiple "
            f"outputs (the output has shape {tuple(out.shape)}; pass target=...)"
        )
    return out.reshape(out.shape[0])


class _Column:
    """Captum's int / tuple target: ``output[:, *index]``, one scalar per row."""

    def __init__(self, index: tuple):
        self.index = index

    def __call__(self, out: Tensor) -> Tensor:
        if len(self.index) > out.dim() - 1:
            raise ValueError(f"fastattr.captum: cannot choose target column {self.index} with output shape "
                             f"{tuple(out.shape)}")
        return _scalar_rows(out[(slice(None),) + self.index])


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _convert_target(target, batch: int):
    """A fastattr target, or a list of per-example targets (for list-of-tuples)."""
    if target is None:
        return _scalar_rows
    if _is_index(target):
        return _Column((target,))
    if isinstance(target, tuple):
        if not all(_is_index(t) or isinstance(t, slice) for t in target):
            raise TypeError(f"fastattr.captum: a tuple target must hold ints, got {target!r}")
        return _Column(target)
    if isinstance(target, Tensor):
        if target.numel() == 1 and not target.dtype.is_floating_point and target.dtype != torch.bool:
            return _Column((int(target.reshape(()).item()),))
        if target.dim() == 1 and target.numel() == batch:
            return target
        raise ValueError(f"fastattr.captum: target tensor of shape {tuple(target.shape)} is not valid for "
                         f"{batch} examples")
    if isinstance(target, list):
        if len(target) != batch:
            raise ValueError(f"fastattr.captum: target list has {len(target)} entries for {batch} examples")
        if all(_is_index(t) for t in target):
            return torch.tensor(target, dtype=torch.long)
        if all(isinstance(t, tuple) for t in target):
            return [_Column(t) for t in target]
        raise TypeError("fastattr.captum: a target list must hold ints or tuples of ints")
    raise TypeError(f"fastattr.captum: target type {type(target).__name__} is not valid")


def _slice_example(value, batch: int, b0: int, b1: int):
    """Rows b0..b1 of a per-example tensor (first dimension = batch > 1); else unchanged."""
    if isinstance(value, Tensor) and value.dim() >= 1 and batch > 1 and value.shape[0] == batch:
        return value[b0:b1]
    return value


def _run(forward_func, x: Tensor, target, additional_forward_args, call: Callable):
    """Run ``call(model, x_part, target_part, b0, b1)`` once, or once per example
    when per-example forward arguments or per-example tuple targets need it, and
    concatenate the results."""
    batch = x.shape[0]
    args = _format_args(additional_forward_args)
    target = _convert_target(target, batch)
    if isinstance(target, Tensor):
        target = target.to(x.device)

    def per_example(a) -> bool:
        return isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == batch

    split = isinstance(target, list) or (args is not None and any(per_example(a) for a in args))
    if not split:
        model = forward_func if args is None else (lambda z: forward_func(z, *args))
        return call(model, x, target, 0, batch)

    results = []
    for b in range(batch):
        def model(z, b=b):
            expanded = tuple(
                a[b:b + 1].repeat((z.shape[0],) + (1,) * (a.dim() - 1)) if per_example(a) else a
                for a in args
            )
            return forward_func(z, *expanded)

        model_b = model if args is not None else forward_func
        if isinstance(target, list):
            target_b = target[b]
        elif isinstance(target, Tensor):
            target_b = target[b:b + 1]
        else:
            target_b = target
        results.append(call(model_b, x[b:b + 1], target_b, b, b + 1))
    if isinstance(results[0], tuple):
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
    return torch.cat(results)


def _check_kwargs(kwargs: dict, allowed: tuple, cls: str) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"fastattr.captum: {cls}.attribute() got unexpected keyword arguments {unknown}")


# --------------------------------------------------------------------------- methods


class _Attribution:
    """Common part of the gradient methods: a fastattr function and the
    translation of Captum keywords into its arguments."""

    _captum_keywords: tuple = ()
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

    # fastattr side ---------------------------------------------------------
    def _fastattr_kwargs(self, kwargs: dict) -> dict:
        """Captum keywords (except inputs/target/additional_forward_args) ->
        fastattr keywords; per-example tensors among them are sliced by the
        caller via :meth:`_slice`."""
        _check_kwargs(kwargs, self._captum_keywords, type(self).__name__)
        return {}

    def _compute(self, model, x: Tensor, target, **fa_kwargs):
        raise NotImplementedError

    def _attribute(self, inputs, target, additional_forward_args, **kwargs):
        x, is_tuple = _format_inputs(inputs)
        fa = self._fastattr_kwargs(kwargs)
        batch = x.shape[0]

        def call(model, xs, ts, b0, b1):
            part = {k: _slice_example(v, batch, b0, b1) if k == "baselines" else v for k, v in fa.items()}
            return self._compute(model, xs, ts, **part)

        return _format_output(is_tuple, _run(self.forward_func, x, target, additional_forward_args, call))


class Saliency(_Attribution):
    """Captum's ``Saliency``: the gradient (absolute value by default)."""

    _captum_keywords = ("abs",)

    def _fastattr_kwargs(self, kwargs):
        _check_kwargs(kwargs, self._captum_keywords, "Saliency")
        return {"abs": kwargs.get("abs", True)}

    def _compute(self, model, x, target, abs=True, batch_size=None):
        return saliency(model, x, target=target, abs=abs, batch_size=batch_size)

    def attribute(self, inputs, target=None, abs: bool = True, additional_forward_args=None):
        return self._attribute(inputs, target, additional_forward_args, abs=abs)


class InputXGradient(_Attribution):
    """Captum's ``InputXGradient``: input times gradient."""

    _multiply_by_inputs = True

    def _compute(self, model, x, target, batch_size=None):
        return input_x_gradient(model, x, target=target, batch_size=batch_size)

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self._attribute(inputs, target, additional_forward_args)


class _ModifiedRelu(_Attribution):
    _function = None

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"fastattr.captum: {type(self).__name__} needs an nn.Module (as in Captum), got {type(model).__name__}"
            )
        super().__init__(model)
        self.model = model

    def _compute(self, model, x, target, batch_size=None):
        return type(self)._function(model, x, target=target, batch_size=batch_size)

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self._attribute(inputs, target, additional_forward_args)


class GuidedBackprop(_ModifiedRelu):
    """Captum's ``GuidedBackprop``: ReLUs pass ``relu(grad)`` where their input is positive."""

    _function = staticmethod(guided_backprop)


class Deconvolution(_ModifiedRelu):
    """Captum's ``Deconvolution``: ReLUs pass ``relu(grad)``."""

    _function = staticmethod(deconvnet)


class IntegratedGradients(_Attribution):
    """Captum's ``IntegratedGradients`` (``multiply_by_inputs=True`` only)."""

    _captum_keywords = ("baselines", "n_steps", "method", "internal_batch_size", "return_convergence_delta")
    _multiply_by_inputs = True

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True) -> None:
        if not multiply_by_inputs:
            raise NotImplementedError(
                "fastattr.captum: IntegratedGradients(multiply_by_inputs=False) is not supported; "
                "fastattr's IG always multiplies by (inputs - baselines)"
            )
        super().__init__(forward_func)

    def has_convergence_delta(self) -> bool:
        return True

    def _fastattr_kwargs(self, kwargs):
        _check_kwargs(kwargs, self._captum_keywords, "IntegratedGradients")
        baselines = _unwrap_single(kwargs.get("baselines"), "baselines")
        return {
            "baselines": baselines,
            "n_steps": kwargs.get("n_steps", 50),
            "method": kwargs.get("method", "gausslegendre"),
            "batch_size": kwargs.get("internal_batch_size"),
            "return_delta": kwargs.get("return_convergence_delta", False),
        }

    def _compute(self, model, x, target, baselines=None, n_steps=50, method="gausslegendre", batch_size=None,
                 return_delta=False):
        return integrated_gradients(model, x, target=target, baselines=baselines, n_steps=n_steps, method=method,
                                    batch_size=batch_size, return_delta=return_delta)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size=None, return_convergence_delta: bool = False):
        return self._attribute(inputs, target, additional_forward_args, baselines=baselines, n_steps=n_steps,
                               method=method, internal_batch_size=internal_batch_size,
                               return_convergence_delta=return_convergence_delta)


# --------------------------------------------------------------------------- NoiseTunnel


def _captum_delta_order(delta: Tensor, batch: int, n: int, per_chunk: int) -> Tensor:
    """Sample-major deltas (row b*n+i) in Captum's order: chunk after chunk of
    ``per_chunk`` samples, each chunk sample-major, then the remainder."""
    grid = delta.view(batch, n)
    parts = [grid[:, s0:min(s0 + per_chunk, n)].reshape(-1) for s0 in range(0, n, per_chunk)]
    return torch.cat(parts)


class NoiseTunnel:
    """Captum's ``NoiseTunnel`` over one of this module's attribution classes."""

    def __init__(self, attribution_method: _Attribution) -> None:
        if not isinstance(attribution_method, _Attribution):
            raise TypeError(
                "fastattr.captum: NoiseTunnel needs an attribution object from fastattr.captum "
                f"(e.g. fastattr.captum.Saliency(model)), got {type(attribution_method).__name__}"
            )
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
                  noise: Tensor | None = None, **kwargs):
        x, is_tuple = _format_inputs(inputs)
        if nt_type not in KINDS:
            raise ValueError(f"fastattr.captum: nt_type must be one of {list(KINDS)}, got {nt_type!r}")
        n = _check_count(nt_samples, "nt_samples")
        per_chunk = n if nt_samples_batch_size is None else min(n, _check_count(nt_samples_batch_size,
                                                                                "nt_samples_batch_size"))
        stdev = _unwrap_single(stdevs, "stdevs")
        target = kwargs.pop("target", None)
        args = kwargs.pop("additional_forward_args", None)
        inner = self.attribution_method
        fa = inner._fastattr_kwargs(kwargs)
        inner_batch = fa.pop("batch_size", None)
        return_delta = fa.get("return_delta", False)
        batch = x.shape[0]

        x = x.detach()
        eps = _unit_noise(x, n, noise, generator)
        baselines = fa.pop("baselines", None) if "baselines" in fa else _NO_BASELINES
        per_row = False
        if draw_baseline_from_distrib and isinstance(baselines, Tensor):
            if baselines.dim() != x.dim() or baselines.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"fastattr.captum: with draw_baseline_from_distrib, baselines must have the shape (K, "
                    f"*{tuple(x.shape[1:])}), got {tuple(baselines.shape)}"
                )
            device = generator.device if generator is not None else baselines.device
            idx = torch.randint(baselines.shape[0], (batch * n,), generator=generator, device=device)
            baselines = baselines[idx.to(baselines.device)]
            per_row = True
        elif isinstance(baselines, Tensor):
            baselines = check_baselines(baselines, x)  # one per example, expanded by smooth_grad

        def base(model, inputs, target=None, batch_size=None, **kw):
            # smooth_grad's batch_size bounds the noisy samples per chunk; the base
            # uses Captum's internal_batch_size instead.
            return inner._compute(model, inputs, target, batch_size=inner_batch, **kw)

        def call(model, xs, ts, b0, b1):
            part = dict(fa)
            if baselines is not _NO_BASELINES:
                if per_row:
                    part["baselines"] = baselines[b0 * n:b1 * n]
                else:
                    part["baselines"] = _slice_example(baselines, batch, b0, b1)
            return smooth_grad(model, xs, target=ts, base=base, n_samples=n, stdevs=stdev, kind=nt_type,
                               noise=eps[b0 * n:b1 * n], batch_size=(b1 - b0) * per_chunk, **part)

        result = _run(self.forward_func, x, target, args, call)
        if return_delta:
            attr, delta = result
            result = attr, _captum_delta_order(delta, batch, n, per_chunk)
        return _format_output(is_tuple, result)


_NO_BASELINES = object()
