"""The chunked evaluation engine: the planner's tiling, the batch-size rule's
properties, both evaluators, and no host synchronisation per tile."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import fastattr
from fastattr import engine
from fastattr.targets import resolve
from models import ConvNet, single_thread  # noqa: F401


@settings(max_examples=200, deadline=None)
@given(n_samples=st.integers(1, 40), n_points=st.integers(1, 40), batch_size=st.integers(1, 100),
       inner=st.sampled_from(["samples", "points"]))
def test_plan_covers_the_grid_once_within_the_batch_size(n_samples, n_points, batch_size, inner):
    tiles = engine.plan(n_samples, n_points, batch_size, inner)
    seen = torch.zeros(n_samples, n_points, dtype=torch.int64)
    for t in tiles:
        assert 1 <= t.rows <= batch_size
        rows_s, rows_k = t.sample_index("cpu"), t.point_index("cpu")
        assert rows_s.shape == rows_k.shape == (t.rows,)
        seen.index_put_((rows_s, rows_k), torch.ones(t.rows, dtype=torch.int64), accumulate=True)
        # row layout: the `inner` index runs fastest
        fast, slow = (rows_s, rows_k) if inner == "samples" else (rows_k, rows_s)
        n_fast = t.n_samples if inner == "samples" else t.n_points
        first = (t.s0, t.k0) if inner == "samples" else (t.k0, t.s0)
        assert torch.equal(fast, torch.arange(first[0], first[0] + n_fast).repeat(t.rows // n_fast))
        assert torch.equal(slow, torch.arange(first[1], first[1] + t.rows // n_fast).repeat_interleave(n_fast))
    assert bool((seen == 1).all())
    # samples split into balanced groups
    sizes = {t.n_samples for t in tiles}
    assert max(sizes) - min(sizes) <= 1
    # a batch that fits in one pass is never split over tiles
    if inner == "samples" and n_samples <= batch_size:
        assert all(t.n_samples == n_samples for t in tiles)
    if inner == "points" and n_points <= batch_size:
        assert all(t.n_points == n_points for t in tiles)


SHAPES = [(3, 8, 8), (3, 32, 32), (1, 100, 100), (3, 64, 64), (3, 224, 224), (3, 512, 512), (3, 4096, 4096)]  # growing


def test_cuda_rows_bounded_by_elements_and_device_memory():
    """The CUDA rule: at most 2**25 input elements per pass, and fewer rows on a
    smaller card (a quarter of its memory at 512 bytes per input element)."""
    gib = 2**30
    image = 3 * 224 * 224
    assert engine.cuda_rows(image, 141 * gib) == 2**25 // image == 222
    assert engine.cuda_rows(image, 24 * gib) == 24 * gib // 4 // (image * 512) == 83
    previous = None
    for memory in (8 * gib, 16 * gib, 40 * gib, 80 * gib, 141 * gib):
        rows = engine.cuda_rows(image, memory)
        assert rows * image * 512 <= memory // 4 and rows * image <= 2**25
        assert previous is None or rows >= previous
        previous = rows


@pytest.mark.parametrize("forward_only", [False, True])
@pytest.mark.parametrize("batch", [1, 4, 12, 16, 1000])
def test_default_batch_size_properties(batch, forward_only):
    """Elements per pass bounded (whatever n_steps), a batch that fits is not
    split unevenly, monotone in the sample size, always 1..512 rows;
    forward-only passes never take more rows than gradient passes."""
    previous = None
    for shape in SHAPES:
        x = torch.empty((1, *shape)).expand(batch, *shape)
        rows = engine.default_batch_size(x, forward_only=forward_only)
        assert rows <= engine.default_batch_size(x)
        per_sample = x[0].numel()
        assert 1 <= rows <= 512
        assert rows * per_sample <= max(engine._CPU_MAX_ELEMENTS, per_sample)
        if batch * per_sample <= engine._CPU_MAX_ELEMENTS and batch <= 512:
            assert rows >= batch  # all samples of the batch in every pass
        if previous is not None:
            assert rows <= previous  # larger samples, fewer rows
        previous = rows


def test_forward_only_rows_stay_within_the_cache_bound():
    """Gradient passes of large samples are raised to 8 rows; forward-only
    passes stay at 2**19 input elements (a 3x256x256 U-Net ran 30% faster
    per row at 2 rows than at 8, see engine's comment)."""
    x = torch.empty(1, 3, 256, 256)
    assert engine.default_batch_size(x) == 8
    assert engine.default_batch_size(x, forward_only=True) == (1 << 19) // (3 * 256 * 256) == 2
    assert engine.check_batch_size(None, x, forward_only=True) == 2
    small = torch.empty(64, 3, 64, 64)  # small samples: the same rule for both
    assert engine.default_batch_size(small, forward_only=True) == engine.default_batch_size(small) == 64


def test_check_batch_size_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="batch_size must be None or an int, got float"):
        engine.check_batch_size(2.0, x)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        engine.check_batch_size(0, x)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(60)
    return ConvNet(size=8).double().eval()


def test_evaluators_score_and_differentiate_each_row(net):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    points = torch.randn(4, 3, 3, 8, 8, dtype=torch.float64)  # 4 points per sample
    target = resolve(net, x, [0, 3, 4])
    classes = torch.tensor([0, 3, 4])
    for inner in ("samples", "points"):
        tiles = engine.plan(3, 4, 5, inner)

        def build(t):
            return points[t.point_index("cpu"), t.sample_index("cpu")]

        for (t, grad, s), (t2, s2) in zip(engine.gradients(net, target, tiles, build),
                                          engine.scores(net, target, tiles, build)):
            rows = build(t).requires_grad_()
            expected = net(rows).gather(1, classes[t.sample_index("cpu")][:, None]).squeeze(1)
            (expected_grad,) = torch.autograd.grad(expected.sum(), rows)
            assert t == t2 and not s.requires_grad and not s2.requires_grad
            torch.testing.assert_close(s, expected.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(s2, expected.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


class HostSyncCounter(TorchDispatchMode):
    """Counts the ops that copy a device value to the host (item / int / bool)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["integrated_gradients", "gnl_integrated_gradients", "saliency", "smooth_grad",
                                    "rise", "occlusion", "feature_ablation"])
@pytest.mark.parametrize("target", [[1, 2, 3, 0], None, "region"])
def test_no_host_sync_per_tile(net, method, target):
    """The number of host syncs of a call does not grow with its number of tiles."""
    fn = fastattr.METHODS[method]
    kw = {"integrated_gradients": {"n_steps": 16}, "gnl_integrated_gradients": {"n_steps": 16},
          "smooth_grad": {"n_samples": 16, "stdevs": 0.1}, "rise": {"n_masks": 16, "grid_size": 3},
          "occlusion": {"sliding_window_shapes": (3, 4, 4), "strides": (3, 2, 2)},
          "feature_ablation": {"feature_mask": torch.arange(16).view(1, 1, 4, 4).repeat_interleave(2, 2)
                               .repeat_interleave(2, 3)}}.get(method, {})
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    if target == "region":
        net_seg = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1))
        model, t = net_seg.double(), fastattr.targets.region(torch.rand(4, 8, 8) > 0.5)
    else:
        model, t = net, target
    counts = []
    for batch_size in (64, 4, 1):  # 1, many and very many tiles
        counter = HostSyncCounter()
        with counter:
            fn(model, x, t, batch_size=batch_size, **kw)
        counts.append(counter.syncs)
    assert counts[0] == counts[1] == counts[2], counts
