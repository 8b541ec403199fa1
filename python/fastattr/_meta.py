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


@torch.library.register_fake("fastattr::guided_relu")
def _guided_relu_fake(self, mode, upper=None):
    _check_floating(self, "self")
    _check_mode(mode, _RELU_MODES)
    return torch.empty_like(self, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastattr::_guided_relu_backward")
def _guided_relu_backward_fake(grad_output, result, mode, upper=None):
    _check_floating(grad_output, "grad_output")
    _check_same(grad_output, "grad_output", result, "result")
    _check_mode(mode, _RELU_MODES)
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


def _pool_out(size, k, s, p, d, ceil_mode):
    # nn.MaxPool2d's output-size formula (ATen pooling_output_shape).
    numer = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = numer // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@torch.library.register_fake("fastattr::guided_max_pool2d")
def _guided_max_pool2d_fake(self, kernel_size, stride, padding, dilation, ceil_mode, mode):
    _check_floating(self, "self")
    torch._check(self.dim() == 4, lambda: f"fastattr.guided_max_pool2d: self must be 4-D (N, C, H, W), got {self.dim()}-D")
    _check_mode(mode, _POOL_MODES)
    n, c, h, w = self.shape
    oh = _pool_out(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pool_out(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    out = self.new_empty((n, c, oh, ow))
    return out, self.new_empty((n, c, oh, ow), dtype=torch.int64)


@torch.library.register_fake("fastattr::_guided_max_pool2d_backward")
def _guided_max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation, mode):
    _check_floating(grad_output, "grad_output")
    torch._check(grad_output.dim() == 4, lambda: "fastattr._guided_max_pool2d_backward: grad_output must be 4-D")
    torch._check(indices.dtype == torch.int64, lambda: f"fastattr._guided_max_pool2d_backward: indices must be int64, got {indices.dtype}")
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
    torch._check(len(weights) > 0, lambda: "fastattr.ig_accumulate_: weights must not be empty")
    torch._check(
        grads.dim() == total.dim() and grads.shape[0] == total.shape[0] * len(weights) and grads.shape[1:] == total.shape[1:],
        lambda: f"fastattr.ig_accumulate_: grads must have shape (len(weights) * B, ...), got {tuple(grads.shape)} for total {tuple(total.shape)}",
    )
    return None
