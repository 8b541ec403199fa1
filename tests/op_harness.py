"""Helpers of the shared op tests (tests/test_op_harness.py) and of the op
files' error tests: argument copies in float64, runs under FakeTensorMode, and
the eager-vs-fake error comparison."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

from utils import load_op_cases

op_cases = load_op_cases()


def tensors(result) -> tuple[torch.Tensor, ...]:
    """An op's result as a tuple of tensors (empty for a mutating op's None)."""
    if result is None:
        return ()
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def float64_copy(args: tuple) -> tuple:
    """The same values with every floating tensor in float64 (always a new
    tensor, so a reference that writes in place leaves the op's inputs alone)."""
    return tuple(a.to(torch.float64, copy=True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


def grad_positions(case, args) -> list[int]:
    """Arguments a gradient can flow to: floating tensors the op does not write."""
    return [i for i, a in enumerate(args)
            if isinstance(a, torch.Tensor) and a.is_floating_point() and not (case.mutates and i == 0)]


def with_requires_grad(case, args) -> tuple:
    args = list(args)
    for i in grad_positions(case, args):
        args[i] = args[i].detach().requires_grad_()
    return tuple(args)


def fake_run(fn, args):
    """fn on FakeTensor copies of args (same shapes, strides, dtypes, devices)."""
    with FakeTensorMode() as mode:
        fake_args = tree_map_only(torch.Tensor, mode.from_tensor, args)
        return fn(*fake_args)


# Words of a message about an argument's dtype: such errors are TypeErrors,
# every other bad argument (shape, device, value, mode) a ValueError.
_TYPE_WORDS = ("dtype", "floating-point", "int64 tensor", "must be int64", "bool tensor")


def _error(call, fake: bool) -> tuple[type, str]:
    with FakeTensorMode() if fake else contextlib.nullcontext(), \
            pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        call()
    return info.type, str(info.value)


def _check_kind(kind: type, message: str) -> None:
    expected = TypeError if any(w in message.lower() for w in _TYPE_WORDS) else ValueError
    assert kind is expected, f"{message!r} raised {kind.__name__}, expected {expected.__name__}"


def assert_same_error(call, match: str) -> None:
    """`call` (no arguments; it makes its own tensors) raises a ValueError (a
    TypeError for a dtype) matching `match` from the C++ kernel and the
    identical one from the fake kernel (its tensors are then made under
    FakeTensorMode)."""
    kind, eager = _error(call, fake=False)
    assert re.search(match, eager), f"{eager!r} does not match {match!r}"
    _check_kind(kind, eager)
    fake_kind, fake = _error(call, fake=True)
    assert (fake_kind, fake) == (kind, eager), \
        f"fake kernel raises {fake_kind.__name__}({fake!r}), the kernel {kind.__name__}({eager!r})"


def assert_fake_error(call, match: str) -> None:
    """For errors the eager kernels cannot reach here (a CUDA tensor on a
    CPU-only machine): the fake kernel's message."""
    kind, message = _error(call, fake=True)
    assert re.search(match, message), f"{message!r} does not match {match!r}"
    _check_kind(kind, message)
