"""Property-based tests (hypothesis) of every fastattr op against its
reference in ``fastattr.reference``, computed in float64 from the same values.

Each op gets random shapes (1 pixel, odd sizes, a large batch), random
parameters (modes, geometries, tables, indices), every floating dtype it takes
(float64/32/16, bfloat16, at that dtype's tolerance) and random memory layouts
per tensor argument (contiguous, dense non-contiguous, not dense, channels_last).
Integer outputs (max-pool indices) must be equal.

The example count comes from the hypothesis profile in tests/conftest.py
(``ci``: 25 examples per op; ``FASTATTR_HYPOTHESIS_PROFILE=thorough``: 500).
A failure prints the falsifying example and a reproduction blob.
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from fastattr import reference

from models import single_thread  # noqa: F401  (one intra-op thread for this module)
from op_harness import float64_copy, op_cases, tensors

FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 2e-2,
}
LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last")


def _acc(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --------------------------------------------------------------------------- strategies

dtypes = st.sampled_from(FLOATING)
seeds = st.integers(0, 2**31 - 1)
# Mostly small batches; sometimes a large one.
batches = st.one_of(st.integers(1, 4), st.sampled_from([17, 64]))
# 1 pixel, odd and even sizes.
sides = st.one_of(st.just(1), st.integers(2, 9))


class Draw:
    """Tensors from one seeded torch generator (hypothesis draws the seed)."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def uniform(self, shape, dtype, low=-1.0, high=1.0):
        return (torch.rand(shape, generator=self.g, dtype=torch.float64) * (high - low) + low).to(dtype)

    def normal(self, shape, dtype, scale=1.0):
        return (torch.randn(shape, generator=self.g, dtype=torch.float64) * scale).to(dtype)

    def ints(self, low, high, shape):
        return torch.randint(low, high, shape, generator=self.g)


def _layout(draw, t: torch.Tensor, written: bool = False) -> torch.Tensor:
    """t in a layout drawn for it (channels_last only for 4-D; a tensor the op
    writes only contiguous or channels_last)."""
    choices = [lay for lay in LAYOUTS if (lay != "channels_last" or t.dim() == 4)
               and (not written or lay in ("contiguous", "channels_last"))]
    if t.dim() < 2:
        choices = [lay for lay in choices if lay not in ("transposed",)]
    layout = draw(st.sampled_from(choices))
    out = op_cases.relayout(t, layout)
    assert torch.equal(out, t)
    return out


# --------------------------------------------------------------------------- comparison


def _check(name: str, args: tuple, dtype: torch.dtype, scale: float = 1.0, mutates: bool = False) -> None:
    """The op on args equals the reference on float64 copies of args, at the
    dtype's tolerance (atol scaled by ``scale``, the size of the values summed)."""
    op = getattr(torch.ops.fastattr, name).default
    ref = getattr(reference, name.lstrip("_"))
    ref_args = float64_copy(args)
    expected = tensors(ref(*ref_args))
    got = tensors(op(*args))
    if mutates:
        expected, got = (ref_args[0],), (args[0],)
    assert len(got) == len(expected)
    tol = TOLERANCE[dtype]
    for out, exp in zip(got, expected):
        assert out.shape == exp.shape, f"shape {tuple(out.shape)}, reference {tuple(exp.shape)}"
        if exp.is_floating_point():
            assert out.dtype == (args[0].dtype if mutates else dtype)
            torch.testing.assert_close(out.double(), exp.double(), rtol=tol, atol=tol * scale, equal_nan=False)
        else:
            assert out.dtype == exp.dtype and torch.equal(out, exp), "integer output differs from the reference"


# --------------------------------------------------------------------------- guided ReLU


@st.composite
def activation_shapes(draw):
    rank = draw(st.integers(1, 5))
    if rank == 4:
        return (draw(batches), draw(st.integers(1, 6)), draw(sides), draw(sides))
    return tuple(draw(st.integers(1, 7)) for _ in range(rank))


uppers = st.one_of(st.none(), st.floats(0.25, 3.0))


def _representable(upper, dtype):
    """upper rounded to dtype: the op clamps and compares in the input's dtype
    (as ReLU6's 6.0 is exact), while the reference sees float64 copies, where a
    value clamped to float32(upper) may compare below the unrounded upper."""
    return None if upper is None else float(torch.tensor(upper, dtype=torch.float64).to(dtype))


@given(shape=activation_shapes(), dtype=dtypes, upper=uppers, seed=seeds, data=st.data())
def test_guided_relu(shape, dtype, upper, seed, data):
    upper = _representable(upper, dtype)
    x = _layout(data.draw, Draw(seed).normal(shape, dtype, scale=2.0))
    mode = data.draw(st.sampled_from(["guided", "deconvnet"]))
    _check("guided_relu", (x, mode, upper), dtype)


@given(shape=activation_shapes(), dtype=dtypes, upper=uppers, seed=seeds, data=st.data())
def test_guided_relu_backward(shape, dtype, upper, seed, data):
    upper = _representable(upper, dtype)
    d = Draw(seed)
    x = d.normal(shape, dtype, scale=2.0)
    result = x.clamp(0, upper) if upper is not None else x.clamp_min(0)
    g = _layout(data.draw, d.normal(shape, dtype))
    mode = data.draw(st.sampled_from(["guided", "deconvnet"]))
    _check("_guided_relu_backward", (g, _layout(data.draw, result), mode, upper), dtype)


# --------------------------------------------------------------------------- guided max-pool


@st.composite
def pools(draw):
    """(input shape, kernel, stride, padding, dilation, ceil_mode) that
    nn.MaxPool2d accepts, with an output of at least 1x1."""
    n, c = draw(batches), draw(st.integers(1, 5))
    geometry = []
    for _ in range(2):
        k = draw(st.integers(1, 4))
        s = draw(st.integers(1, 3))
        p = draw(st.integers(0, k // 2))
        dil = draw(st.integers(1, 2))
        size = draw(st.integers(max(1, dil * (k - 1) + 1 - 2 * p), 10))
        geometry.append((size, k, s, p, dil))
    (h, kh, sh, ph, dh), (w, kw, sw, pw, dw) = geometry
    return (n, c, h, w), [kh, kw], [sh, sw], [ph, pw], [dh, dw], draw(st.booleans())


@given(pool=pools(), dtype=dtypes, seed=seeds, data=st.data())
def test_guided_max_pool2d(pool, dtype, seed, data):
    shape, kernel, stride, padding, dilation, ceil_mode = pool
    d = Draw(seed)
    x = d.normal(shape, dtype)
    if data.draw(st.booleans()):
        x = x.clamp_min(0)  # after a ReLU: tied maxima
    mode = data.draw(st.sampled_from(["reference", "window"]))
    _check("guided_max_pool2d", (_layout(data.draw, x), kernel, stride, padding, dilation, ceil_mode, mode), dtype)


@given(pool=pools(), dtype=dtypes, seed=seeds, data=st.data())
def test_guided_max_pool2d_backward(pool, dtype, seed, data):
    shape, kernel, stride, padding, dilation, ceil_mode = pool
    d = Draw(seed)
    x = d.normal(shape, dtype).clamp_min(0)
    _, idx = torch.ops.aten.max_pool2d_with_indices.default(x, kernel, stride, padding, dilation, ceil_mode)
    g = d.normal(idx.shape, dtype)
    mode = data.draw(st.sampled_from(["reference", "window"]))
    # A pixel gets the sum of the gradients of the windows it won (at most
    # ceil(k / s) per dimension).
    overlap = math.prod(-(-k // s) for k, s in zip(kernel, stride))
    _check("_guided_max_pool2d_backward", (_layout(data.draw, g), _layout(data.draw, idx), list(shape), kernel,
                                           stride, padding, dilation, mode), dtype, scale=overlap * 4)


# Found by the fuzzer: with dilation, a window can lie wholly in the padding
# (kernel 2, dilation 2, padding 1 over one row reads rows -1 and 1). ATen gives
# -inf and the index of the window's first tap stepped forward by the dilation,
# which may lie outside the plane (the backward routes nothing there) or on
# another row (W = 1); the reference now states that rule, the op follows ATen.
DEGENERATE_POOLS = [
    ((1, 1, 1, 1), [2, 1], [1, 1], [1, 0], [2, 1], False),
    ((1, 2, 1, 3), [2, 2], [1, 1], [1, 1], [2, 2], True),
    ((2, 3, 5, 1), [1, 2], [1, 1], [0, 1], [1, 2], False),
]


def test_windows_wholly_in_the_padding_regression():
    for shape, *geometry in DEGENERATE_POOLS:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        values, index = torch.ops.aten.max_pool2d_with_indices.default(x, *geometry)
        assert bool(torch.isinf(values).any()), "the geometry must have an empty window"
        for mode in ("reference", "window"):
            out, idx = torch.ops.fastattr.guided_max_pool2d.default(x, *geometry, mode)
            ref, ref_idx = reference.guided_max_pool2d(x, *geometry, mode)
            assert torch.equal(idx, index) and torch.equal(ref_idx, index)
            assert torch.equal(out, values) and torch.equal(ref, values)
            g = torch.randn(index.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            _check("_guided_max_pool2d_backward", (g, index, list(shape), *geometry[:4], mode), torch.float64)


# --------------------------------------------------------------------------- IG path ops


@st.composite
def sample_shapes(draw, min_dims=1, max_dims=4):
    rank = draw(st.integers(min_dims, max_dims))
    if rank == 4:
        return (draw(batches), draw(st.integers(1, 4)), draw(sides), draw(sides))
    return (draw(batches),) + tuple(draw(st.integers(1, 7)) for _ in range(rank - 1))


def _table(d: Draw, draw, steps: int, batch: int, like_dtype) -> torch.Tensor:
    """A (K,) or (K, B) node/weight table in float64, float32 or the input's dtype."""
    dtype = draw(st.sampled_from([torch.float64, torch.float32, like_dtype]))
    shape = (steps,) if draw(st.booleans()) else (steps, batch)
    return d.uniform(shape, dtype, 0.0, 1.0)


@given(shape=sample_shapes(), dtype=dtypes, steps=st.integers(1, 9), seed=seeds, data=st.data())
def test_ig_path_inputs(shape, dtype, steps, seed, data):
    d = Draw(seed)
    x, b = d.uniform(shape, dtype), d.uniform(shape, dtype)
    alphas = _table(d, data.draw, steps, shape[0], dtype)
    _check("ig_path_inputs", (_layout(data.draw, x), _layout(data.draw, b), alphas), dtype, scale=2.0)


@given(shape=sample_shapes(), dtype=dtypes, steps=st.integers(1, 9), seed=seeds, data=st.data())
def test_ig_accumulate(shape, dtype, steps, seed, data):
    d = Draw(seed)
    total = _layout(data.draw, d.uniform(shape, _acc(dtype)), written=True)
    grads = _layout(data.draw, d.uniform((steps * shape[0], *shape[1:]), dtype))
    weights = _table(d, data.draw, steps, shape[0], dtype)
    _check("ig_accumulate_", (total, grads, weights), dtype, scale=1.0 + steps, mutates=True)


# --------------------------------------------------------------------------- perturbation masks


@st.composite
def rise_geometries(draw):
    """(grid cells, crop size, up-sampled size, mode, n_grids, n_masks)."""
    mode = draw(st.sampled_from(["mirror", "clamp"]))
    low = 2 if mode == "mirror" else 1
    cells = (draw(st.integers(low, 6)), draw(st.integers(low, 6)))
    size = (draw(sides), draw(sides))
    up = tuple(s + draw(st.integers(0, 6)) for s in size)
    return cells, size, up, mode, draw(st.integers(1, 4)), draw(st.integers(1, 6))


def _rise_indices(d: Draw, n_grids, n_masks, size, up):
    index = d.ints(0, n_grids, (n_masks,))
    shifts = torch.stack([d.ints(0, up[0] - size[0] + 1, (n_masks,)), d.ints(0, up[1] - size[1] + 1, (n_masks,))], 1)
    return index, shifts


@given(geometry=rise_geometries(), dtype=dtypes, seed=seeds, data=st.data())
def test_rise_masks(geometry, dtype, seed, data):
    cells, size, up, mode, n_grids, n_masks = geometry
    d = Draw(seed)
    grids = d.uniform((n_grids, *cells), dtype, 0.0, 1.0)
    if data.draw(st.booleans()):
        grids = (grids > 0.5).to(dtype)  # RISE's binary grids
    index, shifts = _rise_indices(d, n_grids, n_masks, size, up)
    _check("rise_masks", (_layout(data.draw, grids), index, shifts, list(size), list(up), mode), dtype)


@given(geometry=rise_geometries(), dtype=dtypes, batch=batches, channels=st.integers(1, 4), seed=seeds,
       data=st.data())
def test_rise_masked_batch(geometry, dtype, batch, channels, seed, data):
    cells, size, up, mode, n_grids, n_masks = geometry
    d = Draw(seed)
    shape = (batch, channels, *size)
    x, b = d.uniform(shape, dtype), d.uniform(shape, dtype)
    grids = d.uniform((n_grids, *cells), data.draw(st.sampled_from([dtype, _acc(dtype)])), 0.0, 1.0)
    index, shifts = _rise_indices(d, n_grids, n_masks, size, up)
    _check("rise_masked_batch", (_layout(data.draw, x), _layout(data.draw, b), grids, index, shifts, list(up), mode),
           dtype, scale=2.0)


@given(shape=sample_shapes(), dtype=dtypes, n_segments=st.integers(1, 8), n_masks=st.integers(1, 6), seed=seeds,
       data=st.data())
def test_segment_masked_batch(shape, dtype, n_segments, n_masks, seed, data):
    d = Draw(seed)
    x, b = d.uniform(shape, dtype), d.uniform(shape, dtype)
    lead = shape[0] if data.draw(st.booleans()) else 1
    segments = d.ints(0, n_segments, (lead, *shape[1:]))
    keep = d.uniform((n_masks, n_segments), data.draw(st.sampled_from([dtype, _acc(dtype)])), 0.0, 1.0)
    if data.draw(st.booleans()):
        keep = (keep > 0.5).to(keep.dtype)
    _check("segment_masked_batch", (_layout(data.draw, x), _layout(data.draw, b), _layout(data.draw, segments), keep),
           dtype, scale=2.0)


@st.composite
def windows(draw):
    shape = draw(sample_shapes(min_dims=2, max_dims=4))
    window = [draw(st.integers(1, f)) for f in shape[1:]]
    strides = [draw(st.integers(1, 4)) for _ in shape[1:]]
    total = math.prod(math.ceil((f - w) / s) + 1 for f, w, s in zip(shape[1:], window, strides))
    start = draw(st.integers(0, total - 1))
    count = draw(st.integers(1, min(8, total - start)))
    return shape, window, strides, start, count


@given(geometry=windows(), dtype=dtypes, seed=seeds, data=st.data())
def test_window_masked_batch(geometry, dtype, seed, data):
    shape, window, strides, start, count = geometry
    d = Draw(seed)
    x, b = d.uniform(shape, dtype), d.uniform(shape, dtype)
    _check("window_masked_batch", (_layout(data.draw, x), _layout(data.draw, b), window, strides, start, count), dtype,
           scale=2.0)


# --------------------------------------------------------------------------- causal ATE ops


@given(batch=batches, channels=st.integers(1, 4), h=sides, w=sides, dtype=dtypes, n_patches=st.integers(1, 5),
       n_rows=st.integers(1, 6), seed=seeds, data=st.data())
def test_block_patch_batch(batch, channels, h, w, dtype, n_patches, n_rows, seed, data):
    d = Draw(seed)
    bh, bw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    x = d.uniform((batch, channels, h, w), dtype)
    bank = d.uniform((n_patches, channels, bh, bw), dtype)
    index = d.ints(0, n_patches, (n_rows,))
    blocks = torch.stack([d.ints(0, h - bh + 1, (n_rows,)), d.ints(0, w - bw + 1, (n_rows,))], 1)
    _check("block_patch_batch", (_layout(data.draw, x), _layout(data.draw, bank), index, blocks), dtype)


THRESHOLD_MARGIN = 1e-3


@given(rows=batches, classes=st.integers(1, 4), h=sides, w=sides, dtype=dtypes, seed=seeds, data=st.data())
def test_region_outcome(rows, classes, h, w, dtype, seed, data):
    d = Draw(seed)
    channel = data.draw(st.sampled_from([-1] + list(range(classes))))
    outcome = data.draw(st.sampled_from(["dice", "soft_dice", "mean_prob"]))
    activation = data.draw(st.sampled_from(["none", "sigmoid"] + (["softmax"] if classes >= 2 else [])))
    threshold = data.draw(st.floats(0.05, 0.95))
    empty_is_one = data.draw(st.booleans())
    output = d.normal((rows, classes, h, w), dtype, scale=2.0)
    roi = d.uniform((h, w), torch.float64, 0, 1) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    gt = (d.uniform((1 if channel >= 0 else classes, h, w), torch.float64, 0, 1) < 0.4).to(dtype)
    if outcome == "dice":
        # A thresholded outcome jumps where p crosses the threshold: keep the
        # values (as the reference computes p, from the same inputs) off it.
        z = output.double()
        p = {"none": z, "sigmoid": torch.sigmoid(z), "softmax": torch.softmax(z, 1)}[activation]
        assume(bool(((p - threshold).abs() > THRESHOLD_MARGIN).all()))
    args = (_layout(data.draw, output), roi, gt, channel, outcome, activation, threshold, empty_is_one)
    _check("region_outcome", args, dtype, scale=100.0)


@given(batch=batches, gh=st.integers(1, 5), gw=st.integers(1, 5), n0=st.integers(1, 4), n1=st.integers(1, 6),
       bh=st.integers(1, 3), bw=st.integers(1, 3), dtype=dtypes, seed=seeds, data=st.data())
def test_causal_ate_map(batch, gh, gw, n0, n1, bh, bw, dtype, seed, data):
    d = Draw(seed)
    tau = data.draw(st.sampled_from([0.0, 0.05, 0.3]))
    base = d.uniform((batch,), dtype, 0, 1)
    # Some cells with effects well above tau, others with none (pruned).
    effect = d.normal((batch, gh, gw, 1), torch.float64) * (d.uniform((batch, gh, gw, 1), torch.float64, 0, 1) < 0.6)
    screen = (base.double()[:, None, None, None] + effect + d.uniform((batch, gh, gw, n0), torch.float64, -0.02, 0.02))
    full = base.double()[:, None, None, None] + effect * d.uniform((batch, gh, gw, n1), torch.float64, 0, 2)
    screen, full = screen.to(dtype), full.to(dtype)
    visited = d.uniform((batch, gh, gw), torch.float64, 0, 1) < 0.8
    if tau > 0:  # the screening and pruning compare with tau: keep the decisive values off it
        b64 = base.double()[:, None, None, None]
        assume(bool(((screen.double() - b64).abs() - tau).abs().gt(1e-3).all()))
        assume(bool(((full.double() - b64).mean(-1).abs() - tau).abs().gt(1e-3).all()))
    args = (_layout(data.draw, screen), _layout(data.draw, full), base, visited, [bh, bw], tau)
    _check("causal_ate_map", args, dtype, scale=4.0)


# --------------------------------------------------------------------------- progressive masking


@given(batch=batches, channels=st.integers(1, 4), h=sides, w=sides, dtype=dtypes, seed=seeds, data=st.data())
def test_rank_masked_batch(batch, channels, h, w, dtype, seed, data):
    d = Draw(seed)
    shape = (batch, channels, h, w)
    x, b = d.uniform(shape, dtype), d.uniform(shape, dtype)
    lead = batch if data.draw(st.booleans()) else 1
    ranks = torch.stack([torch.randperm(h * w, generator=d.g) for _ in range(lead)]).view(lead, h, w)
    step = data.draw(st.integers(1, h * w + 1))
    n_steps = -(-h * w // step) + 1
    start = data.draw(st.integers(0, n_steps))
    count = data.draw(st.integers(1, 6))
    _check("rank_masked_batch", (_layout(data.draw, x), _layout(data.draw, b), _layout(data.draw, ranks), step, start,
                                 count), dtype)


# --------------------------------------------------------------------------- every op is fuzzed


def test_every_registered_op_is_fuzzed():
    fuzzed = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    for case in op_cases.cases_for_registered_ops():
        name = case.id.lstrip("_").removesuffix("_")
        if case.id == "_guided_max_pool2d_backward":
            name = "guided_max_pool2d_backward"
        elif case.id == "_guided_relu_backward":
            name = "guided_relu_backward"
        elif case.id == "ig_accumulate_":
            name = "ig_accumulate"
        assert name in fuzzed, f"{case.op} has no property-based test here"
