"""``fastattr.guided`` (defined here, exported at top level): make every ReLU / ReLU6 (and optionally max-pool)
gradient follow a guided rule while a model runs.

It is a ``TorchFunctionMode``, not a set of module hooks, so it sees the call
however the model makes it: ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.MaxPool2d``,
``F.relu`` / ``F.relu6`` / ``F.hardtanh(x, 0, u)`` / ``F.max_pool2d``,
``torch.relu`` / ``Tensor.relu``, in place or not. Each call is rerouted to a
fastattr op whose backward is the fused rule. The model itself is never
modified (same modules, flags and hooks before, during and after), and the mode
traces under ``torch.compile``.

Hook-based tools (Captum, the GNL reference) only see ``nn.ReLU`` modules and
give ordinary gradients for functional ReLUs (torchvision's GoogLeNet and
DenseNet), silently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import _ops

RELU_MODES = ("guided", "deconvnet")
POOL_MODES = ("reference", "window")


def _relu(x, inplace: bool, mode: str, upper: float | None):
    if inplace:
        return _ops.guided_relu_(x, mode, upper)
    return _ops.guided_relu(x, mode, upper)


class GuidedMode(TorchFunctionMode):
    """The torch-function mode behind :func:`guided`."""

    def __init__(self, relu_mode: str = "guided", pool_mode: str | None = None):
        super().__init__()
        if relu_mode not in RELU_MODES:
            raise ValueError(f"fastattr.guided: mode must be one of {RELU_MODES}, got {relu_mode!r}")
        if pool_mode is not None and pool_mode not in POOL_MODES:
            raise ValueError(f"fastattr.guided: maxpool must be False, True or one of {POOL_MODES}, got {pool_mode!r}")
        self.relu_mode = relu_mode
        self.pool_mode = pool_mode
        m = relu_mode
        handlers = {
            F.relu: lambda x, inplace=False: _relu(x, inplace, m, None),
            F.relu_: lambda x: _relu(x, True, m, None),
            torch.relu: lambda x: _relu(x, False, m, None),
            torch.relu_: lambda x: _relu(x, True, m, None),
            torch.Tensor.relu: lambda x: _relu(x, False, m, None),
            torch.Tensor.relu_: lambda x: _relu(x, True, m, None),
            F.relu6: lambda x, inplace=False: _relu(x, inplace, m, 6.0),
            torch._C._nn.relu6: lambda x: _relu(x, False, m, 6.0),
            torch._C._nn.relu6_: lambda x: _relu(x, True, m, 6.0),
            F.hardtanh: self._hardtanh,
        }
        if pool_mode is not None:
            handlers[F.max_pool2d] = self._max_pool2d
            handlers[F.max_pool2d_with_indices] = self._max_pool2d
            handlers[torch.max_pool2d] = self._max_pool2d
        self._handlers = handlers

    def _hardtanh(self, x, min_val=-1.0, max_val=1.0, inplace=False):
        # nn.ReLU6 is Hardtanh(0, 6); other hardtanh ranges are not ReLU-family units.
        if min_val == 0.0 and max_val > 0.0:
            return _relu(x, inplace, self.relu_mode, float(max_val))
        return F.hardtanh(x, min_val, max_val, inplace)

    def _max_pool2d(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False):
        out, indices = _ops.guided_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                                              self.pool_mode)
        return (out, indices) if return_indices else out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        handler = self._handlers.get(func)
        if handler is not None:
            return handler(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def guided(model: torch.nn.Module | None = None, mode: str = "guided", maxpool: bool | str = False) -> GuidedMode:
    """Context manager: inside it, ReLU and ReLU6 gradients follow ``mode``.

    Args:
        model: the model the rules are meant for. It is only checked, never
            modified; every ReLU-family call made inside the context follows the
            rule, whichever module or function makes it.
        mode: ``"guided"`` (guided backprop: ``g * 1[x>0] * 1[g>0]``; ReLU6 also
            needs ``x < 6``) or ``"deconvnet"`` (``relu(g)``).
        maxpool: ``False`` (ordinary max-pool gradients), ``True`` or
            ``"reference"`` (the GNL rule of Kwon et al.), or ``"window"``
            (positive gradients routed to each window's argmax; not the
            reference rule).

    Example::

        with fastattr.guided(model, maxpool=True):
            grads = torch.autograd.grad(model(x)[:, c].sum(), x)
    """
    if model is not None and not isinstance(model, torch.nn.Module) and not callable(model):
        raise TypeError(f"fastattr.guided: model must be an nn.Module or callable, got {type(model).__name__}")
    if maxpool is True:
        pool_mode = "reference"
    elif maxpool is False or maxpool is None:
        pool_mode = None
    else:
        pool_mode = maxpool
    _ops.assert_has_ops()
    return GuidedMode(mode, pool_mode)
