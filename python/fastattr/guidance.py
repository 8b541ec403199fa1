"""``fastattr.guided`` (defined here, exported at top level): make every ReLU / ReLU6 (and optionally max-pool)
gradient follow a guided rule while a model runs.

It is a ``TorchFunctionMode``, not a set of module hooks, so it sees the call
however the model makes it: ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.MaxPool2d``,
``F.relu`` / ``F.relu6`` / ``F.hardtanh(x, 0, u)`` / ``F.max_pool2d``,
``torch.relu`` / ``Tensor.relu``, in place or not, and the ATen overloads
(``torch.ops.aten.relu.default``, ``aten.max_pool2d_with_indices``, ...) that
``torch.export`` programs, ``torch.fx`` graphs made by ``make_fx`` and
``torch.compile`` call. Each call is rerouted to a fastattr op whose backward is
the fused rule. The model itself is never modified (same modules, flags, hooks
and graph before, during and after).

What it cannot reach, it says so instead of returning ordinary gradients:

- TorchScript models (``torch.jit.script`` / ``trace`` / ``load``) run in the
  TorchScript interpreter, which never calls back into Python: ``guided(model)``
  raises a ``TypeError`` naming what to use instead;
- a guided pass that met no ReLU at all (another activation, or a model whose
  ReLUs run outside Python) warns once per context;
- with ``maxpool`` on, a max-pool the rule does not cover (1-D / 3-D,
  adaptive, fractional) warns once per context; its gradient stays ordinary, as
  in the GNL reference, which hooks ``nn.MaxPool2d`` only.

Hook-based tools (Captum, the GNL reference) only see ``nn.ReLU`` modules and
give ordinary gradients for functional ReLUs (torchvision's GoogLeNet and
DenseNet), silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import _ops

RELU_MODES = ("guided", "deconvnet")
POOL_MODES = ("reference", "window")

aten = torch.ops.aten


# --------------------------------------------------------------------------- the routing table


@dataclass(frozen=True)
class ReluCall:
    """A ReLU-family call, normalised: ``clamp(x, 0, upper)``, in place or not."""

    x: torch.Tensor
    inplace: bool
    upper: float | None


@dataclass(frozen=True)
class PoolCall:
    """A 2-D max-pool call, normalised to ``nn.MaxPool2d``'s arguments."""

    x: torch.Tensor
    kernel_size: object
    stride: object
    padding: object
    dilation: object
    ceil_mode: bool
    return_indices: bool


def _bind(names: tuple[str, ...], defaults: dict, args: tuple, kwargs: dict) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _relu(inplace: bool, upper: float | None = None):
    def parse(args, kwargs):
        return ReluCall(args[0] if args else kwargs.get("input", kwargs.get("self")), inplace, upper)
    return parse


def _relu_with_flag(upper: float | None = None):
    """``F.relu(input, inplace=False)`` / ``F.relu6(input, inplace=False)``."""
    def parse(args, kwargs):
        a = _bind(("input", "inplace"), {"inplace": False}, args, kwargs)
        return ReluCall(a["input"], bool(a["inplace"]), upper)
    return parse


def _hardtanh(inplace: bool | None):
    """``hardtanh(x, 0, u)`` is ReLU6-like (``nn.ReLU6`` is ``Hardtanh(0, 6)``);
    other ranges are not ReLU-family units and run unchanged (None)."""
    names = ("input", "min_val", "max_val") + (("inplace",) if inplace is None else ())

    def parse(args, kwargs):
        a = _bind(names, {"min_val": -1.0, "max_val": 1.0, "inplace": False}, args, kwargs)
        a.setdefault("input", kwargs.get("self"))
        if float(a["min_val"]) == 0.0 and float(a["max_val"]) > 0.0:
            return ReluCall(a["input"], bool(a["inplace"]) if inplace is None else inplace, float(a["max_val"]))
        return None
    return parse


def _pool(stride_default, return_indices: bool | None):
    """Max-pool signatures: ``F.max_pool2d`` (``stride=None``, ``return_indices``
    flag), ``F.max_pool2d_with_indices`` (always a pair), ``torch.max_pool2d`` and
    the ATen overloads (``stride=[]`` means the kernel size)."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
    if return_indices is None:
        names += ("return_indices",)

    def parse(args, kwargs):
        a = _bind(names, {"stride": stride_default, "padding": 0, "dilation": 1, "ceil_mode": False,
                          "return_indices": False}, args, kwargs)
        a.setdefault("input", kwargs.get("self"))
        indices = bool(a["return_indices"]) if return_indices is None else return_indices
        return PoolCall(a["input"], a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                        bool(a["ceil_mode"]), indices)
    return parse


def _packets(*packets):
    """An ATen op packet and its default overload (graphs call the overload, user
    code may call the packet); ``out=`` overloads are left alone."""
    return [q for p in packets for q in (p, p.default)]


def _build_routes() -> tuple[dict, dict, frozenset]:
    relu = {
        F.relu: _relu_with_flag(),
        F.relu_: _relu(True),
        torch.relu: _relu(False),
        torch.relu_: _relu(True),
        torch.Tensor.relu: _relu(False),
        torch.Tensor.relu_: _relu(True),
        F.relu6: _relu_with_flag(6.0),
        torch._C._nn.relu6: _relu(False, 6.0),
        torch._C._nn.relu6_: _relu(True, 6.0),
        F.hardtanh: _hardtanh(None),
        F.hardtanh_: _hardtanh(True),
    }
    for op, inplace in ((aten.relu, False), (aten.relu_, True)):
        relu.update(dict.fromkeys(_packets(op), _relu(inplace)))
    for op, inplace in ((aten.relu6, False), (aten.relu6_, True)):
        relu.update(dict.fromkeys(_packets(op), _relu(inplace, 6.0)))
    relu.update(dict.fromkeys(_packets(aten.hardtanh), _hardtanh(False)))
    relu.update(dict.fromkeys(_packets(aten.hardtanh_), _hardtanh(True)))

    pool = {
        F.max_pool2d: _pool(None, None),
        F.max_pool2d_with_indices: _pool(None, True),
        torch.max_pool2d: _pool((), False),
        torch._C._nn.max_pool2d_with_indices: _pool((), True),
    }
    pool.update(dict.fromkeys(_packets(aten.max_pool2d), _pool((), False)))
    pool.update(dict.fromkeys(_packets(aten.max_pool2d_with_indices), _pool((), True)))

    # Max-pools outside the GNL rule (it is defined for 2-D max-pool only).
    other_pools = [F.max_pool1d, F.max_pool3d, F.max_pool1d_with_indices, F.max_pool3d_with_indices,
                   F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
                   F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices,
                   F.adaptive_max_pool3d_with_indices, F.fractional_max_pool2d, F.fractional_max_pool3d,
                   torch.max_pool1d, torch.max_pool3d, torch.adaptive_max_pool1d]
    other_pools += _packets(aten.max_pool3d_with_indices, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d,
                            aten.fractional_max_pool2d, aten.fractional_max_pool3d)
    return relu, pool, frozenset(other_pools)


#: The one table of what ``guided`` reroutes: function or ATen overload -> parser
#: returning a normalised :class:`ReluCall` / :class:`PoolCall` (or None: not a
#: ReLU-family call, run unchanged). The pure-PyTorch baseline of ``fastattr
#: bench`` reroutes through the same table.
RELU_ROUTES, POOL_ROUTES, UNGUIDED_POOLS = _build_routes()


# --------------------------------------------------------------------------- the mode


class GuidedMode(TorchFunctionMode):
    """The torch-function mode behind :func:`guided`.

    Subclasses change how a rerouted call is computed (``apply_relu`` /
    ``apply_pool``), never what is rerouted. The mode counts the calls it
    reroutes (``relu_calls``, ``pool_calls``) over all the times it is entered,
    and warns once if a pass ended without a single ReLU.
    """

    def __init__(self, relu_mode: str = "guided", pool_mode: str | None = None):
        super().__init__()
        if relu_mode not in RELU_MODES:
            raise ValueError(f"fastattr.guided: mode must be one of {RELU_MODES}, got {relu_mode!r}")
        if pool_mode is not None and pool_mode not in POOL_MODES:
            raise ValueError(f"fastattr.guided: maxpool must be False, True or one of {POOL_MODES}, got {pool_mode!r}")
        self.relu_mode = relu_mode
        self.pool_mode = pool_mode
        self.relu_calls = 0
        self.pool_calls = 0
        self._warned_no_relu = False
        self._warned_pools: set[str] = set()

    # How a rerouted call is computed (fastattr's ops).
    def apply_relu(self, call: ReluCall) -> torch.Tensor:
        if call.inplace:
            return _ops.guided_relu_(call.x, self.relu_mode, call.upper)
        return _ops.guided_relu(call.x, self.relu_mode, call.upper)

    def apply_pool(self, call: PoolCall) -> tuple[torch.Tensor, torch.Tensor]:
        return _ops.guided_max_pool2d(call.x, call.kernel_size, call.stride, call.padding, call.dilation,
                                      call.ceil_mode, self.pool_mode)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parse = RELU_ROUTES.get(func)
        if parse is not None:
            call = parse(args, kwargs)
            if call is not None:
                self.relu_calls += 1
                return self.apply_relu(call)
        elif self.pool_mode is not None:
            parse = POOL_ROUTES.get(func)
            if parse is not None:
                call = parse(args, kwargs)
                self.pool_calls += 1
                out, indices = self.apply_pool(call)
                return (out, indices) if call.return_indices else out
            if func in UNGUIDED_POOLS:
                self._warn_unguided_pool(func)
        return func(*args, **kwargs)

    def _warn_unguided_pool(self, func) -> None:
        name = getattr(func, "__name__", str(func))
        if name in self._warned_pools:
            return
        self._warned_pools.add(name)
        warnings.warn(
            f"fastattr.guided(maxpool=...): the model calls {name}, which the guided max-pool rule does not "
            "cover (it is defined for 2-D max-pool); its gradient is ordinary, as in the GNL reference, which "
            "hooks nn.MaxPool2d only", RuntimeWarning, stacklevel=3)

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.relu_calls == 0 and not self._warned_no_relu:
            self._warned_no_relu = True
            warnings.warn(
                "fastattr.guided: no ReLU or ReLU6 ran inside the guided context, so the guided rule changed "
                "nothing and the gradients are ordinary. The model uses other activations, or its ReLUs run "
                "where Python cannot see them (a C++ extension, or a TorchScript model called through a "
                "wrapper); see the fastattr.guidance docs", RuntimeWarning, stacklevel=2)
        return result


# --------------------------------------------------------------------------- model forms


def _torchscript_parts(model) -> list[str]:
    # Look through wrappers that name their model (functools.wraps, engine.Bound).
    for _ in range(8):
        wrapped = getattr(model, "__wrapped__", None)
        if isinstance(model, (torch.nn.Module, torch.jit.ScriptFunction)) or wrapped is None:
            break
        model = wrapped
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        return [type(model).__name__]
    if isinstance(model, torch.nn.Module):
        names = [name for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
        # the outermost scripted submodules only (their children are TorchScript too)
        return [n for n in names if not any(n.startswith(p + ".") for p in names if p != n)]
    return []


def check_guidable(model, what: str = "fastattr.guided") -> None:
    """Raise a ``TypeError`` if ``model`` (or one of its submodules) is
    TorchScript, whose ReLUs the guided rules cannot reach."""
    parts = _torchscript_parts(model)
    if parts:
        where = "the model is" if parts == [type(model).__name__] else f"its submodule(s) {', '.join(parts[:5])} are"
        raise TypeError(
            f"{what}: {where} TorchScript, which runs its ReLUs and max-pools inside the TorchScript "
            "interpreter, out of reach of the guided rules: the result would be an ordinary gradient. "
            "Load the eager nn.Module instead, or save the model with torch.export.save (a .pt2 file, "
            "which fastattr.models.load reads) and use that: exported programs are guided exactly."
        )


def guided(model: torch.nn.Module | Callable | None = None, mode: str = "guided",
           maxpool: bool | str = False) -> GuidedMode:
    """Context manager: inside it, ReLU and ReLU6 gradients follow ``mode``.

    Args:
        model: the model the rules are meant for. It is only checked, never
            modified: TorchScript models raise a ``TypeError`` (the rules cannot
            reach inside them). Every ReLU-family call made inside the context
            follows the rule, whichever module, function, ``torch.fx`` /
            ``torch.export`` graph or compiled region makes it.
        mode: ``"guided"`` (guided backprop: ``g * 1[x>0] * 1[g>0]``; ReLU6 also
            needs ``x < 6``) or ``"deconvnet"`` (``relu(g)``).
        maxpool: ``False`` (ordinary max-pool gradients), ``True`` or
            ``"reference"`` (the GNL rule of Kwon et al.), or ``"window"``
            (positive gradients routed to each window's argmax; not the
            reference rule).

    Leaving the context warns (``RuntimeWarning``, once) if no ReLU ran in it.

    Example::

        with fastattr.guided(model, maxpool=True):
            grads = torch.autograd.grad(model(x)[:, c].sum(), x)
    """
    if model is not None and not isinstance(model, torch.nn.Module) and not callable(model):
        raise TypeError(f"fastattr.guided: model must be an nn.Module or callable, got {type(model).__name__}")
    check_guidable(model)
    if maxpool is True:
        pool_mode = "reference"
    elif maxpool is False or maxpool is None:
        pool_mode = None
    else:
        pool_mode = maxpool
    _ops.assert_has_ops()
    return GuidedMode(mode, pool_mode)
