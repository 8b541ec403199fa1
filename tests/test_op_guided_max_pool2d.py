"""Tests of fastattr::guided_max_pool2d and fastattr::_guided_max_pool2d_backward
that are specific to them: oracles over every pool geometry and the error
messages. Generic layouts, empty inputs, opcheck, torch.compile and CPU/CUDA
parity are in tests/test_op_harness.py (shared by every op).

Forward: nn.MaxPool2d with indices, checked against reference.guided_max_pool2d,
an independent float64 argmax over -inf-padded windows with ATen's tie rule
(first maximum in window scan order; the last NaN). Backward (spec §1.2):
"reference" is the GNL rule, the standard routed max-pool gradient times the
nearest-upsampled ``grad_output > 0`` mask; "window" routes only positive
gradients to each window's argmax. Every configuration kind nn.MaxPool2d
accepts is covered: overlapping and not, padding, ceil_mode (with clipped last
windows), dilation, non-square kernels/strides/paddings, rectangular and
unbatched inputs, ties, -inf and NaN; in NCHW and in channels_last (whose
backward is its own kernel).
"""

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import fastattr
from fastattr import reference
from op_harness import assert_same_error
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
# Every dtype in NCHW; channels_last (its own backward kernel) in float32 and bfloat16.
DTYPE_LAYOUTS = [(d, "contiguous") for d in DTYPES] + [(d, "channels_last") for d in (torch.float32, torch.bfloat16)]


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
    elif values == "nan":  # ties and NaN: a window with NaN chooses its last NaN
        x = torch.randint(-2, 3, (*batch, *hw)).float()
        x[torch.rand(x.shape) < 0.1] = float("nan")
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
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for values in ("random", "ties"):
        x = make_input(hw, dtype, device, values, layout).requires_grad_()
        ref_out, ref_idx = reference.guided_max_pool2d(x.detach().double(), **kw)
        for mode in MODES:
            out, idx = ops.guided_max_pool2d(x, **kw, mode=mode)
            assert out.dtype == dtype and idx.dtype == torch.int64
            assert torch.equal(out, ref_out.to(dtype)) and torch.equal(idx, ref_idx)
            assert out.is_contiguous(memory_format=fmt) and idx.is_contiguous(memory_format=fmt)
            g = mixed_grad(out.shape, dtype, device, layout)
            (grad,) = torch.autograd.grad(out, x, g)
            expected = reference.guided_max_pool2d_backward(
                g.double(), ref_idx, x.shape, kw["kernel_size"], kw["stride"], kw["padding"],
                kw["dilation"], mode)
            # In grad_output's suggested format: NCHW for a channels_last g whose
            # strides are also NCHW's (a 1x1 output, as in "global").
            assert grad.dtype == dtype and grad.is_contiguous(memory_format=suggest_memory_format(g))
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
        assert (out == -float("inf")).any()  # whole -inf windows: the first in-bounds element
        g = mixed_grad(out.shape, dtype, device)
        (grad,) = torch.autograd.grad(out, x, g)
        assert torch.isfinite(grad).all()
        expected = reference.guided_max_pool2d_backward(
            g.double(), ref_idx, x.shape, kw["kernel_size"], kw["stride"], kw["padding"],
            kw["dilation"], mode)
        torch.testing.assert_close(grad, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "3x3s2-ceil-clipped", "nonsquare-dil-ceil"])
def test_nan_takes_the_last_nan_of_the_window(device, config):
    hw, kw = pool_args(config)
    x = make_input(hw, torch.float32, device, "nan")
    ref_out, ref_idx = reference.guided_max_pool2d(x.double(), **kw)
    out, idx = ops.guided_max_pool2d(x, **kw)
    assert ref_out.isnan().any() and torch.equal(idx, ref_idx)
    torch.testing.assert_close(out, ref_out.float(), equal_nan=True)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "nonsquare-dil-ceil"])
def test_unbatched_input(device, config):
    """Differential: a (C, H, W) input gives what its (N, C, H, W) batch gives
    for that sample (the batched op is pinned by test_forward_and_backward_match_reference)."""
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


def _geometry(kw):
    return {k: kw[k] for k in ("kernel_size", "stride", "padding", "dilation")}


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_out_of_range_indices(device, layout):
    """Differential: indices that no max-pool of this input size can produce.
    The wrapper refuses them; the kernels (reached directly) skip them instead
    of writing out of bounds, so the result is that of the same call with the
    bad index's gradient left out (the kernel on good indices is pinned by
    test_backward_any_in_range_indices_match_reference)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.randn(1, 20, 3, 3, device=device).contiguous(memory_format=fmt)
    good = torch.zeros(1, 20, 3, 3, dtype=torch.long, device=device).contiguous(memory_format=fmt)
    ref = torch.ops.fastattr._guided_max_pool2d_backward.default(
        g, good, [1, 20, 6, 6], [2, 2], [2, 2], [0, 0], [1, 1], "window")
    for bad in (36, -1):
        idx = good.clone()
        idx[0, 17, 2, 2] = bad
        with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 36\)"):
            ops.guided_max_pool2d_backward(g, idx, (1, 20, 6, 6), 2, 2)
        out = torch.ops.fastattr._guided_max_pool2d_backward.default(
            g, idx, [1, 20, 6, 6], [2, 2], [2, 2], [0, 0], [1, 1], "window")
        expected = ref.clone()
        expected[0, 17, 0, 0] -= g[0, 17, 2, 2].clamp_min(0)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("config", ["2x2", "rect-2x2", "global", "2x2-odd-7to3"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_any_in_range_indices_match_reference(device, config, mode, layout):
    """The backward op accepts any indices in [0, H*W), also ones no forward
    pass produces (several outputs routed to one input, an argmax outside its
    window), in tiled (2x2 on even sizes, global) and non-tiled pools; every
    plane must follow the rule. Planes of image 0 hold forward indices, those
    of image 1 random ones; 40 channels, so that the channels_last kernel
    splits an image into channel blocks."""
    hw, kw = pool_args(config)
    x = make_input(hw, torch.float64, device, batch=(2, 40), layout=layout)
    _, idx = ops.guided_max_pool2d(x, **kw)
    idx = idx.clone()
    idx[1] = torch.randint(0, hw[0] * hw[1], idx[1].shape, device=device)
    g = mixed_grad(idx.shape, torch.float64, device, layout)
    geometry = _geometry(kw)
    out = torch.ops.fastattr._guided_max_pool2d_backward.default(
        g, idx, list(x.shape), *(_pair(v) for v in geometry.values()), mode)
    expected = reference.guided_max_pool2d_backward(g, idx, x.shape, *geometry.values(), mode)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "3x3s1p1-ceil-inception", "nonsquare-dil-ceil"])
@pytest.mark.parametrize("mode", MODES)
def test_channels_last_backward_is_bit_identical_to_nchw(device, dtype, config, mode):
    """Differential, by design: the NHWC kernel adds each element's gradients
    in the NCHW kernel's order, so the two layouts give the same bits (the
    NCHW side is pinned by test_forward_and_backward_match_reference)."""
    hw, kw = pool_args(config)
    x = make_input(hw, dtype, device, "ties", batch=(3, 40))
    _, idx = ops.guided_max_pool2d(x, **kw)
    g = mixed_grad(idx.shape, dtype, device)
    args = (list(x.shape), *(_pair(v) for v in _geometry(kw).values()), mode)
    back = torch.ops.fastattr._guided_max_pool2d_backward.default
    nchw = back(g, idx, *args)
    nhwc = back(g.contiguous(memory_format=torch.channels_last), idx.contiguous(memory_format=torch.channels_last), *args)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nchw.is_contiguous()
    assert torch.equal(nhwc, nchw)


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


def _pool_errors():
    op = torch.ops.fastattr.guided_max_pool2d.default
    back = torch.ops.fastattr._guided_max_pool2d_backward.default
    two, zero, one = [2, 2], [0, 0], [1, 1]
    x = lambda: torch.randn(1, 2, 6, 6)  # noqa: E731  (made inside each call: fake or real)
    g = lambda: torch.randn(1, 2, 3, 3)  # noqa: E731
    idx = lambda: torch.zeros(1, 2, 3, 3, dtype=torch.long)  # noqa: E731
    size = [1, 2, 6, 6]
    return {
        "self-int": (lambda: op(torch.ones(1, 2, 6, 6, dtype=torch.int64), two, two, zero, one, False, "reference"),
                     r"^fastattr: self must be a floating-point tensor, got torch.int64$"),
        "self-5d": (lambda: op(torch.randn(1, 1, 2, 6, 6), two, two, zero, one, False, "reference"),
                    r"^fastattr.guided_max_pool2d: self must be 4-D \(N, C, H, W\), got 5-D$"),
        "mode": (lambda: op(x(), two, two, zero, one, False, "guided"),
                 r"^fastattr: mode must be 'reference' or 'window', got 'guided'$"),
        "kernel": (lambda: op(x(), [0, 2], two, zero, one, False, "reference"),
                   r"^fastattr.guided_max_pool2d: kernel_size must be two positive ints, got \[0, 2\]$"),
        "stride": (lambda: op(x(), two, [2, 0], zero, one, False, "reference"),
                   r"stride must be two positive ints, got \[2, 0\]$"),
        "dilation": (lambda: op(x(), two, two, zero, [0, 1], False, "reference"),
                     r"dilation must be two positive ints, got \[0, 1\]$"),
        "padding": (lambda: op(x(), [3, 3], two, [2, 1], one, False, "reference"),
                    r"padding must be non-negative and at most half the kernel size, got padding=\[2, 1\] kernel_size=\[3, 3\]$"),
        "too-small": (lambda: op(torch.randn(1, 2, 2, 2), [3, 3], two, zero, one, False, "reference"),
                      r"^fastattr.guided_max_pool2d: output size of self \[1, 2, 2, 2\] is too small \(0x0\)$"),
        "indices-int32": (lambda: back(g(), idx().int(), size, two, two, zero, one, "reference"),
                          r"indices must be int64, got torch.int32$"),
        "indices-shape": (lambda: back(g(), idx()[..., :2], size, two, two, zero, one, "reference"),
                          r"^fastattr: grad_output and indices must have the same shape, got \[1, 2, 3, 3\] and \[1, 2, 3, 2\]$"),
        "grad-3d": (lambda: back(g()[0], idx()[0], size, two, two, zero, one, "reference"),
                    r"grad_output must be 4-D \(N, C, H, W\), got 3-D$"),
        "grad-int": (lambda: back(idx(), idx(), size, two, two, zero, one, "reference"),
                     r"^fastattr: grad_output must be a floating-point tensor, got torch.int64$"),
        "input-size": (lambda: back(g(), idx(), [2, 2, 6, 6], two, two, zero, one, "reference"),
                       r"input_size must be \(N, C, H, W\) matching grad_output's N and C, got \[2, 2, 6, 6\]$"),
        "backward-kernel": (lambda: back(g(), idx(), size, [2, -1], two, zero, one, "reference"),
                            r"kernel_size must be two positive ints, got \[2, -1\]$"),
        "backward-mode": (lambda: back(g(), idx(), size, two, two, zero, one, "nearest"),
                          r"^fastattr: mode must be 'reference' or 'window', got 'nearest'$"),
    }


POOL_ERRORS = _pool_errors()


@pytest.mark.parametrize("error", list(POOL_ERRORS))
def test_errors(error):
    """Each bad argument is named with the expected and received values, in the
    same words by the kernel and the fake kernel."""
    call, match = POOL_ERRORS[error]
    assert_same_error(call, match)


def _backward_cpu_and_cuda(g, idx, size, kw, mode):
    back = torch.ops.fastattr._guided_max_pool2d_backward.default
    args = (list(size), *(_pair(v) for v in _geometry(kw).values()), mode)
    return back(g.cpu(), idx.cpu(), *args), back(g, idx, *args)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", ["3x3s2p1-resnet", "3x3s1p1-ceil-inception", "dilation2-s2-ceil", "2x2"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("index64", [False, True], ids=["index32", "index64"])
def test_cuda_backward_is_bit_identical_to_cpu(dtype, config, layout, index64, monkeypatch):
    """The CUDA gather adds each input element's gradients in (oh, ow) order,
    as the CPU kernels scatter them, so the two devices give the same bits,
    also where windows overlap (several addends) and in half precision. Planes
    of several thread blocks (41x37 inputs), in the 32-bit index kernels and
    the 64-bit ones (FASTATTR_CUDA_INDEX64=1, otherwise only taken by planes
    of 2^30 elements)."""
    if index64:
        monkeypatch.setenv("FASTATTR_CUDA_INDEX64", "1")
    _, kw = pool_args(config)
    x = make_input((41, 37), dtype, "cuda", "ties", layout=layout, batch=(2, 5))
    _, idx = ops.guided_max_pool2d(x, **kw)
    g = mixed_grad(idx.shape, dtype, "cuda", layout)
    for mode in MODES:
        on_cpu, on_cuda = _backward_cpu_and_cuda(g, idx, x.shape, kw, mode)
        assert on_cuda.stride() == on_cpu.stride()
        assert torch.equal(on_cuda.cpu(), on_cpu)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("index64", [False, True], ids=["index32", "index64"])
def test_cuda_backward_indices_outside_their_windows(layout, index64, monkeypatch):
    """Indices no forward pass makes (an argmax outside its window, several
    outputs on one input) in one plane of many: the CUDA gather cannot find
    them, flags the plane, and a second pass recomputes it in (oh, ow) order,
    so the result is still the CPU kernels' bits; planes of several thread
    blocks, where the flag is set by one block and not by the others."""
    if index64:
        monkeypatch.setenv("FASTATTR_CUDA_INDEX64", "1")
    kw = dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)
    x = make_input((40, 36), torch.float32, "cuda", "ties", layout=layout, batch=(3, 6))
    _, idx = ops.guided_max_pool2d(x, **kw)
    idx = idx.clone()
    plane = idx[1, 4]
    plane[5, 7] = 0  # far outside its window
    plane[0, 0] = 40 * 36 - 1
    plane[9, 2:6] = 500  # four outputs routed to one input
    g = mixed_grad(idx.shape, torch.float32, "cuda", layout)
    for mode in MODES:
        on_cpu, on_cuda = _backward_cpu_and_cuda(g, idx, x.shape, kw, mode)
        assert torch.equal(on_cuda.cpu(), on_cpu)
        expected = reference.guided_max_pool2d_backward(g.double(), idx, x.shape, 3, 2, 1, 1, mode)
        torch.testing.assert_close(on_cuda, expected.float(), **TOLERANCES[torch.float32])


@pytest.mark.needs_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_backward_many_planes(layout):
    """More (n, c) planes than a grid's y dimension holds (65535): the NCHW
    kernel walks the rest in a grid-stride loop; channels_last images too.
    2x2 windows: one addend per element, so exact against the reference."""
    x = make_input((6, 6), torch.float32, "cuda", batch=(2, 33000), layout=layout)
    for mode in MODES:
        xr = x.clone().requires_grad_()
        out, idx = ops.guided_max_pool2d(xr, 2, 2, mode=mode)
        g = mixed_grad(out.shape, torch.float32, "cuda", layout)
        (grad,) = torch.autograd.grad(out, xr, g)
        expected = reference.guided_max_pool2d_backward(g, idx, x.shape, 2, 2, 0, 1, mode)
        assert torch.equal(grad, expected)
