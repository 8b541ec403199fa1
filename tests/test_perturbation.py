"""RISE, MFPP, occlusion and feature ablation against their oracles.

- RISE: the spec §3.1/§3.2 oracle written here in numpy (mirror-boundary
  half-pixel bilinear up-sampling, crop, ``Pᵀ M / (N p)``), and
  ``F.interpolate`` for the "torch" up-sampling; ``E[M] = p`` per pixel.
- MFPP: the spec §4.2 loop written here (fragment map, ``F.interpolate``
  bilinear up-sampling, crop, sigmoid scores, ``/ N``), given the same draws.
- Occlusion and feature ablation: Captum 0.9 (float64, several windows,
  strides, baselines, targets, masks).
- Stochastic methods are bit-identical for every batch size with one seed.
"""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import FeatureAblation, Occlusion

import fastattr
from fastattr.methods.perturbation import mfpp_schedule, rise_draws, rise_geometry
from models import single_thread  # noqa: F401


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(70)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 6 * 5, 3)).double().eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(71))


# --------------------------------------------------------------------------- RISE


def up_mirror_bilinear(g: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Spec §3.1: half-pixel bilinear up-sampling with a mirror boundary
    (index -1 -> 1, n -> n-2), written from the spec's description."""
    def axis(n, out):
        c = (np.arange(out) + 0.5) * n / out - 0.5
        i0 = np.floor(c).astype(int)
        t = c - i0
        i1 = i0 + 1
        i0 = np.abs(i0)
        i1 = np.where(i1 > n - 1, 2 * (n - 1) - i1, i1)
        return i0, i1, t

    r0, r1, tr = axis(g.shape[0], out_h)
    c0, c1, tc = axis(g.shape[1], out_w)
    top = g[r0][:, c0] * (1 - tc) + g[r0][:, c1] * tc
    bottom = g[r1][:, c0] * (1 - tc) + g[r1][:, c1] * tc
    return top * (1 - tr)[:, None] + bottom * tr[:, None]


def rise_oracle_masks(grids, shifts, size, grid_size, upsample):
    _, up = rise_geometry(size, grid_size)
    masks = []
    for g, (dy, dx) in zip(grids.double(), shifts.tolist()):
        if upsample == "reference":
            u = torch.from_numpy(up_mirror_bilinear(g.numpy(), *up))
        else:
            u = F.interpolate(g[None, None], size=up, mode="bilinear", align_corners=False)[0, 0]
        masks.append(u[dy:dy + size[0], dx:dx + size[1]])
    return torch.stack(masks)


def rise_oracle(model, x, target, grids, shifts, grid_size, p, upsample):
    masks = rise_oracle_masks(grids, shifts, tuple(x.shape[-2:]), grid_size, upsample)
    out = []
    for b in range(x.shape[0]):
        probs = torch.softmax(model(x[b:b + 1] * masks[:, None]), 1)[:, target[b]]
        out.append((probs[:, None, None] * masks).sum(0) / (len(masks) * p))
    return torch.stack(out)[:, None]


def test_skimage_agrees_with_the_mirror_oracle():
    from skimage.transform import resize

    g = np.random.default_rng(0).random((7, 7))
    torch.testing.assert_close(torch.from_numpy(up_mirror_bilinear(g, 256, 256)),
                               torch.from_numpy(resize(g, (256, 256), order=1, mode="reflect", anti_aliasing=False)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("upsample", ["reference", "torch"])
@pytest.mark.parametrize("grid_size, p", [(3, 0.5), (4, 0.2), (2, 1.0)])
def test_rise_equals_the_oracle(net, x, upsample, grid_size, p):
    g = torch.Generator().manual_seed(72)
    grids, shifts = rise_draws(40, grid_size, p, tuple(x.shape[-2:]), g)
    ours = fastattr.rise(net, x, [0, 2], grid_size=grid_size, p=p, grids=grids, shifts=shifts,
                         upsample=upsample, batch_size=7)
    expected = rise_oracle(net, x, [0, 2], grids, shifts, grid_size, p, upsample)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_rise_draws_match_the_generator():
    """All grids first, then the (row, col) shifts, in [0, cell)."""
    g = torch.Generator().manual_seed(73)
    grids, shifts = rise_draws(500, 7, 0.3, (224, 200), g)
    g = torch.Generator().manual_seed(73)
    assert torch.equal(grids, (torch.rand(500, 7, 7, generator=g) < 0.3).float())
    cell, up = rise_geometry((224, 200), 7)
    assert cell == (32, 29) and up == (256, 232)
    assert shifts.dtype == torch.int64 and shifts.shape == (500, 2)
    assert int(shifts[:, 0].min()) == 0 and int(shifts[:, 0].max()) == 31 and int(shifts[:, 1].max()) == 28


@pytest.mark.parametrize("upsample", ["reference", "torch"])
def test_rise_mask_mean_is_p_per_pixel(upsample):
    """A model whose softmax is constant gives S = mean_i M_i / p, and E[M] = p
    at every pixel: within 5 sigma of a Bernoulli(p) mean over N masks."""
    n, p = 4000, 0.3
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).double()
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)  # softmax = (1/2, 1/2) everywhere
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    sal = fastattr.rise(model, x, 0, n_masks=n, grid_size=8, p=p, upsample=upsample, batch_size=500,
                        generator=torch.Generator().manual_seed(74))
    mean_mask = 2 * sal * p  # S = 0.5 * mean(M) / p
    bound = 5 * math.sqrt(p * (1 - p) / n)
    assert float((mean_mask - p).abs().max()) < bound
    assert float(mean_mask.min()) >= 0 and float(mean_mask.max()) <= 1


# --------------------------------------------------------------------------- MFPP


def mfpp_oracle(model, x, target, pyramid, draws, crops, n, per_draw, n_levels, r):
    """Spec §4.2's loop for one image, with the given draws and crops."""
    h, w = x.shape[-2:]
    up = (h + math.floor(r * h), w + math.floor(r * w))
    levels = mfpp_schedule(n, per_draw, n_levels)
    sal = torch.zeros(h, w, dtype=torch.float64)
    for i in range(n):
        d = i // per_draw
        fragments = torch.as_tensor(draws[d]).double()[pyramid[levels[d]]]
        m_up = F.interpolate(fragments[None, None], size=up, mode="bilinear", align_corners=False)[0, 0]
        m = m_up[crops[i, 0]:crops[i, 0] + h, crops[i, 1]:crops[i, 1] + w]
        score = torch.sigmoid(model(x * m))[0, target]
        sal += score * m
    return (sal / n)[None, None]


def grid_segments(h, w, cells):
    rows = torch.arange(h)[:, None] * cells // h
    cols = torch.arange(w)[None, :] * cells // w
    return rows * cells + cols


def test_mfpp_equals_the_oracle(net, x):
    n, per_draw, n_levels, r = 37, 4, 3, 1.0
    pyramid = [grid_segments(12, 10, c) for c in (2, 3, 4)]
    g = torch.Generator().manual_seed(75)
    levels = mfpp_schedule(n, per_draw, n_levels)
    draws = [torch.rand(int(pyramid[lv].max()) + 1, generator=g) < 0.5 for lv in levels]
    crops = torch.stack([torch.randint(0, 13, (n,), generator=g), torch.randint(0, 11, (n,), generator=g)], 1)
    ours = fastattr.mfpp(net, x[:1], 1, n_masks=n, n_levels=n_levels, masks_per_draw=per_draw, resize_offset=r,
                         segments=[pyramid], draws=[draws], crops=crops, batch_size=5)
    expected = mfpp_oracle(net, x[:1], 1, pyramid, draws, crops, n, per_draw, n_levels, r)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_mfpp_without_offset_is_constant_on_fragments(net, x):
    """r = 0: no zoom, no crop: each mask, hence a one-mask saliency, is
    constant on every fragment of its level."""
    pyramid = [grid_segments(12, 10, 3)]
    sal = fastattr.mfpp(net, x[:1], 0, n_masks=1, n_levels=1, masks_per_draw=1, resize_offset=0.0,
                        segments=[pyramid], generator=torch.Generator().manual_seed(76))[0, 0]
    for label in pyramid[0].unique():
        values = sal[pyramid[0] == label]
        assert torch.equal(values, values[:1].expand_as(values))


def test_mfpp_label_base_does_not_matter(net, x):
    pyramid = [grid_segments(12, 10, c) for c in (2, 3)]
    kw = dict(n_masks=20, n_levels=2, masks_per_draw=4)
    a = fastattr.mfpp(net, x[:1], 0, segments=[pyramid], generator=torch.Generator().manual_seed(77), **kw)
    b = fastattr.mfpp(net, x[:1], 0, segments=[[s * 3 + 1 for s in pyramid]],
                      generator=torch.Generator().manual_seed(77), **kw)
    assert torch.equal(a, b)


def test_mfpp_slic_pyramid():
    from fastattr.methods.perturbation import mfpp_segments

    image = fastattr.data.load("shapes", "test", size=1)[0][0]
    pyramid = mfpp_segments(image, n_levels=3)
    counts = [int(s.max()) + 1 for s in pyramid]
    assert counts[0] < counts[1] < counts[2]
    for s, c in zip(pyramid, counts):
        assert s.shape == image.shape[1:] and torch.equal(s.unique(), torch.arange(c))


# --------------------------------------------------------------------------- occlusion and feature ablation


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.mark.parametrize("window, strides, baselines", [
    ((3, 3, 3), None, 0.0),
    ((1, 3, 3), (1, 2, 2), 0.25),          # last window of each dim clipped at the edge
    ((3, 4, 2), (1, 3, 2), "tensor"),      # a baseline image
    ((2, 5, 3), (1, 4, 3), 0.0),
    ((3, 12, 10), None, -1.0),             # one window: the whole input
    (2, 2, 0.0),                           # ints for every dim
])
@pytest.mark.parametrize("batch_size", [1, 4, None])
def test_occlusion_equals_captum(net, x, window, strides, baselines, batch_size):
    if baselines == "tensor":
        baselines = torch.rand(1, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(78))
    ours = fastattr.occlusion(net, x, [1, 2], sliding_window_shapes=window, strides=strides,
                              baselines=baselines, batch_size=batch_size)
    if isinstance(window, int):
        window, strides = (window,) * 3, (strides,) * 3
    captum = quiet(Occlusion(net).attribute, x, sliding_window_shapes=window, strides=strides,
                   baselines=baselines, target=[1, 2])
    # Captum returns float32 for float64 inputs (its window weights are float32)
    torch.testing.assert_close(ours, captum.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, occlusion_oracle(net, x, [1, 2], window, strides, baselines),
                               rtol=1e-12, atol=1e-14)


def occlusion_oracle(model, x, target, window, strides, baselines):
    """Windows at multiples of the stride, ceil((F - w) / s) + 1 per dim (the
    last clipped at the edge); each element averages f(x) - f(x_window) over
    the windows covering it. float64, one window at a time."""
    shape = x.shape[1:]
    strides = strides or (1,) * len(shape)
    base = torch.broadcast_to(torch.as_tensor(baselines, dtype=x.dtype), x.shape)
    counts = [math.ceil((f - w) / s) + 1 for f, w, s in zip(shape, window, strides)]
    total = torch.zeros_like(x)
    cover = torch.zeros_like(x)
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        f0 = model(x)[rows, target]
        for pos in np.ndindex(*counts):
            inside = torch.zeros(shape, dtype=torch.bool)
            inside[tuple(slice(p * s, p * s + w) for p, s, w in zip(pos, strides, window))] = True
            delta = f0 - model(torch.where(inside, base, x))[rows, target]
            total += delta.view(-1, *[1] * len(shape)) * inside
            cover += inside
    return total / cover


def test_occlusion_on_sequences():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 9, 4)).double()
    x = torch.randn(3, 2, 11, dtype=torch.float64)
    ours = fastattr.occlusion(model, x, 3, sliding_window_shapes=(2, 4), strides=(1, 3))
    captum = quiet(Occlusion(model).attribute, x, sliding_window_shapes=(2, 4), strides=(1, 3), target=3)
    torch.testing.assert_close(ours, captum.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, occlusion_oracle(model, x, [3, 3, 3], (2, 4), (1, 3), 0.0),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mask", ["none", "shared-spatial", "shared-full", "per-sample"])
@pytest.mark.parametrize("baselines", [0.0, 0.5])
def test_feature_ablation_equals_captum(net, x, mask, baselines):
    g = torch.Generator().manual_seed(79)
    feature_mask = {
        "none": None,
        "shared-spatial": torch.randint(0, 7, (1, 1, 12, 10), generator=g),
        "shared-full": torch.randint(3, 30, (1, 3, 12, 10), generator=g),  # ids need not start at 0
        "per-sample": torch.randint(0, 9, (2, 3, 12, 10), generator=g),
    }[mask]
    ours = fastattr.feature_ablation(net, x, [0, 1], feature_mask=feature_mask, baselines=baselines, batch_size=13)
    captum_mask = None if feature_mask is None else feature_mask.expand(-1, 3, -1, -1)
    expected = quiet(FeatureAblation(net).attribute, x, target=[0, 1], feature_mask=captum_mask, baselines=baselines)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_feature_ablation_definition(net, x):
    """Independent of Captum: ablating a feature changes exactly its elements'
    attribution to f(x) - f(x with it ablated)."""
    feature_mask = grid_segments(12, 10, 2)[None, None]
    attr = fastattr.feature_ablation(net, x, [2, 0], feature_mask=feature_mask)
    with torch.no_grad():
        f0 = net(x)[[0, 1], [2, 0]]
        for k in range(4):
            ablated = torch.where(feature_mask == k, torch.zeros_like(x), x)
            expected = f0 - net(ablated)[[0, 1], [2, 0]]
            region = (feature_mask == k).expand_as(x)
            for b in range(2):
                assert torch.allclose(attr[b][region[b]], expected[b].expand(int(region[b].sum())), rtol=1e-12)


# --------------------------------------------------------------------------- shared behaviour


class RowByRow(nn.Module):
    """The model evaluated on one row at a time: batch-invariant by construction
    (a BLAS call on 1 row may round differently from one on 64), so that the
    test sees only what the method itself does with the batch size."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return torch.cat([self.model(z[i:i + 1]) for i in range(z.shape[0])])


@pytest.mark.parametrize("method", ["rise", "mfpp"])
def test_bit_identical_for_any_batch_size(net, x, method):
    """Draws, tiling and accumulation do not depend on batch_size: given a
    batch-invariant model the result is bit-identical."""
    net = RowByRow(net)
    if method == "rise":
        def run(bs):
            return fastattr.rise(net, x, n_masks=130, grid_size=3, batch_size=bs,
                                 generator=torch.Generator().manual_seed(80))
    else:
        pyramid = [grid_segments(12, 10, c) for c in (2, 3)]

        def run(bs):
            return fastattr.mfpp(net, x, n_masks=70, n_levels=2, masks_per_draw=8, segments=[pyramid, pyramid],
                                 batch_size=bs, generator=torch.Generator().manual_seed(80))
    reference = run(None)
    for bs in (1, 7, 64, 1000):
        assert torch.equal(run(bs), reference), bs


def test_default_target_is_the_top_class(net, x):
    top = net(x).argmax(1)
    kw = dict(n_masks=30, grid_size=3)
    torch.testing.assert_close(fastattr.rise(net, x, generator=torch.Generator().manual_seed(1), **kw),
                               fastattr.rise(net, x, top, generator=torch.Generator().manual_seed(1), **kw))
    torch.testing.assert_close(fastattr.occlusion(net, x, sliding_window_shapes=(3, 4, 4), strides=(1, 2, 2)),
                               fastattr.occlusion(net, x, top, sliding_window_shapes=(3, 4, 4), strides=(1, 2, 2)))


def test_bad_arguments(net, x):
    with pytest.raises(ValueError, match="grid_size 13 is larger than the image"):
        fastattr.rise(net, x, grid_size=13)
    with pytest.raises(ValueError, match="p must be in \\(0, 1\\]"):
        fastattr.rise(net, x, p=0.0)
    with pytest.raises(ValueError, match="p must be in \\(0, 1\\]"):
        fastattr.rise(net, x, p=1.5)
    with pytest.raises(ValueError, match="n_masks must be at least 1, got 0"):
        fastattr.rise(net, x, n_masks=0)
    with pytest.raises(ValueError, match="upsample must be one of"):
        fastattr.rise(net, x, upsample="nearest")
    with pytest.raises(ValueError, match="activation must be one of"):
        fastattr.rise(net, x, activation="relu")
    with pytest.raises(ValueError, match="give both grids and shifts"):
        fastattr.rise(net, x, grids=torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match=r"shifts must lie in \[0, 4\) x \[0, 4\)"):
        fastattr.rise(net, x, grid_size=3, grids=torch.ones(2, 3, 3), shifts=torch.tensor([[0, 0], [4, 0]]))
    seg = nn.Conv2d(3, 1, 1).double()
    with pytest.raises(ValueError, match="softmax' over a model output with one channel is constant"):
        fastattr.rise(seg, x, fastattr.targets.region(torch.ones(1, 12, 10)), activation="softmax", n_masks=2)
    with pytest.raises(ValueError, match="images \\(B, C, H, W\\)"):
        fastattr.rise(net, x[0])
    with pytest.raises(ValueError, match="p_keep must be in"):
        fastattr.mfpp(net, x, p_keep=2.0)
    with pytest.raises(ValueError, match=r"sliding_window_shapes must be between 1 and the per-sample input "
                                         r"shape \(3, 12, 10\) in every dim, got \(3, 13, 2\)"):
        fastattr.occlusion(net, x, sliding_window_shapes=(3, 13, 2))
    with pytest.raises(ValueError, match="occlusion needs sliding_window_shapes"):
        fastattr.occlusion(net, x)
    with pytest.raises(ValueError, match="strides .* at most the window"):
        fastattr.occlusion(net, x, sliding_window_shapes=(3, 2, 2), strides=(1, 3, 1))
    with pytest.raises(ValueError, match="must have 3 entries"):
        fastattr.occlusion(net, x, sliding_window_shapes=(2, 2))
    with pytest.raises(ValueError, match="feature_mask of shape \\(3, 3, 12, 10\\) does not broadcast"):
        fastattr.feature_ablation(net, x, feature_mask=torch.zeros(3, 3, 12, 10, dtype=torch.long))
    with pytest.raises(TypeError, match="feature_mask must hold integer feature ids"):
        fastattr.feature_ablation(net, x, feature_mask=torch.zeros(1, 3, 12, 10))


def test_named_feature_masks(net, x):
    grid = fastattr.feature_ablation(net, x, [0, 1], feature_mask="grid:4")
    cells = (torch.arange(12)[:, None] // 4) * 3 + torch.arange(10)[None] // 4
    torch.testing.assert_close(grid, fastattr.feature_ablation(net, x, [0, 1], feature_mask=cells[None, None]),
                               rtol=0, atol=0)
    from fastattr.methods.perturbation import mfpp_segments

    slic = fastattr.feature_ablation(net, x, [0, 1], feature_mask="slic:6")
    for b in range(2):  # each image's own superpixels, every channel: one value per superpixel
        labels = mfpp_segments(x[b], n_levels=1, base_segments=6)[0]
        for label in labels.unique():
            values = slic[b][:, labels == label]
            assert torch.equal(values, values.flatten()[:1].expand_as(values))
        assert slic[b].unique().numel() > 1
    with pytest.raises(ValueError, match="'grid:K' or 'slic:N'"):
        fastattr.feature_ablation(net, x, feature_mask="grid:0")
