"""Autograd formulas of the differentiable fastattr ops. The guided ops'
backward is the guided rule itself (that is their purpose); the rule is its own
op (``_<op>_backward``), whose own derivative is registered too, so that double
backward (``create_graph=True``) is exact instead of silently zero: each rule
is linear in ``grad_output`` on pieces where its masks are constant, so its
derivative w.r.t. ``grad_output`` is the mask and w.r.t. the saved forward
tensors is zero.

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
