"""The tests every fastattr op gets, from one place, driven by its case in
benchmarks/op_cases.py. Ops are discovered from the dispatcher (as
tests/test_build.py does, which also fails an op without a case).

For every registered op, each of its case's variants (argument sets: modes,
ReLU6, pool geometries, shared or per-sample IG nodes):

- device (cpu; cuda, skipped without a GPU) x dtype x memory layout
  (contiguous, transposed = dense non-contiguous, sliced = not dense,
  channels_last, mixed): the outputs equal the float64 reference computed from
  the same values within the dtype's tolerance (integer outputs exactly); the
  outputs' strides equal the fake kernel's on same-layout FakeTensors; and the
  op's memory-format rule holds (channels_last in, channels_last out);
- an empty batch gives empty outputs shaped like the reference's (and like the
  fake kernel's), and a backward through them (a mutating op accepts it);
- ``torch.library.opcheck`` on contiguous, non-contiguous (dense and not) and
  channels_last inputs, with and without ``requires_grad`` on the floating inputs;
- ``torch.compile(fullgraph=True)`` equals eager, outputs and input gradients
  (differentiable ops) or the written tensor (mutating ops), on contiguous and
  channels_last inputs: backend "aot_eager" for every variant, "inductor" for
  each op's first variant;
- CPU and CUDA give the same results and strides (needs a GPU).

The op files (tests/test_op_<op>.py) keep what is specific to each op: its
mathematical oracles and its error messages.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from op_harness import (
    fake_run,
    float64_copy,
    grad_positions,
    op_cases,
    tensors,
    with_requires_grad,
)
from utils import DTYPES, TOLERANCES, cpu_and_cuda

CASES = op_cases.cases_for_registered_ops()  # LookupError if an op has no case
VARIANTS = [pytest.param(case, variant, id=f"{case.id}-{variant}") for case in CASES for variant in case.variants]
FIRST_VARIANTS = [pytest.param(case, case.variants[0], id=f"{case.id}-{case.variants[0]}") for case in CASES]
OPCHECK_LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last")
COMPILE_LAYOUTS = ("contiguous", "channels_last")
# float32 sums in the autograd formulas (e.g. the IG nodes' gradient, over a
# sample's elements) may be reordered by the compiler.
COMPILE_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def _tolerance(case, dtype, out):
    return case.tolerances.get(dtype, TOLERANCES[out.dtype])


def _check_layout_rule(case, layout, args, out):
    """The memory-format rules of python/fastattr/_meta.py, stated per layout."""
    first = args[case.layout_args[0]]
    if layout in ("channels_last", "mixed"):
        assert out.is_contiguous(memory_format=torch.channels_last), f"channels_last in, strides {out.stride()} out"
    elif layout == "transposed" and case.keeps_dense_strides:
        assert out.stride() == first.stride(), f"a dense input's strides {first.stride()} not kept: {out.stride()}"
    else:  # contiguous; sliced (not dense) and transposed (dense, not NHWC) suggest NCHW
        assert out.is_contiguous(), f"{layout} in, strides {out.stride()} out"


@pytest.mark.parametrize("layout", op_cases.LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case, variant", VARIANTS)
def test_matches_reference_and_fake_strides(case, variant, device, dtype, layout):
    if dtype not in case.dtypes or layout not in case.layouts:
        pytest.skip(f"{case.id} does not take {dtype} in {layout}")
    args = case.args(device, dtype, True, layout, variant)
    expected = tensors(case.ref(*float64_copy(args)))
    fake = tensors(fake_run(case.overload, args))
    outs = tensors(case.run(*args))
    assert len(outs) == len(expected)
    for out, ref in zip(outs, expected):
        # (For a mutating op, `out` is the tensor it wrote, compared by value.)
        assert out.device == args[0].device
        if ref.is_floating_point():
            assert case.mutates or out.dtype == dtype
            torch.testing.assert_close(out, ref.to(out.dtype), **_tolerance(case, dtype, out))
        else:
            assert out.dtype == ref.dtype and torch.equal(out, ref)
    if case.mutates:
        return  # no output: the written tensor keeps its strides by construction
    assert len(fake) == len(outs)
    for out, f in zip(outs, fake):
        assert (f.shape, f.dtype, f.device) == (out.shape, out.dtype, out.device)
        assert f.stride() == out.stride(), f"fake kernel strides {f.stride()}, kernel strides {out.stride()}"
        _check_layout_rule(case, layout, args, out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case, variant", VARIANTS)
def test_empty_batch(case, variant, device):
    """Non-mutating ops: empty outputs shaped like the reference's and the
    fake kernel's, and a backward through them. A mutating op returns nothing
    and its written tensor cannot change shape: it must accept the call."""
    args = case.empty_args(device, torch.float32, variant)
    expected = tensors(case.reference(*float64_copy(args)))
    fake = tensors(fake_run(case.overload, args))
    if case.autograd == "differentiable":
        args = with_requires_grad(case, args)
    outs = tensors(case.overload(*args))
    assert len(outs) == len(expected) == len(fake)
    for out, ref, f in zip(outs, expected, fake):
        assert out.numel() == 0 and out.shape == ref.shape
        assert (f.shape, f.stride()) == (out.shape, out.stride())
    if case.autograd == "differentiable":
        floating = [o for o in outs if o.is_floating_point()]
        inputs = [args[i] for i in grad_positions(case, args)]
        grads = torch.autograd.grad(floating, inputs, [torch.zeros_like(o) for o in floating], allow_unused=True)
        assert all(g is None or g.shape == i.shape for g, i in zip(grads, inputs))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "requires_grad"])
@pytest.mark.parametrize("layout", OPCHECK_LAYOUTS)
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case, variant", VARIANTS)
def test_opcheck(case, variant, device, layout, requires_grad):
    """Schema (no undeclared mutation or aliasing), autograd registration,
    fake kernel vs kernel (shapes, strides, dtypes) and AOT dispatch with
    dynamic shapes (forward and, with requires_grad, backward)."""
    if layout not in case.layouts:
        pytest.skip(f"{case.id} has no {layout} inputs")
    args = case.args(device, torch.float32, True, layout, variant)
    if requires_grad:
        args = with_requires_grad(case, args)
    torch.library.opcheck(case.overload, args)


def _run_with_gradients(case, fn, args, weights):
    """fn's tensors (the written tensor for a mutating op) and, for a
    differentiable op, the gradients of sum(w * out) w.r.t. its floating inputs."""
    if case.autograd == "differentiable":
        args = with_requires_grad(case, args)
    outs = tensors(fn(*args))
    if case.mutates:
        return (args[0],), ()
    floating = [o for o in outs if o.is_floating_point()]
    if case.autograd != "differentiable":
        return outs, ()
    loss = sum((o * w).sum() for o, w in zip(floating, weights))
    inputs = [args[i] for i in grad_positions(case, args)]
    # Unused: the saved forward output of a rule op (its derivative there is zero).
    return outs, torch.autograd.grad(loss, inputs, allow_unused=True)


def _compile_check(case, variant, device, layout, backend):
    torch._dynamo.reset()  # every test compiles afresh (no recompile limit across tests)
    g = torch.Generator().manual_seed(0)
    eager_outs = tensors(case.run(*case.args(device, torch.float32, True, layout, variant)))
    weights = [torch.randn(o.shape, generator=g).to(device) for o in eager_outs if o.is_floating_point()]

    def fn(*args):
        return case.overload(*args)

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    outs, grads = _run_with_gradients(case, fn, case.args(device, torch.float32, True, layout, variant), weights)
    c_outs, c_grads = _run_with_gradients(case, compiled, case.args(device, torch.float32, True, layout, variant),
                                          weights)
    assert counter.frame_count == 1 and counter.op_count >= 1  # compiled, not run eagerly
    assert len(c_outs) == len(outs) and len(c_grads) == len(grads)
    for c, e in zip(c_outs, outs):
        torch.testing.assert_close(c, e, **COMPILE_TOLERANCE)
    for c, e in zip(c_grads, grads):
        assert (c is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(c, e, **COMPILE_TOLERANCE)
    if case.autograd == "differentiable":
        assert any(e is not None and bool((e != 0).any()) for e in grads), "no gradient: the check shows nothing"


@pytest.mark.parametrize("layout", COMPILE_LAYOUTS)
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case, variant", VARIANTS)
def test_compile_aot_eager_matches_eager(case, variant, device, layout):
    if layout not in case.layouts:
        pytest.skip(f"{case.id} has no {layout} inputs")
    _compile_check(case, variant, device, layout, "aot_eager")


@pytest.mark.parametrize("layout", COMPILE_LAYOUTS)
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case, variant", FIRST_VARIANTS)
def test_compile_inductor_matches_eager(case, variant, device, layout):
    """Inductor also checks the custom op's output strides against the fake
    kernel's (assert_size_stride in the generated code)."""
    if layout not in case.layouts:
        pytest.skip(f"{case.id} has no {layout} inputs")
    _compile_check(case, variant, device, layout, "inductor")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("layout", op_cases.LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("case, variant", VARIANTS)
def test_cpu_cuda_parity(case, variant, dtype, layout):
    if dtype not in case.dtypes or layout not in case.layouts:
        pytest.skip(f"{case.id} does not take {dtype} in {layout}")
    on_cpu = tensors(case.run(*case.args("cpu", dtype, True, layout, variant)))
    on_cuda = tensors(case.run(*case.args("cuda", dtype, True, layout, variant)))
    for c, g in zip(on_cpu, on_cuda, strict=True):
        assert g.stride() == c.stride()
        if case.exact_parity or not c.is_floating_point():
            assert torch.equal(g.cpu(), c)
        else:
            torch.testing.assert_close(g.cpu(), c, **_tolerance(case, dtype, c))
