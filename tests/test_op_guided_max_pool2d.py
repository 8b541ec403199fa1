"""Tests of fastattr::guided_max_pool2d and fastattr::_guided_max_pool2d_backward.

Forward: nn.MaxPool2d with indices. Backward (spec §1.2): "reference" is the
GNL rule, the standard routed max-pool gradient times the nearest-upsampled
``grad_output > 0`` mask; "window" routes only positive gradients to each
window's argmax. Every configuration kind nn.MaxPool2d accepts is covered:
overlapping and not, padding, ceil_mode (with clipped last windows), dilation,
non-square kernels/strides/paddings, rectangular and unbatched inputs, ties and
-inf.
"""

import pytest
import torch
import torch.nn.functional as F

import fastattr
from fastattr import reference
from utils import DTYPES, TOLERANCES, cpu_and_cuda

ops = fastattr.ops
MODES = ["reference", "window"]

# (input H, W), kernel_size, stride, padding, dilation, ceil_mode
CONFIGS = {
    "2x2": ((8, 8), 2, 2, 0, 1, False),
    "2x2-odd-7to3": ((7, 7), 2, 2, 0, 1, False),  # nearest cell of row 2 is window 0, its window is 1
    "3x3s2p1-resnet": ((9, 9), 3, 2, 1, 1, False),
    "3x3s2p1-even": ((8, 8), 3, 2, 1, 1, False),
    "3x3s1p1-ceil-inception": ((6, 6), 3, 1, 1, 1, True),  # same-size stride-1 pool
    "3x3s2-ceil-7to3": ((7, 7), 3, 2, 0, 1, True),
    "3x3s2-ceil-clipped": ((8, 8), 3, 2, 0, 1, True),  # 8 -> 4: last window hangs over the edge
    "3x3s2p1-ceil": ((10, 10), 3, 2, 1, 1, True),
    "dilation2": ((9, 9), 3, 1, 1, 2, False),
    "dilation2-s2-ceil": ((10, 11), 2, 2, 1, 2, True),
    "nonsquare": ((7, 10), (3, 2), (2, 1), (1, 0), 1, False),
    "nonsquare-dil-ceil": ((9, 6), (2, 3), (1, 2), (0, 1), (2, 1), True),
    "rect-2x2": ((6, 10), 2, 2, 0, 1, False),
    "global": ((5, 5), 5, 5, 0, 1, False),
    "stride-gt-kernel": ((9, 9), 2, 3, 0, 1, False),  # some inputs in no window
}
CONFIG_IDS = list(CONFIGS)
# Every dtype contiguous; the strided layouts (non-contiguous: transposed
# strides, channels_last) in float32 and bfloat16.
DTYPE_LAYOUTS = [(d, "contiguous") for d in DTYPES] + [
    (d, layout) for d in (torch.float32, torch.bfloat16) for layout in ("transposed", "channels_last")
]


def make_input(hw, dtype, device, values="random", layout="contiguous", batch=(2, 3)):
    if values == "random":
        x = torch.randn(*batch, *hw)
    elif values == "ties":  # few distinct values: most windows hold tied maxima
        x = torch.randint(-2, 3, (*batch, *hw)).float()
    elif values == "neg-inf":  # -inf entries, whole -inf windows and a whole -inf plane
        x = torch.randn(*batch, *hw)
        x[torch.rand(x.shape) < 0.4] = -float("inf")
        x[..., : min(3, hw[0]), : min(3, hw[1])] = -float("inf")
        x[0, 0] = -float("inf")
    else:
        raise ValueError(values)
    x = x.to(dtype=dtype, device=device)
    if layout == "transposed":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not x.is_contiguous() or min(hw) == 1
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def pool_args(name):
    hw, k, s, p, d, ceil = CONFIGS[name]
    return hw, dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


def mixed_grad(shape, dtype, device, layout="contiguous"):
    g = torch.randn(shape)
    g[torch.rand(shape) < 0.1] = 0
    g = g.to(dtype=dtype, device=device)
    if layout == "transposed":
        g = g.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    return g


def standard_grad(x, g, kw):
    """The ordinary max-pool input gradient, from PyTorch's autograd."""
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(F.max_pool2d(x, **kw), x, g)
    return grad


def nearest_mask(g, hw):
    return F.interpolate((g > 0).to(g.dtype), size=hw, mode="nearest")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype, layout", DTYPE_LAYOUTS, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("config", CONFIG_IDS)
def test_forward_and_backward_match_reference(device, dtype, layout, config):
    hw, kw = pool_args(config)
    for values in ("random", "ties"):
        x = make_input(hw, dtype, device, values, layout).requires_grad_()
        ref_out, ref_idx = reference.guided_max_pool2d(x.detach().double(), **kw)
        for mode in MODES:
            out, idx = ops.guided_max_pool2d(x, **kw, mode=mode)
            assert out.dtype == dtype and idx.dtype == torch.int64
            assert torch.equal(out, ref_out.to(dtype)) and torch.equal(idx, ref_idx)
            g = mixed_grad(out.shape, dtype, device, layout)
            (grad,) = torch.autograd.grad(out, x, g)
            expected = reference.guided_max_pool2d_backward(
                g.double(), ref_idx, x.shape, kw["kernel_size"], kw["stride"], kw["padding"],
                kw["dilation"], mode)
            assert grad.shape == x.shape and grad.dtype == dtype
            torch.testing.assert_close(grad, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIG_IDS)
def test_rules_match_spec_definitions(device, dtype, config):
    """Spec §1.2, from PyTorch's own max-pool gradient (not fastattr.reference):
    reference = standard grad * nearest(g_out > 0); window = standard grad of relu(g_out)."""
    hw, kw = pool_args(config)
    x = make_input(hw, dtype, device, "ties").requires_grad_()
    out, _ = ops.guided_max_pool2d(x, **kw)
    g = mixed_grad(out.shape, dtype, device)
    std = standard_grad(x, g, kw)
    for mode, expected in (
        ("reference", std * nearest_mask(g, hw)),
        ("window", standard_grad(x, F.relu(g), kw)),
    ):
        out, _ = ops.guided_max_pool2d(x, **kw, mode=mode)
        (grad,) = torch.autograd.grad(out, x, g)
        torch.testing.assert_close(grad, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("hw", [(8, 8), (6, 10), (224, 224)])
@pytest.mark.parametrize("values", ["random", "ties"])
def test_vgg_pool_reference_rule_is_relu_of_standard_gradient(device, hw, values):
    """Spec §1.5.4(c): 2x2/stride-2 on even sizes, each input in one window
    whose own cell is the nearest one, so the rule is relu(standard gradient)."""
    batch = (1, 2) if hw[0] > 100 else (2, 3)
    x = make_input(hw, torch.float32, device, values, batch=batch).requires_grad_()
    out, _ = ops.guided_max_pool2d(x, 2, 2)
    g = mixed_grad(out.shape, torch.float32, device)
    (grad,) = torch.autograd.grad(out, x, g)
    assert torch.equal(grad, F.relu(standard_grad(x, g, dict(kernel_size=2, stride=2))))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_odd_size_uses_the_nearest_cell_not_the_routing_window(device):
    """7 -> 3 with a 2x2/stride-2 pool: input row 2 lies in window row 1, but its
    nearest output row is 0. A positive gradient routed from window row 1 to
    row 2 is dropped by the reference rule when output row 0 is negative."""
    x = torch.zeros(1, 1, 7, 7, device=device)
    x[0, 0, 2, :] = 1.0  # window row 1 (rows 2-3) takes its max from row 2
    g = torch.ones(1, 1, 3, 3, device=device)
    g[0, 0, 0, :] = -1.0
    grads = {}
    for mode in MODES:
        xr = x.clone().requires_grad_()
        out, idx = ops.guided_max_pool2d(xr, 2, 2, mode=mode)
        assert (idx[0, 0, 1] // 7 == 2).all()
        (grads[mode],) = torch.autograd.grad(out, xr, g)
    assert (grads["window"][0, 0, 2, 0:6:2] == 1).all()
    assert (grads["reference"][0, 0, 2, :] == 0).all()
    # Row 4 (window row 2, nearest row floor(4*3/7) = 1) keeps its gradient.
    assert torch.equal(grads["reference"][0, 0, 4:6], grads["window"][0, 0, 4:6])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "3x3s2-ceil-clipped", "dilation2"])
def test_negative_infinity(device, dtype, config):
    hw, kw = pool_args(config)
    x = make_input(hw, dtype, device, "neg-inf").requires_grad_()
    ref_out, ref_idx = reference.guided_max_pool2d(x.detach().double(), **kw)
    for mode in MODES:
        out, idx = ops.guided_max_pool2d(x, **kw, mode=mode)
        assert torch.equal(out, ref_out.to(dtype)) and torch.equal(idx, ref_idx)
        g = mixed_grad(out.shape, dtype, device)
        (grad,) = torch.autograd.grad(out, x, g)
        assert torch.isfinite(grad).all()
        expected = reference.guided_max_pool2d_backward(
            g.double(), ref_idx, x.shape, kw["kernel_size"], kw["stride"], kw["padding"],
            kw["dilation"], mode)
        torch.testing.assert_close(grad, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "nonsquare-dil-ceil"])
def test_unbatched_input(device, config):
    hw, kw = pool_args(config)
    x = make_input(hw, torch.float32, device, batch=(2, 3))
    for mode in MODES:
        x3 = x[1].clone().requires_grad_()
        out3, idx3 = ops.guided_max_pool2d(x3, **kw, mode=mode)
        x4 = x.clone().requires_grad_()
        out4, idx4 = ops.guided_max_pool2d(x4, **kw, mode=mode)
        assert out3.dim() == 3 and torch.equal(out3, out4[1]) and torch.equal(idx3, idx4[1])
        g = mixed_grad(out4.shape, torch.float32, device)
        (grad3,) = torch.autograd.grad(out3, x3, g[1])
        (grad4,) = torch.autograd.grad(out4, x4, g)
        assert grad3.shape == x3.shape and torch.equal(grad3, grad4[1])


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIG_IDS)
def test_cpu_cuda_parity(dtype, config):
    hw, kw = pool_args(config)
    x = make_input(hw, dtype, "cpu", "ties")
    for mode in MODES:
        out, idx = ops.guided_max_pool2d(x, **kw, mode=mode)
        out_c, idx_c = ops.guided_max_pool2d(x.cuda(), **kw, mode=mode)
        assert torch.equal(out_c.cpu(), out) and torch.equal(idx_c.cpu(), idx)
        g = mixed_grad(out.shape, dtype, "cpu")
        back = ops.guided_max_pool2d_backward(g, idx, x.shape, mode=mode, **_geometry(kw))
        back_c = ops.guided_max_pool2d_backward(g.cuda(), idx_c, x.shape, mode=mode, **_geometry(kw))
        assert torch.equal(back_c.cpu(), back)


def _geometry(kw):
    return {k: kw[k] for k in ("kernel_size", "stride", "padding", "dilation")}


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_backward_out_of_range_indices(device):
    """Indices that no max-pool of this input size can produce: the wrapper
    refuses them; the kernels (reached directly) skip them instead of writing
    out of bounds, so the other planes' gradients are unaffected."""
    g = torch.randn(1, 2, 3, 3, device=device)
    good = torch.zeros(1, 2, 3, 3, dtype=torch.long, device=device)
    ref = torch.ops.fastattr._guided_max_pool2d_backward.default(
        g, good, [1, 2, 6, 6], [2, 2], [2, 2], [0, 0], [1, 1], "window")
    for bad in (36, -1):
        idx = good.clone()
        idx[0, 1, 2, 2] = bad
        with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\)"):
            ops.guided_max_pool2d_backward(g, idx, (1, 2, 6, 6), 2, 2)
        out = torch.ops.fastattr._guided_max_pool2d_backward.default(
            g, idx, [1, 2, 6, 6], [2, 2], [2, 2], [0, 0], [1, 1], "window")
        torch.testing.assert_close(out[0, 0], ref[0, 0])
        expected = ref[0, 1].clone()
        expected[0, 0] -= g[0, 1, 2, 2].clamp_min(0)
        torch.testing.assert_close(out[0, 1], expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("config", ["2x2", "rect-2x2", "global", "2x2-odd-7to3"])
@pytest.mark.parametrize("mode", MODES)
def test_backward_any_in_range_indices_match_reference(device, config, mode):
    """The backward op accepts any indices in [0, H*W), also ones no forward
    pass produces (several outputs routed to one input, an argmax outside its
    window), in tiled (2x2 on even sizes, global) and non-tiled pools; every
    plane must follow the rule. Planes 0-1 hold forward indices, planes 2-5
    random ones."""
    hw, kw = pool_args(config)
    x = make_input(hw, torch.float64, device, batch=(2, 3))
    _, idx = ops.guided_max_pool2d(x, **kw)
    idx = idx.clone()
    idx.view(6, -1)[2:] = torch.randint(0, hw[0] * hw[1], idx.view(6, -1)[2:].shape, device=device)
    g = mixed_grad(idx.shape, torch.float64, device)
    geometry = _geometry(kw)
    out = ops.guided_max_pool2d_backward(g, idx, x.shape, **geometry, mode=mode)
    expected = reference.guided_max_pool2d_backward(g, idx, x.shape, *geometry.values(), mode)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_empty_batch(device):
    x = torch.empty(0, 3, 6, 6, device=device, requires_grad=True)
    for mode in MODES:
        out, idx = ops.guided_max_pool2d(x, 3, 2, 1, mode=mode)
        assert out.shape == idx.shape == (0, 3, 3, 3)
        (grad,) = torch.autograd.grad(out, x, torch.empty_like(out))
        assert grad.shape == x.shape
    # A backward with an empty input_size returns an empty gradient.
    back = ops.guided_max_pool2d_backward(
        torch.empty(2, 0, 3, 3, device=device), torch.empty(2, 0, 3, 3, dtype=torch.long, device=device),
        (2, 0, 6, 6), 3, 2, 1)
    assert back.shape == (2, 0, 6, 6)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "nonsquare-dil-ceil"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, config, mode, requires_grad):
    hw, kw = pool_args(config)
    geo = _geometry(kw)
    geo = {k: [v, v] if isinstance(v, int) else list(v) for k, v in geo.items()}
    x = make_input(hw, torch.float32, device, "ties").requires_grad_(requires_grad)
    args = (x, geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"], kw["ceil_mode"], mode)
    torch.library.opcheck(torch.ops.fastattr.guided_max_pool2d.default, args)
    out, idx = ops.guided_max_pool2d(x.detach(), **kw, mode=mode)
    g = mixed_grad(out.shape, torch.float32, device).requires_grad_(requires_grad)
    torch.library.opcheck(
        torch.ops.fastattr._guided_max_pool2d_backward.default,
        (g, idx, list(x.shape), geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"], mode))


@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "2x2-odd-7to3", "nonsquare-dil-ceil"])
@pytest.mark.parametrize("mode", MODES)
def test_backward_op_gradient(config, mode):
    """The rule is linear in grad_output where its gates are constant; its
    registered derivative (double backward) must be that linear map."""
    hw, kw = pool_args(config)
    x = make_input(hw, torch.float64, "cpu", "ties", batch=(1, 2))
    _, idx = ops.guided_max_pool2d(x, **kw)
    g = torch.randn(idx.shape, dtype=torch.float64)
    g = (g + torch.where(g >= 0, 0.1, -0.1)).requires_grad_()  # away from the gate's kink
    torch.autograd.gradcheck(
        lambda g_: ops.guided_max_pool2d_backward(g_, idx, x.shape, mode=mode, **_geometry(kw)), (g,))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode, backend", [("reference", "inductor"), ("window", "aot_eager")])
def test_torch_compile_matches_eager(device, mode, backend):
    conv = torch.nn.Conv2d(2, 4, 3, padding=1).to(device)

    def f(x):
        h = ops.guided_relu(conv(x), "guided")
        out, _ = ops.guided_max_pool2d(h, 3, 2, 1, ceil_mode=True, mode=mode)
        return (out * out.detach().flip(-1)).sum()

    x_eager = torch.randn(2, 2, 9, 9, device=device, requires_grad=True)
    x_comp = x_eager.detach().clone().requires_grad_()
    f(x_eager).backward()
    out_comp = torch.compile(f, fullgraph=True, backend=backend)(x_comp)
    out_comp.backward()
    torch.testing.assert_close(out_comp, f(x_eager.detach()))
    torch.testing.assert_close(x_comp.grad, x_eager.grad)
    assert (x_eager.grad != 0).any()


def test_errors(tensor_mode):
    op = torch.ops.fastattr.guided_max_pool2d.default
    back = torch.ops.fastattr._guided_max_pool2d_backward.default
    x = torch.randn(1, 2, 6, 6)
    two = [2, 2]
    with pytest.raises(RuntimeError, match="self must be a floating-point"):
        op(torch.ones(1, 2, 6, 6, dtype=torch.int64), two, two, [0, 0], [1, 1], False, "reference")
    with pytest.raises(RuntimeError, match="self must be 4-D"):
        op(torch.randn(1, 1, 2, 6, 6), two, two, [0, 0], [1, 1], False, "reference")
    with pytest.raises(RuntimeError, match="mode must be 'reference' or 'window'"):
        op(x, two, two, [0, 0], [1, 1], False, "guided")
    with pytest.raises(RuntimeError, match="kernel_size must be two positive ints"):
        op(x, [0, 2], two, [0, 0], [1, 1], False, "reference")
    with pytest.raises(RuntimeError, match="stride must be two positive ints"):
        op(x, two, [2, 0], [0, 0], [1, 1], False, "reference")
    with pytest.raises(RuntimeError, match="dilation must be two positive ints"):
        op(x, two, two, [0, 0], [0, 1], False, "reference")
    with pytest.raises(RuntimeError, match="padding must be non-negative and at most half"):
        op(x, [3, 3], two, [2, 1], [1, 1], False, "reference")
    with pytest.raises(RuntimeError, match="too small"):
        op(torch.randn(1, 2, 2, 2), [3, 3], two, [0, 0], [1, 1], False, "reference")
    g = torch.randn(1, 2, 3, 3)
    idx = torch.zeros(1, 2, 3, 3, dtype=torch.long)
    size = [1, 2, 6, 6]
    with pytest.raises(RuntimeError, match="indices must be int64"):
        back(g, idx.int(), size, two, two, [0, 0], [1, 1], "reference")
    with pytest.raises(RuntimeError, match="grad_output and indices must have the same shape"):
        back(g, idx[..., :2], size, two, two, [0, 0], [1, 1], "reference")
    with pytest.raises(RuntimeError, match="grad_output must be 4-D"):
        back(g[0], idx[0], size, two, two, [0, 0], [1, 1], "reference")
    with pytest.raises(RuntimeError, match="grad_output must be a floating-point"):
        back(idx, idx, size, two, two, [0, 0], [1, 1], "reference")
    with pytest.raises(RuntimeError, match="input_size must be"):
        back(g, idx, [2, 2, 6, 6], two, two, [0, 0], [1, 1], "reference")
    with pytest.raises(RuntimeError, match="kernel_size must be"):
        back(g, idx, size, [2, -1], two, [0, 0], [1, 1], "reference")
    with pytest.raises(RuntimeError, match="mode must be"):
        back(g, idx, size, two, two, [0, 0], [1, 1], "nearest")
