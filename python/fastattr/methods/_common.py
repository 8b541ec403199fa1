"""Argument checking and target selection shared by every attribution method.

``target`` may be
- ``None``: the model's top class on the unperturbed input, per sample;
- an int: the same class for every sample;
- a sequence or 1-D integer tensor of length B: one class per sample;
- a callable ``f(output) -> Tensor[N]``: any scalar per sample (segmentation
  scores, regression outputs), applied to the model output of each batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Union

import torch
from torch import Tensor

Target = Union[None, int, Sequence[int], Tensor, Callable[[Tensor], Tensor]]


def check_inputs(inputs, name: str = "inputs") -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"fastattr: {name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"fastattr: {name} must be a floating-point tensor, got {inputs.dtype}")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"fastattr: {name} must have a non-empty batch dimension, got shape {tuple(inputs.shape)}")
    if not torch.isfinite(inputs).all():
        raise ValueError(f"fastattr: {name} contains NaN or infinite values")
    return inputs


def check_baselines(baselines, inputs: Tensor, name: str = "baselines") -> Tensor:
    """``None`` → zeros; a number → constant; a tensor broadcastable to ``inputs``."""
    if baselines is None:
        return torch.zeros_like(inputs)
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        if not math.isfinite(baselines):
            raise ValueError(f"fastattr: {name} contains NaN or infinite values")
        return torch.full_like(inputs, float(baselines))
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
    if not torch.isfinite(out).all():
        raise ValueError(f"fastattr: {name} contains NaN or infinite values")
    return out.to(inputs.dtype).contiguous()


def model_output(model, batch: Tensor) -> Tensor:
    out = model(batch)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"fastattr: model must return a tensor, got {type(out).__name__}; wrap it so that it returns "
            "the scores to explain (e.g. lambda x: model(x)['out'])"
        )
    if out.dim() == 0 or out.shape[0] != batch.shape[0]:
        raise ValueError(
            f"fastattr: model returned shape {tuple(out.shape)} for a batch of {batch.shape[0]}; "
            "the first dimension must be the batch"
        )
    return out


def resolve_target(model, inputs: Tensor, target: Target):
    """Turn ``target`` into a per-sample class tensor of shape (B,) or a callable.

    Class targets need a model output of shape (B, C). ``None`` evaluates the
    model once on ``inputs`` (no gradient) to take the argmax.
    """
    if callable(target) and not isinstance(target, Tensor):
        return target
    batch = inputs.shape[0]
    if target is None:
        with torch.no_grad():
            out = model_output(model, inputs)
        _check_class_output(out)
        return out.argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("fastattr: target must be an int, a sequence of ints, a tensor or a callable, got bool")
    if isinstance(target, int):
        idx = torch.full((batch,), target, dtype=torch.long, device=inputs.device)
    else:
        idx = torch.as_tensor(target, device=inputs.device)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1 or idx.shape[0] != batch:
            raise ValueError(
                f"fastattr: target must be an int or {batch} integer class indices (one per sample), "
                f"got {tuple(idx.shape)} of {idx.dtype}"
            )
        idx = idx.long()
    if (idx < 0).any():
        raise ValueError(f"fastattr: target contains negative class indices: {idx.tolist()}")
    return idx


def _check_class_output(out: Tensor) -> None:
    if out.dim() != 2:
        raise ValueError(
            f"fastattr: class targets need a model output of shape (batch, classes), got {tuple(out.shape)}; "
            "pass target as a callable mapping the output to one scalar per sample"
        )


def select_target(output: Tensor, target, repeats: int = 1, interleave: bool = False) -> Tensor:
    """One scalar per row of ``output`` for the resolved ``target``.

    ``output`` comes from a batch that holds ``repeats`` copies of the B samples:
    step-major (copy k is rows k*B..k*B+B-1) unless ``interleave`` (each sample's
    copies adjacent, as in noise tunnels).
    """
    if callable(target) and not isinstance(target, Tensor):
        scores = target(output)
        if not isinstance(scores, Tensor) or scores.shape != (output.shape[0],):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"fastattr: target callable must return one scalar per sample, shape ({output.shape[0]},), got {shape}"
            )
        return scores
    _check_class_output(output)
    if int(target.max()) >= output.shape[1]:
        raise ValueError(f"fastattr: target {int(target.max())} is out of range for a model with {output.shape[1]} outputs")
    idx = target.repeat_interleave(repeats) if interleave else target.repeat(repeats)
    return output.gather(1, idx.unsqueeze(1)).squeeze(1)
