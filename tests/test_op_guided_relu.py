"""Tests of fastattr::guided_relu and fastattr::_guided_relu_backward that are
specific to them: the rule's mathematical oracles and the error messages.
Layouts, empty inputs, opcheck, torch.compile and CPU/CUDA parity are in
tests/test_op_harness.py (shared by every op).

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
from op_harness import assert_same_error, fake_run
from utils import DTYPES, TOLERANCES, cpu_and_cuda, non_contiguous

ops = fastattr.ops
SHAPES = [(17,), (2, 3, 5, 7)]
# More elements than one parallel_for grain (32768): several chunks, 4-D so that
# they can be channels_last (the kernels then read raw NHWC memory).
LARGE = (2, 8, 41, 50)
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
@pytest.mark.parametrize("upper", UPPERS)
def test_forward_matches_reference(device, dtype, shape, upper):
    x = grid_input(shape, dtype, device)
    for mode in MODES:
        out = ops.guided_relu(x, mode, upper)
        expected = reference.guided_relu(x.double(), mode, upper)
        assert out.dtype == dtype and out.device == x.device
        torch.testing.assert_close(out, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("mode", MODES)
def test_backward_matches_reference(device, dtype, shape, upper, mode):
    x = grid_input(shape, dtype, device).requires_grad_()
    g = grad_like(x)
    (grad,) = torch.autograd.grad(ops.guided_relu(x, mode, upper), x, g)
    result64 = reference.guided_relu(x.detach().double(), mode, upper)
    expected = reference.guided_relu_backward(g.double(), result64, mode, upper)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_large_input(device, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = grid_input(LARGE, dtype, device).contiguous(memory_format=fmt).requires_grad_()
    g = grad_like(x).contiguous(memory_format=fmt)
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


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return t if layout == "contiguous" else non_contiguous(t)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("mode", MODES)
def test_inplace_op_equals_functional_op(device, dtype, layout, upper, mode):
    """Differential: guided_relu_ writes the functional op's value into its
    input (also a strided view, or channels_last, which it stays) and returns
    that tensor; its gradient is the same rule. The functional side is pinned
    by test_forward_matches_reference / test_backward_matches_reference and the
    harness's reference tests."""
    x = grid_input((2, 3, 5, 7), dtype, device).requires_grad_()
    g = _layout(grad_like(x), layout)
    h = _layout(x * 1.0, layout)
    strides, version = h.stride(), h._version
    y = ops.guided_relu_(h, mode, upper)
    assert y is h and h._version > version and h.stride() == strides
    expected = ops.guided_relu(x, mode, upper)
    assert torch.equal(y, expected)
    (grad,) = torch.autograd.grad(y, x, g)
    (expected_grad,) = torch.autograd.grad(expected, x, g)
    assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_channels_last_model_stays_channels_last(device):
    """Under fastattr.guided, a channels_last conv net's ReLUs (functional and
    in place) keep the layout in the forward pass and in the gradients that
    pass through them; the gradient is the rule computed from PyTorch's own
    ReLU gradient (spec §1.5.1), in float64."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device, torch.float64).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 9, 11, device=device, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(2, 8, 9, 11, device=device, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    seen = {}

    def keep(name, t):
        seen[name] = t.is_contiguous(memory_format=torch.channels_last)
        t.register_hook(lambda grad: seen.__setitem__(name + ".grad", grad.is_contiguous(memory_format=torch.channels_last)))
        return t

    with guided():
        h = keep("conv", conv(x))
        y = keep("relu", F.relu(h))
        z = F.relu(y * 1.0, inplace=True)
        seen["relu_"] = z.is_contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad(z, x, g)
    assert set(seen) == {"conv", "conv.grad", "relu", "relu.grad", "relu_"} and all(seen.values()), seen
    pre = conv(x).detach()
    keep_mask = (pre > 0) & (g > 0)  # the second ReLU changes nothing after the first
    (expected,) = torch.autograd.grad(conv(x), x, torch.where(keep_mask, g, 0))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_output_layout_rules():
    """The layout rules of the ops, stated case by case (the harness checks
    that the fake kernels agree on every layout): guided_relu keeps any dense
    layout, also a permuted one no memory format names; _guided_relu_backward
    keeps its operands' layout when they share it (size-1 dimensions' strides
    do not count) and otherwise uses grad_output's suggested format."""
    x = torch.randn(4, 5, 6).permute(2, 0, 1)  # dense, strides (1, 30, 6)
    assert ops.guided_relu(x).stride() == x.stride()
    nchw = torch.randn(2, 8, 5, 5)
    nhwc = nchw.contiguous(memory_format=torch.channels_last)
    pooled = torch.randn(2, 8, 1, 1)  # NCHW and NHWC are the same memory; strides differ
    pooled_nhwc = torch.empty_strided(pooled.shape, (8, 1, 8, 8)).copy_(pooled)
    cases = [
        (nhwc, nhwc, torch.channels_last),
        (nhwc, nchw, torch.channels_last),
        (nchw, nhwc, torch.contiguous_format),
        (non_contiguous(nchw), non_contiguous(nchw), None),  # dense, same strides: kept
        (pooled, pooled_nhwc, None),
    ]
    for g, r, fmt in cases:
        out = ops.guided_relu_backward(g, r)
        if fmt is None:
            assert out.stride() == g.stride()
        else:
            assert out.is_contiguous(memory_format=fmt)
        assert fake_run(ops.guided_relu_backward, (g, r)).stride() == out.stride()
        torch.testing.assert_close(out, reference.guided_relu_backward(g, r))


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


ERRORS = {
    "self-int": (lambda: ops.guided_relu(torch.ones(2, 3, dtype=torch.int32)),
                 r"^fastattr: self must be a floating-point tensor, got torch.int32$"),
    "mode": (lambda: ops.guided_relu(torch.randn(2, 3), "reference"),
             r"^fastattr: mode must be 'guided' or 'deconvnet', got 'reference'$"),
    "upper": (lambda: ops.guided_relu(torch.randn(2, 3), "guided", -1.0),
              r"^fastattr.guided_relu: upper must be positive or None, got -1$"),
    "backward-shape": (lambda: ops.guided_relu_backward(torch.randn(2, 3), torch.randn(3, 2)),
                       r"^fastattr: grad_output and result must have the same shape, got \[2, 3\] and \[3, 2\]$"),
    "backward-dtype": (lambda: ops.guided_relu_backward(torch.randn(2, 3), torch.randn(2, 3).double()),
                       r"^fastattr: grad_output and result must have the same dtype, got torch.float32 and torch.float64$"),
    "backward-int": (lambda: ops.guided_relu_backward(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64)),
                     r"^fastattr: grad_output must be a floating-point tensor, got torch.int64$"),
    "backward-mode": (lambda: ops.guided_relu_backward(torch.randn(2, 3), torch.randn(2, 3), "window"),
                      r"^fastattr: mode must be 'guided' or 'deconvnet', got 'window'$"),
    "backward-upper": (lambda: ops.guided_relu_backward(torch.randn(2, 3), torch.randn(2, 3), "guided", 0.0),
                       r"^fastattr.guided_relu: upper must be positive or None, got 0$"),
}


@pytest.mark.parametrize("error", list(ERRORS))
def test_errors(error):
    """Each bad argument is named with the expected and received values, in the
    same words by the kernel and the fake kernel."""
    call, match = ERRORS[error]
    assert_same_error(call, match)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 33, 4099])
def test_storage_offsets_and_vector_tails(device, dtype, numel):
    """The CUDA kernels move 16-byte vectors (2 to 8 elements) when every
    operand is 16-byte aligned, finish the numel % width tail in scalars, and
    take the scalar loop for a view at an element offset (also when only one
    operand is misaligned). Every split gives the reference's values exactly:
    both directions select values, they compute none."""
    x_store = grid_input((numel + 8,), dtype, device)
    g_store = grad_like(x_store)
    for x_off in (0, 1, 3):
        x = x_store[x_off:x_off + numel]
        for upper in UPPERS:
            out = ops.guided_relu(x, "guided", upper)
            assert torch.equal(out, reference.guided_relu(x, "guided", upper))
            for g_off in (0, 1, x_off):
                g = g_store[g_off:g_off + numel]
                for mode in MODES:
                    grad = ops.guided_relu_backward(g, x, mode, upper)
                    assert torch.equal(grad, reference.guided_relu_backward(g, x, mode, upper))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_many_blocks(dtype):
    """More elements than one pass of the CUDA grid covers (multiprocessors x
    32 blocks x 256 threads x 8 per vector on an H100/H200), an odd count (a
    scalar tail), NaN and the rule's edges; forward and both rules, exact."""
    n = 12_000_003
    x = (torch.randint(-16, 17, (n,), device="cuda") / 2).to(dtype)
    x[::997] = float("nan")
    g = torch.randn(n, device="cuda").to(dtype)
    g[::13] = 0
    for upper in UPPERS:
        out = ops.guided_relu(x, "guided", upper)
        torch.testing.assert_close(out, reference.guided_relu(x, "guided", upper), rtol=0, atol=0, equal_nan=True)
        for mode in MODES:
            grad = ops.guided_relu_backward(g, out, mode, upper)
            assert torch.equal(grad, reference.guided_relu_backward(g, out, mode, upper))
