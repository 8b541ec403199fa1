"""Typed wrappers over the compiled ops in ``torch.ops.fastattr``.

Importing this module loads ``fastattr._C`` (which registers the schemas and the
CPU/CUDA kernels), then the fake kernels and autograd formulas. Each wrapper is a
thin call of ``torch.ops.fastattr.<op>.default``; argument checks happen in the
kernels (and in the fake kernels under tracing), so the messages are the same
everywhere. The IG wrappers also take node/weight tables as Python floats, and
``guided_max_pool2d_backward`` checks its indices: data-dependent checks stay at
this edge, out of the ops that autograd and the benchmarks call.
"""

from __future__ import annotations

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
