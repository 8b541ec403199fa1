"""Integrated Gradients (Sundararajan et al., 2017) and GNL-IG (Kwon et al., 2020).

``IG(x) = (x - x') * sum_k w_k grad f_c(x' + alpha_k (x - x'))`` with the nodes
and weights of :func:`fastattr.methods.quadrature.nodes_and_weights`: the same
computation as ``captum.attr.IntegratedGradients(model).attribute(...)`` with
``multiply_by_inputs=True`` (spec §0.1).

The path steps are evaluated chunk by chunk: each chunk's path batch is written
by the ``ig_path_inputs`` op, run forward and backward once, and its gradients
are folded into a running sum by ``ig_accumulate_`` (in float32 for half and
bfloat16 inputs). Memory is bounded by the chunk, not by ``n_steps``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .. import _ops as ops
from .. import engine
from ..guidance import GuidedMode, guided
from ..targets import resolve
from ._common import Target, check_baselines, check_inputs, memory_format
from .quadrature import nodes_and_weights


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _path_integral(model, inputs, target, baselines, n_steps, method, batch_size, return_delta,
                   context: GuidedMode | None, multiply_by_inputs: bool = True):
    x = check_inputs(inputs).detach()
    xb = check_baselines(baselines, x).detach()
    alphas, weights = nodes_and_weights(method, n_steps)
    batch_size = engine.check_batch_size(batch_size, x)
    if not isinstance(return_delta, bool):
        raise TypeError(f"fastattr: return_delta must be a bool, got {type(return_delta).__name__}")
    target = resolve(model, x, target, batch_size)

    acc = _accumulation_dtype(x.dtype)
    # Nodes and weights live on the device, in the kernels' arithmetic precision
    # (the value a Python float takes there), so a tile costs no host transfer.
    alphas = torch.tensor(alphas, dtype=acc, device=x.device)
    weights = torch.tensor(weights, dtype=acc, device=x.device)
    total = torch.zeros(x.shape, dtype=acc, device=x.device).contiguous(memory_format=memory_format(x))

    def build(tile):
        return ops.ig_path_inputs(x[tile.s0:tile.s1], xb[tile.s0:tile.s1], alphas[tile.k0:tile.k1])

    tiles = engine.plan(x.shape[0], len(alphas), batch_size)
    for tile, grad, _ in engine.gradients(model, target, tiles, build, context):
        ops.ig_accumulate_(total[tile.s0:tile.s1], grad, weights[tile.k0:tile.k1])

    if not isinstance(multiply_by_inputs, bool):
        raise TypeError(f"fastattr: multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
    attr = (total * (x.to(acc) - xb.to(acc)) if multiply_by_inputs else total).to(x.dtype)
    if not return_delta:
        return attr
    # Completeness gap per sample, like Captum's compute_convergence_delta; the
    # scores use the ordinary forward pass (guided rules change only gradients).
    gap = engine.forward_scores(model, x, target, batch_size) - engine.forward_scores(model, xb, target, batch_size)
    delta = attr.to(acc).flatten(1).sum(1) - gap.to(acc)
    return attr, delta


@engine.several_inputs(baselines=check_baselines)
def integrated_gradients(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    baselines: Tensor | float | None = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    batch_size: int | None = None,
    return_delta: bool = False,
    multiply_by_inputs: bool = True,
):
    """Integrated Gradients, Captum-compatible.

    Args:
        model: maps a batch ``(N, ...)`` to scores ``(N, classes)`` (class
            targets) or any tensor with batch dimension ``N`` (callable target).
            It is called as is: put it in ``eval()`` mode first if it has dropout
            or batch norm (the path steps run as one batch, as in Captum). Its
            parameters, flags and hooks are left untouched.
        inputs: floating tensor ``(B, ...)`` of finite values.
        target: ``None`` (each sample's argmax on the unperturbed input), an int,
            one class per sample (sequence or 1-D tensor), a region
            (:func:`fastattr.targets.region`, segmentation), or a callable
            scoring each row of a chunk's model output (``f(output)``, row by
            row, or ``f(output, index)`` with each row's sample index); see
            :mod:`fastattr.targets`.
        baselines: ``None`` (zeros), a number, or a tensor broadcastable to
            ``inputs``.
        n_steps: number of quadrature nodes (>= 1).
        method: ``"gausslegendre"`` (default), ``"riemann_left"``,
            ``"riemann_right"``, ``"riemann_middle"`` or ``"riemann_trapezoid"``
            (see :mod:`fastattr.methods.quadrature`, incl. Captum's trapezoid
            weights).
        batch_size: most samples in one forward pass. A chunk holds
            ``max(1, batch_size // B)`` path steps of the B samples (Captum's
            ``internal_batch_size`` rule); if ``B > batch_size`` the batch is
            split as well. ``None`` picks a size from the input size (see
            :func:`fastattr.engine.default_batch_size`). The result
            does not depend on it beyond rounding.
        return_delta: also return the per-sample completeness gap
            ``sum(attr) - (f_c(x) - f_c(x'))`` (Captum's convergence delta).

        multiply_by_inputs: ``False`` returns the path integral of the gradient
            without the factor ``(x - x')`` (Captum's ``multiply_by_inputs=False``,
            "local" IG); ``delta`` is then still ``sum(attr) - gap``, as in Captum.

    Several inputs: ``inputs`` may be a tuple of tensors (the model takes them
    as positional arguments) with ``baselines`` a number or a tuple with one
    entry per input; the result is then a tuple. ``additional_forward_args``
    (a value or tuple) is passed to the model after the inputs (see
    :func:`fastattr.engine.several_inputs`).

    Returns:
        ``attr`` with the shape and dtype of ``inputs``, or ``(attr, delta)``
        with ``delta`` of shape ``(B,)``.
    """
    return _path_integral(model, inputs, target, baselines, n_steps, method, batch_size, return_delta, None,
                          multiply_by_inputs)


@engine.several_inputs(baselines=check_baselines)
def gnl_integrated_gradients(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    baselines: Tensor | float | None = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    batch_size: int | None = None,
    return_delta: bool = False,
    multiply_by_inputs: bool = True,
):
    """GNL-IG: Integrated Gradients with guided non-linearities (Kwon et al., ICPR 2020; spec §1).

    The path gradients are taken under ``fastattr.guided(model, mode="guided",
    maxpool=True)``: every ReLU / ReLU6 passes only positive gradients where it
    is active, and every 2-D max-pool multiplies its routed gradient by the
    nearest-upsampled ``grad_output > 0`` mask (the reference rule). Unlike the
    reference's module hooks, functional and in-place ReLUs are guided too.
    Everything else (arguments, batching, defaults n = 50 / gausslegendre /
    zero baseline, several inputs, ``multiply_by_inputs``) is as in
    :func:`integrated_gradients`. Completeness does not
    hold, so ``delta`` (if requested) is not expected to vanish.

    For the reference's heatmap use :func:`gnl_heatmap`.
    """
    return _path_integral(model, inputs, target, baselines, n_steps, method, batch_size, return_delta,
                          guided(model, mode="guided", maxpool=True), multiply_by_inputs)


def gnl_heatmap(attributions: Tensor) -> Tensor:
    """GNL's heatmap (spec §1.3): ``|attr.sum(dim=1)|`` divided by its maximum, per sample.

    ``attributions`` is ``(B, C, H, W)``; the result is ``(B, 1, H, W)`` in
    [0, 1] with a maximum of exactly 1 per sample. A sample whose map is all zero
    (the reference returns NaN there) gives zeros and a warning.
    """
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(f"fastattr: attributions must be a (B, C, H, W) tensor, got {shape}")
    heat = attributions.sum(dim=1, keepdim=True).abs()
    peak = heat.amax(dim=(1, 2, 3), keepdim=True)
    zero = peak == 0
    if bool(zero.any()):
        warnings.warn("fastattr.gnl_heatmap: an attribution map is all zero; its heatmap is set to zeros",
                      RuntimeWarning, stacklevel=2)
    return torch.where(zero, torch.zeros_like(heat), heat / torch.where(zero, torch.ones_like(peak), peak))
