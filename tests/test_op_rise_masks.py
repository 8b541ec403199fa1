"""Tests of fastattr::rise_masks and fastattr::rise_masked_batch (spec §3.1,
§3.3, §4.2) that are specific to them: the up-sampling oracles, the mask
statistics, the masked-batch formula, gradients, the Python wrappers and the
error messages. Layouts, empty inputs, opcheck, torch.compile and CPU/CUDA
parity are in tests/test_op_harness.py.

rise_masks(grids, grid_index, shifts, size, up_size, mode) gives (N, H, W)
masks: grid grid_index[k] bilinearly up-sampled to up_size with the half-pixel
mapping, cropped at shifts[k]; "mirror" is the original RISE (scikit-image
resize(order=1, mode='reflect', anti_aliasing=False)), "clamp" is
F.interpolate(bilinear, align_corners=False) (MFPP). rise_masked_batch writes
the step-major batch baseline + M_k (input - baseline) with that mask shared by
every channel.

Oracles: a numpy up-sampler written here from the spec's description
(interpolation matrices per axis, mirror reflection -1 -> 1, n -> n - 2),
skimage.transform.resize itself, and F.interpolate.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import resize
from torch.utils._python_dispatch import TorchDispatchMode

import fastattr
from fastattr import reference
from op_harness import assert_fake_error, assert_same_error
from utils import DTYPES, TOLERANCES, cpu_and_cuda

ops = fastattr.ops
rise_masks_op = torch.ops.fastattr.rise_masks.default
rise_batch_op = torch.ops.fastattr.rise_masked_batch.default
MODES = ["mirror", "clamp"]


# ---------------------------------------------------------------- oracles

def interpolation_matrix(cells, out, mode):
    """(out, cells) numpy matrix of 1-D half-pixel bilinear up-sampling:
    src = (o + 0.5) * cells / out - 0.5; "mirror" reflects index -1 to 1 and
    `cells` to cells - 2, "clamp" clamps a negative src to 0 and indices to
    the last cell."""
    a = np.zeros((out, cells))
    for o in range(out):
        src = (o + 0.5) * cells / out - 0.5
        if mode == "clamp":
            src = max(src, 0.0)
        i = math.floor(src)
        t = src - i
        for idx, weight in ((i, 1 - t), (i + 1, t)):
            if mode == "mirror":
                idx = -idx if idx < 0 else (2 * (cells - 1) - idx if idx > cells - 1 else idx)
            else:
                idx = min(idx, cells - 1)
            a[o, idx] += weight
    return a


def upsample_oracle(grid, up, mode):
    """The grid (gh, gw) up-sampled to up = (UH, UW): A_rows @ grid @ A_cols^T."""
    grid = np.asarray(grid, dtype=np.float64)
    return interpolation_matrix(grid.shape[0], up[0], mode) @ grid @ interpolation_matrix(grid.shape[1], up[1], mode).T


def masks_oracle(grids, index, shifts, size, up, mode):
    out = np.empty((len(index), *size))
    for k, (g, (r, c)) in enumerate(zip(index.tolist(), shifts.tolist())):
        out[k] = upsample_oracle(grids[g].cpu().double().numpy(), up, mode)[r:r + size[0], c:c + size[1]]
    return torch.from_numpy(out)


def skimage_masks(grids, index, shifts, size, up):
    out = np.empty((len(index), *size))
    for k, (g, (r, c)) in enumerate(zip(index.tolist(), shifts.tolist())):
        full = resize(grids[g].cpu().double().numpy(), up, order=1, mode="reflect", anti_aliasing=False)
        out[k] = full[r:r + size[0], c:c + size[1]]
    return torch.from_numpy(out)


def interpolate_masks(grids, index, shifts, size, up):
    full = F.interpolate(grids.double().cpu()[:, None], size=tuple(up), mode="bilinear", align_corners=False)[:, 0]
    return torch.stack([full[g, r:r + size[0], c:c + size[1]] for g, (r, c) in zip(index.tolist(), shifts.tolist())])


def draws(n_grids, cells, size, up, n_masks, seed, binary=False, device="cpu", dtype=torch.float64):
    """Grids (uniform or 0/1), grid indices and crop shifts covering both ends
    of the allowed range (0 and up - size) as well as random ones."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.rand((n_grids, *cells), generator=g, dtype=torch.float64)
    if binary:
        grids = (grids < 0.5).double()
    index = torch.randint(0, n_grids, (n_masks,), generator=g)
    limit = (up[0] - size[0], up[1] - size[1])
    shifts = torch.stack([torch.randint(0, limit[0] + 1, (n_masks,), generator=g),
                          torch.randint(0, limit[1] + 1, (n_masks,), generator=g)], 1)
    shifts[0] = torch.tensor([0, 0])
    shifts[-1] = torch.tensor(limit)
    if n_masks > 2:
        shifts[1] = torch.tensor([limit[0], 0])
    return grids.to(device=device, dtype=dtype), index.to(device), shifts.to(device)


# name: (grid cells, crop size, up size); RISE geometries from spec §3.1
# (cell = ceil(size / s), up = (s + 1) cell) and odd ones.
GEOMETRIES = {
    "224-s8": ((8, 8), (224, 224), (252, 252)),
    "224-s7": ((7, 7), (224, 224), (256, 256)),
    "100x150-s10": ((10, 10), (100, 150), (110, 165)),
    "224-s16": ((16, 16), (224, 224), (238, 238)),
    "2x2-grid": ((2, 2), (9, 11), (12, 13)),
    "rect-noninteger": ((5, 6), (30, 33), (37, 41)),
    "up-equals-size": ((4, 3), (17, 19), (17, 19)),
    "downsampling": ((20, 18), (10, 9), (15, 12)),  # up < cells: no boundary taps
}


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_mirror_masks_match_the_oracle_and_skimage(device, geometry):
    """Spec §3.3.1: the masks equal the numpy oracle (float64, 1e-12) and
    scikit-image's resize(order=1, mode='reflect', anti_aliasing=False) + crop
    (1e-6), with crops touching every edge of the up-sampled map."""
    cells, size, up = GEOMETRIES[geometry]
    grids, index, shifts = draws(3, cells, size, up, 5, seed=1, device=device)
    masks = ops.rise_masks(grids, index, shifts, size, up, "mirror")
    assert masks.shape == (5, *size) and masks.dtype == torch.float64 and masks.is_contiguous()
    torch.testing.assert_close(masks.cpu(), masks_oracle(grids, index, shifts, size, up, "mirror"), rtol=0, atol=1e-12)
    torch.testing.assert_close(masks.cpu(), skimage_masks(grids, index, shifts, size, up), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("geometry", list(GEOMETRIES) + ["mfpp-fragment-map"])
def test_clamp_masks_match_interpolate(device, geometry):
    """Spec §4.3.1: "clamp" equals F.interpolate(bilinear, align_corners=False)
    + crop (1e-6; the numpy oracle to 1e-12), including MFPP's use: a full
    resolution fragment map up-sampled 3x and cropped back to its size, and a
    1-cell-wide grid (no boundary rule needed)."""
    cells, size, up = GEOMETRIES.get(geometry, ((12, 12), (12, 12), (36, 36)))
    grids, index, shifts = draws(3, cells, size, up, 5, seed=2, device=device)
    masks = ops.rise_masks(grids, index, shifts, size, up, "clamp")
    torch.testing.assert_close(masks.cpu(), interpolate_masks(grids, index, shifts, size, up), rtol=0, atol=1e-6)
    torch.testing.assert_close(masks.cpu(), masks_oracle(grids, index, shifts, size, up, "clamp"), rtol=0, atol=1e-12)
    thin, index, shifts = draws(2, (1, 5), (6, 7), (8, 9), 4, seed=3, device=device)
    torch.testing.assert_close(ops.rise_masks(thin, index, shifts, (6, 7), (8, 9), "clamp").cpu(),
                               interpolate_masks(thin, index, shifts, (6, 7), (8, 9)), rtol=0, atol=1e-6)


def test_mirror_and_clamp_differ_only_near_the_border():
    """Spec §3.1: the two rules differ where the source coordinate is < 0 or >
    s - 1 (for s = 8, up = 252: rows/columns 0-15 and 236-251), nowhere else."""
    grids, index, shifts = draws(1, (8, 8), (252, 252), (252, 252), 1, seed=4)
    diff = (ops.rise_masks(grids, index, shifts, 252, 252, "mirror") - ops.rise_masks(grids, index, shifts, 252, 252, "clamp"))[0]
    border = torch.zeros(252, dtype=torch.bool)
    border[:16] = border[236:] = True
    assert diff[~border][:, ~border].abs().max() == 0
    assert diff[border].abs().max() > 0.01


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("binary", [True, False], ids=["binary-grids", "uniform-grids"])
def test_masks_lie_in_the_unit_interval(device, dtype, mode, binary):
    """Spec §3.3.1: every mask value lies in [0, 1] (bilinear weights are convex
    and the lerps never leave the segment between two cells), in every dtype;
    0/1 grids give exactly 0 and 1 where all four cells agree."""
    grids, index, shifts = draws(6, (7, 7), (224, 224), (256, 256), 12, seed=5, binary=binary, device=device,
                                 dtype=dtype)
    masks = ops.rise_masks(grids, index, shifts, 224, 256, mode)
    assert masks.dtype == dtype
    assert masks.min() >= 0 and masks.max() <= 1
    expected = masks_oracle(grids, index, shifts, (224, 224), (256, 256), mode)
    torch.testing.assert_close(masks.cpu().double(), expected, **TOLERANCES[dtype])
    if binary:
        assert bool((masks == 0).any()) and bool((masks == 1).any())


@pytest.mark.parametrize("mode", MODES)
def test_mask_mean_is_p_at_every_pixel(mode):
    """Spec §3.3.2: E[M(λ)] = p at every pixel (the weights sum to 1, at the
    mirror boundary too). N = 4000 masks from 8x8 Bernoulli(0.1) grids, random
    shifts in [0, cell): every pixel's mean within 5 sigma of p, sigma =
    sqrt(p (1 - p) / N) (masks are independent across draws; a [0, 1] value
    with mean p has variance at most p (1 - p))."""
    n, p, size, s = 4000, 0.1, (40, 40), 8
    cell = (math.ceil(size[0] / s), math.ceil(size[1] / s))
    up = ((s + 1) * cell[0], (s + 1) * cell[1])
    g = torch.Generator().manual_seed(6)
    grids = (torch.rand(n, s, s, generator=g) < p).float()
    shifts = torch.stack([torch.randint(0, cell[0], (n,), generator=g), torch.randint(0, cell[1], (n,), generator=g)], 1)
    masks = ops.rise_masks(grids, None, shifts, size, up, mode)
    mean = masks.double().mean(0)
    sigma = math.sqrt(p * (1 - p) / n)
    assert (mean - p).abs().max() <= 5 * sigma, f"per-pixel means in [{mean.min():.4f}, {mean.max():.4f}]"
    assert abs(float(mean.mean()) - p) <= 5 * sigma


# ---------------------------------------------------------------- the masked batch

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_masked_batch_is_the_formula(device, mode, layout):
    """out[k*S + s] = baseline[s] + M_k * (input[s] - baseline[s]) with M_k the
    oracle's mask (numpy for mirror, F.interpolate for clamp), the same for
    every channel and sample; float64 to 1e-12; channels_last in, channels_last
    out."""
    size, up = (13, 11), (17, 15)
    grids, index, shifts = draws(4, (3, 4), size, up, 5, seed=7, device=device)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(3, 4, *size, dtype=torch.float64, device=device).contiguous(memory_format=fmt)
    b = torch.randn(3, 4, *size, dtype=torch.float64, device=device)
    out = ops.rise_masked_batch(x, b, grids, index, shifts, up, mode)
    assert out.shape == (15, 4, *size) and out.is_contiguous(memory_format=fmt)
    m = masks_oracle(grids, index, shifts, size, up, mode) if mode == "mirror" else \
        interpolate_masks(grids, index, shifts, size, up)
    expected = (b.cpu()[None] + m[:, None, None] * (x.cpu() - b.cpu())[None]).flatten(0, 1)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_binary_masks_give_input_and_baseline_exactly(device, dtype, layout):
    """M = 1 gives the input and M = 0 the baseline bit for bit, as Captum's
    x (1 - m) + b m does for a binary mask: all-ones / all-zeros grids, and the
    pixels of a 0/1 grid whose four cells agree."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(2, 3, 9, 10) * 100).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    b = torch.randn(2, 3, 9, 10).to(device=device, dtype=dtype)
    grids = torch.stack([torch.ones(3, 3), torch.zeros(3, 3), (torch.rand(3, 3, generator=torch.Generator().manual_seed(8)) < 0.5).float()])
    grids = grids.to(device)
    index = torch.tensor([0, 1, 2], device=device)
    shifts = torch.tensor([[1, 2], [0, 0], [2, 1]], device=device)
    out = ops.rise_masked_batch(x, b, grids, index, shifts, (12, 12), "mirror").view(3, 2, 3, 9, 10)
    assert torch.equal(out[0], x) and torch.equal(out[1], b)
    m = ops.rise_masks(grids[2:], None, shifts[2:], (9, 10), (12, 12), "mirror")[0]
    assert torch.equal(out[2][:, :, m == 1], x[:, :, m == 1]) and torch.equal(out[2][:, :, m == 0], b[:, :, m == 0])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_dtypes_compute_in_the_input_opmath(device, dtype):
    """float32 grids with a float16/bfloat16 batch (as the RISE method passes
    them), float64 grids with a float32 batch: the result is the float64
    formula rounded to the input dtype."""
    size, up = (10, 12), (14, 17)
    grids, index, shifts = draws(4, (3, 4), size, up, 5, seed=9, device=device, dtype=torch.float32)
    x = torch.randn(2, 3, *size).to(device=device, dtype=dtype)
    b = torch.randn(2, 3, *size).to(device=device, dtype=dtype)
    for g in (grids, grids.double()):
        out = ops.rise_masked_batch(x, b, g, index, shifts, up, "mirror")
        assert out.dtype == dtype
        m = masks_oracle(g, index, shifts, size, up, "mirror")
        expected = (b.cpu().double()[None] + m[:, None, None] * (x.cpu().double() - b.cpu().double())[None]).flatten(0, 1)
        torch.testing.assert_close(out.cpu().double(), expected.to(dtype).double(), **TOLERANCES[dtype])


# ---------------------------------------------------------------- out-of-range entries

@pytest.mark.parametrize("device", cpu_and_cuda())
def test_out_of_range_entries_are_nan_and_never_read(device):
    """The registered ops never index out of range: a grid index outside [0, G)
    makes its whole mask NaN, a crop reaching outside the map makes those
    pixels NaN (the in-range pixels keep the oracle's values); the wrappers
    raise on such values."""
    size, up = (6, 7), (9, 10)
    grids, _, _ = draws(2, (3, 3), size, up, 3, seed=10, device=device)
    index = torch.tensor([0, 2, 1, -1], device=device)
    shifts = torch.tensor([[0, 0], [1, 1], [5, 1], [0, 0]], device=device)  # row 5 + 6 > 9
    masks = rise_masks_op(grids, index, shifts, list(size), list(up), "mirror").cpu()
    assert masks[1].isnan().all() and masks[3].isnan().all()
    assert masks[2, 4:].isnan().all() and not masks[2, :4].isnan().any()
    torch.testing.assert_close(masks[2, :4], torch.from_numpy(upsample_oracle(grids[1].cpu().numpy(), up, "mirror")[5:9, 1:8]))
    torch.testing.assert_close(masks[0], masks_oracle(grids, index[:1], shifts[:1], size, up, "mirror")[0])
    x = torch.randn(1, 2, *size, dtype=torch.float64, device=device)
    out = rise_batch_op(x, torch.zeros_like(x), grids, index, shifts, list(up), "mirror").cpu()
    assert out[1].isnan().all() and out[2, :, 4:].isnan().all() and not out[0].isnan().any()
    with pytest.raises(ValueError, match=r"^fastattr.rise_masks: grid_index must lie in \[0, G\) = \[0, 2\), got values from -1 to 2$"):
        ops.rise_masks(grids, index, shifts, size, up)
    with pytest.raises(ValueError, match=r"^fastattr.rise_masked_batch: shifts must satisfy 0 <= shift and shift \+ size <= "
                                         r"up_size, i.e. rows in \[0, 3\] and columns in \[0, 3\] for size \[6, 7\] and "
                                         r"up_size \[9, 10\]; got rows from 0 to 5 and columns from 0 to 1$"):
        ops.rise_masked_batch(x, 0.0, grids, index[:3].clamp(0, 1), shifts[:3], up)
    assert ops.rise_masks(grids, index, shifts, size, up, check=False)[1].isnan().all()


class HostSyncCounter(TorchDispatchMode):
    """Counts device-to-host value reads (item / int / bool)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def test_wrappers_check_once_and_ops_never_sync():
    """The ops read no tensor value on the host; a wrapper's range check costs
    one read per call, none with check=False."""
    grids, index, shifts = draws(3, (4, 4), (8, 8), (10, 10), 4, seed=11)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for check, expected in ((True, 1), (False, 0)):
        for call in (lambda: ops.rise_masks(grids, index, shifts, 8, 10, "clamp", check=check),
                     lambda: ops.rise_masked_batch(x, 0.0, grids, index, shifts, 10, "clamp", check=check)):
            with HostSyncCounter() as counter:
                call()
            assert counter.syncs == expected
    with HostSyncCounter() as counter:
        rise_masks_op(grids, index, shifts, [8, 8], [10, 10], "mirror")
        rise_batch_op(x, x, grids, index, shifts, [10, 10], "mirror")
    assert counter.syncs == 0


@pytest.mark.needs_cuda
def test_cuda_ops_need_no_host_sync():
    grids, index, shifts = draws(3, (4, 4), (8, 8), (10, 10), 4, seed=12, device="cuda", dtype=torch.float32)
    x = torch.randn(2, 3, 8, 8, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        m = rise_masks_op(grids, index, shifts, [8, 8], [10, 10], "mirror")
        out = rise_batch_op(x, torch.zeros_like(x), grids, index, shifts, [10, 10], "mirror")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.float(), (m[:, None, None] * x.float()[None]).flatten(0, 1), rtol=4e-3, atol=4e-3)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(device, mode):
    """The masks are linear in the grids; the batch is linear in input,
    baseline and grids: gradcheck and gradgradcheck on all of them, with grid
    indices repeating and crops at the edges."""
    grids, index, shifts = draws(3, (3, 4), (4, 5), (6, 8), 5, seed=13, device=device)
    grids.requires_grad_()
    torch.autograd.gradcheck(lambda g: rise_masks_op(g, index, shifts, [4, 5], [6, 8], mode), (grids,))
    torch.autograd.gradgradcheck(lambda g: rise_masks_op(g, index, shifts, [4, 5], [6, 8], mode), (grids,))
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x_, b_, g_):
        return rise_batch_op(x_, b_, g_, index, shifts, [6, 8], mode)

    torch.autograd.gradcheck(fn, (x, b, grids))
    torch.autograd.gradgradcheck(fn, (x, b, grids))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_backward_matches_the_reference(device, dtype, mode):
    """Gradients w.r.t. input, baseline and grids (float32 grids for half
    batches) against PyTorch's autograd through the float64 reference."""
    size, up = (10, 12), (14, 17)
    grids, index, shifts = draws(4, (3, 4), size, up, 5, seed=14, device=device, dtype=torch.float32)
    grids = grids.double() if dtype == torch.float64 else grids
    x = torch.randn(2, 3, *size).to(device=device, dtype=dtype).requires_grad_()
    b = torch.randn(2, 3, *size).to(device=device, dtype=dtype).requires_grad_()
    g = grids.clone().requires_grad_()
    w = torch.randn(10, 3, *size).to(device=device, dtype=dtype)
    got = torch.autograd.grad(ops.rise_masked_batch(x, b, g, index, shifts, up, mode), (x, b, g), w)
    x64, b64, g64 = (t.detach().double().requires_grad_() for t in (x, b, g))
    want = torch.autograd.grad(reference.rise_masked_batch(x64, b64, g64, index, shifts, up, mode), (x64, b64, g64),
                               w.double())
    low = dtype in (torch.float16, torch.bfloat16)
    for got_t, want_t, like in zip(got, want, (x, b, g)):
        assert got_t.dtype == like.dtype and got_t.shape == like.shape
        scale = want_t.abs().max()
        tol = dict(rtol=2e-2, atol=2e-2 * scale) if low else dict(rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(got_t.double(), want_t, **(TOLERANCES[dtype] if dtype == torch.float64 else tol))


# ---------------------------------------------------------------- wrappers and errors

def test_wrappers_take_what_methods_have():
    """Ints for sizes, lists for indices and shifts, int32 shifts, grid_index
    None (= arange(G)), a number or a broadcastable baseline: the same result
    as the registered op on the canonical arguments."""
    grids, index, shifts = draws(3, (4, 4), (8, 8), (10, 10), 3, seed=15)
    index = torch.arange(3)
    expected = rise_masks_op(grids, index, shifts, [8, 8], [10, 10], "mirror")
    assert torch.equal(ops.rise_masks(grids, None, shifts.tolist(), 8, 10), expected)
    assert torch.equal(ops.rise_masks(grids, [0, 1, 2], shifts.int(), (8, 8), [10, 10], "mirror"), expected)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    full = rise_batch_op(x, torch.full_like(x, 0.5), grids, index, shifts, [10, 10], "clamp")
    assert torch.equal(ops.rise_masked_batch(x, 0.5, grids, None, shifts, 10, "clamp"), full)
    base = torch.full((1, 3, 1, 1), 0.5, dtype=torch.float64)
    assert torch.equal(ops.rise_masked_batch(x, base, grids, [0, 1, 2], shifts.tolist(), (10, 10), "clamp"), full)


def _rise_errors():
    g = lambda *shape, dtype=torch.float32: torch.rand(*shape, dtype=dtype)  # noqa: E731
    i = lambda n=2: torch.zeros(n, dtype=torch.int64)  # noqa: E731
    s = lambda n=2: torch.zeros(n, 2, dtype=torch.int64)  # noqa: E731
    x = lambda: torch.randn(2, 3, 6, 7)  # noqa: E731
    masks = lambda grids=None, index=None, shifts=None, size=(6, 7), up=(8, 9), mode="mirror": rise_masks_op(  # noqa: E731
        g(3, 4, 4) if grids is None else grids, i() if index is None else index, s() if shifts is None else shifts,
        list(size), list(up), mode)
    batch = lambda inp=None, base=None, grids=None, index=None, shifts=None, up=(8, 9), mode="clamp": rise_batch_op(  # noqa: E731
        x() if inp is None else inp, x() if base is None else base, g(3, 4, 4) if grids is None else grids,
        i() if index is None else index, s() if shifts is None else shifts, list(up), mode)
    return {
        "grids-int": (lambda: masks(grids=torch.ones(3, 4, 4, dtype=torch.int64)),
                      r"^fastattr.rise_masks: grids must be a floating-point tensor, got torch.int64$"),
        "grids-2d": (lambda: masks(grids=g(4, 4)),
                     r"^fastattr.rise_masks: grids must have shape \(G, gh, gw\) with G, gh, gw >= 1, got shape \[4, 4\]$"),
        "grids-none": (lambda: batch(grids=g(0, 4, 4)),
                       r"^fastattr.rise_masked_batch: grids must have shape \(G, gh, gw\) with G, gh, gw >= 1, got shape "
                       r"\[0, 4, 4\]$"),
        "mode": (lambda: masks(mode="reflect"), r"^fastattr: mode must be 'mirror' or 'clamp', got 'reflect'$"),
        "mirror-1-cell": (lambda: masks(grids=g(3, 1, 4)),
                          r"^fastattr.rise_masks: mode 'mirror' needs grids of at least 2x2 cells \(it reflects index -1 "
                          r"to 1\), got shape \[3, 1, 4\]$"),
        "index-int32": (lambda: masks(index=torch.zeros(2, dtype=torch.int32)),
                        r"^fastattr.rise_masks: grid_index must be an int64 tensor, got torch.int32$"),
        "index-2d": (lambda: batch(index=torch.zeros(2, 1, dtype=torch.int64)),
                     r"^fastattr.rise_masked_batch: grid_index must have shape \(N,\), got shape \[2, 1\]$"),
        "shifts-float": (lambda: masks(shifts=torch.zeros(2, 2)),
                         r"^fastattr.rise_masks: shifts must be an int64 tensor, got torch.float32$"),
        "shifts-count": (lambda: masks(shifts=s(3)),
                         r"^fastattr.rise_masks: shifts must have shape \(N, 2\) = \[2, 2\] \(N = len\(grid_index\)\), got "
                         r"shape \[3, 2\]$"),
        "shifts-3-cols": (lambda: batch(shifts=torch.zeros(2, 3, dtype=torch.int64)),
                          r"^fastattr.rise_masked_batch: shifts must have shape \(N, 2\) = \[2, 2\] .* got shape \[2, 3\]$"),
        "size-negative": (lambda: masks(size=(-1, 7)),
                          r"^fastattr.rise_masks: size must be two non-negative ints \(H, W\), got \[-1, 7\]$"),
        "up-smaller": (lambda: masks(up=(5, 9)),
                       r"^fastattr.rise_masks: up_size must be two positive ints with up_size >= size = \[6, 7\], got "
                       r"\[5, 9\]$"),
        "up-3": (lambda: batch(up=(8, 9, 1)),
                 r"^fastattr.rise_masked_batch: up_size must be two positive ints with up_size >= size = \[6, 7\], got "
                 r"\[8, 9, 1\]$"),
        "input-3d": (lambda: batch(inp=torch.randn(3, 6, 7), base=torch.randn(3, 6, 7)),
                     r"^fastattr.rise_masked_batch: input must be 4-D \(S, C, H, W\), got a 3-D tensor of shape \[3, 6, 7\]$"),
        "input-int": (lambda: batch(inp=torch.ones(2, 3, 6, 7, dtype=torch.int64),
                                    base=torch.ones(2, 3, 6, 7, dtype=torch.int64)),
                      r"^fastattr: input must be a floating-point tensor, got torch.int64$"),
        "baseline-shape": (lambda: batch(base=torch.randn(1, 3, 6, 7)),
                           r"^fastattr: input and baseline must have the same shape, got \[2, 3, 6, 7\] and \[1, 3, 6, 7\]$"),
        "baseline-dtype": (lambda: batch(base=torch.randn(2, 3, 6, 7, dtype=torch.float64)),
                           r"^fastattr: input and baseline must have the same dtype, got torch.float32 and torch.float64$"),
    }


RISE_ERRORS = _rise_errors()


@pytest.mark.parametrize("error", list(RISE_ERRORS))
def test_errors(error):
    """Each bad argument is named with the expected and received values, in the
    same words by the kernel and the fake kernel."""
    call, match = RISE_ERRORS[error]
    assert_same_error(call, match)


@pytest.mark.parametrize("kernels", ["fake", pytest.param("real", marks=pytest.mark.needs_cuda)])
def test_wrong_devices(kernels):
    """Grids, indices and shifts on another device than the tensor they go with.
    The fake kernels run on fake CUDA tensors (no GPU needed)."""
    check = assert_fake_error if kernels == "fake" else assert_same_error
    check(lambda: rise_masks_op(torch.rand(2, 3, 3), torch.zeros(1, dtype=torch.int64, device="cuda"),
                                torch.zeros(1, 2, dtype=torch.int64), [4, 4], [5, 5], "clamp"),
          r"^fastattr.rise_masks: grid_index must be on the device of grids \(cpu\), got cuda:0$")
    check(lambda: rise_batch_op(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4), torch.rand(2, 3, 3, device="cuda"),
                                torch.zeros(1, dtype=torch.int64), torch.zeros(1, 2, dtype=torch.int64), [5, 5], "clamp"),
          r"^fastattr.rise_masked_batch: grids must be on the device of input \(cpu\), got cuda:0$")
    check(lambda: rise_batch_op(torch.randn(1, 1, 4, 4, device="cuda"), torch.randn(1, 1, 4, 4, device="cuda"),
                                torch.rand(2, 3, 3, device="cuda"), torch.zeros(1, dtype=torch.int64, device="cuda"),
                                torch.zeros(1, 2, dtype=torch.int64), [5, 5], "clamp"),
          r"^fastattr.rise_masked_batch: shifts must be on the device of input \(cuda:0\), got cpu$")
