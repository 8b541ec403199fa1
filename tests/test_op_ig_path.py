"""Tests of fastattr::ig_path_inputs and fastattr::ig_accumulate_ (spec §0.1).

ig_path_inputs builds the step-major path batch
``cat([baseline + a * (input - baseline) for a in alphas])`` and rounds like
those PyTorch ops in the input dtype (so it is bit-identical to the reference
run in that dtype); its autograd is the true gradient. ig_accumulate_ adds
``sum_k w_k * grads[k*B:(k+1)*B]`` into a float32/float64 ``total`` in place.
"""

import numpy as np
import pytest
import torch

import fastattr
from fastattr import reference
from utils import DTYPES, TOLERANCES, cpu_and_cuda, non_contiguous

ops = fastattr.ops
SHAPES = [(1, 7), (2, 3, 4, 5), (3, 11003)]  # the last one spans two parallel_for chunks


def gauss_legendre(n):
    """Captum's default rule (spec §0.1): alpha = (1 + xi) / 2, w = omega / 2."""
    xi, omega = np.polynomial.legendre.leggauss(n)
    return [float(a) for a in 0.5 * (1 + xi)], [float(w) for w in 0.5 * omega]


ALPHAS = {
    "single": [0.3],
    "gausslegendre-7": gauss_legendre(7)[0],
    "riemann-trapezoid-5": [0.0, 0.25, 0.5, 0.75, 1.0],
    "gausslegendre-70": gauss_legendre(70)[0],  # more steps than one CUDA launch carries (64)
}


def acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def make(shape, dtype, device, contiguous=True, scale=1.0):
    t = (torch.randn(shape) * scale).to(dtype=dtype, device=device)
    return t if contiguous else non_contiguous(t)


# Every rule on small shapes; the multi-chunk shape with one rule.
SHAPE_ALPHAS = [(shape, a) for shape in SHAPES[:2] for a in ALPHAS] + [(SHAPES[2], "gausslegendre-7")]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, alphas", SHAPE_ALPHAS, ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
@pytest.mark.parametrize("contiguous", [True, False])
def test_path_inputs_match_reference(device, dtype, shape, contiguous, alphas):
    alphas = ALPHAS[alphas]
    x = make(shape, dtype, device, contiguous)
    b = make(shape, dtype, device, contiguous, scale=0.5)
    out = ops.ig_path_inputs(x, b, alphas)
    assert out.shape == (len(alphas) * shape[0], *shape[1:]) and out.dtype == dtype
    expected = reference.ig_path_inputs(x.double(), b.double(), alphas)
    torch.testing.assert_close(out, expected.to(dtype), **TOLERANCES[dtype])
    # Same rounding as the PyTorch expression in the input dtype: bit-identical.
    assert torch.equal(out, reference.ig_path_inputs(x, b, alphas))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, steps", [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 7), ((2, 3, 4, 5), 70), ((3, 11003), 7)],
                         ids=["1-step", "7-steps", "70-steps", "7-steps-large"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_accumulate_matches_reference(device, dtype, shape, contiguous, steps):
    _, weights = gauss_legendre(steps)
    grads = make((steps * shape[0], *shape[1:]), dtype, device, contiguous)
    start = make(shape, acc_dtype(dtype), device)
    total = start.clone()
    ops.ig_accumulate_(total, grads, weights)
    expected = start.double()
    reference.ig_accumulate_(expected, grads.double(), weights)
    assert total.dtype == acc_dtype(dtype)
    torch.testing.assert_close(total, expected.to(total.dtype), **TOLERANCES[acc_dtype(dtype)])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_path_inputs_backward_matches_reference(device, dtype, contiguous):
    alphas = ALPHAS["gausslegendre-7"]
    x = make((2, 3, 4, 5), dtype, device, contiguous).requires_grad_()
    b = make((2, 3, 4, 5), dtype, device, contiguous).requires_grad_()
    g = make((14, 3, 4, 5), dtype, device, contiguous)
    gx, gb = torch.autograd.grad(ops.ig_path_inputs(x, b, alphas), (x, b), g)
    x64, b64 = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ex, eb = torch.autograd.grad(reference.ig_path_inputs(x64, b64, alphas), (x64, b64), g.double())
    # The backward sums 7 terms in the gradient dtype.
    tol = dict(rtol=3e-2, atol=3e-2) if dtype in (torch.float16, torch.bfloat16) else TOLERANCES[dtype]
    torch.testing.assert_close(gx, ex.to(dtype), **tol)
    torch.testing.assert_close(gb, eb.to(dtype), **tol)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("alphas", ["single", "riemann-trapezoid-5", "gausslegendre-70"])
def test_path_inputs_gradcheck(device, alphas):
    alphas = ALPHAS[alphas]
    x = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(lambda x_, b_: ops.ig_path_inputs(x_, b_, alphas), (x, b))
    torch.autograd.gradgradcheck(lambda x_, b_: ops.ig_path_inputs(x_, b_, alphas), (x, b))


def test_integrated_gradients_of_a_quadratic_are_exact():
    """Spec §0.1: with Gauss-Legendre nodes, IG of f(x) = 1/2 x^T A x + b^T x is
    (x - x') * (A (x + x') / 2 + b) for any n >= 1. Built from both ops."""
    torch.manual_seed(0)
    d = 6
    m = torch.randn(d, d, dtype=torch.float64)
    a = m + m.T
    bias = torch.randn(d, dtype=torch.float64)
    x = torch.randn(2, d, dtype=torch.float64)
    base = torch.randn(2, d, dtype=torch.float64)
    alphas, weights = gauss_legendre(3)
    path = ops.ig_path_inputs(x, base, alphas).requires_grad_()
    f = 0.5 * torch.einsum("bi,ij,bj->b", path, a, path) + path @ bias
    (grads,) = torch.autograd.grad(f.sum(), path)
    total = torch.zeros_like(x)
    ops.ig_accumulate_(total, grads, weights)
    attribution = (x - base) * total
    expected = (x - base) * ((x + base) / 2 @ a + bias)
    torch.testing.assert_close(attribution, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_cuda_parity(dtype):
    alphas, weights = gauss_legendre(70)
    x = make(SHAPES[2], dtype, "cpu")
    b = make(SHAPES[2], dtype, "cpu", scale=0.5)
    out = ops.ig_path_inputs(x, b, alphas)
    assert torch.equal(ops.ig_path_inputs(x.cuda(), b.cuda(), alphas).cpu(), out)
    grads = make(out.shape, dtype, "cpu")
    total = torch.zeros(x.shape, dtype=acc_dtype(dtype))
    total_c = total.cuda()
    ops.ig_accumulate_(total, grads, weights)
    ops.ig_accumulate_(total_c, grads.cuda(), weights)
    torch.testing.assert_close(total_c.cpu(), total, **TOLERANCES[acc_dtype(dtype)])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(0, 3), (2, 0), (3, 0, 4)])
def test_empty(device, shape):
    x = torch.empty(shape, device=device, requires_grad=True)
    out = ops.ig_path_inputs(x, torch.empty(shape, device=device), [0.5, 1.0])
    assert out.shape == (2 * shape[0], *shape[1:])
    (grad,) = torch.autograd.grad(out, x, torch.empty_like(out))
    assert grad.shape == shape
    total = torch.empty(shape, device=device)
    ops.ig_accumulate_(total, torch.empty(out.shape, device=device), [0.5, 0.5])
    assert total.shape == shape


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    x = torch.randn(2, 3, 4, device=device, requires_grad=requires_grad)
    b = torch.randn(2, 3, 4, device=device, requires_grad=requires_grad)
    alphas, weights = gauss_legendre(5)
    torch.library.opcheck(torch.ops.fastattr.ig_path_inputs.default, (x, b, alphas))
    total = torch.randn(2, 3, 4, device=device)
    grads = torch.randn(10, 3, 4, device=device, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.fastattr.ig_accumulate_.default, (total, grads, weights))
    # Low-precision gradients with a float32 total.
    grads_h = grads.detach().half().requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.fastattr.ig_accumulate_.default, (total, grads_h, weights))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_torch_compile_matches_eager(device):
    """An IG step under fullgraph compile: path batch, model, autograd through
    ig_path_inputs (w.r.t. input and baseline) and the in-place accumulation."""
    alphas, weights = gauss_legendre(4)
    w = torch.randn(5, 3, device=device)

    def f(x, base, total):
        path = ops.ig_path_inputs(x, base, alphas)
        out = torch.tanh(path @ w).sum()
        # d out / d path, computed analytically, accumulated with the IG weights.
        grads = (1 - torch.tanh(path.detach() @ w) ** 2) @ w.T
        ops.ig_accumulate_(total, grads, weights)
        return out, total * 2

    x = torch.randn(3, 5, device=device, requires_grad=True)
    base = torch.randn(3, 5, device=device, requires_grad=True)
    total_e = torch.zeros(3, 5, device=device)
    total_c = torch.zeros(3, 5, device=device)
    out_e, t_e = f(x, base, total_e)
    ge = torch.autograd.grad(out_e, (x, base))
    out_c, t_c = torch.compile(f, fullgraph=True)(x, base, total_c)
    gc = torch.autograd.grad(out_c, (x, base))
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(t_c, t_e)
    torch.testing.assert_close(total_c, total_e)  # the mutation is visible outside
    assert (total_e != 0).all()
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_errors(tensor_mode):
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="input must be a floating-point"):
        ops.ig_path_inputs(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), [0.5])
    with pytest.raises(RuntimeError, match="input and baseline must have the same shape"):
        ops.ig_path_inputs(x, torch.randn(1, 3), [0.5])
    with pytest.raises(RuntimeError, match="input and baseline must have the same dtype"):
        ops.ig_path_inputs(x, x.double(), [0.5])
    with pytest.raises(RuntimeError, match="input must have a batch dimension"):
        ops.ig_path_inputs(torch.tensor(1.0), torch.tensor(0.0), [0.5])
    with pytest.raises(RuntimeError, match="alphas must not be empty"):
        ops.ig_path_inputs(x, x, [])
    total = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"grads must have shape \(len\(weights\) \* B"):
        ops.ig_accumulate_(total, torch.randn(6, 3), [0.5, 0.5])  # 3 steps of grads, 2 weights
    with pytest.raises(RuntimeError, match="weights must not be empty"):
        ops.ig_accumulate_(total, torch.randn(4, 3), [])
    with pytest.raises(RuntimeError, match="total must have the accumulation dtype"):
        ops.ig_accumulate_(total.half(), torch.randn(4, 3).half(), [0.5, 0.5])
    with pytest.raises(RuntimeError, match="total must have the accumulation dtype"):
        ops.ig_accumulate_(total.double(), torch.randn(4, 3), [0.5, 0.5])
    with pytest.raises(RuntimeError, match="grads must be a floating-point"):
        ops.ig_accumulate_(total, torch.ones(4, 3, dtype=torch.int32), [0.5, 0.5])
    with pytest.raises(RuntimeError, match="total must be contiguous"):
        ops.ig_accumulate_(torch.zeros(3, 2).t(), torch.randn(4, 3), [0.5, 0.5])
