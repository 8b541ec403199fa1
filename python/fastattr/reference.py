"""Pure-PyTorch references of every fastattr op, with the ops' signatures.

They define what the kernels compute: tests compare the kernels with them (in
float64 as well) and benchmarks time the kernels against them. They are written
from the specification only and never call ``torch.ops.fastattr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor



def guided_relu(input: Tensor, mode: str = "guided", upper: float | None = None) -> Tensor:
    return input.clamp(0, upper) if upper is not None else input.clamp_min(0)


def guided_relu_backward(grad_output: Tensor, result: Tensor, mode: str = "guided",
                         upper: float | None = None) -> Tensor:
    positive = grad_output > 0
    if mode == "deconvnet":
        keep = positive
    elif mode == "guided":
        keep = positive & (result > 0)
        if upper is not None:
            keep &= result < upper
    else:
        raise ValueError(f"mode must be 'guided' or 'deconvnet', got {mode!r}")
    return torch.where(keep, grad_output, torch.zeros_like(grad_output))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(e) for e in v)
    return (v[0], v[0]) if len(v) == 1 else v


def _pool_output_size(size, k, s, p, d, ceil_mode):
    # nn.MaxPool2d's documented output size, with its rule that the last window
    # of ceil_mode must start inside the input or its left padding.
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def guided_max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                      ceil_mode: bool = False, mode: str = "reference") -> tuple[Tensor, Tensor]:
    """nn.MaxPool2d with indices, from its definition: every window read from
    the input padded with -inf, the index the first maximum in the window's
    scan order (rows, then columns) among the in-bounds elements, or the last
    NaN if the window holds one (ATen's rule: ``val > max || isnan(val)``).
    ``mode`` only changes the gradient."""
    if mode not in ("reference", "window"):
        raise ValueError(f"mode must be 'reference' or 'window', got {mode!r}")
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(padding), _pair(dilation)
    sh, sw = _pair(stride) if stride is not None and (isinstance(stride, int) or len(stride)) else (kh, kw)
    n, c, h, w = input.shape
    oh = _pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    ow = _pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    # Pad far enough on the bottom/right for ceil_mode's last (clipped) windows.
    extra_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    pads = (pw, pw + extra_w, ph, ph + extra_h)
    values = F.pad(input, pads, value=-float("inf"))
    position = torch.arange(h * w, device=input.device).view(1, 1, h, w)
    position = F.pad(position, pads, value=-1)  # -1: padding, never chosen

    def windows(t):  # (..., oh, ow, kh * kw) in scan order
        t = t.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
        return t[:, :, :oh, :ow].flatten(-2)

    vals, pos = windows(values), windows(position).expand(n, c, -1, -1, -1)
    inside = pos >= 0
    peak = torch.where(inside, vals, -float("inf")).amax(-1, keepdim=True)
    first_max = (inside & (vals == peak)).to(torch.uint8).argmax(-1, keepdim=True)
    nan = inside & vals.isnan()
    last_nan = nan.shape[-1] - 1 - nan.flip(-1).to(torch.uint8).argmax(-1, keepdim=True)
    choice = torch.where(nan.any(-1, keepdim=True), last_nan, first_max)
    values, index = vals.gather(-1, choice).squeeze(-1), pos.gather(-1, choice).squeeze(-1)
    # A window lying wholly in the padding (possible with dilation) holds no
    # element: ATen gives -inf and the index of its first tap stepped forward
    # by the dilation until it is >= 0 (ATen's rule, which may point outside
    # the window).
    def first_tap(n_out, s, p, d):
        start = torch.arange(n_out, device=input.device) * s - p
        return torch.where(start < 0, start + (-start + d - 1) // d * d, start)

    empty = ~inside.any(-1)
    aten = first_tap(oh, sh, ph, dh)[:, None] * w + first_tap(ow, sw, pw, dw)[None, :]
    return values, torch.where(empty, aten.expand_as(index), index)


def guided_max_pool2d_backward(grad_output: Tensor, indices: Tensor, input_size: Sequence[int],
                               kernel_size, stride=None, padding=0, dilation=1,
                               mode: str = "reference") -> Tensor:
    """GNL max-pool rule (spec §1.2) built from scatter_add and F.interpolate."""
    n, c, h, w = input_size
    flat_g = grad_output.flatten(2)
    flat_i = indices.flatten(2)
    if mode == "window":
        flat_g = flat_g.clamp_min(0)
    elif mode != "reference":
        raise ValueError(f"mode must be 'reference' or 'window', got {mode!r}")
    acc_dtype = torch.float32 if grad_output.dtype in (torch.float16, torch.bfloat16) else grad_output.dtype
    routed = torch.zeros(n, c, h * w, dtype=acc_dtype, device=grad_output.device)
    # An index outside the plane (a window wholly in the padding) routes nothing.
    outside = (flat_i < 0) | (flat_i >= h * w)
    routed.scatter_add_(2, flat_i.clamp(0, h * w - 1), torch.where(outside, 0, flat_g).to(acc_dtype))
    routed = routed.view(n, c, h, w)
    if mode == "reference":
        mask = F.interpolate((grad_output > 0).to(acc_dtype), size=(h, w), mode="nearest")
        routed = routed * mask
    return routed.to(grad_output.dtype)


def _step_table(values, like: Tensor) -> Tensor:
    """A (K,) / (K, B) node or weight table; Python floats become float64."""
    if isinstance(values, Tensor):
        return values
    return torch.as_tensor(values, dtype=torch.float64, device=like.device)


def _per_row(table: Tensor, batch: int, dims: int) -> Tensor:
    """(K,) or (K, B) table -> (K, B or 1, 1, ...), broadcastable over (K, B, *row)."""
    return table.reshape(table.shape[0], batch if table.dim() == 2 else 1, *[1] * (dims - 1))


def ig_path_inputs(input: Tensor, baseline: Tensor, alphas) -> Tensor:
    """``out[k*B + b] = baseline[b] + alphas[k(, b)] * (input[b] - baseline[b])``, rounded
    as that expression is in PyTorch ops of input's dtype with a Python-float alpha:
    the difference and the sum in input's dtype, the product with alpha in the
    opmath dtype (float32 for float16/bfloat16), rounded once."""
    alphas = _step_table(alphas, input)
    opmath = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    diff = input - baseline
    step = (_per_row(alphas, input.shape[0], input.dim()).to(opmath) * diff.to(opmath)).to(input.dtype)
    return (baseline + step).flatten(0, 1)


def ig_accumulate_(total: Tensor, grads: Tensor, weights) -> None:
    """``total[b] += sum_k weights[k(, b)] * grads[k*B + b]`` in total's dtype."""
    weights = _step_table(weights, total)
    steps = grads.reshape(weights.shape[0], *total.shape).to(total.dtype)
    total.add_((_per_row(weights, total.shape[0], total.dim()).to(total.dtype) * steps).sum(0))


# --- perturbation masks (spec §3.1, §4.2; Captum Occlusion / FeatureAblation) ------

def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _masked_batch(input: Tensor, baseline: Tensor, masks: Tensor) -> Tensor:
    """``out[k*S + s] = baseline[s] + masks[k(, s)] * (input[s] - baseline[s])`` in
    the opmath dtype of input, for masks broadcastable to (K, S, *input.shape[1:])."""
    opmath = _opmath(input.dtype)
    x, b = input.to(opmath), baseline.to(opmath)
    return (b + masks.to(opmath) * (x - b)).flatten(0, 1).to(input.dtype)


def _crop_taps(start: Tensor, length: int, cells: int, up: int, mode: str):
    """Per mask n and crop position l along one axis: the two grid cells the
    up-sampled coordinate start[n] + l reads (half-pixel mapping
    src = (dst + 0.5) cells / up - 0.5), the weight of the second, and whether
    the coordinate lies in the up-sampled map."""
    dst = start[:, None] + torch.arange(length, device=start.device)
    src = (dst.to(torch.float64) + 0.5) * cells / up - 0.5
    if mode == "clamp":  # F.interpolate(bilinear, align_corners=False)
        src = src.clamp_min(0)
        lo = src.floor()
        weight = src - lo
        lo = lo.long().clamp_max(cells - 1)
        hi = (lo + 1).clamp_max(cells - 1)
    elif mode == "mirror":  # scipy 'mirror' / skimage 'reflect': -1 -> 1, n -> n - 2
        lo = src.floor()
        weight = src - lo
        lo = lo.long()
        hi = lo + 1
        lo = torch.where(lo < 0, -lo, lo)
        hi = torch.where(hi > cells - 1, 2 * (cells - 1) - hi, hi)
    else:
        raise ValueError(f"mode must be 'mirror' or 'clamp', got {mode!r}")
    inside = (dst >= 0) & (dst < up)
    return lo.clamp(0, cells - 1), hi.clamp(0, cells - 1), weight, inside


def rise_masks(grids: Tensor, grid_index: Tensor, shifts: Tensor, size: Sequence[int], up_size: Sequence[int],
               mode: str) -> Tensor:
    """RISE masks (spec §3.1): grid ``grid_index[k]`` bilinearly up-sampled to
    up_size, cropped at ``shifts[k]`` to size; NaN where the index or the crop is
    out of range. Computed in the opmath dtype of grids."""
    n_grids = grids.shape[0]
    (h, w), (up_h, up_w) = size, up_size
    opmath = _opmath(grids.dtype)
    r0, r1, tr, r_in = _crop_taps(shifts[:, 0], h, grids.shape[1], up_h, mode)
    c0, c1, tc, c_in = _crop_taps(shifts[:, 1], w, grids.shape[2], up_w, mode)
    g = grids.to(opmath)[grid_index.clamp(0, n_grids - 1)]  # (N, gh, gw)
    n = torch.arange(grid_index.shape[0], device=grids.device)[:, None, None]

    def cells(r, c):  # (N, H, W)
        return g[n, r[:, :, None], c[:, None, :]]

    tr, tc = tr.to(opmath)[:, :, None], tc.to(opmath)[:, None, :]
    top = cells(r0, c0) * (1 - tc) + cells(r0, c1) * tc
    bottom = cells(r1, c0) * (1 - tc) + cells(r1, c1) * tc
    masks = top * (1 - tr) + bottom * tr
    valid = ((grid_index >= 0) & (grid_index < n_grids))[:, None, None] & r_in[:, :, None] & c_in[:, None, :]
    return torch.where(valid, masks, float("nan")).to(grids.dtype)


def rise_masked_batch(input: Tensor, baseline: Tensor, grids: Tensor, grid_index: Tensor, shifts: Tensor,
                      up_size: Sequence[int], mode: str) -> Tensor:
    """Step-major RISE batch: ``baseline + M_k (input - baseline)`` with the masks of
    rise_masks at input's (H, W), shared by every channel."""
    masks = rise_masks(grids.to(_opmath(input.dtype)), grid_index, shifts, input.shape[-2:], up_size, mode)
    return _masked_batch(input, baseline, masks[:, None, None])


def segment_masked_batch(input: Tensor, baseline: Tensor, segments: Tensor, keep: Tensor) -> Tensor:
    """Step-major batch with ``M_k(s, e) = keep[k, segments[s or 0, e]]`` (NaN for
    an id outside [0, keep.shape[1]))."""
    n_segments = keep.shape[1]
    masks = keep.to(_opmath(input.dtype))[:, segments.clamp(0, n_segments - 1)]  # (K, 1 or S, *F)
    masks = torch.where((segments >= 0) & (segments < n_segments), masks, float("nan"))
    return _masked_batch(input, baseline, masks)


def window_masked_batch(input: Tensor, baseline: Tensor, window: Sequence[int], strides: Sequence[int], start: int,
                        count: int) -> Tensor:
    """Step-major batch of Captum Occlusion windows: row block k is the input with
    window ``start + k`` set to the baseline. Captum places ``ceil((F_d - window_d)
    / strides_d) + 1`` windows along each dimension at multiples of the stride,
    the last one clipped at the edge; they are enumerated row-major."""
    sample = list(input.shape[1:])
    masks = torch.ones((count, *sample), dtype=torch.float64, device=input.device)
    positions = [math.ceil((f - w) / s) + 1 for f, w, s in zip(sample, window, strides)]
    for k in range(count):
        j, corner = start + k, []
        for n in reversed(positions):
            corner.insert(0, j % n)
            j //= n
        region = tuple(slice(i * s, i * s + w) for i, s, w in zip(corner, strides, window))
        masks[(k, *region)] = 0
    return _masked_batch(input, baseline, masks[:, None])


# --- causal ATE (spec §2.3: block interventions, RoI Dice, ATE screening and pruning) ---

def block_patch_batch(input: Tensor, bank: Tensor, patch_index: Tensor, blocks: Tensor) -> Tensor:
    """Row ``n*S + s``: ``input[s]`` with ``[:, r:r+bh, c:c+bw] = bank[patch_index[n]]``,
    ``(r, c) = blocks[n]``, one slice assignment per row as the reference loop
    writes it; NaN rows for an index outside [0, P) or a block not inside the image."""
    s, _, h, w = input.shape
    n_patches, _, bh, bw = bank.shape
    rows = []
    for p, (r, c) in zip(patch_index.tolist(), blocks.tolist()):
        x = input.clone()
        if 0 <= p < n_patches and 0 <= r <= h - bh and 0 <= c <= w - bw:
            x[:, :, r:r + bh, c:c + bw] = bank[p]
        else:
            x.fill_(float("nan"))
        rows.append(x)
    return torch.cat(rows) if rows else input.new_empty((0, *input.shape[1:]))


def region_outcome(output: Tensor, roi: Tensor, gt: Tensor, channel: int, outcome: str, activation: str,
                   threshold: float, empty_is_one: bool) -> Tensor:
    """Per row: ``100 * Dice(1[p > threshold], gt)`` over the RoI (spec §2.2: sums
    over channels and pixels, ``2 Σ pg / (Σ p + Σ g + 1e-10)``, 0 when both are
    empty unless ``empty_is_one``), the soft Dice of ``p``, or 100 x the mean of
    ``p``; ``p`` = raw / sigmoid / softmax(dim 1) of the output, channel
    ``channel`` (-1: all). Computed in float64, returned in output's dtype."""
    z = output.to(torch.float64)
    p = {"none": z, "sigmoid": torch.sigmoid(z), "softmax": torch.softmax(z, dim=1)}[activation]
    if channel >= 0:
        p = p[:, channel:channel + 1]
    p = p[:, :, roi]  # (R, G, pixels)
    g = gt.to(torch.float64)[:, roi][None]
    if outcome == "mean_prob":
        value = 100 * p.mean((1, 2)) if p.shape[-1] else torch.zeros(p.shape[0], dtype=torch.float64)
        return value.to(output.dtype)
    q = (p > threshold).to(torch.float64) if outcome == "dice" else p
    total = q.sum((1, 2)) + g.sum((1, 2))
    dice = 100 * 2 * (q * g).sum((1, 2)) / (total + 1e-10)
    if empty_is_one:
        dice = torch.where(total == 0, torch.full_like(dice, 100.0), dice)
    return dice.to(output.dtype)


def causal_ate_map(screen: Tensor, full: Tensor, base: Tensor, visited: Tensor, block: Sequence[int],
                   tau: float) -> Tensor:
    """The ATE map, cell by cell as the reference loop decides it: 0 unless the cell
    is visited, some screening ``|Y - base| >= tau`` (not all below tau) and
    ``|mean(Y_full - base)| >= tau``; then that mean on the cell's pixels."""
    bh, bw = block
    b, gh, gw, _ = screen.shape
    out = torch.zeros((b, gh * bh, gw * bw), dtype=screen.dtype, device=screen.device)
    for img in range(b):
        for i in range(gh):
            for j in range(gw):
                if not bool(visited[img, i, j]):
                    continue
                d0 = screen[img, i, j] - base[img]
                if bool((d0.abs() < tau).all()):
                    continue
                ate = (full[img, i, j] - base[img]).mean()
                if bool(ate.abs() < tau):
                    continue
                out[img, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = ate
    return out


# --- progressive masking (spec §3.4: deletion and insertion) ---------------------------

def rank_masked_batch(input: Tensor, baseline: Tensor, ranks: Tensor, step: int, start: int, count: int) -> Tensor:
    """Step-major batch of progressively masked images: block k (step t = start + k)
    is the input with every pixel of rank < t * step (all channels) replaced by
    the baseline; ``ranks`` (1 or S, H, W)."""
    blocks = []
    for k in range(count):
        replaced = (ranks < (start + k) * step)[:, None]  # (1 or S, 1, H, W)
        blocks.append(torch.where(replaced, baseline, input))
    if not blocks:
        return input.new_empty((0, *input.shape[1:]))
    return torch.cat(blocks)
