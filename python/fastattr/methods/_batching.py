"""The one batched gradient loop behind every gradient method.

A method evaluates the gradient of the target score at ``n_points`` points per
sample (IG: the path steps; saliency: the input itself). The points of a chunk
are built step-major, ``(k1 - k0) * (s1 - s0)`` rows, by the method's ``build``
callback; one forward and one backward run per chunk, and the method folds each
chunk's gradient into its result before the next chunk is built, so memory is
bounded by the chunk size, not by the number of points.

``batch_size`` is the most samples (rows) in one forward pass. A chunk holds
``max(1, batch_size // S)`` points of ``S = min(B, batch_size)`` samples: with
``B <= batch_size`` this is Captum's ``internal_batch_size`` rule; with more
samples than ``batch_size`` the batch is split too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ._common import model_output, select_target

# Default rows per forward pass: an input-element budget per device, so that a
# chunk's activation memory (roughly proportional to its input elements for
# convolutional nets) stays bounded whatever n_steps and the batch are.
# CPU, measured (IG, n_steps=32, 2 shared cores): larger passes do not run faster
# (resnet18 at 224x224: 4 to 128 rows all took 55-90 s; a 3-conv CNN at 64x64:
# 32-256 rows within noise, 8 rows slower with 2 threads) while memory grows
# linearly (~24 MB per row for resnet18 at 224x224, ~2 MB per row for the CNN).
# 2**20 elements is 6 rows at 3x224x224 (~150 MB) and 85 rows at 3x64x64.
# CUDA: 2**23 elements (~55 rows at 3x224x224, ~1.3 GB for resnet18), to keep
# the GPU busy; not measured here.
_DEFAULT_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 23}
_DEFAULT_MAX_ROWS = 512


def default_batch_size(inputs: Tensor) -> int:
    """Rows per forward pass when ``batch_size=None``:
    ``clamp(budget // elements_per_sample, 1, 512)`` with a budget of 2**20
    input elements on the CPU (6 images of 3x224x224, 85 of 3x64x64) and 2**23
    on CUDA (and other accelerators). Peak memory is thus bounded independently
    of ``n_steps`` and of the number of samples."""
    per_sample = max(1, math.prod(inputs.shape[1:]))
    budget = _DEFAULT_ELEMENTS["cpu" if inputs.device.type == "cpu" else "cuda"]
    return max(1, min(_DEFAULT_MAX_ROWS, budget // per_sample))


def check_batch_size(batch_size, inputs: Tensor) -> int:
    if batch_size is None:
        return default_batch_size(inputs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"fastattr: batch_size must be None or an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"fastattr: batch_size must be at least 1, got {batch_size}")
    return batch_size


def _sub_target(target, s0: int, s1: int):
    if callable(target) and not isinstance(target, Tensor):
        return target
    return target[s0:s1]


def iter_gradients(
    model: Callable[[Tensor], Tensor],
    target,
    n_points: int,
    n_samples: int,
    build: Callable[[int, int, int, int], Tensor],
    batch_size: int,
    context: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Iterator[tuple[int, int, int, int, Tensor]]:
    """Yield ``(k0, k1, s0, s1, grad)`` chunk by chunk.

    ``build(k0, k1, s0, s1)`` returns the points ``k0..k1-1`` of samples
    ``s0..s1-1``, step-major (row ``(k - k0) * (s1 - s0) + (s - s0)``).
    ``grad`` is the gradient of the resolved target's score at each of these
    rows, same shape and dtype. ``target`` is a resolved target (per-sample
    class tensor or callable, see ``_common.resolve_target``). ``context``
    (e.g. ``lambda: fastattr.guided(model)``) is entered around each forward
    and backward pass. The model's parameters and flags are not touched:
    gradients are taken with respect to the points only.
    """
    rows = min(n_samples, batch_size)
    steps = max(1, batch_size // rows)
    ctx = context if context is not None else contextlib.nullcontext
    for s0 in range(0, n_samples, rows):
        s1 = min(s0 + rows, n_samples)
        sub_target = _sub_target(target, s0, s1)
        for k0 in range(0, n_points, steps):
            k1 = min(k0 + steps, n_points)
            with torch.enable_grad(), ctx():
                points = build(k0, k1, s0, s1).detach().requires_grad_(True)
                scores = select_target(model_output(model, points), sub_target, repeats=k1 - k0)
                (grad,) = torch.autograd.grad(scores.sum(), points)
            del points, scores
            yield k0, k1, s0, s1, grad


def target_scores(model, inputs: Tensor, target, batch_size: int) -> Tensor:
    """The target score of every sample (no gradient), in chunks of ``batch_size``."""
    out = []
    with torch.no_grad():
        for s0 in range(0, inputs.shape[0], batch_size):
            s1 = min(s0 + batch_size, inputs.shape[0])
            out.append(select_target(model_output(model, inputs[s0:s1]), _sub_target(target, s0, s1)))
    return torch.cat(out)
