"""One benchmark case per fastattr op: realistic inputs, the fastattr call, the
matching ``fastattr.reference`` call, and the minimal number of bytes the op
must move (each input read once, each output written once) for bandwidth.

Used by ``bench_ops.py`` (pytest-benchmark, op vs reference), ``bandwidth.py``
(achieved GB/s on a GPU) and ``tests/test_build.py`` (every registered op must
have a case here). A new op needs a case in ``CASES``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

import fastattr
from fastattr import reference

ops = fastattr.ops

# Ops that compute nothing on tensors (build metadata); they need no case.
UTILITY_OPS = frozenset({"fastattr::_cuda_version"})


@dataclass(frozen=True)
class OpCase:
    op: str  # qualified op name, "fastattr::<op>"
    name: str  # what the inputs stand for
    make: Callable[[torch.device, torch.dtype, bool], tuple]  # (device, dtype, small) -> args
    run: Callable[..., torch.Tensor]  # fastattr call on args, returns the result tensor
    ref: Callable[..., torch.Tensor]  # reference call on args, same result
    bytes_moved: Callable[..., int]  # minimal bytes read + written, from args
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16)
    mutates: bool = False  # run/ref write into their first argument
    tolerances: dict = field(default_factory=dict)  # dtype -> dict(rtol, atol) override

    @property
    def id(self) -> str:
        return self.op.split("::", 1)[1]


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rand(shape, device, dtype, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


# --- guided ReLU: a ResNet stage-1 activation (N=32, C=64, 112x112). -------------

def _relu_shape(small):
    return (2, 8, 16, 16) if small else (32, 64, 112, 112)


def _make_guided_relu(device, dtype, small):
    return (_rand(_relu_shape(small), device, dtype, 0),)


def _make_guided_relu_backward(device, dtype, small):
    x = _rand(_relu_shape(small), device, dtype, 0)
    return (_rand(x.shape, device, dtype, 1), torch.relu(x))


# --- guided max-pool: ResNet's MaxPool2d(3, 2, 1) on (32, 64, 112, 112). ----------
POOL = dict(kernel_size=3, stride=2, padding=1, dilation=1)


def _make_guided_max_pool2d(device, dtype, small):
    return (torch.relu(_rand(_relu_shape(small), device, dtype, 2)),)


def _make_guided_max_pool2d_backward(device, dtype, small):
    (x,) = _make_guided_max_pool2d(device, dtype, small)
    out, idx = ops.guided_max_pool2d(x, **POOL)
    return (_rand(out.shape, device, dtype, 3), idx, tuple(x.shape))


def _pool_backward_bytes(g, idx, input_size):
    n = 1
    for s in input_size:
        n *= s
    return nbytes(g, idx) + n * g.element_size()


# --- IG: 32 steps x 4 images of 3x224x224 (path batch of 128). --------------------
IG_STEPS = 32


def _ig_nodes():
    import numpy as np

    xi, omega = np.polynomial.legendre.leggauss(IG_STEPS)
    return [float(a) for a in 0.5 * (1 + xi)], [float(w) for w in 0.5 * omega]


ALPHAS, WEIGHTS = _ig_nodes()


def _ig_shape(small):
    return (2, 3, 8, 8) if small else (4, 3, 224, 224)


def _make_ig_path_inputs(device, dtype, small):
    shape = _ig_shape(small)
    return (_rand(shape, device, dtype, 4), _rand(shape, device, dtype, 5), ALPHAS)


def _make_ig_accumulate(device, dtype, small):
    shape = _ig_shape(small)
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    total = torch.zeros(shape, device=device, dtype=acc)
    grads = _rand((IG_STEPS * shape[0], *shape[1:]), device, dtype, 6)
    return (total, grads, WEIGHTS)


def _ig_accumulate_run(total, grads, weights):
    ops.ig_accumulate_(total, grads, weights)
    return total


def _ig_accumulate_ref(total, grads, weights):
    reference.ig_accumulate_(total, grads, weights)
    return total


CASES: dict[str, OpCase] = {
    c.op: c
    for c in (
        OpCase(
            "fastattr::guided_relu", "resnet activation (32,64,112,112)", _make_guided_relu,
            run=lambda x: ops.guided_relu(x, "guided", None),
            ref=lambda x: reference.guided_relu(x, "guided", None),
            bytes_moved=lambda x: 2 * nbytes(x),
        ),
        OpCase(
            "fastattr::_guided_relu_backward", "resnet activation (32,64,112,112)",
            _make_guided_relu_backward,
            run=lambda g, r: ops.guided_relu_backward(g, r, "guided", None),
            ref=lambda g, r: reference.guided_relu_backward(g, r, "guided", None),
            bytes_moved=lambda g, r: 3 * nbytes(g),
        ),
        OpCase(
            "fastattr::guided_max_pool2d", "MaxPool2d(3,2,1) on (32,64,112,112)",
            _make_guided_max_pool2d,
            run=lambda x: ops.guided_max_pool2d(x, **POOL, mode="reference")[0],
            ref=lambda x: reference.guided_max_pool2d(x, **POOL, mode="reference")[0],
            # read x; write the output and its int64 indices
            bytes_moved=lambda x: nbytes(x) + (x.numel() // 4) * (x.element_size() + 8),
        ),
        OpCase(
            "fastattr::_guided_max_pool2d_backward", "MaxPool2d(3,2,1) on (32,64,112,112)",
            _make_guided_max_pool2d_backward,
            run=lambda g, idx, size: ops.guided_max_pool2d_backward(g, idx, size, **POOL, mode="reference"),
            ref=lambda g, idx, size: reference.guided_max_pool2d_backward(g, idx, size, **POOL, mode="reference"),
            bytes_moved=_pool_backward_bytes,
        ),
        OpCase(
            "fastattr::ig_path_inputs", f"{IG_STEPS} steps x (4,3,224,224)", _make_ig_path_inputs,
            run=lambda x, b, a: ops.ig_path_inputs(x, b, a),
            ref=lambda x, b, a: reference.ig_path_inputs(x, b, a),
            bytes_moved=lambda x, b, a: (2 + len(a)) * nbytes(x),
        ),
        OpCase(
            "fastattr::ig_accumulate_", f"{IG_STEPS} steps x (4,3,224,224)", _make_ig_accumulate,
            run=_ig_accumulate_run, ref=_ig_accumulate_ref,
            # read grads, read and write total
            bytes_moved=lambda total, grads, w: nbytes(grads) + 2 * nbytes(total),
            mutates=True,
        ),
    )
}


def registered_ops() -> list[str]:
    """Every fastattr op registered with the dispatcher, utility ops excluded."""
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastattr::"))
    return [n for n in names if n not in UTILITY_OPS]


def cases_for_registered_ops() -> list[OpCase]:
    """The case of every registered op; raises if an op has none."""
    missing = [op for op in registered_ops() if op not in CASES]
    if missing:
        raise LookupError(f"no benchmark case in benchmarks/op_cases.py for: {', '.join(missing)}")
    return [CASES[op] for op in registered_ops()]


def clone_args(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def default_tolerance(case: OpCase, dtype: torch.dtype) -> dict:
    if dtype in case.tolerances:
        return case.tolerances[dtype]
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float16: dict(rtol=4e-3, atol=4e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    }[dtype]


def check_case(case: OpCase, args: tuple, dtype: torch.dtype) -> None:
    """Run op and reference once on copies of args (made for `dtype`) and
    assert they agree at that dtype's tolerance."""
    out = case.run(*clone_args(args))
    ref = case.ref(*clone_args(args))
    assert out.shape == ref.shape, f"{case.op}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    torch.testing.assert_close(out, ref.to(out.dtype), **default_tolerance(case, dtype))
