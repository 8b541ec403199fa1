"""Tests of fastattr::ig_path_inputs and fastattr::ig_accumulate_ (spec §0.1)
that are specific to them: the IG oracles, per-sample nodes, the Python
wrappers' float lists and the error messages. Layouts, empty inputs, opcheck,
torch.compile and CPU/CUDA parity are in tests/test_op_harness.py.

ig_path_inputs builds the step-major path batch
``out[k*B + b] = baseline[b] + alphas[k(, b)] * (input[b] - baseline[b])`` from a
node table on the device, (K,) shared or (K, B) per sample, and rounds like
that expression in PyTorch ops of the input dtype with a Python-float alpha
(Captum's expression; so it is bit-identical to it); its autograd is the true
gradient, node table included. ig_accumulate_ adds
``sum_k w[k(, b)] * grads[k*B + b]`` into a float32/float64 ``total`` in place.
"""

import numpy as np
import pytest
import torch

import fastattr
from fastattr import reference
from op_harness import assert_fake_error, assert_same_error
from utils import DTYPES, TOLERANCES, cpu_and_cuda

ops = fastattr.ops
SHAPES = [(1, 7), (2, 3, 4, 5), (3, 11003)]  # the last one spans two parallel_for chunks


def gauss_legendre(n):
    """Captum's default rule (spec §0.1): alpha = (1 + xi) / 2, w = omega / 2."""
    xi, omega = np.polynomial.legendre.leggauss(n)
    return [float(a) for a in 0.5 * (1 + xi)], [float(w) for w in 0.5 * omega]


RULES = {
    "single": [0.3],
    "gausslegendre-7": gauss_legendre(7)[0],
    "riemann-trapezoid-5": [0.0, 0.25, 0.5, 0.75, 1.0],
    "gausslegendre-70": gauss_legendre(70)[0],
}


def table(values, batch, per_sample, device):
    """float64 node/weight table: (K,), or (K, B) with column b scaled by its
    own factor (distinct nodes per sample, as adaptive rules make them)."""
    t = torch.tensor(values, dtype=torch.float64)
    if per_sample:
        t = t[:, None] * torch.linspace(0.5, 1.0, batch, dtype=torch.float64)[None, :]
    return t.to(device)


def acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def make(shape, dtype, device, scale=1.0):
    return (torch.randn(shape) * scale).to(dtype=dtype, device=device)


def captum_path(x, b, alphas):
    """Captum's path, ``baseline + alpha * (input - baseline)`` with Python-float
    alphas in x's dtype, sample by sample for a (K, B) table."""
    if alphas.dim() == 1:
        return torch.cat([b + float(a) * (x - b) for a in alphas])
    return torch.cat([torch.stack([b[i] + float(alphas[k, i]) * (x[i] - b[i]) for i in range(x.shape[0])])
                      for k in range(alphas.shape[0])])


# Every rule on small shapes; the multi-chunk shape with one rule.
SHAPE_RULES = [(shape, r) for shape in SHAPES[:2] for r in RULES] + [(SHAPES[2], "gausslegendre-7")]
PER_SAMPLE = pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, rule", SHAPE_RULES, ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
@PER_SAMPLE
def test_path_inputs_match_reference(device, dtype, shape, rule, per_sample):
    alphas = table(RULES[rule], shape[0], per_sample, device)
    x = make(shape, dtype, device)
    b = make(shape, dtype, device, scale=0.5)
    out = torch.ops.fastattr.ig_path_inputs.default(x, b, alphas)
    assert out.shape == (alphas.shape[0] * shape[0], *shape[1:]) and out.dtype == dtype
    expected = reference.ig_path_inputs(x.double(), b.double(), alphas)
    torch.testing.assert_close(out, expected.to(dtype), **TOLERANCES[dtype])
    # Same rounding as Captum's expression in the input dtype: bit-identical.
    assert torch.equal(out, captum_path(x, b, alphas))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "offset"])
@PER_SAMPLE
def test_vector_rows_and_storage_offsets(device, dtype, offset, per_sample):
    """Rows a multiple of every vector width (the CUDA kernels then move
    16-byte vectors, given enough of them to fill an H200: 2.5M elements), and
    the same operands as views at an element offset (the scalar loop): both
    give Captum's bits and the reference's sums."""
    shape, steps = ((3, 2, 8, 8) if device == "cpu" else (3, 2, 640, 640)), 7
    row = shape[1] * shape[2] * shape[3]
    n = shape[0] * row

    def view(count, dtype, scale=1.0):
        return make((count + 1,), dtype, device, scale)[offset:offset + count]

    alphas = table(RULES["gausslegendre-7"], shape[0], per_sample, device)
    x, b = view(n, dtype).view(shape), view(n, dtype, 0.5).view(shape)
    out = torch.ops.fastattr.ig_path_inputs.default(x, b, alphas)
    assert torch.equal(out, captum_path(x, b, alphas))
    weights = table(gauss_legendre(steps)[1], shape[0], per_sample, device)
    grads = view(steps * n, dtype).view(steps * shape[0], *shape[1:])
    total = view(n, acc_dtype(dtype)).view(shape)
    expected = total.double()
    torch.ops.fastattr.ig_accumulate_.default(total, grads, weights)
    reference.ig_accumulate_(expected, grads.double(), weights)
    torch.testing.assert_close(total, expected.to(total.dtype), **TOLERANCES[acc_dtype(dtype)])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, steps", [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 7), ((2, 3, 4, 5), 70), ((3, 11003), 7)],
                         ids=["1-step", "7-steps", "70-steps", "7-steps-large"])
@PER_SAMPLE
def test_accumulate_matches_reference(device, dtype, shape, steps, per_sample):
    weights = table(gauss_legendre(steps)[1], shape[0], per_sample, device)
    grads = make((steps * shape[0], *shape[1:]), dtype, device)
    start = make(shape, acc_dtype(dtype), device)
    total = start.clone()
    torch.ops.fastattr.ig_accumulate_.default(total, grads, weights)
    expected = start.double()
    reference.ig_accumulate_(expected, grads.double(), weights)
    assert total.dtype == acc_dtype(dtype)
    torch.testing.assert_close(total, expected.to(total.dtype), **TOLERANCES[acc_dtype(dtype)])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_per_sample_tables_follow_the_definition(device):
    """Row k*B + b uses alphas[k, b] and weights[k, b] (not [b, k], not the
    first column): checked on tables with one distinct node per (k, b)."""
    x = torch.arange(1.0, 4.0, dtype=torch.float64, device=device)[:, None].repeat(1, 2)  # sample b holds b + 1
    base = torch.zeros_like(x)
    alphas = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64, device=device)  # (K=2, B=3)
    out = ops.ig_path_inputs(x, base, alphas)
    expected = torch.tensor([[0.1], [0.4], [0.9], [0.4], [1.0], [1.8]], dtype=torch.float64, device=device)
    torch.testing.assert_close(out, expected.expand(6, 2), rtol=0, atol=1e-15)
    total = torch.zeros(3, 2, dtype=torch.float64, device=device)
    ops.ig_accumulate_(total, torch.ones(6, 2, dtype=torch.float64, device=device), alphas)
    torch.testing.assert_close(total, torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64, device=device)[:, None].expand(3, 2))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("alphas_dtype", [torch.float16, torch.float32, torch.float64])
def test_tables_of_any_floating_dtype_are_read_as_their_values(device, alphas_dtype):
    """A float16/float32 table is converted on the device to the op's opmath
    dtype; nodes exact in it give Captum's path bit for bit."""
    alphas = torch.tensor([0.125, 0.5, 0.75], dtype=alphas_dtype, device=device)
    x, b = make((2, 9), torch.float32, device), make((2, 9), torch.float32, device)
    assert torch.equal(ops.ig_path_inputs(x, b, alphas), captum_path(x, b, alphas))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_wrappers_take_float_lists(device):
    """fastattr.ops.ig_path_inputs / ig_accumulate_ accept the node/weight
    lists the methods pass today (a float64 table on the input's device):
    Captum's path bit for bit, and the reference's accumulation."""
    alphas, weights = gauss_legendre(5)
    x, b = make((2, 3, 4), torch.float32, device), make((2, 3, 4), torch.float32, device)
    path = ops.ig_path_inputs(x, b, alphas)
    assert torch.equal(path, captum_path(x, b, torch.tensor(alphas, dtype=torch.float64)))
    grads = make(path.shape, torch.float32, device)
    total = torch.zeros(2, 3, 4, device=device)
    ops.ig_accumulate_(total, grads, weights)
    expected = torch.zeros(2, 3, 4, dtype=torch.float64, device=device)
    reference.ig_accumulate_(expected, grads.double(), weights)
    torch.testing.assert_close(total, expected.float())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@PER_SAMPLE
def test_path_inputs_backward_matches_reference(device, dtype, per_sample):
    """Gradients w.r.t. input, baseline and the node table, against PyTorch's
    autograd through the float64 reference."""
    alphas = table(RULES["gausslegendre-7"], 2, per_sample, device).requires_grad_()
    x = make((2, 3, 4, 5), dtype, device).requires_grad_()
    b = make((2, 3, 4, 5), dtype, device).requires_grad_()
    g = make((14, 3, 4, 5), dtype, device)
    gx, gb, ga = torch.autograd.grad(ops.ig_path_inputs(x, b, alphas), (x, b, alphas), g)
    x64, b64 = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    a64 = alphas.detach().clone().requires_grad_()
    ex, eb, ea = torch.autograd.grad(reference.ig_path_inputs(x64, b64, a64), (x64, b64, a64), g.double())
    # The backward sums 7 terms (and, for the nodes, 60 per sample) in the gradient dtype.
    low = dtype in (torch.float16, torch.bfloat16)
    tol = dict(rtol=3e-2, atol=3e-2) if low else TOLERANCES[dtype]
    torch.testing.assert_close(gx, ex.to(dtype), **tol)
    torch.testing.assert_close(gb, eb.to(dtype), **tol)
    assert ga.dtype == torch.float64 and ga.shape == alphas.shape
    scale = ea.abs().max()
    a_tol = dict(rtol=5e-2, atol=5e-2 * scale) if low else dict(rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(ga, ea, **(TOLERANCES[dtype] if dtype == torch.float64 else a_tol))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("rule", ["single", "riemann-trapezoid-5", "gausslegendre-70"])
@PER_SAMPLE
def test_path_inputs_gradcheck(device, rule, per_sample):
    alphas = table(RULES[rule], 2, per_sample, device).requires_grad_()
    x = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(lambda x_, b_, a_: ops.ig_path_inputs(x_, b_, a_), (x, b, alphas))
    torch.autograd.gradgradcheck(lambda x_, b_, a_: ops.ig_path_inputs(x_, b_, a_), (x, b, alphas))


@PER_SAMPLE
def test_integrated_gradients_of_a_quadratic_are_exact(per_sample):
    """Spec §0.1: with Gauss-Legendre nodes, IG of f(x) = 1/2 x^T A x + b^T x is
    (x - x') * (A (x + x') / 2 + b) for any n >= 1. Built from both ops; with
    per-sample tables each sample gets the rule mapped onto [0, 1] its own way
    (nodes and weights of a 3-point rule on [0, s_b] followed by one on [s_b, 1])."""
    torch.manual_seed(0)
    d = 6
    m = torch.randn(d, d, dtype=torch.float64)
    a = m + m.T
    bias = torch.randn(d, dtype=torch.float64)
    x = torch.randn(2, d, dtype=torch.float64)
    base = torch.randn(2, d, dtype=torch.float64)
    nodes, weights = (torch.tensor(v, dtype=torch.float64) for v in gauss_legendre(3))
    if per_sample:
        split = torch.tensor([0.3, 0.8], dtype=torch.float64)  # per sample
        alphas = torch.cat([nodes[:, None] * split, split + nodes[:, None] * (1 - split)])
        weights = torch.cat([weights[:, None] * split, weights[:, None] * (1 - split)])
    else:
        alphas = nodes
    path = ops.ig_path_inputs(x, base, alphas).requires_grad_()
    f = 0.5 * torch.einsum("bi,ij,bj->b", path, a, path) + path @ bias
    (grads,) = torch.autograd.grad(f.sum(), path)
    total = torch.zeros_like(x)
    ops.ig_accumulate_(total, grads, weights)
    attribution = (x - base) * total
    expected = (x - base) * ((x + base) / 2 @ a + bias)
    torch.testing.assert_close(attribution, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.needs_cuda
def test_device_tables_need_no_host_sync():
    """With the tables on the GPU, neither op waits for the device (the node
    conversion runs on the device too)."""
    x = torch.randn(4, 3, 8, 8, device="cuda")
    alphas = torch.rand(16, 4, device="cuda", dtype=torch.float64)
    total = torch.zeros_like(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        path = torch.ops.fastattr.ig_path_inputs.default(x, torch.zeros_like(x), alphas)
        torch.ops.fastattr.ig_accumulate_.default(total, path, alphas)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(total, reference.ig_path_inputs(x, torch.zeros_like(x), alphas)
                               .view(16, 4, 3, 8, 8).mul(alphas.float().view(16, 4, 1, 1, 1)).sum(0))


def _ig_errors():
    path, acc = torch.ops.fastattr.ig_path_inputs.default, torch.ops.fastattr.ig_accumulate_.default
    x = lambda: torch.randn(2, 3)  # noqa: E731  (made inside each call: fake or real)
    a = lambda *shape, dtype=torch.float64: torch.full(shape, 0.5, dtype=dtype)  # noqa: E731
    return {
        "input-int": (lambda: path(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), a(1)),
                      r"^fastattr: input must be a floating-point tensor, got torch.int64$"),
        "baseline-shape": (lambda: path(x(), torch.randn(1, 3), a(1)),
                           r"^fastattr: input and baseline must have the same shape, got \[2, 3\] and \[1, 3\]$"),
        "baseline-dtype": (lambda: path(x(), x().double(), a(1)),
                           r"^fastattr: input and baseline must have the same dtype, got torch.float32 and torch.float64$"),
        "input-0d": (lambda: path(torch.tensor(1.0), torch.tensor(0.0), a(1)),
                     r"^fastattr.ig_path_inputs: input must have a batch dimension, got a 0-D tensor$"),
        "alphas-int": (lambda: path(x(), x(), torch.ones(3, dtype=torch.int64)),
                       r"^fastattr.ig_path_inputs: alphas must be a floating-point tensor, got torch.int64$"),
        "alphas-3d": (lambda: path(x(), x(), a(3, 2, 1)),
                      r"^fastattr.ig_path_inputs: alphas must have shape \(K,\) or \(K, B\), got a 3-D tensor of shape \[3, 2, 1\]$"),
        "alphas-0d": (lambda: path(x(), x(), torch.tensor(0.5)),
                      r"^fastattr.ig_path_inputs: alphas must have shape \(K,\) or \(K, B\), got a 0-D tensor of shape \[\]$"),
        "alphas-empty": (lambda: path(x(), x(), a(0)),
                         r"^fastattr.ig_path_inputs: alphas must hold at least one step \(K >= 1\), got shape \[0\]$"),
        "alphas-batch": (lambda: path(x(), x(), a(4, 3)),
                         r"^fastattr.ig_path_inputs: alphas of shape \(K, B\) must have B = 2 \(the batch size of input\), "
                         r"got shape \[4, 3\]$"),
        "weights-int": (lambda: acc(torch.zeros(2, 3), torch.randn(4, 3), torch.ones(2, dtype=torch.int32)),
                        r"^fastattr.ig_accumulate_: weights must be a floating-point tensor, got torch.int32$"),
        "weights-3d": (lambda: acc(torch.zeros(2, 3), torch.randn(4, 3), a(2, 2, 1)),
                       r"^fastattr.ig_accumulate_: weights must have shape \(K,\) or \(K, B\), got a 3-D tensor"),
        "weights-empty": (lambda: acc(torch.zeros(2, 3), torch.randn(4, 3), a(0, 2)),
                          r"^fastattr.ig_accumulate_: weights must hold at least one step \(K >= 1\), got shape \[0, 2\]$"),
        "weights-batch": (lambda: acc(torch.zeros(2, 3), torch.randn(4, 3), a(2, 1)),
                          r"^fastattr.ig_accumulate_: weights of shape \(K, B\) must have B = 2 \(the batch size of total\), "
                          r"got shape \[2, 1\]$"),
        "grads-steps": (lambda: acc(torch.zeros(2, 3), torch.randn(6, 3), a(2)),  # 3 steps of grads, 2 weights
                        r"^fastattr.ig_accumulate_: grads must have shape \(K \* B, \*total.shape\[1:\]\) = \[4, 3\] "
                        r"for total of shape \[2, 3\] and K = 2, got \[6, 3\]$"),
        "grads-row": (lambda: acc(torch.zeros(2, 3), torch.randn(4, 2), a(2)),
                      r"grads must have shape \(K \* B, \*total.shape\[1:\]\) = \[4, 3\] .* got \[4, 2\]$"),
        "total-half": (lambda: acc(torch.zeros(2, 3).half(), torch.randn(4, 3).half(), a(2)),
                       r"^fastattr.ig_accumulate_: total must have the accumulation dtype of grads \(torch.float32 for "
                       r"torch.float16 grads\), got torch.float16$"),
        "total-double": (lambda: acc(torch.zeros(2, 3).double(), torch.randn(4, 3), a(2)),
                         r"total must have the accumulation dtype of grads \(torch.float32 for torch.float32 grads\), "
                         r"got torch.float64$"),
        "grads-int": (lambda: acc(torch.zeros(2, 3), torch.ones(4, 3, dtype=torch.int32), a(2)),
                      r"^fastattr: grads must be a floating-point tensor, got torch.int32$"),
        "total-0d": (lambda: acc(torch.tensor(0.0), torch.randn(2), a(2)),
                     r"^fastattr.ig_accumulate_: total must have a batch dimension, got a 0-D tensor$"),
        "total-transposed": (lambda: acc(torch.zeros(3, 2).t(), torch.randn(4, 3), a(2)),
                             r"^fastattr.ig_accumulate_: total must be contiguous or channels_last \(it is written in "
                             r"place\), got strides \[1, 2\] for shape \[2, 3\]$"),
    }


IG_ERRORS = _ig_errors()


@pytest.mark.parametrize("error", list(IG_ERRORS))
def test_errors(error):
    """Each bad argument is named with the expected and received values, in the
    same words by the kernel and the fake kernel."""
    call, match = IG_ERRORS[error]
    assert_same_error(call, match)


@pytest.mark.parametrize("kernels", ["fake", pytest.param("real", marks=pytest.mark.needs_cuda)])
def test_wrong_device_tables(kernels):
    """A table on another device than the tensor it scales. The fake kernels run
    on fake CUDA tensors (no GPU needed); the real kernels need a GPU."""
    check = assert_fake_error if kernels == "fake" else assert_same_error
    check(lambda: torch.ops.fastattr.ig_path_inputs.default(torch.randn(2, 3), torch.randn(2, 3),
                                                            torch.rand(4, device="cuda")),
          r"^fastattr.ig_path_inputs: alphas must be on the device of input \(cpu\), got cuda:0$")
    check(lambda: torch.ops.fastattr.ig_accumulate_.default(torch.zeros(2, 3, device="cuda"),
                                                            torch.randn(4, 3, device="cuda"), torch.rand(2)),
          r"^fastattr.ig_accumulate_: weights must be on the device of total \(cuda:0\), got cpu$")
