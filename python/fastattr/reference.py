"""Pure-PyTorch references of every fastattr op, with the ops' signatures.

They define what the kernels compute: tests compare the kernels with them (in
float64 as well) and benchmarks time the kernels against them. They are written
from the specification only and never call ``torch.ops.fastattr``.
"""

from __future__ import annotations

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


def guided_max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                      ceil_mode: bool = False, mode: str = "reference") -> tuple[Tensor, Tensor]:
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)


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
    routed.scatter_add_(2, flat_i, flat_g.to(acc_dtype))
    routed = routed.view(n, c, h, w)
    if mode == "reference":
        mask = F.interpolate((grad_output > 0).to(acc_dtype), size=(h, w), mode="nearest")
        routed = routed * mask
    return routed.to(grad_output.dtype)


def ig_path_inputs(input: Tensor, baseline: Tensor, alphas: Sequence[float]) -> Tensor:
    return torch.cat([baseline + float(a) * (input - baseline) for a in alphas], dim=0)


def ig_accumulate_(total: Tensor, grads: Tensor, weights: Sequence[float]) -> None:
    steps = grads.view(len(weights), *total.shape).to(total.dtype)
    for k, w in enumerate(weights):
        total.add_(steps[k], alpha=float(w))
