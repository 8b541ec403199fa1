"""Build and registration invariants: every ``fastattr::`` op the library
registers must come with its kernels, a fake kernel, a pure-PyTorch reference
and a benchmark case, so that adding an op without them fails CI.

Ops are discovered from the dispatcher, not from a list kept here. Where
scripts/test.sh finds nvcc it sets FASTATTR_EXPECT_CUDA_KERNELS=1: the build
must then contain the CUDA kernels (a CPU-only build would otherwise pass
silently on a machine without a GPU).
"""

import contextlib
import inspect
import os

import pytest
import torch
from torch._library import simple_registry
from torch.utils._pytree import tree_leaves

import fastattr
from fastattr import reference
from op_harness import grad_positions, with_requires_grad
from utils import load_op_cases

EXPECT_CUDA = os.environ.get("FASTATTR_EXPECT_CUDA_KERNELS", "0") == "1"

op_cases = load_op_cases()
ALL_OPS = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastattr::"))
COMPUTE_OPS = [n for n in ALL_OPS if n not in op_cases.UTILITY_OPS]


def _schema(name):
    return getattr(torch.ops.fastattr, name.split("::", 1)[1]).default._schema


def _reference_name(name):
    """fastattr::_guided_relu_backward -> reference.guided_relu_backward;
    fastattr::ig_accumulate_ -> reference.ig_accumulate_."""
    return name.split("::", 1)[1].lstrip("_")


def test_ops_are_registered():
    expected = {
        "fastattr::guided_relu", "fastattr::_guided_relu_backward",
        "fastattr::guided_max_pool2d", "fastattr::_guided_max_pool2d_backward",
        "fastattr::ig_path_inputs", "fastattr::ig_accumulate_",
        "fastattr::rise_masks", "fastattr::rise_masked_batch",
        "fastattr::segment_masked_batch", "fastattr::window_masked_batch",
        "fastattr::rank_masked_batch",
    }
    assert fastattr.ops.has_ops()
    assert expected <= set(COMPUTE_OPS)


def test_utility_ops_take_no_tensors():
    """The exemption list is only for metadata ops: an op that takes a tensor
    cannot hide there."""
    for name in op_cases.UTILITY_OPS:
        assert name in ALL_OPS, f"{name} is listed in UTILITY_OPS but not registered"
        schema = _schema(name)
        assert not any(isinstance(a.type, torch.TensorType) for a in schema.arguments), name
    assert fastattr.ops.cuda_version() == -1 or fastattr.ops.cuda_version() >= 11000


@pytest.mark.parametrize("name", COMPUTE_OPS)
def test_op_has_cpu_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), f"{name} has no CPU kernel"


@pytest.mark.parametrize("name", COMPUTE_OPS)
def test_op_has_fake_kernel(name):
    entry = simple_registry.singleton.find(name)
    assert entry.fake_impl.kernel is not None, f"{name} has no register_fake kernel (python/fastattr/_meta.py)"


@pytest.mark.parametrize("name", COMPUTE_OPS)
def test_op_has_reference(name):
    ref = getattr(reference, _reference_name(name), None)
    assert callable(ref), f"{name} has no reference.{_reference_name(name)} in python/fastattr/reference.py"
    # Same signature as the op (argument count), so tests can call both alike.
    n_args = len(_schema(name).arguments)
    assert len(inspect.signature(ref).parameters) == n_args, f"reference.{_reference_name(name)} takes a different number of arguments than {name}"


@pytest.mark.parametrize("name", COMPUTE_OPS)
def test_op_has_benchmark_case(name):
    assert name in op_cases.CASES, f"{name} has no benchmark case in benchmarks/op_cases.py"
    case = op_cases.CASES[name]
    assert case.op == name
    # The case is runnable (small inputs): op == reference, and the byte count is sane.
    for dtype in (torch.float32, torch.float16):
        args = case.args("cpu", dtype)
        op_cases.check_case(case, args, dtype)
        result = case.run(*op_cases.clone_args(args))
        assert case.bytes_moved(*args) >= op_cases.nbytes(*tree_leaves(result)) > 0
    # The case calls the registered op itself, not a Python wrapper around it.
    assert case.overload is getattr(torch.ops.fastattr, name.split("::", 1)[1]).default


def _has_autograd_formula(name) -> bool:
    """torch.library.register_autograd registers a kernel at the Autograd alias
    key (a C++ op has none by default; ops without one fall through to the
    autograd fallback, which does not compute gradients)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd")


def _mutated_arguments(name) -> list[int]:
    schema = _schema(name)
    return [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]


@pytest.mark.parametrize("name", COMPUTE_OPS)
def test_op_case_declares_its_autograd(name):
    """Each case says whether its op is "differentiable" or "forward_only", and
    the registrations agree:

    - differentiable: an autograd formula is registered, and it is the one
      torch.library.register_autograd generated (the result's grad_fn is
      GeneratedBackwardFor_fastattr_<op>), and opcheck's autograd-registration
      test passes on inputs that require grad;
    - forward_only: no formula, and nothing a gradient could be silently lost
      from: the op writes its first argument (declared in the schema, `mutates`
      in the case) and returns no tensor, or returns no floating tensor. With
      autograd's fallback set to do nothing, no floating result comes back
      (an op that should raise instead of returning one would register that
      behaviour, and be declared by its own rule here). opcheck's
      autograd-registration test passes."""
    case = op_cases.CASES[name]
    assert case.autograd in ("differentiable", "forward_only"), f"{name}: autograd={case.autograd!r}"
    args = with_requires_grad(case, case.args("cpu", torch.float32))
    assert grad_positions(case, args), f"{name}: the case has no floating input to require grad"
    torch.library.opcheck(case.overload, args, test_utils="test_autograd_registration")
    if case.autograd == "differentiable":
        assert _has_autograd_formula(name), f"{name} is declared differentiable but has no registered autograd formula"
        floating = [t for t in tree_leaves(case.overload(*args)) if t.is_floating_point()]
        assert floating
        generated = f"GeneratedBackwardFor_fastattr_{case.id}_default"
        for t in floating:
            assert t.grad_fn is not None and type(t.grad_fn).__name__.startswith(generated), (
                f"{name}: result's grad_fn is {type(t.grad_fn).__name__}, not the registered formula")
        return
    assert not _has_autograd_formula(name), f"{name} is declared forward_only but has an autograd formula"
    assert case.mutates == (_mutated_arguments(name) == [0]), f"{name}: the case's `mutates` disagrees with the schema"
    with _autograd_fallback("nothing"):  # nothing attaches a grad_fn but a formula
        result = case.overload(*args)
    floating = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert not floating, (
        f"{name} is forward_only but returns a floating tensor, whose gradient would be silently lost; "
        "register an autograd formula (and declare it differentiable)")


@contextlib.contextmanager
def _autograd_fallback(mode):
    previous = torch._C._get_autograd_fallback_mode()
    torch._C._set_autograd_fallback_mode(mode)
    try:
        yield
    finally:
        torch._C._set_autograd_fallback_mode(previous)


def test_benchmark_cases_are_for_registered_ops():
    stale = sorted(set(op_cases.CASES) - set(COMPUTE_OPS))
    assert not stale, f"benchmark cases for ops that are not registered: {stale}"
    assert [c.op for c in op_cases.cases_for_registered_ops()] == COMPUTE_OPS


@pytest.mark.skipif(not EXPECT_CUDA, reason="FASTATTR_EXPECT_CUDA_KERNELS is not set (no nvcc on this machine)")
def test_cuda_kernels_were_built():
    assert fastattr.ops.has_cuda_kernels(), "nvcc is present but fastattr was built without its CUDA kernels"
    assert fastattr.ops.cuda_version() > 0
    for name in COMPUTE_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), f"{name} has no CUDA kernel"
