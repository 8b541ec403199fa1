"""Black-box perturbation methods: RISE, MFPP, occlusion and feature ablation.

Each evaluates the model, forward only, on masked copies ``b + M_k ⊙ (x − b)``
of every image (``b`` the baseline). The copies of a tile are written by one
fastattr op straight from a compact mask description (RISE grids and shifts,
segment maps and keep rows, sliding-window positions), so the N
full-resolution masks are never held, and peak memory does not grow with N.
The engine's score evaluator runs the tiles; the scores of all masks, (N, B),
stay on the device, and the saliency is accumulated from them afterwards in
fixed blocks of masks recomputed by the mask op (an ATen GEMM per block). The
result is therefore independent of ``batch_size`` given the same scores.

Rows of a tile are mask-major (``row = (k - k0) * S + (s - s0)``), the layout
of the builder ops and of ``engine.plan(..., inner="samples")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ops as ops
from .. import engine
from ..targets import resolve
from ._common import Target, check_baselines, check_inputs

ACTIVATIONS = ("auto", "softmax", "sigmoid", None)
UPSAMPLING = {"reference": "mirror", "torch": "clamp"}
# The draws, segments and window geometry are validated once per call, so the
# ops' wrappers run with check=False (their range checks cost host syncs).
# Masks per accumulation block: fixed, so that the saliency's summation order
# does not depend on batch_size (and its memory is bounded: 64 x H x W).
_ACCUMULATION_BLOCK = 64


# --------------------------------------------------------------------------- shared pieces


def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"fastattr: {name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"fastattr: {name} must be at least {low}, got {value}")
    return int(value)


def _check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fastattr: {name} must be a number in (0, 1], got {type(value).__name__}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"fastattr: {name} must be in (0, 1], got {value}")
    return float(value)


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"fastattr: generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_images(inputs, name: str = "inputs") -> Tensor:
    x = check_inputs(inputs, name).detach()
    if x.dim() != 4:
        hint = f"; for a single image pass {name}.unsqueeze(0)" if x.dim() == 3 else ""
        raise ValueError(f"fastattr: {name} must be images (B, C, H, W), got shape {tuple(x.shape)} "
                         f"({x.dim()}-D){hint}")
    return x


def with_activation(model, activation):
    """``model`` followed by a softmax or sigmoid over dim 1 (classes, or the
    channels of a segmentation map), or unchanged for ``None``. ``"auto"``:
    softmax for two or more channels, sigmoid for one (a one-channel softmax
    is constant, so ``"softmax"`` there is an error)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"fastattr: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation is None:
        return model

    def activated(z):
        out = engine.model_output(model, z)
        channels = out.shape[1] if out.dim() >= 2 else 1
        if activation == "softmax" and channels == 1:
            raise ValueError("fastattr: activation='softmax' over a model output with one channel is constant (1), "
                             "which would make every score equal; use activation='sigmoid' (or 'auto') or None")
        if activation == "sigmoid" or channels == 1:
            return _sigmoid(out)
        return torch.softmax(out, dim=1)

    activated.__wrapped__ = model  # the engine's model checks look through the wrapper
    return activated


def _sigmoid(z: Tensor) -> Tensor:
    """``sigmoid(z)`` whose rounding does not depend on where an element sits in
    the tensor: ATen's CPU sigmoid takes a vectorised exp for most elements and
    a scalar one for the tail, so a score would change with the batch size.
    ``softmax([z, 0])[0] = 1 / (1 + exp(-z))`` runs the same code on every pair."""
    return torch.stack([z, torch.zeros_like(z)], -1).softmax(-1)[..., 0]


def _mask_scores(model, n_images: int, target, n_masks: int, batch_size: int, build) -> Tensor:
    """Target scores of every (mask, image) pair, (N, B), forward only;
    ``build(tile)`` writes a tile's masked copies (mask-major rows)."""
    out = None
    tiles = engine.plan(n_images, n_masks, batch_size, inner="samples")
    for tile, s in engine.scores(model, target, tiles, build):
        if out is None:
            out = s.new_empty((n_masks, n_images))
        out[tile.k0:tile.k1, tile.s0:tile.s1] = s.view(tile.n_points, tile.n_samples)
    return out


def _accumulate(scores: Tensor, masks_of, n_masks: int, size: tuple[int, int], dtype) -> Tensor:
    """``sum_k scores[k, b] * M_k``, (B, H*W), masks recomputed in fixed blocks."""
    h, w = size
    total = scores.new_zeros((scores.shape[1], h * w), dtype=dtype)
    for k0 in range(0, n_masks, _ACCUMULATION_BLOCK):
        k1 = min(k0 + _ACCUMULATION_BLOCK, n_masks)
        m = masks_of(k0, k1).to(dtype).reshape(k1 - k0, h * w)
        total.addmm_(scores[k0:k1].to(dtype).T, m)
    return total


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --------------------------------------------------------------------------- RISE


def rise_geometry(size: tuple[int, int], grid_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """RISE's cell and up-sampled sizes for an image ``size``: ``cell = ceil(size / s)``,
    ``up = (s + 1) * cell`` (spec §3.1)."""
    cell = tuple(math.ceil(n / grid_size) for n in size)
    return cell, tuple((grid_size + 1) * c for c in cell)


def rise_draws(n_masks: int, grid_size: int, p: float, size: tuple[int, int],
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """RISE's random draws, in the reference's order: all grids first,
    ``rand(N, s, s) < p`` (1 = keep), then the crop shifts, ``(N, 2)`` int64
    (row, col), each uniform in ``[0, cell)``."""
    cell, _ = rise_geometry(size, grid_size)
    device = generator.device if generator is not None else "cpu"
    grids = (torch.rand((n_masks, grid_size, grid_size), generator=generator, device=device) < p).float()
    u = torch.rand((n_masks, 2), generator=generator, device=device, dtype=torch.float64)
    shifts = (u * torch.tensor(cell, dtype=torch.float64, device=device)).long()
    return grids, shifts


def rise(model, inputs: Tensor, target: Target = None, n_masks: int | None = None, grid_size: int = 7,
         p: float = 0.5, batch_size: int | None = None, generator: torch.Generator | None = None,
         grids: Tensor | None = None, shifts: Tensor | None = None, upsample: str = "reference",
         activation: str | None = "auto", baselines: Tensor | float | None = None) -> Tensor:
    """RISE (Petsiuk et al., BMVC 2018): ``S = Σ_k f_c(x ⊙ M_k) M_k / (N p)``.

    Masks: a random ``grid_size x grid_size`` grid of keep (1) / drop (0)
    cells with ``P(keep) = p``, bilinearly up-sampled to ``(s + 1) * ceil(H / s)``
    and cropped at a random shift (spec §3.1).

    Args:
        model, inputs, target: as in every method; ``inputs`` are images
            (B, C, H, W); ``target=None`` is each image's top class on the
            unperturbed input. Region targets work for segmentation models.
        n_masks: N (default 4000, or the number of ``grids`` given).
        grid_size: s, at least 2 and at most the image's smaller side.
        p: keep probability in (0, 1].
        batch_size: rows (masked copies) per forward pass (``None``: the
            engine's default for these inputs).
        generator: ``torch.Generator`` for the draws (see :func:`rise_draws`).
        grids, shifts: the draws themselves, (N, s, s) in [0, 1] and (N, 2)
            int64 row/col shifts in ``[0, ceil(H / s))`` (both or neither).
        upsample: ``"reference"`` (the original RISE: scikit-image's
            resize, mirror boundary) or ``"torch"`` (``F.interpolate``
            bilinear, edge clamp).
        activation: ``"auto"`` (softmax over the classes, as the reference
            wraps the model in a softmax; sigmoid for a one-channel output such
            as a binary segmentation map), ``"softmax"``, ``"sigmoid"`` or
            ``None`` (raw outputs).
        baselines: what a dropped pixel becomes; ``None`` is 0 (the
            reference multiplies the input by the mask).

    Returns:
        (B, 1, H, W) in the inputs' dtype, normalised by ``N p``.
    """
    x = _check_images(inputs)
    size = tuple(x.shape[-2:])
    grid_size = _check_int(grid_size, "grid_size", 2)
    if grid_size > min(size):
        raise ValueError(f"fastattr: grid_size {grid_size} is larger than the image ({size[0]}x{size[1]})")
    p = _check_probability(p, "p")
    if upsample not in UPSAMPLING:
        raise ValueError(f"fastattr: upsample must be one of {tuple(UPSAMPLING)}, got {upsample!r}")
    _check_generator(generator)
    cell, up = rise_geometry(size, grid_size)
    if (grids is None) != (shifts is None):
        raise ValueError("fastattr: give both grids and shifts, or neither")
    if grids is None:
        n = 4000 if n_masks is None else _check_int(n_masks, "n_masks")
        grids, shifts = rise_draws(n, grid_size, p, size, generator)
    else:
        grids, shifts = _check_rise_draws(grids, shifts, n_masks, grid_size, cell)
    n = grids.shape[0]
    model = with_activation(model, activation)
    base = check_baselines(baselines, x).detach()
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    target = resolve(model, x, target, batch_size)
    grids = grids.to(device=x.device, dtype=_accumulation_dtype(x.dtype))
    shifts = shifts.to(x.device)
    index = torch.arange(n, device=x.device)
    mode = UPSAMPLING[upsample]

    def build(t):
        return ops.rise_masked_batch(x[t.s0:t.s1], base[t.s0:t.s1], grids, index[t.k0:t.k1], shifts[t.k0:t.k1],
                                     up, mode, check=False)

    scores = _mask_scores(model, x.shape[0], target, n, batch_size, build)
    acc = _accumulation_dtype(x.dtype)
    total = _accumulate(scores, lambda k0, k1: ops.rise_masks(grids, index[k0:k1], shifts[k0:k1], size, up, mode, check=False),
                        n, size, acc)
    return (total / (n * p)).view(x.shape[0], 1, *size).to(x.dtype)


def _check_rise_draws(grids, shifts, n_masks, grid_size, cell):
    if not isinstance(grids, Tensor) or grids.dim() != 3 or tuple(grids.shape[1:]) != (grid_size, grid_size):
        shape = tuple(grids.shape) if isinstance(grids, Tensor) else type(grids).__name__
        raise ValueError(f"fastattr: grids must be (N, {grid_size}, {grid_size}) (grid_size={grid_size}), got {shape}")
    n = grids.shape[0]
    if n_masks is not None and n_masks != n:
        raise ValueError(f"fastattr: n_masks={n_masks} but {n} grids were given")
    if not isinstance(shifts, Tensor) or tuple(shifts.shape) != (n, 2) or shifts.dtype.is_floating_point:
        shape = f"{tuple(shifts.shape)} of {shifts.dtype}" if isinstance(shifts, Tensor) else type(shifts).__name__
        raise ValueError(f"fastattr: shifts must be ({n}, 2) integers (row, col), got {shape}")
    limit = torch.tensor(cell, device=shifts.device)
    if bool(((shifts < 0) | (shifts >= limit)).any()):
        raise ValueError(f"fastattr: shifts must lie in [0, {cell[0]}) x [0, {cell[1]}) (the RISE cell), "
                         f"got values from {int(shifts.min())} to {int(shifts.max())}")
    if not grids.dtype.is_floating_point and grids.dtype != torch.bool:
        raise TypeError(f"fastattr: grids must be floating or bool, got {grids.dtype}")
    grids = grids.float() if grids.dtype == torch.bool else grids
    if bool(((grids < 0) | (grids > 1)).any()) or not bool(torch.isfinite(grids).all()):
        raise ValueError("fastattr: grids must lie in [0, 1]")
    return grids, shifts.long()


# --------------------------------------------------------------------------- MFPP


def mfpp_segments(image: Tensor, n_levels: int = 5, base_segments: int = 50, compactness: float = 10.0,
                  sigma: float = 1.0) -> list[Tensor]:
    """The MFPP pyramid of one image (C, H, W): SLIC superpixels (scikit-image)
    at ``base_segments * 2**l`` requested segments for ``l < n_levels``,
    relabelled to 0..n-1 (spec §4.1). RGB images in [0, 1] are segmented in Lab
    as the reference; other channel counts as multichannel data."""
    from skimage.segmentation import slic

    arr = image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    lab = arr.shape[-1] == 3
    out = []
    for level in range(n_levels):
        seg = slic(arr, n_segments=base_segments * 2 ** level, compactness=compactness, sigma=sigma,
                   start_label=0, channel_axis=-1, convert2lab=lab)
        _, relabelled = np.unique(seg, return_inverse=True)
        out.append(torch.from_numpy(relabelled.reshape(seg.shape).astype(np.int64)))
    return out


def mfpp_schedule(n_masks: int, masks_per_draw: int, n_levels: int) -> list[int]:
    """The pyramid level of each draw (chunk of ``masks_per_draw`` masks):
    consecutive blocks of ``n_draws // n_levels`` draws per level, the rest at
    the last level (the reference crashes there; spec §4.2)."""
    n_draws = -(-n_masks // masks_per_draw)
    group = max(1, n_draws // n_levels)
    return [min(d // group, n_levels - 1) for d in range(n_draws)]


def mfpp(model, inputs: Tensor, target: Target = None, n_masks: int = 20000, n_levels: int = 5,
         base_segments: int = 50, compactness: float = 10.0, sigma: float = 1.0, masks_per_draw: int = 32,
         p_keep: float = 0.5, resize_offset: float = 2.0, batch_size: int | None = None,
         generator: torch.Generator | None = None, segments: Sequence | None = None,
         draws: Sequence | None = None, crops: Tensor | None = None, activation: str | None = "sigmoid",
         baselines: Tensor | float | None = None) -> Tensor:
    """MFPP (Yang et al., ICPR 2020): masks from a pyramid of superpixel fragments.

    Per image, draw ``d`` (one per ``masks_per_draw`` masks) keeps each
    fragment of its pyramid level with probability ``p_keep``; each mask is a
    random ``H x W`` crop of that fragment map bilinearly up-sampled (edge
    clamp, ``F.interpolate``) to ``(H + floor(r H), W + floor(r W))``, ``r =
    resize_offset``. ``S = Σ_k σ(f(x ⊙ M_k))_c M_k / N`` (spec §4.2, sigmoid of
    the logits as the reference).

    Args:
        n_masks, n_levels, base_segments, compactness, sigma, masks_per_draw,
            p_keep, resize_offset: spec §4's parameters (reference values as
            defaults).
        generator: for the draws; per image, every draw's keep vector
            (``rand(n_fragments) < p_keep``), then every mask's crop
            ``(row, col)`` uniform in ``[0, floor(r H)] x [0, floor(r W)]``.
        segments: the pyramid, instead of SLIC on the inputs: one list of
            (H, W) int label maps per image (labels are relabelled to 0..n-1).
            Needed when the inputs are not RGB in [0, 1].
        draws, crops: the draws themselves, per image: ``draws[b][d]`` a keep
            vector (bool or 0/1) for draw ``d``'s level, ``crops[b]`` (N, 2)
            int64; ``crops`` may be (N, 2) for one image.
        activation: ``"sigmoid"`` (reference), ``"softmax"``, ``"auto"`` or ``None``.

    Returns:
        (B, 1, H, W), not normalised by ``p_keep`` (as the reference).

    Images are explained one after another (each has its own pyramid); the
    masks of one image are batched.
    """
    x = _check_images(inputs)
    size = tuple(x.shape[-2:])
    n = _check_int(n_masks, "n_masks")
    n_levels = _check_int(n_levels, "n_levels")
    per_draw = _check_int(masks_per_draw, "masks_per_draw")
    p_keep = _check_probability(p_keep, "p_keep")
    if isinstance(resize_offset, bool) or not isinstance(resize_offset, (int, float)) or resize_offset < 0:
        raise ValueError(f"fastattr: resize_offset must be a number >= 0, got {resize_offset!r}")
    _check_generator(generator)
    offset = tuple(int(math.floor(resize_offset * s)) for s in size)
    up = tuple(s + o for s, o in zip(size, offset))
    levels = mfpp_schedule(n, per_draw, n_levels)
    batch = x.shape[0]
    pyramids = _mfpp_pyramids(x, segments, n_levels, base_segments, compactness, sigma)
    model = with_activation(model, activation)
    base = check_baselines(baselines, x).detach()
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    target = resolve(model, x, target, batch_size)
    acc = _accumulation_dtype(x.dtype)
    draw_of = torch.arange(n, device=x.device) // per_draw
    out = []
    for b in range(batch):
        pyramid = [seg.to(x.device) for seg in pyramids[b]]
        keeps, crop = _mfpp_draws(b, pyramid, levels, n, offset, p_keep, generator, draws, crops)
        keeps = [k.to(device=x.device, dtype=acc) for k in keeps]
        crop = crop.to(x.device)

        def fragment_maps(d0, d1, pyramid=pyramid, keeps=keeps):
            # (d1 - d0, H, W): each draw's keep vector painted on its level's fragments
            return torch.stack([keeps[d][pyramid[levels[d]]] for d in range(d0, d1)])

        def masks_of(k0, k1, fragment_maps=fragment_maps, crop=crop):
            d0 = k0 // per_draw
            maps = fragment_maps(d0, (k1 - 1) // per_draw + 1)
            return ops.rise_masks(maps, draw_of[k0:k1] - d0, crop[k0:k1], size, up, "clamp", check=False)

        def build(t, b=b, fragment_maps=fragment_maps, crop=crop):
            d0 = t.k0 // per_draw
            maps = fragment_maps(d0, (t.k1 - 1) // per_draw + 1)
            return ops.rise_masked_batch(x[b:b + 1], base[b:b + 1], maps, draw_of[t.k0:t.k1] - d0,
                                         crop[t.k0:t.k1], up, "clamp", check=False)

        scores = _mask_scores(model, 1, target.subset(torch.tensor([b], device=x.device)), n, batch_size, build)
        out.append(_accumulate(scores, masks_of, n, size, acc) / n)
    return torch.cat(out).view(batch, 1, *size).to(x.dtype)


def _mfpp_pyramids(x, segments, n_levels, base_segments, compactness, sigma) -> list[list[Tensor]]:
    batch, size = x.shape[0], tuple(x.shape[-2:])
    if segments is None:
        return [mfpp_segments(x[b], n_levels, base_segments, compactness, sigma) for b in range(batch)]
    if len(segments) != batch:
        raise ValueError(f"fastattr: segments must hold one pyramid per image ({batch}), got {len(segments)}")
    out = []
    for b, pyramid in enumerate(segments):
        if len(pyramid) != n_levels:
            raise ValueError(f"fastattr: segments[{b}] must hold n_levels={n_levels} label maps, got {len(pyramid)}")
        levels = []
        for seg in pyramid:
            seg = torch.as_tensor(seg)
            if tuple(seg.shape) != size or seg.dtype.is_floating_point:
                raise ValueError(f"fastattr: each segment map must be an integer {size} label map, got "
                                 f"{tuple(seg.shape)} of {seg.dtype}")
            levels.append(torch.unique(seg, return_inverse=True)[1].long())
        out.append(levels)
    return out


def _mfpp_draws(b, pyramid, levels, n, offset, p_keep, generator, draws, crops):
    sizes = [int(seg.max()) + 1 for seg in pyramid]
    if draws is None:
        device = generator.device if generator is not None else "cpu"
        keeps = [torch.rand(sizes[lv], generator=generator, device=device) < p_keep for lv in levels]
    else:
        keeps = [torch.as_tensor(k) for k in draws[b]]
        if len(keeps) != len(levels) or any(k.shape != (sizes[lv],) for k, lv in zip(keeps, levels)):
            raise ValueError(f"fastattr: draws[{b}] must hold {len(levels)} keep vectors, one per draw, each as "
                             "long as its level's fragment count")
    if crops is None:
        device = generator.device if generator is not None else "cpu"
        u = torch.rand((n, 2), generator=generator, device=device, dtype=torch.float64)
        crop = (u * torch.tensor([offset[0] + 1, offset[1] + 1], dtype=torch.float64, device=device)).long()
    else:
        crop = torch.as_tensor(crops)
        crop = crop[b] if crop.dim() == 3 else crop
        if tuple(crop.shape) != (n, 2) or crop.dtype.is_floating_point:
            raise ValueError(f"fastattr: crops must be ({n}, 2) integers per image, got {tuple(crop.shape)}")
        if bool(((crop < 0) | (crop > torch.tensor(offset, device=crop.device))).any()):
            raise ValueError(f"fastattr: crops must lie in [0, {offset[0]}] x [0, {offset[1]}]")
    return [k.float() for k in keeps], crop.long()


# --------------------------------------------------------------------------- occlusion and feature ablation


def _as_tuple(value, name: str, dims: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * dims
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"fastattr: {name} must be an int or a sequence of {dims} ints, got {value!r}") from None
    if len(value) != dims:
        raise ValueError(f"fastattr: {name} must have {dims} entries (the per-sample input shape), got {value}")
    return value


def occlusion_windows(shape: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> tuple[int, ...]:
    """Captum's window counts per dim: ``ceil((F - w) / s) + 1`` (the last
    window of a dim may hang over the edge and is clipped)."""
    return tuple(math.ceil((f - w) / s) + 1 for f, w, s in zip(shape, window, strides))


def occlusion(model, inputs, target: Target = None, sliding_window_shapes=None, strides=None,
              baselines=None, batch_size: int | None = None, additional_forward_args=None):
    """Occlusion (Zeiler & Fergus, 2014) with Captum's ``Occlusion`` semantics.

    One input tensor: see :func:`_occlusion`. Several (a tuple; the model takes
    them as positional arguments): each input in turn is occluded, the others
    unchanged, with ``sliding_window_shapes`` a tuple of one window per input,
    ``strides`` ``None``, an int or one entry per input, ``baselines`` ``None``,
    a number or one entry per input; the result is a tuple.
    ``additional_forward_args`` are passed after the inputs (see
    :class:`fastattr.engine.Bound`).
    """
    if isinstance(inputs, Tensor) and additional_forward_args is None:
        return _occlusion(model, inputs, target, sliding_window_shapes, strides, baselines, batch_size)
    args = engine.forward_args(additional_forward_args)
    if isinstance(inputs, Tensor):
        return _occlusion(engine.Bound(model, None, args, inputs.shape[0]), inputs, target, sliding_window_shapes,
                          strides, baselines, batch_size)
    xs = engine.check_input_tuple(inputs)
    n = len(xs)

    def per_input(value, name, default):
        if value is None or (name != "sliding_window_shapes" and not isinstance(value, tuple)):
            return (value if value is not None else default,) * n
        if not isinstance(value, tuple) or len(value) != n:
            raise ValueError(f"fastattr: with {n} input tensors, {name} must be a tuple of {n} (one per input), "
                             f"got {value!r}")
        return value

    windows = per_input(sliding_window_shapes, "sliding_window_shapes", None)
    strides = per_input(strides, "strides", None)
    baselines = per_input(baselines, "baselines", None)
    out = []
    for i, x in enumerate(xs):
        # Input i is occluded; the others ride along as per-example arguments in their places.
        bound = engine.Bound(model, None, xs[:i] + xs[i + 1:] + tuple(args), x.shape[0], place=i)
        out.append(_occlusion(bound, x, target, windows[i], strides[i], baselines[i], batch_size))
    return tuple(out)


def _occlusion(model, inputs: Tensor, target: Target = None, sliding_window_shapes=None, strides=None,
               baselines: Tensor | float | None = None, batch_size: int | None = None) -> Tensor:
    """Occlusion of one input tensor.

    Each window position replaces its elements by the baseline; an element's
    attribution is ``f_c(x) − f_c(x_window)`` averaged over the windows that
    cover it. Windows span the per-sample shape (e.g. (C, H, W); 1 to 3 dims),
    start at multiples of ``strides`` (default 1; at most the window where the
    window is smaller than the input, as Captum requires), and the last one
    of each dim may be clipped at the edge. ``batch_size`` counts rows
    (Captum's ``perturbations_per_eval`` × B).

    Returns attributions shaped like ``inputs``.
    """
    x = check_inputs(inputs).detach()
    dims = x.dim() - 1
    if not 1 <= dims <= 3:
        raise ValueError(f"fastattr: occlusion needs 1 to 3 dims per sample, got inputs of shape {tuple(x.shape)}")
    if sliding_window_shapes is None:
        raise ValueError("fastattr: occlusion needs sliding_window_shapes (one size per input dim after the batch)")
    shape = tuple(x.shape[1:])
    if not isinstance(sliding_window_shapes, int) and len(sliding_window_shapes) == dims + 1:
        raise ValueError(f"fastattr: sliding_window_shapes {tuple(sliding_window_shapes)} has one entry more than "
                         f"the per-sample shape {shape} of inputs {tuple(x.shape)}: inputs must have a batch "
                         f"dimension (for a single sample pass inputs.unsqueeze(0))")
    window = _as_tuple(sliding_window_shapes, "sliding_window_shapes", dims)
    strides = _as_tuple(1 if strides is None else strides, "strides", dims)
    for w, s, f in zip(window, strides, shape):
        if not 1 <= w <= f:
            raise ValueError(f"fastattr: sliding_window_shapes must be between 1 and the per-sample input shape "
                             f"{shape} in every dim, got {window}")
        if s < 1 or (s > w and w < f):
            raise ValueError(f"fastattr: strides {strides} must be >= 1 and at most the window {window} "
                             "(in dims where the window is smaller than the input)")
    counts = occlusion_windows(shape, window, strides)
    n = math.prod(counts)
    base = check_baselines(baselines, x).detach()
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    target = resolve(model, x, target, batch_size)
    f0 = engine.forward_scores(model, x, target, batch_size)

    def build(t):
        return ops.window_masked_batch(x[t.s0:t.s1], base[t.s0:t.s1], list(window), list(strides), t.k0, t.n_points)

    scores = _mask_scores(model, x.shape[0], target, n, batch_size, build)
    acc = _accumulation_dtype(x.dtype)
    delta = (f0.to(acc)[None] - scores.to(acc)).T.reshape(x.shape[0], 1, *counts)
    # Spread each window's effect over its elements (and count the windows per
    # element) with a transposed convolution of ones: one ATen call each.
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    ones = torch.ones((1, 1, *window), dtype=acc, device=x.device)
    spread = conv(delta, ones, stride=strides)
    cover = conv(torch.ones_like(delta[:1]), ones, stride=strides)
    crop = (slice(None), 0) + tuple(slice(0, f) for f in shape)
    return (spread[crop] / cover[crop]).to(x.dtype)


def _input_feature_segments(mask, x: Tensor, name: str) -> Tensor:
    # One input's mask of several: ids shared by two inputs are one feature,
    # ablated in both at once (Captum 0.9's cross-tensor masks).
    if not isinstance(mask, Tensor):
        raise TypeError(f"fastattr: {name} must be an integer tensor, got {type(mask).__name__}")
    return _feature_segments(mask, x, name)


@engine.several_inputs(baselines=check_baselines, feature_mask=_input_feature_segments)
def feature_ablation(model, inputs: Tensor, target: Target = None, feature_mask: Tensor | str | None = None,
                     baselines: Tensor | float | None = None, batch_size: int | None = None) -> Tensor:
    """Feature ablation with Captum's ``FeatureAblation`` semantics.

    ``feature_mask`` assigns each input element a feature id (integer tensor
    broadcastable to ``inputs``, with a batch dimension of 1 or B; ``None``:
    every element is its own feature, Captum's default; for images also
    ``"grid:K"``, K x K pixel cells, or ``"slic:N"``, about N SLIC superpixels
    per image, both across all channels). Each feature in turn is set to the
    baseline in every image; an element's attribution is ``f_c(x) −
    f_c(x with its feature ablated)``. ``batch_size`` counts rows (Captum's
    ``perturbations_per_eval`` × B).

    Several inputs (a tuple; ``feature_mask`` and ``baselines`` then tuples with
    one entry per input, or ``None`` / a number): ids shared by several inputs'
    masks are one feature, ablated in all of them at once (Captum 0.9); the
    result is a tuple. ``additional_forward_args``: see
    :func:`fastattr.engine.several_inputs`.

    Returns attributions shaped like ``inputs``.
    """
    x = check_inputs(inputs).detach()
    segments = _feature_segments(feature_mask, x)
    ids, segments = torch.unique(segments, return_inverse=True)
    n = ids.numel()
    base = check_baselines(baselines, x).detach()
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    target = resolve(model, x, target, batch_size)
    f0 = engine.forward_scores(model, x, target, batch_size)
    acc = _accumulation_dtype(x.dtype)
    shared = segments.shape[0] == 1

    def build(t):
        # Row k of the tile ablates feature t.k0 + k: ones with one zero.
        keep = torch.ones((t.n_points, n), dtype=acc, device=x.device)
        keep[torch.arange(t.n_points, device=x.device), torch.arange(t.k0, t.k1, device=x.device)] = 0
        seg = segments if shared else segments[t.s0:t.s1]
        return ops.segment_masked_batch(x[t.s0:t.s1], base[t.s0:t.s1], seg, keep, check=False)

    scores = _mask_scores(model, x.shape[0], target, n, batch_size, build)
    delta = (f0.to(acc)[None] - scores.to(acc)).T  # (B, n)
    seg = segments.expand(x.shape[0], *segments.shape[1:]).reshape(x.shape[0], -1)
    return delta.gather(1, seg).view_as(x).to(x.dtype)


def _feature_segments(feature_mask, x: Tensor, name: str = "feature_mask") -> Tensor:
    """Feature ids as an int64 tensor of shape (1 or B, *x.shape[1:])."""
    if feature_mask is None:
        return torch.arange(x[0].numel(), device=x.device).view(1, *x.shape[1:])
    if isinstance(feature_mask, str):
        return _named_feature_mask(feature_mask, x)
    if not isinstance(feature_mask, Tensor):
        raise TypeError(f"fastattr: {name} must be an integer tensor or None, got {type(feature_mask).__name__}")
    if feature_mask.dtype.is_floating_point or feature_mask.dtype.is_complex or feature_mask.dtype == torch.bool:
        raise TypeError(f"fastattr: {name} must hold integer feature ids, got {feature_mask.dtype}")
    if feature_mask.device != x.device:
        raise ValueError(f"fastattr: {name} must be on {x.device} like inputs, got {feature_mask.device}")
    m = feature_mask
    if m.dim() == x.dim() - 1:
        m = m.unsqueeze(0)
    lead = m.shape[0] if m.dim() == x.dim() else None
    try:
        if lead not in (1, x.shape[0]):
            raise RuntimeError
        m = torch.broadcast_to(m, (lead, *x.shape[1:]))
    except RuntimeError:
        raise ValueError(f"fastattr: {name} of shape {tuple(feature_mask.shape)} does not broadcast to inputs "
                         f"of shape {tuple(x.shape)} (its batch dimension must be 1 or {x.shape[0]})") from None
    return m.long().contiguous()


def _named_feature_mask(spec: str, x: Tensor) -> Tensor:
    """``"grid:K"``: square cells of K x K pixels (all channels together);
    ``"slic:N"``: scikit-image SLIC superpixels, about N per image (each image
    its own), as for MFPP. For images (B, C, H, W)."""
    kind, _, value = spec.partition(":")
    try:
        k = int(value)
    except ValueError:
        k = 0
    if kind not in ("grid", "slic") or k < 1:
        raise ValueError(f"fastattr: feature_mask must be a tensor, None, 'grid:K' or 'slic:N' (K, N >= 1), got {spec!r}")
    if x.dim() != 4:
        raise ValueError(f"fastattr: feature_mask={spec!r} needs images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if kind == "grid" and k > max(h, w):
        raise ValueError(f"fastattr: feature_mask={spec!r}: a grid cell of {k}x{k} pixels is larger than the {h}x{w} "
                         f"image (one feature would cover it all); expected K <= {max(h, w)}")
    if kind == "grid":
        cols = -(-w // k)
        cells = (torch.arange(h, device=x.device) // k)[:, None] * cols + (torch.arange(w, device=x.device) // k)[None]
        return cells.view(1, 1, h, w).expand(1, c, h, w).contiguous()
    maps = [mfpp_segments(x[i], n_levels=1, base_segments=k)[0] for i in range(b)]
    return torch.stack(maps).to(x.device).view(b, 1, h, w).expand(b, c, h, w).contiguous()
