"""Build and registration invariants: every ``fastattr::`` op the library
registers must come with its kernels, a fake kernel, a pure-PyTorch reference
and a benchmark case, so that adding an op without them fails CI.

Ops are discovered from the dispatcher, not from a list kept here. Where
scripts/test.sh finds nvcc it sets FASTATTR_EXPECT_CUDA_KERNELS=1: the build
must then contain the CUDA kernels (a CPU-only build would otherwise pass
silently on a machine without a GPU).
"""

import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pytest
import torch
from torch._library import simple_registry

import fastattr
from fastattr import reference

ROOT = Path(__file__).resolve().parent.parent
EXPECT_CUDA = os.environ.get("FASTATTR_EXPECT_CUDA_KERNELS", "0") == "1"


def _load_op_cases():
    spec = importlib.util.spec_from_file_location("fastattr_bench_op_cases", ROOT / "benchmarks" / "op_cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


op_cases = _load_op_cases()
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
        args = case.make(torch.device("cpu"), dtype, True)
        op_cases.check_case(case, args, dtype)
        result = case.run(*op_cases.clone_args(args))
        assert case.bytes_moved(*args) >= op_cases.nbytes(result) > 0


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
