"""Integrated Gradients (Sundararajan et al., 2017) and GNL-IG (Kwon et al., 2020).

``IG(x) = (x - x') * sum_k w_k grad f_c(x' + alpha_k (x - x'))`` with the nodes
and weights of :func:`fastattr.methods.quadrature.nodes_and_weights`: the same
computation as ``captum.attr.IntegratedGradients(model).attribute(...)`` with
``multiply_by_inputs=True`` (spec §0.1).

The path steps are evaluated chunk by chunk: each chunk's path batch is written
by the ``ig_path_inputs`` op, run forward and backward once, and its gradients
are folded into a running sum by ``ig_accumulate_`` (in float32 for half and
bfloat16 inputs). Memory is bounded by the chunk, not by ``n_steps``.

``method="adaptive"`` (issue 14) chooses the nodes per image instead: see
:func:`adaptive_integrated_gradients`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _ops as ops
from .. import engine
from ..guidance import GuidedMode, guided
from ..targets import resolve
from ._common import Target, check_baselines, check_inputs, memory_format
from .quadrature import check_n_steps, nodes_and_weights

ADAPTIVE = "adaptive"


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _prepare(model, inputs, target, baselines, batch_size, return_delta):
    """The arguments every path integral shares, checked (the target resolved
    last: ``target=None`` costs a forward pass): ``(x, x', batch_size, target)``."""
    x = check_inputs(inputs).detach()
    xb = check_baselines(baselines, x).detach()
    batch_size = engine.check_batch_size(batch_size, x)
    if not isinstance(return_delta, bool):
        raise TypeError(f"fastattr: return_delta must be a bool, got {type(return_delta).__name__}")
    return x, xb, batch_size, resolve(model, x, target, batch_size)


def _path_integral(model, inputs, target, baselines, n_steps, method, batch_size, return_delta,
                   context: GuidedMode | None, multiply_by_inputs: bool = True, tolerance=None, max_evals=None,
                   nodes=None):
    """``nodes``: explicit ``(alphas, weights)`` lists instead of ``method`` and
    ``n_steps`` (benchmarks/adaptive_ig.py measures fitted per-model schedules)."""
    if not isinstance(multiply_by_inputs, bool):
        raise TypeError(f"fastattr: multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
    if method == ADAPTIVE:
        budget = check_n_steps(n_steps) if max_evals is None else max_evals
        result = _adaptive(model, inputs, target, baselines, tolerance, budget, batch_size, return_delta, context,
                           multiply_by_inputs=multiply_by_inputs)
        return (result.attributions, result.delta) if return_delta else result.attributions
    if tolerance is not None or max_evals is not None:
        given = ", ".join(k for k, v in (("tolerance", tolerance), ("max_evals", max_evals)) if v is not None)
        raise ValueError(f"fastattr: {given} only apply to method='adaptive', got method={method!r}; "
                         f"drop {given} or pass method='adaptive'")
    alphas, weights = nodes_and_weights(method, n_steps) if nodes is None else nodes
    x, xb, batch_size, target = _prepare(model, inputs, target, baselines, batch_size, return_delta)

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

    attr = (total * (x.to(acc) - xb.to(acc)) if multiply_by_inputs else total).to(x.dtype)
    if not return_delta:
        return attr
    # Completeness gap per sample, like Captum's compute_convergence_delta; the
    # scores use the ordinary forward pass (guided rules change only gradients).
    gap = engine.forward_scores(model, x, target, batch_size) - engine.forward_scores(model, xb, target, batch_size)
    delta = attr.to(acc).flatten(1).sum(1) - gap.to(acc)
    return attr, delta


# --------------------------------------------------------------------------- adaptive nodes (issue 14)

# Uniform nodes to start from, and segments bisected per image and round. Four
# per round keep a round's batch (active images x 4 rows) fixed in shape; at a
# budget of 17 that is 5 + 3 rounds of 4.
_ADAPTIVE_INITIAL, _ADAPTIVE_PER_ROUND = 5, 4
# Per-node gradients are kept until the nodes are final (a node's trapezoid
# weight changes whenever a neighbouring segment is bisected): images run in
# groups whose store holds at most this many elements (CPU: 512 MB in float32;
# CUDA: a quarter of the device's memory).
_ADAPTIVE_CPU_STORE = 1 << 27
_ADAPTIVE_DEFAULT_TOLERANCE = 0.01
_ADAPTIVE_SELECTIONS = ("residual", "jump")


@dataclass
class AdaptiveResult:
    """What :func:`adaptive_integrated_gradients` returns.

    Attributes:
        attributions: ``(x - x') * sum_k w_k grad F(alpha_k)``, shape and dtype of the inputs.
        delta: ``(B,)`` completeness gap ``sum(attributions) - (F(x) - F(x'))``, with F at
            x and x' the scores of the path's end nodes (alpha = 1 and 0), which the
            method evaluates anyway.
        evals: ``(B,)`` int64, forward+backward evaluations (nodes) spent on each image;
            the method runs no forward-only pass (beyond the one forward pass of the
            inputs that ``target=None`` takes to find each image's top class).
        converged: ``(B,)`` bool, ``residual <= tolerance * |F(x) - F(x')|`` (GNL: see
            ``gnl``); False means the image stopped at ``max_evals``.
        residual: ``(B,)`` float64, ``sum |r|`` over the final trapezoid segments.
        alphas: per image, its final nodes in increasing order (float64, on the inputs' device).
        weights: per image, the trapezoid weights of those nodes (they sum to 1).
    """

    attributions: Tensor
    delta: Tensor
    evals: Tensor
    converged: Tensor
    residual: Tensor
    alphas: list
    weights: list


def _check_tolerance(tolerance) -> float:
    if tolerance is None:
        return _ADAPTIVE_DEFAULT_TOLERANCE
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise TypeError(f"fastattr: tolerance must be a number (a fraction of |F(x) - F(x')|), "
                        f"got {type(tolerance).__name__}")
    if not (0 <= tolerance < float("inf")):
        raise ValueError(f"fastattr: tolerance must be finite and >= 0 (a fraction of |F(x) - F(x')|), "
                         f"got {tolerance}")
    return float(tolerance)


def _check_max_evals(max_evals) -> int:
    if isinstance(max_evals, bool) or not isinstance(max_evals, int):
        raise TypeError(f"fastattr: max_evals must be an int (evaluations per image), "
                        f"got {type(max_evals).__name__}")
    if max_evals < 2:
        raise ValueError(f"fastattr: max_evals must be at least 2 (the path's two end nodes), got {max_evals}")
    return max_evals


def _store_limit(x: Tensor) -> int:
    if x.device.type == "cuda":
        return torch.cuda.get_device_properties(x.device).total_memory // 4 // x.element_size()
    return _ADAPTIVE_CPU_STORE


def _trapezoid(alphas: Tensor, n_valid: Tensor) -> Tensor:
    """Trapezoid weights of each image's nodes ``alphas`` (G, M) (sorted, the
    first ``n_valid[i]`` valid, padding after them): (G, M), zero on padding."""
    m = alphas.shape[1]
    slot = torch.arange(m, device=alphas.device)
    valid = slot < n_valid[:, None]
    # Padding repeats the last node, so the last valid node's right gap is zero.
    last = alphas.gather(1, (n_valid - 1)[:, None])
    a = torch.where(valid, alphas, last)
    gaps = a[:, 1:] - a[:, :-1]
    w = torch.zeros_like(a)
    w[:, :-1] += gaps / 2
    w[:, 1:] += gaps / 2
    return torch.where(valid, w, torch.zeros_like(w))


def _split(a: Tensor, size: Tensor, k: int) -> Tensor:
    """``k`` new nodes per image (rows of ``a``, sorted nodes; ``size``, the
    segments' |r|): greedily, ``k`` times, one more cut into the segment whose
    |r| per part is largest (a segment cut into m equal parts is expected to
    keep |r| / m: a kink stays in one part of 1/m the width). Usually that
    bisects the k segments of largest |r|; when fewer segments bend, a bending
    segment is cut into 3 or more parts rather than spending nodes on segments
    whose residual is zero. Ties go to the lower alpha. Returns (images, k)."""
    parts = torch.ones_like(size)
    picks = []
    for _ in range(k):
        j = (size / parts).argmax(dim=1, keepdim=True)  # argmax: the first of equal values
        picks.append(j)
        parts.scatter_add_(1, j, torch.ones_like(j, dtype=parts.dtype))
    picks = torch.cat(picks, dim=1)  # (images, k)
    # The i-th pick of a segment cut into m parts is its i-th interior node.
    same = picks[:, :, None] == picks[:, None, :]
    rank = torch.tril(same, diagonal=-1).sum(2) + 1
    left, right = a.gather(1, picks), a.gather(1, picks + 1)
    m = parts.gather(1, picks)
    return left + (right - left) * rank / m


def _adaptive(model, inputs, target, baselines, tolerance, max_evals, batch_size, return_delta,
              context: GuidedMode | None, select: str = "residual", multiply_by_inputs: bool = True) -> AdaptiveResult:
    tol = _check_tolerance(tolerance)
    budget = _check_max_evals(max_evals)
    x, xb, batch_size, resolved = _prepare(model, inputs, target, baselines, batch_size, return_delta)

    n_images = x.shape[0]
    per_image = budget * max(1, x[0].numel())
    group = max(1, min(n_images, _store_limit(x) // per_image))
    parts = [_adaptive_group(model, x[i:i + group], xb[i:i + group],
                             resolved.subset(torch.arange(i, min(i + group, n_images), device=x.device)),
                             tol, budget, batch_size, context, select, multiply_by_inputs)
             for i in range(0, n_images, group)]
    if len(parts) == 1:
        return parts[0]
    return AdaptiveResult(*(torch.cat([getattr(p, f) for p in parts]) for f in
                            ("attributions", "delta", "evals", "converged", "residual")),
                          [a for p in parts for a in p.alphas], [w for p in parts for w in p.weights])


def _adaptive_group(model, x, xb, target, tol, budget, batch_size, context, select,
                    multiply_by_inputs: bool = True) -> AdaptiveResult:
    """Adaptive trapezoid IG of one group of images (all on the device; one host
    sync per round: which images go on)."""
    acc = _accumulation_dtype(x.dtype)
    dev = x.device
    n_img = x.shape[0]
    diff = (x.to(acc) - xb.to(acc)).contiguous()
    # Per image and node slot: the node, its score F, its directional derivative
    # g = grad F . (x - x'), and its gradient. Slots fill in evaluation order.
    alphas = torch.full((n_img, budget), 2.0, dtype=torch.float64, device=dev)
    f_val = torch.zeros((n_img, budget), dtype=torch.float64, device=dev)
    g_val = torch.zeros((n_img, budget), dtype=torch.float64, device=dev)
    store = torch.zeros((n_img, budget) + tuple(x.shape[1:]), dtype=acc, device=dev)
    evals = torch.zeros(n_img, dtype=torch.int64, device=dev)

    def evaluate(images: Tensor, new: Tensor, n: int):
        """Forward+backward at nodes ``new`` (K, len(images)) of ``images``, into slots n..n+K-1."""
        k = new.shape[0]
        xi, xbi, table = x[images], xb[images], new.to(acc).contiguous()
        sub = target.subset(images)

        def build(tile):
            nodes = table[tile.k0:tile.k1, tile.s0:tile.s1].contiguous()
            return ops.ig_path_inputs(xi[tile.s0:tile.s1], xbi[tile.s0:tile.s1], nodes)

        for tile, grad, s in engine.gradients(model, sub, engine.plan(len(images), k, batch_size), build, context):
            rows_img = images[tile.s0:tile.s1].repeat(tile.n_points)
            rows_slot = torch.arange(n + tile.k0, n + tile.k1, device=dev).repeat_interleave(tile.n_samples)
            store[rows_img, rows_slot] = grad.to(acc)
            f_val[rows_img, rows_slot] = s.to(torch.float64)
        # g from the stored gradients, in shapes set by the algorithm only (not
        # by batch_size), so the nodes chosen do not depend on batch_size.
        slots = store[images, n:n + k].flatten(2).to(torch.float64)
        g_val[images, n:n + k] = (slots * diff[images].flatten(1).to(torch.float64)[:, None]).sum(2)
        # The nodes as evaluated (in the kernels' precision), for the weights.
        alphas[images, n:n + k] = table.t().to(torch.float64)
        evals[images] += k

    all_images = torch.arange(n_img, device=dev)
    n = min(_ADAPTIVE_INITIAL, budget)
    start = torch.linspace(0, 1, n, dtype=torch.float64, device=dev)
    evaluate(all_images, start[:, None].expand(n, n_img), 0)

    while True:
        order = alphas[:, :n].argsort(dim=1, stable=True)
        a = alphas.gather(1, order)
        f = f_val.gather(1, order)
        g = g_val.gather(1, order)
        # Images that stopped earlier have fewer nodes: padding (alpha = 2)
        # sorts last and its segments are masked out.
        valid = torch.arange(1, n, device=dev) < evals[:, None]
        width = torch.where(valid, a[:, 1:] - a[:, :-1], torch.zeros_like(a[:, 1:]))
        gap = f.gather(1, (evals - 1)[:, None]).squeeze(1) - f[:, 0]
        if context is None:
            r = torch.where(valid, f[:, 1:] - f[:, :-1], torch.zeros_like(width)) - width * (g[:, 1:] + g[:, :-1]) / 2
            scale = gap.abs()
        else:
            # Guided gradients do not integrate to F: the residual is the
            # trapezoid's own error indicator on the guided integrand, on the
            # scale of its integral.
            r = width * (g[:, 1:] - g[:, :-1]) / 2
            scale = (width * (g[:, 1:] + g[:, :-1]) / 2).sum(1).abs()
        residual = r.abs().sum(1)
        converged = residual <= tol * scale
        k = min(_ADAPTIVE_PER_ROUND, budget - n)
        if k == 0:
            break
        active = (~converged).nonzero().flatten()  # the round's one host sync
        if active.numel() == 0:
            break
        size = r[active].abs()
        if select == "jump":
            # The attribution-space jump of each segment: width/2 * ||(x - x') (grad F(b) - grad F(a))||,
            # the trapezoid's error indicator for the attribution vector itself.
            o = order[active]
            ga = store[active[:, None], o].flatten(2)
            jump = ((ga[:, 1:] - ga[:, :-1]) * diff[active].flatten(1)[:, None]).norm(dim=2).to(torch.float64)
            size = torch.where(valid[active], width[active] * jump / 2, torch.zeros_like(size))
        evaluate(active, _split(a[active], size, k).t(), n)
        n += k

    total_n = evals  # images that stopped early have fewer valid slots
    order = alphas[:, :n].argsort(dim=1, stable=True)
    a_sorted = alphas[:, :n].gather(1, order)
    w_sorted = _trapezoid(a_sorted, total_n)
    w = torch.zeros_like(w_sorted).scatter_(1, order, w_sorted)
    # sum_k w_k grad F(alpha_k), then times (x - x'); fixed shapes, so the
    # result does not depend on batch_size either.
    summed = torch.einsum("bk,bk...->b...", w.to(acc), store[:, :n])
    # multiply_by_inputs=False: Captum's "local" IG; delta stays sum(attr) - gap, as there.
    attr = (summed * diff if multiply_by_inputs else summed).to(x.dtype)
    delta = attr.to(acc).flatten(1).sum(1).to(torch.float64) - gap
    counts = total_n.tolist()
    return AdaptiveResult(
        attributions=attr, delta=delta.to(acc), evals=evals, converged=converged, residual=residual,
        alphas=[a_sorted[i, :c] for i, c in enumerate(counts)],
        weights=[w_sorted[i, :c] for i, c in enumerate(counts)])


def adaptive_integrated_gradients(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    baselines: Tensor | float | None = None,
    tolerance: float | None = None,
    max_evals: int = 50,
    batch_size: int | None = None,
    gnl: bool = False,
    select: str = "residual",
) -> AdaptiveResult:
    """Integrated Gradients with nodes chosen per image by trapezoid residuals (issue 14).

    ``integrated_gradients(..., method="adaptive")`` (and ``gnl_integrated_gradients``)
    return this result's ``attributions`` (and ``delta``); this function also
    reports what each image spent and whether it met the tolerance.

    Along the path ``alpha -> F(x' + alpha (x - x'))`` each forward+backward at a
    node gives the score ``F`` and the directional derivative ``g = grad F . (x - x')``.
    On a trapezoid segment ``[a, b]`` the residual ``r = F(b) - F(a) - (b - a)(g(a) +
    g(b)) / 2`` vanishes where F is linear (inside one linear piece of a ReLU
    network), and the residuals sum to ``-delta``. The method starts from 5
    uniform nodes (fewer if ``max_evals`` is smaller); each round it adds 4
    nodes per image, bisecting the 4 segments with the largest ``|r|`` (a
    segment whose |r| stays the largest after one cut is cut into 3 or more
    equal parts instead, so no node goes where F is linear), until ``sum |r| <=
    tolerance * |F(x) - F(x')|`` or ``max_evals`` nodes are spent. The result is
    ``(x - x') * sum_k w_k grad F(alpha_k)`` with the trapezoid weights of each
    image's final nodes, so ``|delta| <= sum |r|`` (up to rounding).

    Args:
        model, inputs, target, baselines, batch_size: as in :func:`integrated_gradients`
            (``batch_size`` bounds the rows per pass; the result does not depend on it).
        tolerance: stop an image once ``sum |r| <= tolerance * |F(x) - F(x')|``;
            ``None`` means 0.01; 0 spends the whole budget unless the residuals
            vanish exactly.
        max_evals: most forward+backward evaluations (nodes) per image, >= 2. The
            method runs no forward-only pass. At ``max_evals <= 5`` the nodes are
            uniform: the textbook trapezoid rule on ``max_evals`` nodes.
        gnl: take the gradients under GNL-IG's guided rules
            (:func:`gnl_integrated_gradients`). The guided ``g`` does not integrate
            to F, so there the residual is ``r = (b - a)(g(b) - g(a)) / 2`` (the
            trapezoid's error indicator for a jump of g inside the segment) and
            the stop is ``sum |r| <= tolerance * |sum_k w_k g(alpha_k)|``.
        select: which segments get the new nodes. ``"residual"`` (default): the
            largest ``|r|``, the design above. ``"jump"``: the largest
            ``(b - a) / 2 * ||(x - x') * (grad F(b) - grad F(a))||``, the jump of
            the attribution integrand itself (the stop stays on ``sum |r|``). The
            scalar residual sees only the projection ``g`` of the gradient, which
            is far smoother than the attribution vector in a ReLU network;
            ``"jump"`` spends the nodes on the vector's error (a lower L2 error
            to the exact IG, a larger delta: benchmarks/RESULTS.md, issue 14). It
            reads every stored gradient once per round (a copy of the active
            images' store).

    Memory: every node's gradient is kept until the nodes are final (a node's
    weight changes when a neighbouring segment is bisected), ``max_evals`` input-sized
    tensors per image; images run in groups that keep this store under 512 MB on
    the CPU (a quarter of the device's memory on CUDA).
    """
    if not isinstance(gnl, bool):
        raise TypeError(f"fastattr: gnl must be a bool, got {type(gnl).__name__}")
    if select not in _ADAPTIVE_SELECTIONS:
        raise ValueError(f"fastattr: select must be one of {_ADAPTIVE_SELECTIONS}, got {select!r}")
    context = guided(model, mode="guided", maxpool=True) if gnl else None
    return _adaptive(model, inputs, target, baselines, tolerance, max_evals, batch_size, True, context, select)


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
    tolerance: float | None = None,
    max_evals: int | None = None,
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
            weights), or ``"adaptive"`` (nodes per image, see ``tolerance``).
        batch_size: most samples in one forward pass. A chunk holds
            ``max(1, batch_size // B)`` path steps of the B samples (Captum's
            ``internal_batch_size`` rule); if ``B > batch_size`` the batch is
            split as well. ``None`` picks a size from the input size (see
            :func:`fastattr.engine.default_batch_size`). The result
            does not depend on it beyond rounding.
        return_delta: also return the per-sample completeness gap
            ``sum(attr) - (f_c(x) - f_c(x'))`` (Captum's convergence delta).
        tolerance, max_evals: for ``method="adaptive"`` only (else a ValueError):
            nodes chosen per image by trapezoid residuals, at most ``max_evals``
            forward+backward evaluations per image (``None``: ``n_steps``), stopping
            an image early once its residuals sum to at most ``tolerance`` (``None``:
            0.01) times ``|f_c(x) - f_c(x')|``. See :func:`adaptive_integrated_gradients`
            (which also reports each image's evaluations and convergence).

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
                          multiply_by_inputs, tolerance, max_evals)


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
    tolerance: float | None = None,
    max_evals: int | None = None,
):
    """GNL-IG: Integrated Gradients with guided non-linearities (Kwon et al., ICPR 2020; spec §1).

    The path gradients are taken under ``fastattr.guided(model, mode="guided",
    maxpool=True)``: every ReLU / ReLU6 passes only positive gradients where it
    is active, and every 2-D max-pool multiplies its routed gradient by the
    nearest-upsampled ``grad_output > 0`` mask (the reference rule). Unlike the
    reference's module hooks, functional and in-place ReLUs are guided too.
    Everything else (arguments, batching, defaults n = 50 / gausslegendre /
    zero baseline, several inputs, ``multiply_by_inputs``, ``method="adaptive"`` with
    ``tolerance`` / ``max_evals``) is as in
    :func:`integrated_gradients`. Completeness does not
    hold, so ``delta`` (if requested) is not expected to vanish.

    For the reference's heatmap use :func:`gnl_heatmap`.
    """
    return _path_integral(model, inputs, target, baselines, n_steps, method, batch_size, return_delta,
                          guided(model, mode="guided", maxpool=True), multiply_by_inputs, tolerance, max_evals)


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
