"""Typed wrappers over the compiled ops in ``torch.ops.fastattr``.

Importing this module loads ``fastattr._C`` (which registers the schemas and the
CPU/CUDA kernels), then the fake kernels and autograd formulas. Each wrapper is a
thin call of ``torch.ops.fastattr.<op>.default``; argument checks happen in the
kernels (and in the fake kernels under tracing), so the messages are the same
everywhere. The IG wrappers also take node/weight tables as Python floats,
``guided_max_pool2d_backward`` checks its indices, and the perturbation-mask
wrappers check grid indices, crop shifts and segment ids (``check=False``
skips that for callers that validated them once): data-dependent checks stay at
this edge, out of the ops that autograd and the benchmarks call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

try:
    from . import _C  # noqa: F401  (registers torch.ops.fastattr.*)

    _HAS_OPS = True
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _HAS_OPS = False
    _IMPORT_ERROR = exc


def has_ops() -> bool:
    return _HAS_OPS


def assert_has_ops() -> None:
    if not _HAS_OPS:
        raise RuntimeError(
            "fastattr's compiled ops could not be loaded "
            f"({_IMPORT_ERROR}). Reinstall with `pip install --no-build-isolation -e .` "
            "against the torch you run with."
        )


def cuda_version() -> int:
    """CUDA runtime version fastattr was built with (e.g. 13000), -1 if CPU-only."""
    assert_has_ops()
    return torch.ops.fastattr._cuda_version.default()


def has_cuda_kernels() -> bool:
    return _HAS_OPS and torch._C._dispatch_has_kernel_for_dispatch_key("fastattr::guided_relu", "CUDA")


if _HAS_OPS:
    from . import _autograd, _meta  # noqa: F401,E402  (order matters: after _C)


def guided_relu(input: Tensor, mode: str = "guided", upper: float | None = None) -> Tensor:
    """``clamp(input, 0, upper)`` (ReLU, or ReLU6 with ``upper=6``) whose gradient
    follows ``mode``: ``"guided"`` (``g * 1[0<x<upper] * 1[g>0]``) or
    ``"deconvnet"`` (``relu(g)``)."""
    return torch.ops.fastattr.guided_relu.default(input, mode, upper)


def guided_relu_(input: Tensor, mode: str = "guided", upper: float | None = None) -> Tensor:
    """In-place :func:`guided_relu`: clamps ``input`` itself and returns it; its
    gradient follows ``mode``. The forward is ATen's in-place clamp, the backward
    the fused ``_guided_relu_backward`` op (see ``_autograd.GuidedReluInplace``).
    Under ``torch.compile`` it is traced as the functional op plus a copy, which
    the compiler turns back into one in-place write."""
    if mode not in ("guided", "deconvnet"):
        raise ValueError(f"fastattr: mode must be 'guided' or 'deconvnet', got {mode!r}")
    if upper is not None and not upper > 0:
        raise ValueError(f"fastattr.guided_relu: upper must be positive or None, got {upper}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"fastattr: self must be a floating-point tensor, got {input.dtype}")
    if torch.compiler.is_compiling():
        return input.copy_(guided_relu(input, mode, upper))
    return _autograd.GuidedReluInplace.apply(input, mode, upper)


def guided_relu_backward(grad_output: Tensor, result: Tensor, mode: str = "guided",
                         upper: float | None = None) -> Tensor:
    """The fused backward rule of :func:`guided_relu` given the forward output."""
    return torch.ops.fastattr._guided_relu_backward.default(grad_output, result, mode, upper)


def _pair(v, name: str) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) == 1:
        return [v[0], v[0]]
    if len(v) != 2:
        raise ValueError(f"fastattr: {name} must be an int or a pair of ints, got {v}")
    return v


def pool2d_arguments(kernel_size, stride=None, padding=0, dilation=1):
    """Normalises max-pool arguments the way nn.MaxPool2d does (stride defaults to kernel_size)."""
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
    return kernel, stride, _pair(padding, "padding"), _pair(dilation, "dilation")


def guided_max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                      ceil_mode: bool = False, mode: str = "reference") -> tuple[Tensor, Tensor]:
    """``F.max_pool2d(..., return_indices=True)`` whose gradient follows ``mode``:
    ``"reference"`` (GNL: standard routed gradient times the nearest-upsampled
    ``grad_output > 0`` mask) or ``"window"`` (only positive gradients routed to
    each window's argmax; not the reference rule). Accepts (C, H, W) or (N, C, H, W)."""
    kernel, stride, padding, dilation = pool2d_arguments(kernel_size, stride, padding, dilation)
    if input.dim() == 3:
        out, idx = torch.ops.fastattr.guided_max_pool2d.default(
            input.unsqueeze(0), kernel, stride, padding, dilation, ceil_mode, mode)
        return out.squeeze(0), idx.squeeze(0)
    return torch.ops.fastattr.guided_max_pool2d.default(
        input, kernel, stride, padding, dilation, ceil_mode, mode)


def guided_max_pool2d_backward(grad_output: Tensor, indices: Tensor, input_size: Sequence[int],
                               kernel_size, stride=None, padding=0, dilation=1,
                               mode: str = "reference") -> Tensor:
    """The fused backward rule of :func:`guided_max_pool2d` (4-D tensors), for direct
    callers: it checks that the indices lie in the input plane, which costs two
    reductions and a host sync. Autograd (and the benchmarks) call the op
    ``torch.ops.fastattr._guided_max_pool2d_backward`` itself, without that check."""
    kernel, stride, padding, dilation = pool2d_arguments(kernel_size, stride, padding, dilation)
    # The kernels skip indices outside the input plane (they cannot come from
    # guided_max_pool2d); a direct caller passing such indices gets an error.
    plane = int(input_size[-1]) * int(input_size[-2])
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= plane):
        raise ValueError(
            f"fastattr.guided_max_pool2d_backward: indices must lie in [0, H*W) = [0, {plane}) for "
            f"input_size {tuple(input_size)} (use the indices returned by guided_max_pool2d)"
        )
    return torch.ops.fastattr._guided_max_pool2d_backward.default(
        grad_output, indices, list(input_size), kernel, stride, padding, dilation, mode)


def _step_table(values: Tensor | Sequence[float], like: Tensor) -> Tensor:
    """A node/weight table as the ops take it: a tensor passes through as is
    (the op checks it); a sequence of Python floats becomes a float64 tensor on
    ``like``'s device."""
    if isinstance(values, Tensor):
        return values
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=like.device)


def ig_path_inputs(input: Tensor, baseline: Tensor, alphas: Tensor | Sequence[float]) -> Tensor:
    """Step-major IG path batch ``out[k*B + b] = baseline[b] + alphas[k(, b)] * (input[b] - baseline[b])``
    written in one pass, shape ``(K * B, *input.shape[1:])``, in input's suggested memory
    format. ``alphas``: a floating tensor on input's device, ``(K,)`` (one node per step)
    or ``(K, B)`` (per-sample nodes), or a sequence of floats (a ``(K,)`` table)."""
    return torch.ops.fastattr.ig_path_inputs.default(input, baseline, _step_table(alphas, input))


def ig_accumulate_(total: Tensor, grads: Tensor, weights: Tensor | Sequence[float]) -> None:
    """``total[b] += sum_k weights[k(, b)] * grads[k*B + b]`` in place; ``total`` (contiguous or
    channels_last) has the accumulation dtype of ``grads`` (float32 for float16/bfloat16).
    ``weights``: a floating tensor on total's device, ``(K,)`` or ``(K, B)``, or a sequence
    of floats."""
    torch.ops.fastattr.ig_accumulate_.default(total, grads, _step_table(weights, total))


# --- perturbation masks ------------------------------------------------------------
# The registered ops never read out of range: a grid index outside [0, G), a crop
# outside the up-sampled map or a segment id outside [0, J) makes the mask NaN
# there. The wrappers check those values for direct callers (one host sync per
# call, after the op is launched; skipped under torch.compile): pass
# ``check=False`` where the values were validated once already, e.g. in every
# tile of a chunked method.

def _int_pair(value, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    value = [int(v) for v in value]
    if len(value) != 2:
        raise ValueError(f"fastattr: {name} must be an int or a pair of ints, got {value}")
    return value


def _index_tensor(values, like: Tensor, name: str) -> Tensor:
    """int64 tensor on like's device: integer tensors are widened to int64,
    sequences converted; anything else goes to the op, which names it."""
    if isinstance(values, Tensor):
        is_int = not values.dtype.is_floating_point and not values.dtype.is_complex and values.dtype != torch.bool
        return values.long() if is_int and values.dtype != torch.int64 else values
    return torch.as_tensor(values, dtype=torch.int64, device=like.device)


def _as_baseline(baseline, input: Tensor) -> Tensor:
    """A tensor shaped like input: a number fills it, a broadcastable tensor is
    expanded (the kernels read it once per sample)."""
    if not isinstance(baseline, Tensor):
        return torch.full_like(input, float(baseline))
    return baseline if baseline.shape == input.shape else baseline.expand_as(input)


def _checking(check: bool) -> bool:
    return check and not torch.compiler.is_compiling()


def _range_text(t: Tensor) -> str:
    return f"from {int(t.min())} to {int(t.max())}" if t.numel() else "none"


def _check_rise_values(op: str, grids: Tensor, grid_index: Tensor, shifts: Tensor, size, up_size) -> None:
    if grid_index.numel() == 0:
        return
    n_grids = grids.shape[0]
    limit = torch.tensor([up_size[0] - size[0], up_size[1] - size[1]], device=shifts.device)
    bad_index = (grid_index < 0) | (grid_index >= n_grids)
    bad_shift = (shifts < 0) | (shifts > limit)
    if not bool(bad_index.any() | bad_shift.any()):  # the one host sync
        return
    if bool(bad_index.any()):
        raise ValueError(f"fastattr.{op}: grid_index must lie in [0, G) = [0, {n_grids}), got values "
                         f"{_range_text(grid_index)}")
    raise ValueError(
        f"fastattr.{op}: shifts must satisfy 0 <= shift and shift + size <= up_size, i.e. rows in [0, {int(limit[0])}] "
        f"and columns in [0, {int(limit[1])}] for size {list(size)} and up_size {list(up_size)}; got rows "
        f"{_range_text(shifts[:, 0])} and columns {_range_text(shifts[:, 1])}")


def rise_masks(grids: Tensor, grid_index: Tensor | Sequence[int] | None, shifts: Tensor | Sequence[Sequence[int]],
               size, up_size, mode: str = "mirror", *, check: bool = True) -> Tensor:
    """RISE masks ``(N, H, W)`` in grids' dtype: mask k is grid ``grids[grid_index[k]]``
    (``grids``: (G, gh, gw) floating) bilinearly up-sampled to ``up_size`` with the
    half-pixel mapping, cropped at ``shifts[k] = (row, col)`` to ``size`` (only the
    crop is computed). ``mode``: ``"mirror"`` (the original RISE, scikit-image
    ``resize(order=1, mode='reflect', anti_aliasing=False)``; needs gh, gw >= 2) or
    ``"clamp"`` (``F.interpolate(mode="bilinear", align_corners=False)``, MFPP).
    ``grid_index``: int tensor (N,) or sequence; ``None`` is ``arange(G)``.
    ``shifts``: int tensor (N, 2) or sequence of pairs, ``0 <= shift`` and
    ``shift + size <= up_size`` (checked unless ``check=False``). ``size`` /
    ``up_size``: an int or an (H, W) pair. Differentiable w.r.t. grids."""
    size, up_size = _int_pair(size, "size"), _int_pair(up_size, "up_size")
    grid_index = torch.arange(grids.shape[0], device=grids.device) if grid_index is None else grid_index
    grid_index, shifts = _index_tensor(grid_index, grids, "grid_index"), _index_tensor(shifts, grids, "shifts")
    out = torch.ops.fastattr.rise_masks.default(grids, grid_index, shifts, size, up_size, mode)
    if _checking(check):
        _check_rise_values("rise_masks", grids, grid_index, shifts, size, up_size)
    return out


def rise_masked_batch(input: Tensor, baseline: Tensor | float, grids: Tensor,
                      grid_index: Tensor | Sequence[int] | None, shifts: Tensor | Sequence[Sequence[int]],
                      up_size, mode: str = "mirror", *, check: bool = True) -> Tensor:
    """Step-major RISE batch ``(K * S, C, H, W)`` for ``input`` (S, C, H, W):
    ``out[k*S + s] = baseline[s] + M_k * (input[s] - baseline[s])`` with ``M_k`` the
    mask k of :func:`rise_masks` at ``size = (H, W)``, shared by every channel and
    sample, computed in opmath precision (M = 1 gives the input and M = 0 the
    baseline exactly). ``grids`` may have another floating dtype than input (e.g.
    float32 grids for a float16 batch). ``baseline``: a tensor shaped like (or
    broadcastable to) input, or a number. In input's suggested memory format.
    Differentiable w.r.t. input, baseline and grids."""
    up_size = _int_pair(up_size, "up_size")
    grid_index = torch.arange(grids.shape[0], device=grids.device) if grid_index is None else grid_index
    grid_index, shifts = _index_tensor(grid_index, input, "grid_index"), _index_tensor(shifts, input, "shifts")
    out = torch.ops.fastattr.rise_masked_batch.default(input, _as_baseline(baseline, input), grids, grid_index, shifts,
                                                       up_size, mode)
    if _checking(check):
        _check_rise_values("rise_masked_batch", grids, grid_index, shifts, list(input.shape[-2:]), up_size)
    return out


def segment_masked_batch(input: Tensor, baseline: Tensor | float, segments: Tensor, keep: Tensor | Sequence,
                         *, check: bool = True) -> Tensor:
    """Step-major batch ``(K * S, *F)`` for ``input`` (S, *F) of any per-sample shape
    F: ``out[k*S + s][e] = baseline[s][e] + keep[k, segments[s or 0][e]] * (input - baseline)[s][e]``.
    ``segments``: integer segment ids in [0, J), of shape (1 or S, *F) (one map shared
    by all samples, or one per sample), or anything broadcastable to it, e.g.
    (1, 1, H, W) for images, or F alone. ``keep``: (K, J) floating (one row per mask;
    a sequence or a (J,) row is accepted). Feature ablation: ones with one zero per
    row; LIME / KernelSHAP / MFPP fragments: random 0/1 rows. Ids are checked
    unless ``check=False``. Differentiable w.r.t. input, baseline and keep."""
    if not isinstance(keep, Tensor):
        keep = torch.as_tensor(keep, dtype=torch.float64, device=input.device)
    keep = keep[None] if keep.dim() == 1 else keep
    segments = _index_tensor(segments, input, "segments")
    if segments.dim() == input.dim() - 1:
        segments = segments[None]
    if segments.dim() == input.dim() and segments.shape[1:] != input.shape[1:]:
        segments = segments.expand(segments.shape[0], *input.shape[1:])
    out = torch.ops.fastattr.segment_masked_batch.default(input, _as_baseline(baseline, input), segments, keep)
    if _checking(check) and segments.numel():
        n = keep.shape[1]
        if bool(((segments < 0) | (segments >= n)).any()):
            raise ValueError(f"fastattr.segment_masked_batch: segments must hold ids in [0, J) = [0, {n}) "
                             f"(J = keep.shape[1]), got ids {_range_text(segments)}")
    return out


def window_grid(sample_shape: Sequence[int], window, strides=1) -> list[int]:
    """Number of occlusion windows along each dimension of a sample, as Captum
    ``Occlusion`` places them: ``ceil((F_d - window_d) / strides_d) + 1``, at
    multiples of the stride, the last one clipped at the edge."""
    dims = len(sample_shape)
    window = [window] * dims if isinstance(window, int) else list(window)
    strides = [strides] * dims if isinstance(strides, int) else list(strides)
    return [-(-(f - w) // s) + 1 for f, w, s in zip(sample_shape, window, strides)]


def window_masked_batch(input: Tensor, baseline: Tensor | float, window, strides=1, start: int = 0,
                        count: int | None = None) -> Tensor:
    """Step-major batch ``(count * S, *F)`` of Captum ``Occlusion`` windows over the
    per-sample shape F of ``input`` (S, *F), 1 to 3 dimensions: row block k is the
    input with window ``start + k`` set to the baseline. Windows cover
    ``[i_d * strides_d, min(i_d * strides_d + window_d, F_d))`` per dimension,
    as Captum places them (:func:`window_grid`: the last one of a dimension may
    be clipped at the edge), enumerated row-major over that grid (last
    dimension fastest; Captum itself numbers them first dimension fastest,
    which changes no attribution). ``window`` / ``strides``: one int per sample dimension (an int is
    used for every dimension). ``count``: default, every window from ``start`` on.
    Differentiable w.r.t. input and baseline."""
    dims = input.dim() - 1
    window = [window] * dims if isinstance(window, int) else [int(w) for w in window]
    strides = [strides] * dims if isinstance(strides, int) else [int(s) for s in strides]
    if count is None:
        total = math.prod(window_grid(list(input.shape[1:]), window, strides)) if len(window) == len(strides) == dims else 0
        count = total - start
    return torch.ops.fastattr.window_masked_batch.default(input, _as_baseline(baseline, input), window, strides,
                                                          int(start), int(count))


# --- causal ATE (spec §2): block interventions, region outcomes, ATE maps -------------

def block_patch_batch(input: Tensor, bank: Tensor, patch_index: Tensor | Sequence[int],
                      blocks: Tensor | Sequence[Sequence[int]], *, check: bool = True) -> Tensor:
    """Step-major batch of block interventions ``(N * S, C, H, W)`` for ``input``
    (S, C, H, W): row ``n*S + s`` is ``input[s]`` with the block at ``blocks[n] =
    (row, col)`` replaced by the patch ``bank[patch_index[n]]`` (``bank``: (P, C, bh, bw)
    of input's dtype). The perturbation builder with a patch bank as the replacement
    source: exact copies, in input's suggested memory format, no Python loop over
    blocks. Patch indices in [0, P) and blocks inside the image are checked unless
    ``check=False`` (the op makes such a row NaN). Differentiable w.r.t. input and bank."""
    patch_index, blocks = _index_tensor(patch_index, input, "patch_index"), _index_tensor(blocks, input, "blocks")
    out = torch.ops.fastattr.block_patch_batch.default(input, bank, patch_index, blocks)
    if _checking(check) and patch_index.numel():
        n_patches, (bh, bw) = bank.shape[0], bank.shape[-2:]
        h, w = input.shape[-2:]
        bad_index = (patch_index < 0) | (patch_index >= n_patches)
        bad_block = (blocks[:, 0] < 0) | (blocks[:, 1] < 0) | (blocks[:, 0] > h - bh) | (blocks[:, 1] > w - bw)
        if bool((bad_index | bad_block).any()):
            if bool(bad_index.any()):
                raise ValueError(f"fastattr.block_patch_batch: patch_index must lie in [0, P) = [0, {n_patches}), "
                                 f"got values {_range_text(patch_index)}")
            raise ValueError(f"fastattr.block_patch_batch: blocks must place the {bh}x{bw} patch inside the {h}x{w} "
                             f"image (rows in [0, {h - bh}], columns in [0, {w - bw}]), got rows "
                             f"{_range_text(blocks[:, 0])} and columns {_range_text(blocks[:, 1])}")
    return out


OUTCOMES = ("dice", "soft_dice", "mean_prob")
OUTCOME_ACTIVATIONS = ("none", "sigmoid", "softmax")


def region_outcome(output: Tensor, roi: Tensor, gt: Tensor, channel: int | None = None, outcome: str = "dice",
                   activation: str | None = None, threshold: float = 0.5, empty_is_one: bool = False) -> Tensor:
    """The causal outcome of each row of a segmentation output ``(R, K, H, W)``, in one
    pass per row, ``(R,)`` in output's dtype (sums in double), over the bool RoI
    ``roi`` (H, W) and channel ``channel`` (``None``: every channel) against ``gt``
    ((1, H, W) for one channel, (K, H, W) for all; an (H, W) map is accepted):

    - ``"dice"``: ``100 * 2 Σ q g / (Σ q + Σ g + 1e-10)``, ``q = 1[p > threshold]``
      (the reference; an empty prediction with an empty ground truth gives 0,
      or 100 with ``empty_is_one``);
    - ``"soft_dice"``: the same with ``q = p``;
    - ``"mean_prob"``: ``100 *`` the mean of ``p`` over the RoI and channels;

    with ``p = activation(output)``: ``None``/``"none"`` (raw scores, the
    reference thresholds them at 0.5), ``"sigmoid"`` or ``"softmax"`` (over dim 1).
    Differentiable w.r.t. output (soft_dice, mean_prob; dice is piecewise
    constant there) and gt."""
    gt = gt.unsqueeze(0) if gt.dim() == 2 else gt
    return torch.ops.fastattr.region_outcome.default(output, roi, gt, -1 if channel is None else int(channel), outcome,
                                                    "none" if activation is None else activation, float(threshold),
                                                    bool(empty_is_one))


def causal_ate_map(screen: Tensor, full: Tensor, base: Tensor, visited: Tensor, block, tau: float = 0.02) -> Tensor:
    """The ATE map ``(B, gh*bh, gw*bw)`` (spec §2.3) from per-cell outcomes: ``screen``
    (B, gh, gw, n_screen) and ``full`` (B, gh, gw, n_samples) under intervention,
    ``base`` (B,) factual, ``visited`` (B, gh, gw) bool (False: RoI cells, 0). A
    visited cell whose screening has some ``|screen - base| >= tau`` gets
    ``ate = mean(full - base)`` on its ``block = (bh, bw)`` pixels if ``|ate| >= tau``;
    every other pixel is 0 (``full`` of other cells is never read). Differentiable
    w.r.t. full and base."""
    return torch.ops.fastattr.causal_ate_map.default(screen, full, base, visited, _int_pair(block, "block"),
                                                    float(tau))


# --- progressive masking (deletion / insertion metrics) -----------------------------

def saliency_ranks(saliency: Tensor) -> Tensor:
    """Each pixel's rank in descending saliency, ``(B, H, W)`` int64 (0 = the most
    salient pixel), ties broken by ascending flat pixel index (a stable sort).
    ``saliency``: ``(B, H, W)`` or ``(B, 1, H, W)``, real, without NaN."""
    if not isinstance(saliency, Tensor):
        raise TypeError(f"fastattr.saliency_ranks: saliency must be a tensor, got {type(saliency).__name__}")
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() != 3:
        raise ValueError("fastattr.saliency_ranks: saliency must have shape (B, H, W) or (B, 1, H, W), got "
                         f"{tuple(saliency.shape)}")
    if saliency.dtype.is_complex or saliency.dtype == torch.bool:
        raise TypeError(f"fastattr.saliency_ranks: saliency must be real numbers, got {saliency.dtype}")
    b, h, w = saliency.shape
    flat = saliency.reshape(b, h * w)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w, device=flat.device).expand(b, h * w))
    return ranks.view(b, h, w)


def rank_masked_batch(input: Tensor, baseline: Tensor | float, ranks: Tensor, step: int, start: int = 0,
                      count: int | None = None) -> Tensor:
    """Step-major batch ``(count * S, C, H, W)`` of progressively masked images for
    ``input`` (S, C, H, W): block k is step ``t = start + k``, in which every pixel
    whose rank (``ranks``: int64 (1 or S, H, W), or (H, W), e.g. from
    :func:`saliency_ranks`) is below ``t * step`` takes the baseline in every
    channel, the others keep the input (exact copies of either). Deletion:
    input = image, baseline = substrate; insertion: input = substrate, baseline =
    image. ``count``: default, the steps from ``start`` up to ``ceil(H*W / step)``
    (the last one all baseline). Differentiable w.r.t. input and baseline."""
    if isinstance(ranks, Tensor) and ranks.dim() == 2:
        ranks = ranks[None]
    if count is None:
        n_steps = -(-input.shape[-2] * input.shape[-1] // max(int(step), 1)) if input.dim() == 4 else 0
        count = n_steps + 1 - int(start)
    return torch.ops.fastattr.rank_masked_batch.default(input, _as_baseline(baseline, input), ranks, int(step),
                                                        int(start), int(count))
