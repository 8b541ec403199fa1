"""Argument checks shared by every attribution method (targets: :mod:`fastattr.targets`)."""

from __future__ import annotations

import contextlib
import contextvars
import math

import torch
from torch import Tensor

from ..targets import Target  # noqa: F401  (the type of every method's ``target``)


_DERIVED = contextvars.ContextVar("fastattr_derived_inputs", default=False)


@contextlib.contextmanager
def derived_inputs():
    """Inside, the finiteness scans of :func:`check_inputs` / :func:`check_baselines`
    are skipped: a method that calls another on inputs it built from checked ones
    (a noise tunnel's chunks) must not pay a host sync per chunk."""
    token = _DERIVED.set(True)
    try:
        yield
    finally:
        _DERIVED.reset(token)


def _all_finite(t: Tensor) -> bool:
    return _DERIVED.get() or bool(torch.isfinite(t).all())


def non_finite_error(t: Tensor, name: str, where: str = "fastattr") -> ValueError:
    """The error for a tensor holding NaN or Inf: how many, and where the first
    is (only computed on the error path)."""
    bad = ~torch.isfinite(t)
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    return ValueError(
        f"{where}: {name} contains NaN or infinite values: expected finite values, got {int(bad.sum())} non-finite "
        f"of {t.numel()} (e.g. {t[first].item()} at index {first})")


def check_inputs(inputs, name: str = "inputs") -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"fastattr: {name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"fastattr: {name} must be a floating-point tensor, got {inputs.dtype}")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"fastattr: {name} must have a non-empty batch dimension, got shape {tuple(inputs.shape)}")
    if not _all_finite(inputs):
        raise non_finite_error(inputs, name)
    return inputs


def memory_format(t: Tensor) -> torch.memory_format:
    """channels_last for a channels_last 4-D tensor, else contiguous (what the
    ops keep for their outputs)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def check_baselines(baselines, inputs: Tensor, name: str = "baselines") -> Tensor:
    """``None`` → zeros; a number → constant; a tensor broadcastable to ``inputs``.
    The result is dense in the inputs' memory format."""
    fmt = memory_format(inputs)
    if baselines is None:
        return torch.zeros_like(inputs, memory_format=fmt)
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        if not math.isfinite(baselines):
            raise ValueError(f"fastattr: {name} contains NaN or infinite values: expected a finite number, got "
                             f"{baselines}")
        return torch.full_like(inputs, float(baselines), memory_format=fmt)
    if not isinstance(baselines, Tensor):
        raise TypeError(f"fastattr: {name} must be None, a number or a tensor, got {type(baselines).__name__}")
    if baselines.device != inputs.device:
        raise ValueError(f"fastattr: {name} must be on {inputs.device} like inputs, got {baselines.device}")
    try:
        out = torch.broadcast_to(baselines, inputs.shape)
    except RuntimeError:
        raise ValueError(
            f"fastattr: {name} of shape {tuple(baselines.shape)} does not broadcast to inputs of shape {tuple(inputs.shape)}"
        ) from None
    if baselines.dtype.is_complex or baselines.dtype == torch.bool:
        raise TypeError(f"fastattr: {name} must hold real numbers (any real dtype; converted to the inputs' "
                        f"{inputs.dtype}), got {baselines.dtype}")
    if not _all_finite(out):
        raise non_finite_error(baselines, name)
    return out.to(inputs.dtype).contiguous(memory_format=fmt)
