"""Fake (meta) kernels of every fastattr op: output shapes and dtypes, and the
same argument checks as the C++ kernels, without touching data. They let the ops
run under FakeTensor, torch.compile and torch.export."""

from __future__ import annotations

import torch

_RELU_MODES = ("guided", "deconvnet")
_POOL_MODES = ("reference", "window")


def _check_mode(mode, allowed):
    torch._check(mode in allowed, lambda: f"fastattr: mode must be {' or '.join(map(repr, allowed))}, got '{mode}'")


def _check_floating(t, name):
    torch._check(t.dtype.is_floating_point, lambda: f"fastattr: {name} must be a floating-point tensor, got {t.dtype}")


def _check_same(a, a_name, b, b_name):
    torch._check(a.shape == b.shape, lambda: f"fastattr: {a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    torch._check(a.dtype == b.dtype, lambda: f"fastattr: {a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    torch._check(a.device == b.device, lambda: f"fastattr: {a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


def _check_upper(upper):
    torch._check(upper is None or upper > 0, lambda: f"fastattr.guided_relu: upper must be positive or None, got {upper}")


@torch.library.register_fake("fastattr::guided_relu")
def _guided_relu_fake(self, mode, upper=None):
    _check_floating(self, "self")
    _check_mode(mode, _RELU_MODES)
    _check_upper(upper)
    return torch.empty_like(self, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastattr::_guided_relu_backward")
def _guided_relu_backward_fake(grad_output, result, mode, upper=None):
    _check_floating(grad_output, "grad_output")
    _check_same(grad_output, "grad_output", result, "result")
    _check_mode(mode, _RELU_MODES)
    _check_upper(upper)
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


def _pool_out(size, k, s, p, d, ceil_mode):
    # nn.MaxPool2d's output-size formula (ATen pooling_output_shape).
    numer = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = numer // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _check_pool_geometry(kernel_size, stride, padding, dilation):
    # Same conditions as make_pool2d_geometry in csrc/ops/guided_max_pool2d.h.
    torch._check(len(kernel_size) == 2 and kernel_size[0] > 0 and kernel_size[1] > 0,
                 lambda: f"fastattr.guided_max_pool2d: kernel_size must be two positive ints, got {list(kernel_size)}")
    torch._check(len(stride) == 2 and stride[0] > 0 and stride[1] > 0,
                 lambda: f"fastattr.guided_max_pool2d: stride must be two positive ints, got {list(stride)}")
    torch._check(len(dilation) == 2 and dilation[0] > 0 and dilation[1] > 0,
                 lambda: f"fastattr.guided_max_pool2d: dilation must be two positive ints, got {list(dilation)}")
    torch._check(len(padding) == 2 and all(0 <= p and 2 * p <= k for p, k in zip(padding, kernel_size)),
                 lambda: "fastattr.guided_max_pool2d: padding must be non-negative and at most half the kernel size, "
                         f"got padding={list(padding)} kernel_size={list(kernel_size)}")


@torch.library.register_fake("fastattr::guided_max_pool2d")
def _guided_max_pool2d_fake(self, kernel_size, stride, padding, dilation, ceil_mode, mode):
    _check_floating(self, "self")
    torch._check(self.dim() == 4, lambda: f"fastattr.guided_max_pool2d: self must be 4-D (N, C, H, W), got {self.dim()}-D")
    _check_pool_geometry(kernel_size, stride, padding, dilation)
    _check_mode(mode, _POOL_MODES)
    n, c, h, w = self.shape
    oh = _pool_out(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pool_out(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    # ATen's max_pool2d refuses an empty output window grid.
    torch._check(oh >= 1 and ow >= 1, lambda: f"fastattr.guided_max_pool2d: output size of self {tuple(self.shape)} is too small ({oh}x{ow})")
    out = self.new_empty((n, c, oh, ow))
    return out, self.new_empty((n, c, oh, ow), dtype=torch.int64)


@torch.library.register_fake("fastattr::_guided_max_pool2d_backward")
def _guided_max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation, mode):
    _check_floating(grad_output, "grad_output")
    torch._check(grad_output.dim() == 4, lambda: "fastattr._guided_max_pool2d_backward: grad_output must be 4-D")
    torch._check(indices.dtype == torch.int64, lambda: f"fastattr._guided_max_pool2d_backward: indices must be int64, got {indices.dtype}")
    torch._check(grad_output.shape == indices.shape, lambda: f"fastattr: grad_output and indices must have the same shape, got {tuple(grad_output.shape)} and {tuple(indices.shape)}")
    torch._check(grad_output.device == indices.device, lambda: f"fastattr: grad_output and indices must be on the same device, got {grad_output.device} and {indices.device}")
    torch._check(len(input_size) == 4 and input_size[0] == grad_output.shape[0] and input_size[1] == grad_output.shape[1],
                 lambda: f"fastattr._guided_max_pool2d_backward: input_size must be (N, C, H, W) matching grad_output's N and C, got {list(input_size)}")
    _check_pool_geometry(kernel_size, stride, padding, dilation)
    _check_mode(mode, _POOL_MODES)
    return grad_output.new_empty(input_size)


@torch.library.register_fake("fastattr::ig_path_inputs")
def _ig_path_inputs_fake(self, baseline, alphas):
    _check_floating(self, "input")
    torch._check(self.dim() >= 1, lambda: "fastattr.ig_path_inputs: input must have a batch dimension, got a 0-D tensor")
    _check_same(self, "input", baseline, "baseline")
    torch._check(len(alphas) > 0, lambda: "fastattr.ig_path_inputs: alphas must not be empty")
    return self.new_empty((len(alphas) * self.shape[0], *self.shape[1:]))


@torch.library.register_fake("fastattr::ig_accumulate_")
def _ig_accumulate_fake(total, grads, weights):
    _check_floating(grads, "grads")
    acc = torch.float32 if grads.dtype in (torch.float16, torch.bfloat16) else grads.dtype
    torch._check(total.dtype == acc, lambda: f"fastattr.ig_accumulate_: total must have the accumulation dtype of grads ({acc} for {grads.dtype} grads), got {total.dtype}")
    torch._check(total.device == grads.device, lambda: f"fastattr: total and grads must be on the same device, got {total.device} and {grads.device}")
    torch._check(len(weights) > 0, lambda: "fastattr.ig_accumulate_: weights must not be empty")
    torch._check(
        total.dim() >= 1 and grads.dim() == total.dim() and grads.shape[0] == total.shape[0] * len(weights) and grads.shape[1:] == total.shape[1:],
        lambda: f"fastattr.ig_accumulate_: grads must have shape (len(weights) * B, ...), got {tuple(grads.shape)} for total {tuple(total.shape)}",
    )
    torch._check(total.is_contiguous(), lambda: "fastattr.ig_accumulate_: total must be contiguous (it is written in place)")
    return None
