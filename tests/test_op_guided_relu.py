"""Tests of fastattr::guided_relu and fastattr::_guided_relu_backward.

The forward is ReLU (upper=None) or ReLU6 (upper=6); the backward is a rule
(spec §1.2): guided ``g * 1[0 < x < upper] * 1[g > 0]``, deconvnet ``relu(g)``.
Inputs sit on a half-integer grid so that x == 0 and x == 6 (the rule's edges)
and ties occur, and every value is exact in every dtype.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastattr
from fastattr import reference
from fastattr.guidance import guided
from utils import DTYPES, TOLERANCES, cpu_and_cuda, non_contiguous

ops = fastattr.ops
SHAPES = [(17,), (2, 3, 5, 7)]
LARGE = (2, 16411)  # more elements than one parallel_for grain (32768): several chunks
MODES = ["guided", "deconvnet"]
UPPERS = [None, 6.0]


def grid_input(shape, dtype, device, contiguous=True):
    """Values in {-8, -7.5, ..., 8}: includes 0 and 6 exactly."""
    x = (torch.randint(-16, 17, shape) / 2).to(dtype=dtype, device=device)
    return x if contiguous else non_contiguous(x)


def grad_like(x, contiguous=True):
    """Mixed-sign gradient with some exact zeros."""
    g = torch.randn(x.shape)
    g[torch.rand(x.shape) < 0.1] = 0
    g = g.to(dtype=x.dtype, device=x.device)
    return g if contiguous else non_contiguous(g)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("upper", UPPERS)
def test_forward_matches_reference(device, dtype, shape, contiguous, upper):
    x = grid_input(shape, dtype, device, contiguous)
    for mode in MODES:
        out = ops.guided_relu(x, mode, upper)
        expected = reference.guided_relu(x.double(), mode, upper)
        assert out.dtype == dtype and out.device == x.device and out.is_contiguous()
        torch.testing.assert_close(out, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("mode", MODES)
def test_backward_matches_reference(device, dtype, shape, contiguous, upper, mode):
    x = grid_input(shape, dtype, device, contiguous).requires_grad_()
    g = grad_like(x, contiguous)
    (grad,) = torch.autograd.grad(ops.guided_relu(x, mode, upper), x, g)
    result64 = reference.guided_relu(x.detach().double(), mode, upper)
    expected = reference.guided_relu_backward(g.double(), result64, mode, upper)
    assert grad.dtype == dtype and grad.shape == x.shape
    torch.testing.assert_close(grad, expected.to(dtype), **TOLERANCES[dtype])
    # The backward op called directly (non-contiguous operands included).
    direct = ops.guided_relu_backward(g, ops.guided_relu(x.detach(), mode, upper), mode, upper)
    assert torch.equal(direct, grad)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_large_input(device, dtype, contiguous):
    x = grid_input(LARGE, dtype, device, contiguous).requires_grad_()
    g = grad_like(x, contiguous)
    for upper in UPPERS:
        out = ops.guided_relu(x, "guided", upper)
        torch.testing.assert_close(out, reference.guided_relu(x.detach().double(), "guided", upper).to(dtype),
                                   **TOLERANCES[dtype])
        (grad,) = torch.autograd.grad(out, x, g)
        expected = reference.guided_relu_backward(g.double(), out.detach().double(), "guided", upper)
        torch.testing.assert_close(grad, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_rules_equal_pytorch_autograd(device, dtype):
    """Spec §1.5.1, checked against PyTorch's own ReLU/ReLU6 derivatives rather
    than fastattr.reference: guided ReLU is g*(x>0)*(g>0), guided ReLU6 is
    relu(g*((x>0)&(x<6))), deconvnet is relu(g). Exact, x == 0 and x == 6 included."""
    x = grid_input((4, 64), dtype, device).requires_grad_()
    assert (x == 0).any() and (x == 6).any()
    g = grad_like(x)

    def ours(mode, upper):
        return torch.autograd.grad(ops.guided_relu(x, mode, upper), x, g)[0]

    (relu_grad,) = torch.autograd.grad(torch.relu(x), x, g)
    (relu6_grad,) = torch.autograd.grad(F.relu6(x), x, g)
    assert torch.equal(ours("guided", None), relu_grad * (g > 0))
    assert torch.equal(ours("guided", 6.0), F.relu(relu6_grad))
    assert torch.equal(ours("deconvnet", None), F.relu(g))
    assert torch.equal(ours("deconvnet", 6.0), F.relu(g))
    # Forward values are PyTorch's.
    assert torch.equal(ops.guided_relu(x, "guided", None), torch.relu(x))
    assert torch.equal(ops.guided_relu(x, "guided", 6.0), F.relu6(x))


def test_forward_special_values():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 5.999, 6.001])
    out = ops.guided_relu(x, "guided", None)
    torch.testing.assert_close(out, torch.relu(x), equal_nan=True)
    out6 = ops.guided_relu(x, "guided", 6.0)
    torch.testing.assert_close(out6, F.relu6(x), equal_nan=True)
    assert out6[1] == 6 and out6[0].isnan()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("upper", UPPERS)
def test_cpu_cuda_parity(dtype, upper):
    x = grid_input(LARGE, dtype, "cpu")
    g = grad_like(x)
    for mode in MODES:
        out_cpu = ops.guided_relu(x, mode, upper)
        out_cuda = ops.guided_relu(x.cuda(), mode, upper)
        assert torch.equal(out_cuda.cpu(), out_cpu)
        back_cpu = ops.guided_relu_backward(g, out_cpu, mode, upper)
        back_cuda = ops.guided_relu_backward(g.cuda(), out_cuda, mode, upper)
        assert torch.equal(back_cuda.cpu(), back_cpu)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)])
def test_empty(device, shape):
    x = torch.empty(shape, device=device, requires_grad=True)
    out = ops.guided_relu(x, "guided", 6.0)
    assert out.shape == shape
    (grad,) = torch.autograd.grad(out, x, torch.empty(shape, device=device))
    assert grad.shape == shape
    assert ops.guided_relu_backward(out.detach(), out.detach(), "deconvnet").shape == shape


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, mode, upper, requires_grad):
    x = grid_input((3, 8), torch.float32, device).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.fastattr.guided_relu.default, (x, mode, upper))
    result = ops.guided_relu(x.detach(), mode, upper).requires_grad_(requires_grad)
    g = grad_like(x).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.fastattr._guided_relu_backward.default, (g, result, mode, upper))


def away_from_kinks():
    """float64 input x (requires grad) and gradient g, every value at least 0.2
    away from the rule's kinks (x at 0 and 6, g at 0), for gradcheck."""
    x = torch.randn(4, 6, dtype=torch.float64) * 4
    x = x + torch.where(x >= 0, 0.2, -0.2)
    x = torch.where((x - 6).abs() < 0.2, x + 0.5, x).requires_grad_()
    g = torch.randn(4, 6, dtype=torch.float64)
    return x, g + torch.where(g >= 0, 0.2, -0.2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("upper", UPPERS)
def test_double_backward(mode, upper):
    """The rule is linear in grad_output where its mask is constant, so it has a
    true derivative; create_graph=True must give it (not a silent zero)."""
    x, g = away_from_kinks()
    g.requires_grad_()
    # As a function of (grad_output, result) the rule has kinks at result == 0
    # and == upper; x itself (values away from them) serves as `result` here.
    result = x.detach().clone().requires_grad_()
    torch.autograd.gradcheck(lambda g_, r_: ops.guided_relu_backward(g_, r_, mode, upper), (g, result))
    torch.autograd.gradgradcheck(lambda x_: ops.guided_relu(x_, mode, upper), (x,), (g.detach(),))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("upper, backend", [(None, "inductor"), (6.0, "aot_eager")])
def test_torch_compile_matches_eager(device, upper, backend):
    """fullgraph compile of a small net using the op, autograd included."""
    w = torch.randn(8, 8, device=device)

    def f(x):
        h = ops.guided_relu(x @ w, "guided", upper)
        return (ops.guided_relu(h - 1.0, "deconvnet", upper) * w[0]).sum()

    x_eager = (torch.randn(5, 8, device=device) * 4).requires_grad_()
    x_comp = x_eager.detach().clone().requires_grad_()
    out_eager = f(x_eager)
    out_eager.backward()
    out_comp = torch.compile(f, fullgraph=True, backend=backend)(x_comp)
    out_comp.backward()
    torch.testing.assert_close(out_comp, out_eager)
    torch.testing.assert_close(x_comp.grad, x_eager.grad)
    assert (x_eager.grad != 0).any()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "apply, upper",
    [
        (lambda h: nn.ReLU(inplace=True)(h), None),
        (lambda h: F.relu(h, inplace=True), None),
        (lambda h: F.relu_(h), None),
        (lambda h: torch.relu_(h), None),
        (lambda h: h.relu_(), None),
        (lambda h: nn.ReLU6(inplace=True)(h), 6.0),
        (lambda h: F.relu6(h, inplace=True), 6.0),
    ],
    ids=["nn.ReLU", "F.relu", "F.relu_", "torch.relu_", "Tensor.relu_", "nn.ReLU6", "F.relu6"],
)
def test_inplace_usage_via_guided(device, apply, upper):
    x = grid_input((3, 40), torch.float32, device).requires_grad_()
    g = grad_like(x)
    scale = torch.linspace(0.5, 2.0, 40, device=device)
    with guided():
        h = x * scale  # non-leaf, overwritten in place
        ptr = h.data_ptr()
        y = apply(h)
    assert y.data_ptr() == ptr and torch.equal(h, y)
    expected_forward = torch.relu(x * scale) if upper is None else F.relu6(x * scale)
    assert torch.equal(y, expected_forward)
    (grad,) = torch.autograd.grad(y, x, g)
    pre = (x * scale).detach()
    keep = (pre > 0) & (g > 0)
    if upper is not None:
        keep &= pre < upper
    assert torch.equal(grad, torch.where(keep, g, 0) * scale)
    # Outside the context the same call has the ordinary derivative again.
    h = x * scale
    (plain,) = torch.autograd.grad(apply(h), x, g)
    assert not torch.equal(plain, grad)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("mode", MODES)
def test_inplace_op_equals_functional_op(device, dtype, contiguous, upper, mode):
    """guided_relu_ writes the functional op's value into its input (also a
    strided view) and returns that tensor; its gradient is the same rule."""
    x = grid_input((3, 5, 7), dtype, device, contiguous).requires_grad_()
    g = grad_like(x)
    h = x * 1.0 if contiguous else non_contiguous((x * 1.0).contiguous())
    version = h._version
    y = ops.guided_relu_(h, mode, upper)
    assert y is h and h._version > version
    expected = ops.guided_relu(x, mode, upper)
    assert torch.equal(y, expected)
    (grad,) = torch.autograd.grad(y, x, g)
    (expected_grad,) = torch.autograd.grad(expected, x, g)
    assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("upper", UPPERS)
def test_inplace_op_double_backward(mode, upper):
    x, g = away_from_kinks()
    torch.autograd.gradgradcheck(lambda x_: ops.guided_relu_(x_ * 1.0, mode, upper), (x,), (g,))


def test_inplace_op_errors():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="self must be a floating-point"):
        ops.guided_relu_(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="mode must be 'guided' or 'deconvnet'"):
        ops.guided_relu_(x, "reference")
    with pytest.raises(ValueError, match="upper must be positive"):
        ops.guided_relu_(x, "guided", 0.0)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        ops.guided_relu_(x.clone().requires_grad_())


def test_errors(tensor_mode):
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="self must be a floating-point"):
        ops.guided_relu(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="mode must be 'guided' or 'deconvnet'"):
        ops.guided_relu(x, "reference")
    with pytest.raises(RuntimeError, match="upper must be positive"):
        ops.guided_relu(x, "guided", -1.0)
    with pytest.raises(RuntimeError, match="grad_output and result must have the same shape"):
        ops.guided_relu_backward(x, torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="grad_output and result must have the same dtype"):
        ops.guided_relu_backward(x, x.double())
    with pytest.raises(RuntimeError, match="grad_output must be a floating-point"):
        ops.guided_relu_backward(x.long(), x.long())
    with pytest.raises(RuntimeError, match="mode must be"):
        ops.guided_relu_backward(x, x, "window")
    with pytest.raises(RuntimeError, match="upper must be positive"):
        ops.guided_relu_backward(x, x, "guided", 0.0)
