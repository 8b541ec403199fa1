"""Tests of fastattr::window_masked_batch that are specific to it: the window
masks against a numpy oracle, the ablated inputs Captum's Occlusion itself
feeds the model, window selection by start/count, exact rows, 1-D to 3-D
samples and channels_last, gradients, the wrapper and the error messages.
Layouts, empty inputs, opcheck, torch.compile and CPU/CUDA parity are in
tests/test_op_harness.py.

window_masked_batch(input, baseline, window, strides, start, count) writes the
step-major batch whose row block k is the input with occlusion window
start + k set to the baseline. Captum places ceil((F_d - window_d) /
strides_d) + 1 windows along each sample dimension at multiples of the stride,
the last one clipped at the edge; the op enumerates them row-major (last
dimension fastest).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from captum.attr import Occlusion

import fastattr
from fastattr import reference
from op_harness import assert_same_error
from utils import DTYPES, TOLERANCES, cpu_and_cuda

ops = fastattr.ops
op = torch.ops.fastattr.window_masked_batch.default


def window_counts(sample, window, strides):
    return [math.ceil((f - w) / s) + 1 for f, w, s in zip(sample, window, strides)]


def numpy_masks(sample, window, strides, start, count):
    """(count, *sample) float64: 0 on window start + k, 1 elsewhere; window
    positions from np.unravel_index over the window grid (C order: last
    dimension fastest), numpy slicing clipping the last window."""
    counts = window_counts(sample, window, strides)
    masks = np.ones((count, *sample))
    for k in range(count):
        corner = np.unravel_index(start + k, counts)
        masks[(k, *[slice(i * s, i * s + w) for i, s, w in zip(corner, strides, window)])] = 0
    return torch.from_numpy(masks)


# name: (input shape, window, strides)
GEOMETRIES = {
    "1d": ((2, 23), [5], [3]),
    "1d-exact-fit": ((2, 20), [5], [5]),
    "2d": ((2, 9, 11), [3, 4], [2, 3]),
    "3d-resnet-like": ((2, 3, 20, 22), [3, 5, 5], [3, 4, 4]),
    "3d-per-channel": ((1, 3, 10, 12), [1, 4, 5], [1, 3, 2]),
    "3d-whole-sample": ((2, 2, 3, 4), [2, 3, 4], [1, 1, 1]),
    "3d-stride-1": ((1, 2, 6, 7), [1, 2, 3], [1, 1, 1]),
}


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_window_masks_are_zero_exactly_on_their_window(device, geometry, layout):
    """With input 1 and baseline 0 the rows are the masks: every window of the
    grid (all of them, in order) equals the numpy oracle exactly."""
    shape, window, strides = GEOMETRIES[geometry]
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels_last needs a 4-D input")
    count = math.prod(window_counts(shape[1:], window, strides))
    x = torch.ones(shape, dtype=torch.float64, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    out = op(x, torch.zeros_like(x), window, strides, 0, count)
    assert out.shape == (count * shape[0], *shape[1:])
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    masks = out.view(count, shape[0], *shape[1:]).cpu()
    expected = numpy_masks(shape[1:], window, strides, 0, count)
    for s in range(shape[0]):
        assert torch.equal(masks[:, s], expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("baseline", ["tensor", "number"])
def test_rows_are_captum_occlusions_ablated_inputs(device, geometry, baseline):
    """Captum's Occlusion (0.9) evaluates its model on the ablated inputs
    x (1 - m) + b m for every window; recorded from its calls, they equal the
    op's rows bit for bit once Captum's window numbering (first dimension
    fastest) is mapped onto the op's (last dimension fastest)."""
    shape, window, strides = GEOMETRIES[geometry]
    x = torch.randn(shape, dtype=torch.float64, device=device)
    b = torch.randn(shape, dtype=torch.float64, device=device) if baseline == "tensor" else 0.5
    counts = window_counts(shape[1:], window, strides)
    total = math.prod(counts)
    seen = []

    def model(batch):
        seen.append(batch.detach().clone())
        return batch.flatten(1).sum(1, keepdim=True)

    Occlusion(model).attribute(x, sliding_window_shapes=tuple(window), strides=tuple(strides), baselines=b, target=0,
                               perturbations_per_eval=total)
    captum_rows = seen[1].view(total, *shape)  # seen[0]: the unperturbed input
    ours = ops.window_masked_batch(x, b, window, strides).view(total, *shape)
    for j, corner in enumerate(itertools.product(*[range(n) for n in counts])):  # ours: row-major
        captum_j = sum(i * math.prod(counts[:d]) for d, i in enumerate(corner))  # Captum: first dim fastest
        assert torch.equal(ours[j], captum_rows[captum_j]), f"window {corner}"


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_start_and_count_select_windows(device, dtype):
    """Rows of (start, count) are rows start..start+count-1 of the whole
    enumeration, bit for bit, and each row is the input outside its window
    and the baseline inside, exactly."""
    shape, window, strides = GEOMETRIES["3d-resnet-like"]
    x = torch.randn(shape).to(device=device, dtype=dtype)
    b = torch.randn(shape).to(device=device, dtype=dtype)
    total = math.prod(window_counts(shape[1:], window, strides))
    every = op(x, b, window, strides, 0, total).view(total, *shape)
    for start, count in ((0, 1), (5, 7), (total - 3, 3)):
        part = op(x, b, window, strides, start, count).view(count, *shape)
        assert torch.equal(part, every[start:start + count])
    masks = numpy_masks(shape[1:], window, strides, 0, total).to(device=device, dtype=torch.bool)
    assert torch.equal(every, torch.where(masks[:, None], x[None], b[None]))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_reference(device, dtype):
    shape, window, strides = GEOMETRIES["2d"]
    x = torch.randn(shape).to(device=device, dtype=dtype)
    b = torch.randn(shape).to(device=device, dtype=dtype)
    out = op(x, b, window, strides, 2, 9)
    expected = reference.window_masked_batch(x.double(), b.double(), window, strides, 2, 9)
    torch.testing.assert_close(out, expected.to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("geometry", ["1d", "2d", "3d-stride-1"])
def test_gradcheck(device, geometry):
    """Linear in input and baseline: gradient sum_k M_k g_k and sum_k (1 - M_k) g_k."""
    shape, window, strides = GEOMETRIES[geometry]
    total = math.prod(window_counts(shape[1:], window, strides))
    start, count = total // 3, total - total // 3
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x_, b_):
        return op(x_, b_, window, strides, start, count)

    torch.autograd.gradcheck(fn, (x, b))
    torch.autograd.gradgradcheck(fn, (x, b))


def test_wrapper_takes_ints_and_counts_every_window():
    """An int window/stride is used for every dimension; count defaults to
    every window from start on (fastattr.ops.window_grid gives Captum's grid)."""
    x = torch.randn(2, 9, 11, dtype=torch.float64)
    assert ops.window_grid((9, 11), 3, 2) == [4, 5] == window_counts((9, 11), [3, 3], [2, 2])
    assert torch.equal(ops.window_masked_batch(x, 0.0, 3, 2), op(x, torch.zeros_like(x), [3, 3], [2, 2], 0, 20))
    assert torch.equal(ops.window_masked_batch(x, 0.0, [3, 3], 2, start=16), op(x, torch.zeros_like(x), [3, 3], [2, 2], 16, 4))


def _window_errors():
    x = lambda *shape: torch.randn(*(shape or (2, 3, 8, 9)))  # noqa: E731
    return {
        "input-int": (lambda: op(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), [1], [1], 0, 1),
                      r"^fastattr: input must be a floating-point tensor, got torch.int64$"),
        "input-0d": (lambda: op(torch.tensor(1.0), torch.tensor(1.0), [], [], 0, 1),
                     r"^fastattr.window_masked_batch: input must have a batch dimension, got a 0-D tensor$"),
        "input-1d": (lambda: op(x(5), x(5), [], [], 0, 1),
                     r"^fastattr.window_masked_batch: input must have 1 to 3 dimensions per sample \(a 2-D to 4-D tensor\), "
                     r"got a 1-D tensor$"),
        "input-5d": (lambda: op(x(1, 2, 3, 4, 5), x(1, 2, 3, 4, 5), [1, 1, 1, 1], [1, 1, 1, 1], 0, 1),
                     r"^fastattr.window_masked_batch: input must have 1 to 3 dimensions per sample \(a 2-D to 4-D tensor\), "
                     r"got a 5-D tensor$"),
        "baseline-dtype": (lambda: op(x(), x().double(), [3, 3, 3], [1, 1, 1], 0, 1),
                           r"^fastattr: input and baseline must have the same dtype, got torch.float32 and torch.float64$"),
        "window-length": (lambda: op(x(), x(), [3, 3], [1, 1], 0, 1),
                          r"^fastattr.window_masked_batch: window and strides must have one entry per sample dimension \(3\), "
                          r"got window \[3, 3\] and strides \[1, 1\]$"),
        "strides-length": (lambda: op(x(), x(), [3, 3, 3], [1, 1], 0, 1),
                           r"one entry per sample dimension \(3\), got window \[3, 3, 3\] and strides \[1, 1\]$"),
        "window-too-large": (lambda: op(x(), x(), [3, 9, 3], [1, 1, 1], 0, 1),
                             r"^fastattr.window_masked_batch: window must lie in \[1, size\] per dimension for samples of "
                             r"shape \[3, 8, 9\], got \[3, 9, 3\]$"),
        "window-zero": (lambda: op(x(), x(), [3, 0, 3], [1, 1, 1], 0, 1),
                        r"window must lie in \[1, size\] per dimension for samples of shape \[3, 8, 9\], got \[3, 0, 3\]$"),
        "strides-zero": (lambda: op(x(), x(), [3, 3, 3], [1, 0, 1], 0, 1),
                         r"^fastattr.window_masked_batch: strides must be positive, got \[1, 0, 1\]$"),
        # (8 - 3) / 2 -> 4 windows, (9 - 4) / 2 -> 4 windows: 16 in all
        "start-negative": (lambda: op(x(), x(), [3, 3, 4], [1, 2, 2], -1, 2),
                           r"^fastattr.window_masked_batch: start and count must select windows in \[0, 16\) \(start >= 0, "
                           r"count >= 1, start \+ count <= 16\), got start=-1 count=2$"),
        "count-zero": (lambda: op(x(), x(), [3, 3, 4], [1, 2, 2], 0, 0),
                       r"start and count must select windows in \[0, 16\) .*got start=0 count=0$"),
        "past-the-end": (lambda: op(x(), x(), [3, 3, 4], [1, 2, 2], 10, 7),
                         r"start and count must select windows in \[0, 16\) .*got start=10 count=7$"),
    }


WINDOW_ERRORS = _window_errors()


@pytest.mark.parametrize("error", list(WINDOW_ERRORS))
def test_errors(error):
    """Each bad argument is named with the expected and received values, in the
    same words by the kernel and the fake kernel."""
    call, match = WINDOW_ERRORS[error]
    assert_same_error(call, match)
