"""Fake (meta) kernels of every fastattr op: output shapes, dtypes and strides,
and the same argument checks as the C++ kernels (the same messages, word for
word), without touching data. They let the ops run under FakeTensor,
torch.compile and torch.export.

Output strides follow the kernels' memory-format rules (csrc/checks.h and the
ops' headers), so that a compiled graph lays its buffers out as eager does:

- ``guided_relu``: the input's strides when it is non-overlapping and dense,
  else contiguous in its suggested memory format;
- ``_guided_relu_backward``: the operands' strides when both are dense with the
  same layout, else contiguous in grad_output's suggested memory format;
- ``guided_max_pool2d`` (output and indices), ``_guided_max_pool2d_backward``,
  ``ig_path_inputs``: contiguous in the suggested memory format of self,
  grad_output and input respectively (channels_last in, channels_last out);
- the masked batches (``rise_masked_batch``, ``segment_masked_batch``,
  ``window_masked_batch``, ``rank_masked_batch``): contiguous in input's
  suggested memory format, like
  ``ig_path_inputs``; ``rise_masks``: contiguous (N, H, W).
"""

from __future__ import annotations

import math

import torch
from torch._prims_common import suggest_memory_format

_RELU_MODES = ("guided", "deconvnet")
_POOL_MODES = ("reference", "window")


def _shape(t) -> list:
    # Printed like the C++ kernels print an IntArrayRef: [2, 3].
    return list(t.shape)


def _check_mode(mode, allowed):
    torch._check_value(mode in allowed, lambda: f"fastattr: mode must be {' or '.join(map(repr, allowed))}, got '{mode}'")


def _check_floating(t, name):
    torch._check_type(t.dtype.is_floating_point, lambda: f"fastattr: {name} must be a floating-point tensor, got {t.dtype}")


def _check_same(a, a_name, b, b_name):
    torch._check_value(a.shape == b.shape, lambda: f"fastattr: {a_name} and {b_name} must have the same shape, got {_shape(a)} and {_shape(b)}")
    torch._check_type(a.dtype == b.dtype, lambda: f"fastattr: {a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    torch._check_value(a.device == b.device, lambda: f"fastattr: {a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


def _check_upper(upper):
    torch._check_value(upper is None or upper > 0, lambda: f"fastattr.guided_relu: upper must be positive or None, got {upper:g}")


def _is_dense(t) -> bool:
    """TensorImpl::is_non_overlapping_and_dense: some permutation of the
    dimensions is contiguous (dimensions of size < 2 place no constraint)."""
    if t.dim() == 1:
        return t.shape[0] < 2 or t.stride(0) == 1
    expected = 1
    # Dimensions by stride, those of size < 2 last (bool() on a symbolic size
    # guards on it; a tuple of SymBools would not compare).
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: (1 if d[0] < 2 else 0, d[1])):
        if size < 2:
            return True
        if stride != expected:
            return False
        expected *= size
    return True


def _same_dense_layout(a, b) -> bool:
    """same_dense_layout in csrc/checks.h: both dense, equal strides on every
    dimension of size > 1."""
    return _is_dense(a) and _is_dense(b) and all(
        s_a == s_b for size, s_a, s_b in zip(a.shape, a.stride(), b.stride()) if size > 1)


def _like_dense_or_contiguous(t, dtype=None):
    """The output of an elementwise kernel on `t` (dense_or_contiguous in csrc/checks.h)."""
    dtype = t.dtype if dtype is None else dtype
    if _is_dense(t):
        return torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device)
    return torch.empty(t.shape, dtype=dtype, device=t.device, memory_format=suggest_memory_format(t))


@torch.library.register_fake("fastattr::guided_relu")
def _guided_relu_fake(self, mode, upper=None):
    _check_floating(self, "self")
    _check_mode(mode, _RELU_MODES)
    _check_upper(upper)
    return _like_dense_or_contiguous(self)


@torch.library.register_fake("fastattr::_guided_relu_backward")
def _guided_relu_backward_fake(grad_output, result, mode, upper=None):
    _check_floating(grad_output, "grad_output")
    _check_same(grad_output, "grad_output", result, "result")
    _check_mode(mode, _RELU_MODES)
    _check_upper(upper)
    if _same_dense_layout(grad_output, result):
        return torch.empty_strided(grad_output.shape, grad_output.stride(), dtype=grad_output.dtype,
                                   device=grad_output.device)
    return torch.empty(grad_output.shape, dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=suggest_memory_format(grad_output))


def _pool_out(size, k, s, p, d, ceil_mode):
    # nn.MaxPool2d's output-size formula (ATen pooling_output_shape).
    numer = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = numer // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _check_pool_geometry(kernel_size, stride, padding, dilation):
    # Same conditions as make_pool2d_geometry in csrc/ops/guided_max_pool2d.h.
    torch._check_value(len(kernel_size) == 2 and kernel_size[0] > 0 and kernel_size[1] > 0,
                 lambda: f"fastattr.guided_max_pool2d: kernel_size must be two positive ints, got {list(kernel_size)}")
    torch._check_value(len(stride) == 2 and stride[0] > 0 and stride[1] > 0,
                 lambda: f"fastattr.guided_max_pool2d: stride must be two positive ints, got {list(stride)}")
    torch._check_value(len(dilation) == 2 and dilation[0] > 0 and dilation[1] > 0,
                 lambda: f"fastattr.guided_max_pool2d: dilation must be two positive ints, got {list(dilation)}")
    torch._check_value(len(padding) == 2 and all(0 <= p and 2 * p <= k for p, k in zip(padding, kernel_size)),
                 lambda: "fastattr.guided_max_pool2d: padding must be non-negative and at most half the kernel size, "
                         f"got padding={list(padding)} kernel_size={list(kernel_size)}")


@torch.library.register_fake("fastattr::guided_max_pool2d")
def _guided_max_pool2d_fake(self, kernel_size, stride, padding, dilation, ceil_mode, mode):
    _check_floating(self, "self")
    torch._check_value(self.dim() == 4, lambda: f"fastattr.guided_max_pool2d: self must be 4-D (N, C, H, W), got {self.dim()}-D")
    _check_pool_geometry(kernel_size, stride, padding, dilation)
    _check_mode(mode, _POOL_MODES)
    n, c, h, w = self.shape
    oh = _pool_out(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pool_out(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    # ATen's max_pool2d refuses an empty output window grid.
    torch._check_value(oh >= 1 and ow >= 1, lambda: f"fastattr.guided_max_pool2d: output size of self {_shape(self)} is too small ({oh}x{ow})")
    # ATen's max_pool2d_with_indices writes both in self's suggested memory format.
    fmt = suggest_memory_format(self)
    out = torch.empty((n, c, oh, ow), dtype=self.dtype, device=self.device, memory_format=fmt)
    return out, torch.empty((n, c, oh, ow), dtype=torch.int64, device=self.device, memory_format=fmt)


@torch.library.register_fake("fastattr::_guided_max_pool2d_backward")
def _guided_max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation, mode):
    _check_floating(grad_output, "grad_output")
    torch._check_value(grad_output.dim() == 4, lambda: f"fastattr._guided_max_pool2d_backward: grad_output must be 4-D (N, C, H, W), got {grad_output.dim()}-D")
    torch._check_type(indices.dtype == torch.int64, lambda: f"fastattr._guided_max_pool2d_backward: indices must be int64, got {indices.dtype}")
    torch._check_value(grad_output.shape == indices.shape, lambda: f"fastattr: grad_output and indices must have the same shape, got {_shape(grad_output)} and {_shape(indices)}")
    torch._check_value(grad_output.device == indices.device, lambda: f"fastattr: grad_output and indices must be on the same device, got {grad_output.device} and {indices.device}")
    torch._check_value(len(input_size) == 4 and input_size[0] == grad_output.shape[0] and input_size[1] == grad_output.shape[1],
                 lambda: f"fastattr._guided_max_pool2d_backward: input_size must be (N, C, H, W) matching grad_output's N and C, got {list(input_size)}")
    _check_pool_geometry(kernel_size, stride, padding, dilation)
    _check_mode(mode, _POOL_MODES)
    return torch.empty(list(input_size), dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=suggest_memory_format(grad_output))


def _check_step_table(table, op, name, like, like_name):
    # check_step_table in csrc/ops/ig_path.h.
    torch._check_type(table.dtype.is_floating_point, lambda: f"fastattr.{op}: {name} must be a floating-point tensor, got {table.dtype}")
    torch._check_value(table.device == like.device, lambda: f"fastattr.{op}: {name} must be on the device of {like_name} ({like.device}), got {table.device}")
    torch._check_value(table.dim() in (1, 2), lambda: f"fastattr.{op}: {name} must have shape (K,) or (K, B), got a {table.dim()}-D tensor of shape {_shape(table)}")
    torch._check_value(table.shape[0] >= 1, lambda: f"fastattr.{op}: {name} must hold at least one step (K >= 1), got shape {_shape(table)}")
    torch._check_value(table.dim() == 1 or table.shape[1] == like.shape[0],
                 lambda: f"fastattr.{op}: {name} of shape (K, B) must have B = {like.shape[0]} (the batch size of {like_name}), got shape {_shape(table)}")


@torch.library.register_fake("fastattr::ig_path_inputs")
def _ig_path_inputs_fake(self, baseline, alphas):
    _check_floating(self, "input")
    torch._check_value(self.dim() >= 1, lambda: "fastattr.ig_path_inputs: input must have a batch dimension, got a 0-D tensor")
    _check_same(self, "input", baseline, "baseline")
    _check_step_table(alphas, "ig_path_inputs", "alphas", self, "input")
    return torch.empty((alphas.shape[0] * self.shape[0], *self.shape[1:]), dtype=self.dtype, device=self.device,
                       memory_format=suggest_memory_format(self))


@torch.library.register_fake("fastattr::ig_accumulate_")
def _ig_accumulate_fake(total, grads, weights):
    _check_floating(grads, "grads")
    acc = torch.float32 if grads.dtype in (torch.float16, torch.bfloat16) else grads.dtype
    torch._check_type(total.dtype == acc, lambda: f"fastattr.ig_accumulate_: total must have the accumulation dtype of grads ({acc} for {grads.dtype} grads), got {total.dtype}")
    torch._check_value(total.device == grads.device, lambda: f"fastattr: total and grads must be on the same device, got {total.device} and {grads.device}")
    torch._check_value(total.dim() >= 1, lambda: "fastattr.ig_accumulate_: total must have a batch dimension, got a 0-D tensor")
    _check_step_table(weights, "ig_accumulate_", "weights", total, "total")
    expected = [total.shape[0] * weights.shape[0], *total.shape[1:]]
    torch._check_value(list(grads.shape) == expected,
                 lambda: f"fastattr.ig_accumulate_: grads must have shape (K * B, *total.shape[1:]) = {expected} for total of shape "
                         f"{_shape(total)} and K = {weights.shape[0]}, got {_shape(grads)}")
    torch._check_value(total.is_contiguous(memory_format=suggest_memory_format(total)),
                 lambda: "fastattr.ig_accumulate_: total must be contiguous or channels_last (it is written in place), got "
                         f"strides {list(total.stride())} for shape {_shape(total)}")
    return None


# --- perturbation masks (csrc/ops/perturb.h) ---------------------------------------
# Masked batches come out in the input's suggested memory format (like
# ig_path_inputs); rise_masks contiguous (N, H, W) in grids' dtype.

_GRID_MODES = ("mirror", "clamp")


def _check_on_device(op, t, name, like, like_name):
    torch._check_value(t.device == like.device,
                 lambda: f"fastattr.{op}: {name} must be on the device of {like_name} ({like.device}), got {t.device}")


def _check_int64(op, t, name):
    torch._check_type(t.dtype == torch.int64, lambda: f"fastattr.{op}: {name} must be an int64 tensor, got {t.dtype}")


def _check_batch_operands(op, self, baseline):
    _check_floating(self, "input")
    torch._check_value(self.dim() >= 1, lambda: f"fastattr.{op}: input must have a batch dimension, got a 0-D tensor")
    _check_same(self, "input", baseline, "baseline")


def _check_rise_args(op, grids, grid_index, shifts, height, width, up_size, mode, like, like_name):
    torch._check_type(grids.dtype.is_floating_point,
                 lambda: f"fastattr.{op}: grids must be a floating-point tensor, got {grids.dtype}")
    torch._check_value(grids.dim() == 3 and grids.shape[0] >= 1 and grids.shape[1] >= 1 and grids.shape[2] >= 1,
                 lambda: f"fastattr.{op}: grids must have shape (G, gh, gw) with G, gh, gw >= 1, got shape {_shape(grids)}")
    _check_mode(mode, _GRID_MODES)
    torch._check_value(mode != "mirror" or (grids.shape[1] >= 2 and grids.shape[2] >= 2),
                 lambda: f"fastattr.{op}: mode 'mirror' needs grids of at least 2x2 cells (it reflects index -1 to 1), "
                         f"got shape {_shape(grids)}")
    _check_int64(op, grid_index, "grid_index")
    torch._check_value(grid_index.dim() == 1, lambda: f"fastattr.{op}: grid_index must have shape (N,), got shape {_shape(grid_index)}")
    _check_int64(op, shifts, "shifts")
    torch._check_value(shifts.dim() == 2 and shifts.shape[0] == grid_index.shape[0] and shifts.shape[1] == 2,
                 lambda: f"fastattr.{op}: shifts must have shape (N, 2) = [{grid_index.shape[0]}, 2] (N = len(grid_index)), "
                         f"got shape {_shape(shifts)}")
    _check_on_device(op, grids, "grids", like, like_name)
    _check_on_device(op, grid_index, "grid_index", like, like_name)
    _check_on_device(op, shifts, "shifts", like, like_name)
    torch._check_value(len(up_size) == 2 and up_size[0] >= 1 and up_size[1] >= 1 and up_size[0] >= height and up_size[1] >= width,
                 lambda: f"fastattr.{op}: up_size must be two positive ints with up_size >= size = [{height}, {width}], "
                         f"got {list(up_size)}")


def _masked_batch_out(self, masks):
    return torch.empty((masks * self.shape[0], *self.shape[1:]), dtype=self.dtype, device=self.device,
                       memory_format=suggest_memory_format(self))


@torch.library.register_fake("fastattr::rise_masks")
def _rise_masks_fake(grids, grid_index, shifts, size, up_size, mode):
    torch._check_value(len(size) == 2 and size[0] >= 0 and size[1] >= 0,
                 lambda: f"fastattr.rise_masks: size must be two non-negative ints (H, W), got {list(size)}")
    _check_rise_args("rise_masks", grids, grid_index, shifts, size[0], size[1], up_size, mode, grids, "grids")
    return torch.empty((grid_index.shape[0], size[0], size[1]), dtype=grids.dtype, device=grids.device)


@torch.library.register_fake("fastattr::rise_masked_batch")
def _rise_masked_batch_fake(self, baseline, grids, grid_index, shifts, up_size, mode):
    _check_batch_operands("rise_masked_batch", self, baseline)
    torch._check_value(self.dim() == 4, lambda: f"fastattr.rise_masked_batch: input must be 4-D (S, C, H, W), got a {self.dim()}-D "
                                          f"tensor of shape {_shape(self)}")
    _check_rise_args("rise_masked_batch", grids, grid_index, shifts, self.shape[2], self.shape[3], up_size, mode, self,
                     "input")
    return _masked_batch_out(self, grid_index.shape[0])


@torch.library.register_fake("fastattr::segment_masked_batch")
def _segment_masked_batch_fake(self, baseline, segments, keep):
    op = "segment_masked_batch"
    _check_batch_operands(op, self, baseline)
    _check_int64(op, segments, "segments")
    _check_on_device(op, segments, "segments", self, "input")
    torch._check_value(segments.dim() == self.dim() and segments.shape[1:] == self.shape[1:]
                 and (segments.shape[0] == 1 or segments.shape[0] == self.shape[0]),
                 lambda: f"fastattr.{op}: segments must have shape {[1, *_shape(self)[1:]]} or {_shape(self)} (one map shared "
                         f"by all samples, or one per sample), got {_shape(segments)}")
    torch._check_type(keep.dtype.is_floating_point, lambda: f"fastattr.{op}: keep must be a floating-point tensor, got {keep.dtype}")
    _check_on_device(op, keep, "keep", self, "input")
    torch._check_value(keep.dim() == 2 and keep.shape[0] >= 1 and keep.shape[1] >= 1,
                 lambda: f"fastattr.{op}: keep must have shape (K, J) with K >= 1 masks and J >= 1 segments, got shape "
                         f"{_shape(keep)}")
    return _masked_batch_out(self, keep.shape[0])


@torch.library.register_fake("fastattr::window_masked_batch")
def _window_masked_batch_fake(self, baseline, window, strides, start, count):
    op = "window_masked_batch"
    _check_batch_operands(op, self, baseline)
    dims = self.dim() - 1
    torch._check_value(1 <= dims <= 3, lambda: f"fastattr.{op}: input must have 1 to 3 dimensions per sample (a 2-D to 4-D tensor), "
                                         f"got a {self.dim()}-D tensor")
    torch._check_value(len(window) == dims and len(strides) == dims,
                 lambda: f"fastattr.{op}: window and strides must have one entry per sample dimension ({dims}), got window "
                         f"{list(window)} and strides {list(strides)}")
    sample = _shape(self)[1:]
    torch._check_value(all(1 <= w <= f for w, f in zip(window, sample)),
                 lambda: f"fastattr.{op}: window must lie in [1, size] per dimension for samples of shape {sample}, got "
                         f"{list(window)}")
    torch._check_value(all(s >= 1 for s in strides), lambda: f"fastattr.{op}: strides must be positive, got {list(strides)}")
    total = 1
    for w, s, f in zip(window, strides, sample):
        total = total * ((f - w + s - 1) // s + 1)  # ceil((F - w) / s) + 1
    torch._check_value(start >= 0 and count >= 1 and start + count <= total,
                 lambda: f"fastattr.{op}: start and count must select windows in [0, {total}) (start >= 0, count >= 1, "
                         f"start + count <= {total}), got start={start} count={count}")
    return _masked_batch_out(self, count)


# --- causal ATE (csrc/ops/perturb.h: block patches; csrc/ops/causal.h) --------------

@torch.library.register_fake("fastattr::block_patch_batch")
def _block_patch_batch_fake(self, bank, patch_index, blocks):
    op = "block_patch_batch"
    _check_floating(self, "input")
    torch._check_value(self.dim() == 4, lambda: f"fastattr.{op}: input must be 4-D (S, C, H, W), got a {self.dim()}-D tensor "
                                          f"of shape {_shape(self)}")
    _, c, h, w = self.shape
    torch._check_value(bank.dim() == 4 and bank.shape[0] >= 1 and bank.shape[1] == c and bank.shape[2] >= 1
                 and bank.shape[3] >= 1 and bank.shape[2] <= h and bank.shape[3] <= w,
                 lambda: f"fastattr.{op}: bank must have shape (P, C, bh, bw) with P >= 1, C = {c} (the input's channels) "
                         f"and 1 <= bh <= {h}, 1 <= bw <= {w}, got shape {_shape(bank)}")
    torch._check_type(self.dtype == bank.dtype,
                 lambda: f"fastattr: input and bank must have the same dtype, got {self.dtype} and {bank.dtype}")
    _check_on_device(op, bank, "bank", self, "input")
    _check_int64(op, patch_index, "patch_index")
    torch._check_value(patch_index.dim() == 1, lambda: f"fastattr.{op}: patch_index must have shape (N,), got shape "
                                                 f"{_shape(patch_index)}")
    _check_on_device(op, patch_index, "patch_index", self, "input")
    _check_int64(op, blocks, "blocks")
    torch._check_value(blocks.dim() == 2 and blocks.shape[0] == patch_index.shape[0] and blocks.shape[1] == 2,
                 lambda: f"fastattr.{op}: blocks must have shape (N, 2) = [{patch_index.shape[0]}, 2] (N = len(patch_index)), "
                         f"got shape {_shape(blocks)}")
    _check_on_device(op, blocks, "blocks", self, "input")
    return _masked_batch_out(self, patch_index.shape[0])


_OUTCOMES = ("dice", "soft_dice", "mean_prob")
_OUTCOME_ACTIVATIONS = ("none", "sigmoid", "softmax")


@torch.library.register_fake("fastattr::region_outcome")
def _region_outcome_fake(output, roi, gt, channel, outcome, activation, threshold, empty_is_one):
    op = "region_outcome"
    _check_floating(output, "output")
    torch._check_value(output.dim() == 4 and output.shape[1] >= 1,
                 lambda: f"fastattr.{op}: output must be a segmentation map (R, K, H, W) with K >= 1, got shape {_shape(output)}")
    k, h, w = output.shape[1:]
    torch._check_value(-1 <= channel < k, lambda: f"fastattr.{op}: channel must be -1 (every channel) or in [0, {k}) for an "
                                            f"output with {k} channels, got {channel}")
    torch._check_value(outcome in _OUTCOMES, lambda: f"fastattr.{op}: outcome must be 'dice', 'soft_dice' or 'mean_prob', "
                                               f"got '{outcome}'")
    torch._check_value(activation in _OUTCOME_ACTIVATIONS, lambda: f"fastattr.{op}: activation must be 'none', 'sigmoid' or "
                                                            f"'softmax', got '{activation}'")
    torch._check_type(roi.dtype == torch.bool, lambda: f"fastattr.{op}: roi must be a bool tensor, got {roi.dtype}")
    torch._check_value(roi.dim() == 2 and roi.shape[0] == h and roi.shape[1] == w,
                 lambda: f"fastattr.{op}: roi must have shape (H, W) = [{h}, {w}], got shape {_shape(roi)}")
    _check_on_device(op, roi, "roi", output, "output")
    selected = k if channel < 0 else 1
    torch._check_type(gt.dtype.is_floating_point, lambda: f"fastattr.{op}: gt must be a floating-point tensor, got {gt.dtype}")
    torch._check_value(gt.dim() == 3 and gt.shape[0] == selected and gt.shape[1] == h and gt.shape[2] == w,
                 lambda: f"fastattr.{op}: gt must have shape (G, H, W) = [{selected}, {h}, {w}] (G = 1 for one channel, "
                         f"K for every channel), got shape {_shape(gt)}")
    _check_on_device(op, gt, "gt", output, "output")
    return output.new_empty((output.shape[0],))


@torch.library.register_fake("fastattr::causal_ate_map")
def _causal_ate_map_fake(screen, full, base, visited, block, tau):
    op = "causal_ate_map"
    _check_floating(screen, "screen")
    torch._check_value(screen.dim() == 4 and screen.shape[3] >= 1,
                 lambda: f"fastattr.{op}: screen must have shape (B, gh, gw, n_screen) with n_screen >= 1, got shape "
                         f"{_shape(screen)}")
    b, gh, gw = screen.shape[:3]
    torch._check_value(full.dim() == 4 and full.shape[:3] == screen.shape[:3] and full.shape[3] >= 1,
                 lambda: f"fastattr.{op}: full must have shape (B, gh, gw, n_samples) = [{b}, {gh}, {gw}, n_samples] with "
                         f"n_samples >= 1, got shape {_shape(full)}")
    torch._check_type(screen.dtype == full.dtype,
                 lambda: f"fastattr: screen and full must have the same dtype, got {screen.dtype} and {full.dtype}")
    torch._check_value(screen.device == full.device,
                 lambda: f"fastattr: screen and full must be on the same device, got {screen.device} and {full.device}")
    torch._check_value(base.dim() == 1 and base.shape[0] == b,
                 lambda: f"fastattr.{op}: base must have shape (B,) = [{b}], got shape {_shape(base)}")
    torch._check_type(screen.dtype == base.dtype,
                 lambda: f"fastattr: screen and base must have the same dtype, got {screen.dtype} and {base.dtype}")
    _check_on_device(op, base, "base", screen, "screen")
    torch._check_type(visited.dtype == torch.bool, lambda: f"fastattr.{op}: visited must be a bool tensor, got {visited.dtype}")
    torch._check_value(visited.dim() == 3 and visited.shape == screen.shape[:3],
                 lambda: f"fastattr.{op}: visited must have shape (B, gh, gw) = {[b, gh, gw]}, got shape {_shape(visited)}")
    _check_on_device(op, visited, "visited", screen, "screen")
    torch._check_value(len(block) == 2 and block[0] >= 1 and block[1] >= 1,
                 lambda: f"fastattr.{op}: block must be two positive ints (bh, bw), got {list(block)}")
    torch._check_value(math.isfinite(tau) and tau >= 0, lambda: f"fastattr.{op}: tau must be finite and >= 0, got {tau}")
    return screen.new_empty((b, gh * block[0], gw * block[1]))


# --- progressive masking (csrc/ops/rank_masked_batch.h) -----------------------------

_INT64_MAX = 2**63 - 1


@torch.library.register_fake("fastattr::rank_masked_batch")
def _rank_masked_batch_fake(self, baseline, ranks, step, start, count):
    op = "rank_masked_batch"
    _check_batch_operands(op, self, baseline)
    torch._check_value(self.dim() == 4, lambda: f"fastattr.{op}: input must be 4-D (S, C, H, W), got a {self.dim()}-D "
                                          f"tensor of shape {_shape(self)}")
    _check_int64(op, ranks, "ranks")
    _check_on_device(op, ranks, "ranks", self, "input")
    s, _, h, w = self.shape
    torch._check_value(ranks.dim() == 3 and (ranks.shape[0] == 1 or ranks.shape[0] == s) and ranks.shape[1] == h
                 and ranks.shape[2] == w,
                 lambda: f"fastattr.{op}: ranks must have shape [1, {h}, {w}] or [{s}, {h}, {w}] (one rank map shared "
                         f"by all samples, or one per sample), got {_shape(ranks)}")
    torch._check_value(step >= 1, lambda: f"fastattr.{op}: step must be at least 1, got {step}")
    torch._check_value(start >= 0 and count >= 1,
                 lambda: f"fastattr.{op}: start must be >= 0 and count >= 1, got start={start} count={count}")
    torch._check_value(start + count - 1 <= _INT64_MAX // step,
                 lambda: f"fastattr.{op}: (start + count - 1) * step overflows int64 (start={start}, count={count}, "
                         f"step={step})")
    return _masked_batch_out(self, count)
