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

# Default rows per forward pass, from input elements (a proxy for a chunk's
# activation memory in convolutional nets), so that peak memory is bounded
# whatever n_steps and the batch are.
# CPU, measured (n_steps=32, 2 shared cores, interleaved rounds): a pass pays a
# fixed per-layer cost, and loses cache locality once its activations outgrow
# the caches. Small samples: the bundled 3x64x64 CNN ran IG at 32 rows/pass in
# 1.05 s and at 80 rows in 1.37 s (10 rounds), so 2**19 input elements (42 rows
# of 3x64x64). Large samples, whose single-row activations exceed the caches
# anyway: torchvision resnet18 at 3x224x224 ran IG at 8 rows/pass 7% faster
# than at 4 and GNL-IG 10% faster (6 rounds), 16 rows no faster, so at least 8
# rows as long as they hold at most 2**21 elements (~200 MB of resnet18
# activations). And a batch of at most 2**21 elements is never split into
# uneven passes (B=4 at 224x224: 4 rows, not 3 + 1).
# CUDA: 2**23 elements (~55 rows at 3x224x224, ~1.3 GB for resnet18), to keep
# the GPU busy.
_CPU_ELEMENTS, _CPU_MIN_ROWS, _CPU_MAX_ELEMENTS = 1 << 19, 8, 1 << 21
_CUDA_ELEMENTS = 1 << 23
_DEFAULT_MAX_ROWS = 512


def default_batch_size(inputs: Tensor) -> int:
    """Rows per forward pass when ``batch_size=None``.

    CUDA (and other accelerators): ``2**23 // elements_per_sample``. CPU:
    ``2**19 // elements_per_sample`` (42 images of 3x64x64), raised to 8 rows
    and to the batch size B as long as those rows hold at most 2**21 elements
    (8 images of 3x224x224, not 3). Always between 1 and 512. Peak memory is
    thus bounded independently of ``n_steps`` and of B."""
    per_sample = max(1, math.prod(inputs.shape[1:]))
    if inputs.device.type != "cpu":
        rows = _CUDA_ELEMENTS // per_sample
    else:
        rows = _CPU_ELEMENTS // per_sample
        fits = _CPU_MAX_ELEMENTS // per_sample
        rows = max(rows, min(_CPU_MIN_ROWS, fits))
        if inputs.shape[0] <= fits:
            rows = max(rows, inputs.shape[0])
    return max(1, min(_DEFAULT_MAX_ROWS, rows))


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
