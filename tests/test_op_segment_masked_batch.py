"""Tests of fastattr::segment_masked_batch that are specific to it: the numpy
formula, masks constant on segments, shared vs per-sample maps, feature
ablation's exact rows (Captum's construction), any per-sample shape and memory
format, out-of-range ids, gradients, the wrapper and the error messages.
Layouts, empty inputs, opcheck, torch.compile and CPU/CUDA parity are in
tests/test_op_harness.py.

segment_masked_batch(input, baseline, segments, keep) writes the step-major
batch out[k*S + s][e] = baseline[s][e] + keep[k, segments[s or 0][e]] *
(input[s][e] - baseline[s][e]); segments (1 or S, *F) int64, keep (K, J).
"""

import numpy as np
import pytest
import torch

import fastattr
from fastattr import reference
from op_harness import assert_fake_error, assert_same_error
from utils import DTYPES, TOLERANCES, cpu_and_cuda

ops = fastattr.ops
op = torch.ops.fastattr.segment_masked_batch.default


def numpy_batch(x, b, segments, keep):
    """The formula in numpy float64: masks by fancy indexing keep[k][ids]."""
    x, b = x.cpu().double().numpy(), b.cpu().double().numpy()
    seg, keep = segments.cpu().numpy(), keep.cpu().double().numpy()
    rows = []
    for k in range(keep.shape[0]):
        for s in range(x.shape[0]):
            m = keep[k][seg[s if seg.shape[0] > 1 else 0]]
            rows.append(b[s] + m * (x[s] - b[s]))
    return torch.from_numpy(np.stack(rows))


def make(shape, n_segments, n_masks, per_sample, device, dtype=torch.float64, seed=0, binary=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    b = (0.5 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)
    segments = torch.randint(0, n_segments, ((shape[0] if per_sample else 1), *shape[1:]), generator=g).to(device)
    keep = torch.rand(n_masks, n_segments, generator=g, dtype=torch.float64)
    keep = (keep < 0.5).double() if binary else keep
    return x, b, segments, keep.to(device)


SHAPES = {"1d": (3, 17), "image": (2, 3, 10, 12), "5d": (2, 2, 3, 4, 5), "large-row": (2, 3, 40, 45)}
PER_SAMPLE = pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", list(SHAPES))
@PER_SAMPLE
def test_matches_the_numpy_formula(device, shape, per_sample):
    """float64 to 1e-12, for 1-D to 5-D samples and a row spanning several
    CPU work units (the large one)."""
    x, b, segments, keep = make(SHAPES[shape], 9, 4, per_sample, device, seed=1)
    out = op(x, b, segments, keep)
    assert out.shape == (4 * x.shape[0], *x.shape[1:]) and out.dtype == torch.float64
    torch.testing.assert_close(out.cpu(), numpy_batch(x, b, segments, keep), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.channels_last_3d], ids=["channels_last", "channels_last_3d"])
@PER_SAMPLE
def test_channels_last_in_and_out(device, fmt, per_sample):
    """A channels_last (4-D) or channels_last_3d (5-D) input gives an output in
    that format with the values of the formula; segments in any layout."""
    shape = (2, 3, 6, 7) if fmt == torch.channels_last else (2, 3, 4, 5, 6)
    x, b, segments, keep = make(shape, 6, 3, per_sample, device, seed=2)
    out = op(x.contiguous(memory_format=fmt), b, segments.transpose(-1, -2).contiguous().transpose(-1, -2), keep)
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out.cpu(), numpy_batch(x, b, segments, keep), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
@PER_SAMPLE
def test_masks_are_constant_on_every_segment(device, per_sample):
    """With input 1 and baseline 0 the rows are the masks: on every segment of
    every sample, mask k is the single value keep[k, segment]."""
    x, _, segments, keep = make((2, 3, 10, 12), 8, 5, per_sample, device, seed=3)
    masks = op(torch.ones_like(x), torch.zeros_like(x), segments, keep).view(5, 2, 3, 10, 12).cpu()
    seg = segments.cpu().expand(2, 3, 10, 12)
    for k in range(5):
        for j in range(8):
            values = masks[k][seg == j]
            assert values.numel() and torch.equal(values, torch.full_like(values, float(keep[k, j])))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_map_equals_the_map_repeated_per_sample(device, dtype):
    """A (1, *F) map is used by every sample: bitwise the same as passing it
    repeated (S, *F); and each sample of a per-sample map gets its own map:
    bitwise the same as that sample alone with its map."""
    x, b, segments, keep = make((3, 3, 8, 9), 6, 4, False, device, dtype=dtype, seed=4)
    keep = keep.float()
    assert torch.equal(op(x, b, segments, keep), op(x, b, segments.expand(3, -1, -1, -1).contiguous(), keep))
    _, _, own, _ = make((3, 3, 8, 9), 6, 4, True, device, seed=5)
    out = op(x, b, own, keep).view(4, 3, 3, 8, 9)
    for s in range(3):
        assert torch.equal(out[:, s], op(x[s:s + 1], b[s:s + 1], own[s:s + 1], keep))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@PER_SAMPLE
def test_feature_ablation_rows_are_captums(device, dtype, per_sample):
    """Feature ablation: keep = ones with a zero at feature k in row k. Row k
    is bitwise Captum's ablated input x (1 - m) + b m (m = 1 on feature k):
    the input outside the feature, the baseline on it."""
    x, b, segments, _ = make((2, 3, 7, 8), 5, 1, per_sample, device, dtype=dtype, seed=6)
    keep = 1 - torch.eye(5, device=device)
    out = op(x, b, segments, keep).view(5, 2, 3, 7, 8)
    for k in range(5):
        m = (segments == k).to(dtype).expand_as(x)
        assert torch.equal(out[k], x * (1 - m) + b * m)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@PER_SAMPLE
def test_every_dtype_matches_the_float64_formula(device, dtype, per_sample):
    """float16/bfloat16/float32 inputs (with float32 or float64 keep rows) are
    the float64 formula rounded to the input dtype."""
    x, b, segments, keep = make((2, 3, 10, 12), 7, 4, per_sample, device, dtype=dtype, seed=7)
    for kp in (keep.float(), keep):
        out = op(x, b, segments, kp)
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu().double(), numpy_batch(x, b, segments, kp).to(dtype).double(),
                                   **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_out_of_range_ids_are_nan_and_the_wrapper_raises(device):
    """The op never reads keep out of range: an id outside [0, J) makes every
    mask NaN at that element (only there); the wrapper raises on such ids."""
    x, b, segments, keep = make((2, 3, 4, 5), 4, 3, True, device, seed=8)
    segments[1, 2, 3, 4] = 4
    segments[0, 0, 0, 0] = -1
    out = op(x, b, segments, keep).view(3, 2, 3, 4, 5).cpu()
    bad = torch.zeros(2, 3, 4, 5, dtype=torch.bool)
    bad[1, 2, 3, 4] = bad[0, 0, 0, 0] = True
    assert out[:, bad].isnan().all() and not out[:, ~bad].isnan().any()
    with pytest.raises(ValueError, match=r"^fastattr.segment_masked_batch: segments must hold ids in \[0, J\) = \[0, 4\) "
                                         r"\(J = keep.shape\[1\]\), got ids from -1 to 4$"):
        ops.segment_masked_batch(x, b, segments, keep)
    assert ops.segment_masked_batch(x, b, segments, keep, check=False).isnan().any()


@pytest.mark.parametrize("device", cpu_and_cuda())
@PER_SAMPLE
def test_gradcheck(device, per_sample):
    """Linear in input, baseline and keep: gradcheck and gradgradcheck on all
    three (every segment present, repeated ids)."""
    x, b, segments, keep = make((2, 2, 3, 4), 5, 3, per_sample, device, seed=9)
    args = tuple(t.requires_grad_() for t in (x, b, keep))

    def fn(x_, b_, k_):
        return op(x_, b_, segments, k_)

    torch.autograd.gradcheck(fn, args)
    torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_the_reference(device, dtype):
    x, b, segments, keep = make((2, 3, 6, 7), 5, 4, True, device, dtype=dtype, seed=10)
    keep = (keep if dtype == torch.float64 else keep.float()).requires_grad_()  # float32 rows for the others
    x.requires_grad_(), b.requires_grad_()
    w = torch.randn(8, 3, 6, 7).to(device=device, dtype=dtype)
    got = torch.autograd.grad(op(x, b, segments, keep), (x, b, keep), w)
    x64, b64, k64 = (t.detach().double().requires_grad_() for t in (x, b, keep))
    want = torch.autograd.grad(reference.segment_masked_batch(x64, b64, segments, k64), (x64, b64, k64), w.double())
    low = dtype in (torch.float16, torch.bfloat16)
    for got_t, want_t, like in zip(got, want, (x, b, keep)):
        assert got_t.dtype == like.dtype and got_t.shape == like.shape
        scale = want_t.abs().max()
        tol = dict(rtol=2e-2, atol=2e-2 * scale) if low else dict(rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(got_t.double(), want_t, **(TOLERANCES[dtype] if dtype == torch.float64 else tol))


def test_wrapper_takes_what_methods_have():
    """A map without batch dimension or broadcast over channels ((1, 1, H, W)),
    int32 ids, a (J,) keep row or a list of rows, a number as baseline: the
    same as the registered op on the canonical arguments."""
    x, b, segments, keep = make((2, 3, 5, 6), 4, 2, False, "cpu", seed=11)
    plane = segments[:, :1]  # (1, 1, H, W)
    full = plane.expand(1, 3, 5, 6).contiguous()
    expected = op(x, b, full, keep)
    assert torch.equal(ops.segment_masked_batch(x, b, plane, keep), expected)
    assert torch.equal(ops.segment_masked_batch(x, b, plane[0].int(), keep.tolist()), expected)
    assert torch.equal(ops.segment_masked_batch(x, b, full, keep[1]), expected.view(2, 2, 3, 5, 6)[1])
    assert torch.equal(ops.segment_masked_batch(x, 0.25, full, keep), op(x, torch.full_like(x, 0.25), full, keep))


def _segment_errors():
    x = lambda *shape: torch.randn(*(shape or (2, 3, 4)))  # noqa: E731
    seg = lambda *shape, dtype=torch.int64: torch.zeros(shape or (1, 3, 4), dtype=dtype)  # noqa: E731
    keep = lambda *shape, dtype=torch.float32: torch.ones(shape or (2, 5), dtype=dtype)  # noqa: E731
    return {
        "input-int": (lambda: op(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), seg(1, 3), keep()),
                      r"^fastattr: input must be a floating-point tensor, got torch.int64$"),
        "input-0d": (lambda: op(torch.tensor(1.0), torch.tensor(0.0), seg(), keep()),
                     r"^fastattr.segment_masked_batch: input must have a batch dimension, got a 0-D tensor$"),
        "baseline-shape": (lambda: op(x(), x(2, 3, 5), seg(), keep()),
                           r"^fastattr: input and baseline must have the same shape, got \[2, 3, 4\] and \[2, 3, 5\]$"),
        "segments-int32": (lambda: op(x(), x(), seg(dtype=torch.int32), keep()),
                           r"^fastattr.segment_masked_batch: segments must be an int64 tensor, got torch.int32$"),
        "segments-float": (lambda: op(x(), x(), torch.zeros(1, 3, 4), keep()),
                           r"^fastattr.segment_masked_batch: segments must be an int64 tensor, got torch.float32$"),
        "segments-shape": (lambda: op(x(), x(), seg(1, 3, 5), keep()),
                           r"^fastattr.segment_masked_batch: segments must have shape \[1, 3, 4\] or \[2, 3, 4\] \(one map "
                           r"shared by all samples, or one per sample\), got \[1, 3, 5\]$"),
        "segments-batch": (lambda: op(x(), x(), seg(3, 3, 4), keep()),
                           r"segments must have shape \[1, 3, 4\] or \[2, 3, 4\] .*got \[3, 3, 4\]$"),
        "segments-no-batch": (lambda: op(x(), x(), seg(3, 4), keep()),
                              r"segments must have shape \[1, 3, 4\] or \[2, 3, 4\] .*got \[3, 4\]$"),
        "keep-int": (lambda: op(x(), x(), seg(), keep(dtype=torch.int64)),
                     r"^fastattr.segment_masked_batch: keep must be a floating-point tensor, got torch.int64$"),
        "keep-1d": (lambda: op(x(), x(), seg(), keep(5)),
                    r"^fastattr.segment_masked_batch: keep must have shape \(K, J\) with K >= 1 masks and J >= 1 segments, "
                    r"got shape \[5\]$"),
        "keep-no-masks": (lambda: op(x(), x(), seg(), keep(0, 5)),
                          r"keep must have shape \(K, J\) with K >= 1 masks and J >= 1 segments, got shape \[0, 5\]$"),
        "keep-no-segments": (lambda: op(x(), x(), seg(), keep(2, 0)),
                             r"keep must have shape \(K, J\) with K >= 1 masks and J >= 1 segments, got shape \[2, 0\]$"),
    }


SEGMENT_ERRORS = _segment_errors()


@pytest.mark.parametrize("error", list(SEGMENT_ERRORS))
def test_errors(error):
    """Each bad argument is named with the expected and received values, in the
    same words by the kernel and the fake kernel."""
    call, match = SEGMENT_ERRORS[error]
    assert_same_error(call, match)


@pytest.mark.parametrize("kernels", ["fake", pytest.param("real", marks=pytest.mark.needs_cuda)])
def test_wrong_devices(kernels):
    check = assert_fake_error if kernels == "fake" else assert_same_error
    check(lambda: op(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(1, 3, dtype=torch.int64, device="cuda"),
                     torch.ones(1, 2)),
          r"^fastattr.segment_masked_batch: segments must be on the device of input \(cpu\), got cuda:0$")
    check(lambda: op(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(1, 3, dtype=torch.int64),
                     torch.ones(1, 2, device="cuda")),
          r"^fastattr.segment_masked_batch: keep must be on the device of input \(cpu\), got cuda:0$")
