"""Autograd formulas of the differentiable fastattr ops. The guided ops'
backward is the guided rule itself (that is their purpose); the rule is its own
op (``_<op>_backward``), whose own derivative is registered too, so that double
backward (``create_graph=True``) is exact instead of silently zero: each rule
is linear in ``grad_output`` on pieces where its masks are constant, so its
derivative w.r.t. ``grad_output`` is the mask and w.r.t. the saved forward
tensors is zero."""

from __future__ import annotations

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
    self, _, alphas = inputs
    ctx.alphas = alphas
    ctx.batch_shape = self.shape


def _ig_path_inputs_backward(ctx, grad_output):
    # d out[k] / d input = alpha_k, d out[k] / d baseline = 1 - alpha_k.
    alphas = torch.tensor(ctx.alphas, dtype=grad_output.dtype, device=grad_output.device)
    g = grad_output.reshape(len(ctx.alphas), *ctx.batch_shape)
    grad_input = torch.tensordot(alphas, g, dims=1)
    grad_baseline = g.sum(0) - grad_input
    return grad_input, grad_baseline, None


torch.library.register_autograd(
    "fastattr::ig_path_inputs", _ig_path_inputs_backward, setup_context=_ig_path_inputs_setup_context
)
