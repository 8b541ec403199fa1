"""Autograd formulas of the differentiable fastattr ops. The guided ops'
backward is the guided rule itself (that is their purpose); the rule is its own
op (``_<op>_backward``), whose own derivative is registered too, so that double
backward (``create_graph=True``) is exact instead of silently zero: each rule
is linear in ``grad_output`` on pieces where its masks are constant, so its
derivative w.r.t. ``grad_output`` is the mask and w.r.t. the saved forward
tensors is zero.

The perturbation-mask ops (``rise_masks`` and the masked batches) are
differentiable w.r.t. every floating input: input and baseline, and the mask
description (RISE grids, segment keep rows), which enters the masks linearly.

``ig_accumulate_`` mutates its input and returns nothing: it is forward-only
and has no formula (``benchmarks/op_cases.py`` declares each op's autograd and
``tests/test_build.py`` checks the declarations against these registrations)."""

from __future__ import annotations

import math

import torch


def _guided_relu_setup_context(ctx, inputs, output):
    _, mode, upper = inputs
    ctx.mode, ctx.upper = mode, upper
    ctx.save_for_backward(output)


def _guided_relu_backward(ctx, grad_output):
    (result,) = ctx.saved_tensors
    grad = torch.ops.fastattr._guided_relu_backward.default(grad_output, result, ctx.mode, ctx.upper)
    return grad, None, None


torch.library.register_autograd(
    "fastattr::guided_relu", _guided_relu_backward, setup_context=_guided_relu_setup_context
)


class GuidedReluInplace(torch.autograd.Function):
    """In-place guided ReLU (``F.relu(x, inplace=True)`` under ``fastattr.guided``).

    The forward is ATen's in-place clamp (no allocation, one pass), the backward
    the fused ``_guided_relu_backward`` rule on the saved (mutated) output. Going
    through the functional op and ``x.copy_(out)`` instead costs, per ReLU, an
    extra tensor, a copy, a zero-filled gradient for the overwritten input and
    its accumulation in backward."""

    @staticmethod
    def forward(ctx, x, mode, upper):
        x.clamp_(min=0) if upper is None else x.clamp_(0, upper)
        ctx.mark_dirty(x)
        _guided_relu_setup_context(ctx, (x, mode, upper), x)
        return x

    backward = staticmethod(_guided_relu_backward)


def _guided_relu_backward_setup_context(ctx, inputs, output):
    # The rule passes grad_output through where it keeps it and writes 0
    # elsewhere; a kept value is > 0, so `output != 0` is exactly the mask.
    ctx.save_for_backward(output)


def _guided_relu_backward_backward(ctx, grad):
    (output,) = ctx.saved_tensors
    return torch.where(output != 0, grad, 0), None, None, None


torch.library.register_autograd(
    "fastattr::_guided_relu_backward", _guided_relu_backward_backward,
    setup_context=_guided_relu_backward_setup_context,
)


def _guided_max_pool2d_setup_context(ctx, inputs, output):
    self, kernel_size, stride, padding, dilation, _, mode = inputs
    _, indices = output
    ctx.input_size = self.shape
    ctx.geometry = (kernel_size, stride, padding, dilation)
    ctx.mode = mode
    ctx.save_for_backward(indices)
    ctx.mark_non_differentiable(indices)


def _guided_max_pool2d_backward(ctx, grad_output, _grad_indices):
    (indices,) = ctx.saved_tensors
    kernel_size, stride, padding, dilation = ctx.geometry
    grad = torch.ops.fastattr._guided_max_pool2d_backward.default(
        grad_output, indices, ctx.input_size, kernel_size, stride, padding, dilation, ctx.mode
    )
    return grad, None, None, None, None, None, None


torch.library.register_autograd(
    "fastattr::guided_max_pool2d", _guided_max_pool2d_backward, setup_context=_guided_max_pool2d_setup_context
)


def _guided_max_pool2d_backward_setup_context(ctx, inputs, output):
    grad_output, indices, input_size, *_, mode = inputs
    ctx.mode = mode
    ctx.input_size = input_size
    ctx.save_for_backward(grad_output, indices)


def _guided_max_pool2d_backward_backward(ctx, grad):
    # Forward: out[i] = gate_i * sum_{o: idx[o] = i} g[o]  (reference; gate_i is
    # g > 0 at the nearest output cell), or sum_{o: idx[o] = i} relu(g[o])
    # (window). Its vector-Jacobian product gathers `grad` at the indices.
    grad_output, indices = ctx.saved_tensors
    n, c, h, w = ctx.input_size
    if ctx.mode == "reference":
        gate = torch.nn.functional.interpolate((grad_output > 0).to(grad.dtype), size=(h, w), mode="nearest")
        grad = grad * gate
    gathered = grad.reshape(n, c, h * w).gather(2, indices.flatten(2)).view_as(grad_output)
    if ctx.mode == "window":
        gathered = torch.where(grad_output > 0, gathered, 0)
    return gathered, None, None, None, None, None, None, None


torch.library.register_autograd(
    "fastattr::_guided_max_pool2d_backward", _guided_max_pool2d_backward_backward,
    setup_context=_guided_max_pool2d_backward_setup_context,
)


def _ig_path_inputs_setup_context(ctx, inputs, output):
    self, baseline, alphas = inputs
    ctx.batch_shape = self.shape
    ctx.alphas_dtype = alphas.dtype
    # input - baseline is needed only for the alphas' gradient.
    ctx.save_for_backward(alphas, *((self, baseline) if ctx.needs_input_grad[2] else ()))


def _ig_path_inputs_backward(ctx, grad_output):
    # out[k, b] = baseline[b] + a[k, b] (input[b] - baseline[b]) with a[k, b] = alphas[k]
    # for a (K,) table: d/d input = a, d/d baseline = 1 - a, d/d a[k, b] = <grad[k, b], input[b] - baseline[b]>.
    alphas, *saved = ctx.saved_tensors
    steps, batch = alphas.shape[0], ctx.batch_shape[0]
    g = grad_output.reshape(steps, *ctx.batch_shape)
    a = alphas.to(grad_output.dtype)
    if alphas.dim() == 1:
        grad_input = torch.tensordot(a, g, dims=1)
    else:
        grad_input = (a.reshape(steps, batch, *[1] * (g.dim() - 2)) * g).sum(0)
    grad_baseline = g.sum(0) - grad_input
    grad_alphas = None
    if ctx.needs_input_grad[2]:
        self, baseline = saved
        row = math.prod(ctx.batch_shape[1:])  # explicit: -1 is ambiguous for an empty batch
        diff = (self - baseline).reshape(1, batch, row)
        grad_alphas = (g.reshape(steps, batch, row) * diff).sum(-1)
        if alphas.dim() == 1:
            grad_alphas = grad_alphas.sum(1)
        grad_alphas = grad_alphas.to(ctx.alphas_dtype)
    return grad_input, grad_baseline, grad_alphas


torch.library.register_autograd(
    "fastattr::ig_path_inputs", _ig_path_inputs_backward, setup_context=_ig_path_inputs_setup_context
)


# --- perturbation masks ------------------------------------------------------------
# A masked batch is out[k*S + s] = baseline[s] + M_k(s) * (input[s] - baseline[s]),
# linear in input and baseline, and linear in the mask description (grids,
# keep), which enters M linearly. So grad_input = sum_k M_k g_k,
# grad_baseline = sum_k (1 - M_k) g_k, and the description's gradient is the
# adjoint of the mask map applied to sum_s g_k (input - baseline). The masks
# are rebuilt in the backward (the RISE ones with the rise_masks op); sums run
# in float32 for float16/bfloat16 gradients. Every formula is made of
# differentiable torch ops (and rise_masks, itself differentiable), so double
# backward is exact. Entries the ops make NaN (out-of-range grid indices,
# crops or segment ids) give NaN input gradients and no description gradient.


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _axis_weights(shift, length, cells, up, mode, dtype):
    """(N, cells, length): the bilinear weight of grid cell i in crop position
    l of mask n along one axis (shift[n] + l up-sampled from `cells` cells to
    `up`), the transpose of what the kernels read; 0 outside the map."""
    dst = shift[:, None] + torch.arange(length, device=shift.device)
    src = (dst.to(torch.float64) + 0.5) * cells / up - 0.5
    if mode == "clamp":
        src = src.clamp_min(0)
        lo = src.floor().long().clamp_max(cells - 1)
        hi = (lo + 1).clamp_max(cells - 1)
        t = src - lo
    else:  # mirror: -1 -> 1, cells -> cells - 2
        f = src.floor()
        t = src - f
        lo = f.long()
        hi = lo + 1
        lo = lo.abs()
        hi = torch.where(hi > cells - 1, 2 * (cells - 1) - hi, hi)
    inside = ((dst >= 0) & (dst < up)).to(dtype)
    t = t.to(dtype)
    weights = torch.zeros((shift.shape[0], cells, length), dtype=dtype, device=shift.device)
    weights = weights.scatter_add(1, lo.clamp(0, cells - 1)[:, None], ((1 - t) * inside)[:, None])
    return weights.scatter_add(1, hi.clamp(0, cells - 1)[:, None], (t * inside)[:, None])


def _rise_masks_adjoint(cotangent, grid_index, shifts, grids_shape, up_size, mode):
    """d<cotangent, rise_masks(grids)>/d grids, for a (N, H, W) cotangent."""
    n_grids, gh, gw = grids_shape
    _, h, w = cotangent.shape
    rows = _axis_weights(shifts[:, 0], h, gh, up_size[0], mode, cotangent.dtype)  # (N, gh, H)
    cols = _axis_weights(shifts[:, 1], w, gw, up_size[1], mode, cotangent.dtype)  # (N, gw, W)
    per_mask = rows @ cotangent @ cols.transpose(1, 2)  # (N, gh, gw)
    valid = (grid_index >= 0) & (grid_index < n_grids)
    per_mask = per_mask * valid[:, None, None].to(per_mask.dtype)
    grad = torch.zeros((n_grids, gh, gw), dtype=per_mask.dtype, device=per_mask.device)
    return grad.index_add(0, grid_index.clamp(0, n_grids - 1), per_mask)


def _rise_masks_setup_context(ctx, inputs, output):
    grids, grid_index, shifts, _, up_size, mode = inputs
    ctx.grids_shape, ctx.grids_dtype = grids.shape, grids.dtype
    ctx.up_size, ctx.mode = list(up_size), mode
    ctx.save_for_backward(grid_index, shifts)


def _rise_masks_backward(ctx, grad):
    grid_index, shifts = ctx.saved_tensors
    grad_grids = None
    if ctx.needs_input_grad[0]:
        cot = grad.to(_acc_dtype(grad.dtype))
        grad_grids = _rise_masks_adjoint(cot, grid_index, shifts, ctx.grids_shape, ctx.up_size, ctx.mode)
        grad_grids = grad_grids.to(ctx.grids_dtype)
    return grad_grids, None, None, None, None, None


torch.library.register_autograd(
    "fastattr::rise_masks", _rise_masks_backward, setup_context=_rise_masks_setup_context
)


def _rise_masked_batch_setup_context(ctx, inputs, output):
    self, baseline, grids, grid_index, shifts, up_size, mode = inputs
    ctx.input_shape = self.shape
    ctx.grids_shape, ctx.grids_dtype = grids.shape, grids.dtype
    ctx.up_size, ctx.mode = list(up_size), mode
    # input - baseline is needed only for the grids' gradient.
    ctx.save_for_backward(grids, grid_index, shifts, *((self, baseline) if ctx.needs_input_grad[2] else ()))


def _rise_masked_batch_backward(ctx, grad):
    grids, grid_index, shifts, *saved = ctx.saved_tensors
    s, c, h, w = ctx.input_shape
    acc = _acc_dtype(grad.dtype)
    g = grad.reshape(grid_index.shape[0], s, c, h, w).to(acc)
    grad_input = grad_baseline = grad_grids = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        m = torch.ops.fastattr.rise_masks.default(grids, grid_index, shifts, [h, w], ctx.up_size, ctx.mode).to(acc)
        kept = torch.einsum("khw,kschw->schw", m, g)
        grad_input = kept.to(grad.dtype)
        grad_baseline = (g.sum(0) - kept).to(grad.dtype)
    if ctx.needs_input_grad[2]:
        self, baseline = saved
        cot = torch.einsum("kschw,schw->khw", g, (self - baseline).to(acc))
        grad_grids = _rise_masks_adjoint(cot, grid_index, shifts, ctx.grids_shape, ctx.up_size, ctx.mode)
        grad_grids = grad_grids.to(ctx.grids_dtype)
    return grad_input, grad_baseline, grad_grids, None, None, None, None


torch.library.register_autograd(
    "fastattr::rise_masked_batch", _rise_masked_batch_backward, setup_context=_rise_masked_batch_setup_context
)


def _segment_masked_batch_setup_context(ctx, inputs, output):
    self, baseline, segments, keep = inputs
    ctx.input_shape = self.shape
    ctx.keep_dtype = keep.dtype
    ctx.save_for_backward(segments, keep, *((self, baseline) if ctx.needs_input_grad[3] else ()))


def _segment_masked_batch_backward(ctx, grad):
    segments, keep, *saved = ctx.saved_tensors
    shape = ctx.input_shape
    masks, n_segments = keep.shape
    row = math.prod(shape[1:])  # explicit: -1 is ambiguous for an empty batch
    acc = _acc_dtype(grad.dtype)
    g = grad.reshape(masks, shape[0], row).to(acc)
    seg = segments.reshape(segments.shape[0], row)
    valid = (seg >= 0) & (seg < n_segments)
    ids = seg.clamp(0, n_segments - 1)
    grad_input = grad_baseline = grad_keep = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        m = torch.where(valid, keep.to(acc)[:, ids], float("nan"))  # (K, 1 or S, row)
        kept = (m * g).sum(0)
        grad_input = kept.reshape(shape).to(grad.dtype)
        grad_baseline = (g.sum(0) - kept).reshape(shape).to(grad.dtype)
    if ctx.needs_input_grad[3]:
        self, baseline = saved
        contrib = g * (self - baseline).reshape(1, shape[0], row).to(acc)
        contrib = torch.where(valid, contrib, 0).reshape(masks, -1)  # masks >= 1
        index = ids.expand(shape[0], row).reshape(1, -1).expand(masks, -1)
        grad_keep = torch.zeros((masks, n_segments), dtype=acc, device=g.device).scatter_add(1, index, contrib)
        grad_keep = grad_keep.to(ctx.keep_dtype)
    return grad_input, grad_baseline, None, grad_keep


torch.library.register_autograd(
    "fastattr::segment_masked_batch", _segment_masked_batch_backward,
    setup_context=_segment_masked_batch_setup_context,
)


def _window_inside(sample_shape, window, strides, start, count, device):
    """(count, *sample_shape) bool: True inside window start + k (Captum
    Occlusion's windows, ceil((F - w) / s) + 1 per dim, the last clipped;
    row-major over the window grid)."""
    dims = len(sample_shape)
    counts = [(f - w + s - 1) // s + 1 for f, w, s in zip(sample_shape, window, strides)]
    j = start + torch.arange(count, device=device)
    inside = torch.ones((count, *[1] * dims), dtype=torch.bool, device=device)
    for d in reversed(range(dims)):
        lo = (j % counts[d]) * strides[d]
        j = j // counts[d]
        coord = torch.arange(sample_shape[d], device=device)
        along = (coord >= lo[:, None]) & (coord < lo[:, None] + window[d])  # (count, F_d)
        shape = [count] + [1] * dims
        shape[d + 1] = sample_shape[d]
        inside = inside & along.reshape(shape)
    return inside


def _window_masked_batch_setup_context(ctx, inputs, output):
    self, _, window, strides, start, count = inputs
    ctx.input_shape = self.shape
    ctx.geometry = (list(window), list(strides), start, count)


def _window_masked_batch_backward(ctx, grad):
    window, strides, start, count = ctx.geometry
    shape = ctx.input_shape
    acc = _acc_dtype(grad.dtype)
    g = grad.reshape(count, *shape).to(acc)
    inside = _window_inside(shape[1:], window, strides, start, count, grad.device)
    occluded = (g * inside[:, None].to(acc)).sum(0)  # M = 0 there: that part goes to the baseline
    grad_input = (g.sum(0) - occluded).to(grad.dtype)
    return grad_input, occluded.to(grad.dtype), None, None, None, None


torch.library.register_autograd(
    "fastattr::window_masked_batch", _window_masked_batch_backward,
    setup_context=_window_masked_batch_setup_context,
)


# --- causal ATE ------------------------------------------------------------------
# block_patch_batch: a row is the input outside its block and the bank patch
# inside, so grad_input[s] = sum_n g[n, s] outside block n, and grad_bank[p] =
# sum over rows n with patch p of g[n] read at block n. Rows the op makes NaN
# (invalid patch index or block) get no gradient.

def _block_cells(blocks, bh, bw):
    """(N, bh) rows and (N, bw) columns covered by each block."""
    rows = blocks[:, :1] + torch.arange(bh, device=blocks.device)
    cols = blocks[:, 1:] + torch.arange(bw, device=blocks.device)
    return rows, cols


def _block_patch_batch_setup_context(ctx, inputs, output):
    self, bank, patch_index, blocks = inputs
    ctx.input_shape, ctx.bank_shape, ctx.bank_dtype = self.shape, bank.shape, bank.dtype
    ctx.save_for_backward(patch_index, blocks)


def _block_patch_batch_backward(ctx, grad):
    patch_index, blocks = ctx.saved_tensors
    s, c, h, w = ctx.input_shape
    n_patches, _, bh, bw = ctx.bank_shape
    n = patch_index.shape[0]
    acc = _acc_dtype(grad.dtype)
    g = grad.reshape(n, s, c, h, w).to(acc)
    valid = ((patch_index >= 0) & (patch_index < n_patches) & (blocks[:, 0] >= 0) & (blocks[:, 1] >= 0)
             & (blocks[:, 0] <= h - bh) & (blocks[:, 1] <= w - bw))
    rows, cols = _block_cells(blocks.clamp_min(0), bh, bw)
    rows, cols = rows.clamp_max(h - 1), cols.clamp_max(w - 1)
    grad_input = grad_bank = None
    if ctx.needs_input_grad[0]:
        in_r = (torch.arange(h, device=g.device) >= blocks[:, :1]) & (torch.arange(h, device=g.device) < blocks[:, :1] + bh)
        in_c = (torch.arange(w, device=g.device) >= blocks[:, 1:]) & (torch.arange(w, device=g.device) < blocks[:, 1:] + bw)
        outside = ~(in_r[:, :, None] & in_c[:, None, :]) & valid[:, None, None]  # (N, H, W)
        grad_input = (g * outside[:, None, None].to(acc)).sum(0).to(grad.dtype)
    if ctx.needs_input_grad[1]:
        k = torch.arange(n, device=g.device)[:, None, None]
        # (N, bh, bw, S, C): g[n, :, :, rows[n, i], cols[n, j]]
        patches = g.permute(0, 3, 4, 1, 2)[k, rows[:, :, None], cols[:, None, :]].sum(3)
        patches = patches.permute(0, 3, 1, 2) * valid[:, None, None, None].to(acc)  # (N, C, bh, bw)
        grad_bank = torch.zeros(ctx.bank_shape, dtype=acc, device=g.device)
        grad_bank = grad_bank.index_add(0, patch_index.clamp(0, n_patches - 1), patches).to(ctx.bank_dtype)
    return grad_input, grad_bank, None, None


torch.library.register_autograd(
    "fastattr::block_patch_batch", _block_patch_batch_backward, setup_context=_block_patch_batch_setup_context
)


# region_outcome: with q the (thresholded) prediction, S = Σ q + Σ g + 1e-10
# and I = Σ q g over the RoI, (soft) Dice D = 200 I / S has dD/dg = 200 (q S - I)
# / S^2 and, for soft Dice, dD/dp = 200 (g S - I) / S^2; mean_prob M = 100 Σ p / n
# has dM/dp = 100 / n. dice is piecewise constant in the output (zero
# gradient); an empty_is_one row with nothing predicted or true is constant.
# The activation's derivative is applied last.

def _outcome_probabilities(output, channel, activation):
    """(p over all K channels in opmath, the selected channel slice)."""
    z = output.to(torch.float64)
    if activation == "sigmoid":
        p = torch.sigmoid(z)
    elif activation == "softmax":
        p = torch.softmax(z, dim=1)
    else:
        p = z
    sel = slice(None) if channel < 0 else slice(channel, channel + 1)
    return p, sel


def _region_outcome_setup_context(ctx, inputs, output):
    out, roi, gt, channel, outcome, activation, threshold, empty_is_one = inputs
    ctx.args = (channel, outcome, activation, threshold, empty_is_one)
    ctx.out_dtype, ctx.gt_dtype = out.dtype, gt.dtype
    ctx.save_for_backward(out, roi, gt)


def _region_outcome_backward(ctx, grad):
    out, roi, gt = ctx.saved_tensors
    channel, outcome, activation, threshold, empty_is_one = ctx.args
    p_all, sel = _outcome_probabilities(out, channel, activation)
    p = p_all[:, sel]  # (R, G, H, W)
    w = roi.to(torch.float64)
    g = gt.to(torch.float64)[None]
    go = grad.to(torch.float64)[:, None, None, None]
    grad_out = grad_gt = None
    if outcome == "mean_prob":
        count = w.sum() * p.shape[1]
        grad_p = go * (100.0 * w / count.clamp_min(1)).expand_as(p)
    else:
        q = (p > threshold).to(torch.float64) if outcome == "dice" else p
        s = (q * w).sum((1, 2, 3)) + (g * w).sum() + 1e-10
        inter = (q * g * w).sum((1, 2, 3))
        live = torch.ones_like(s) if not empty_is_one else ((s - 1e-10) != 0).to(torch.float64)
        scale = (200.0 / s ** 2 * live)[:, None, None, None] * go
        if ctx.needs_input_grad[2]:
            grad_gt = (scale * w * (q * s[:, None, None, None] - inter[:, None, None, None])).sum(0)
            grad_gt = grad_gt.to(ctx.gt_dtype)
        grad_p = scale * w * (g * s[:, None, None, None] - inter[:, None, None, None])
        if outcome == "dice":
            grad_p = torch.zeros_like(grad_p)
    if ctx.needs_input_grad[0]:
        full = torch.zeros_like(p_all)
        full[:, sel] = grad_p
        if activation == "sigmoid":
            full = full * p_all * (1 - p_all)
        elif activation == "softmax":
            full = p_all * (full - (full * p_all).sum(1, keepdim=True))
        grad_out = full.to(ctx.out_dtype)
    return grad_out, None, grad_gt, None, None, None, None, None


torch.library.register_autograd(
    "fastattr::region_outcome", _region_outcome_backward, setup_context=_region_outcome_setup_context
)


# causal_ate_map: a kept cell's value is mean_s(full - base), so it passes
# 1/n_samples of the gradient summed over its pixels to each of its full
# outcomes and minus that sum to base; pruned and unvisited cells pass nothing
# (screening decides, it has no gradient).

def _causal_ate_map_setup_context(ctx, inputs, output):
    screen, full, base, visited, block, tau = inputs
    ctx.block, ctx.tau = list(block), tau
    ctx.save_for_backward(screen, full, base, visited)


def _causal_ate_kept(screen, full, base, visited, tau):
    """(B, gh, gw) bool: cells whose value is their ATE (the kernels' rule)."""
    b = base[:, None, None, None]
    passed = ~(((screen - b).abs() < tau).all(-1))
    ate = (full - b).mean(-1)
    return visited & passed & ~(ate.abs() < tau)


def _causal_ate_map_backward(ctx, grad):
    screen, full, base, visited = ctx.saved_tensors
    bh, bw = ctx.block
    b, gh, gw, n1 = full.shape
    acc = _acc_dtype(grad.dtype)
    kept = _causal_ate_kept(screen.to(acc), full.to(acc), base.to(acc), visited, ctx.tau).to(acc)
    per_cell = grad.to(acc).reshape(b, gh, bh, gw, bw).sum((2, 4)) * kept  # (B, gh, gw)
    grad_full = (per_cell[..., None] / n1).expand(b, gh, gw, n1).to(full.dtype) if ctx.needs_input_grad[1] else None
    grad_base = (-per_cell.sum((1, 2))).to(base.dtype) if ctx.needs_input_grad[2] else None
    return None, grad_full, grad_base, None, None, None


torch.library.register_autograd(
    "fastattr::causal_ate_map", _causal_ate_map_backward, setup_context=_causal_ate_map_setup_context
)


def _rank_keep(ranks, step, start, count):
    """(count, 1 or S, 1, H, W) bool: True where step start + k keeps self."""
    thresholds = (start + torch.arange(count, device=ranks.device)) * step
    return (ranks[None] >= thresholds[:, None, None, None])[:, :, None]


def _rank_masked_batch_setup_context(ctx, inputs, output):
    self, _, ranks, step, start, count = inputs
    ctx.input_shape = self.shape
    ctx.geometry = (step, start, count)
    ctx.save_for_backward(ranks)


def _rank_masked_batch_backward(ctx, grad):
    (ranks,) = ctx.saved_tensors
    step, start, count = ctx.geometry
    acc = _acc_dtype(grad.dtype)
    g = grad.reshape(count, *ctx.input_shape).to(acc)
    keep = _rank_keep(ranks, step, start, count)
    kept = torch.where(keep, g, 0).sum(0)  # M = 1 there: that part goes to self
    grad_input = kept.to(grad.dtype)
    grad_baseline = (g.sum(0) - kept).to(grad.dtype)
    return grad_input, grad_baseline, None, None, None, None


torch.library.register_autograd(
    "fastattr::rank_masked_batch", _rank_masked_batch_backward, setup_context=_rank_masked_batch_setup_context
)
