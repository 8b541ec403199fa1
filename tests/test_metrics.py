"""Tests of fastattr.metrics against a clean-room oracle of spec §3.4.

The oracle (``rise_causal_oracle``) is written from the spec alone: float64,
one image at a time, the step loop of RISE's ``CausalMetric.single_run`` (one
forward call per step, ``order = flip(argsort(saliency))``, all channels of
the next ``step`` pixels copied from ``finish``), the substrates built from
scipy (``gaussian_filter`` of an 11x11 delta as each channel's kernel of a
(C, C, 11, 11) ``conv2d`` with zero padding 5) and the AUC formula. The
library builds the same images with the rank_masked_batch op, its own blur
kernel and the engine's batched score evaluator; nothing is shared.

Also: endpoint identities, AUC identities and a closed form, chunked ==
unchunked, per-image == batched, one forward pass per tile (no per-step
loop), region targets of a segmentation model, the pointing games on
hand-built maps, and the error messages.
"""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from fastattr import metrics, targets

# --------------------------------------------------------------------------- the oracle


def gkern_oracle(channels, klen=11, nsig=5):
    """Spec §3.4: (C, C, klen, klen), channel kernels = gaussian_filter of a delta."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    k = gaussian_filter(delta, nsig)
    kern = np.zeros((channels, channels, klen, klen))
    for c in range(channels):
        kern[c, c] = k
    return torch.from_numpy(kern)


def blur_oracle(img):
    return torch.nn.functional.conv2d(img, gkern_oracle(img.shape[1]).to(img.dtype), padding=5)


def rise_causal_oracle(prob_model, img, saliency, mode, step, substrate, target=None):
    """One image (1, C, H, W): the scores after 0..n_steps steps and their AUC."""
    _, c_, h, w = img.shape
    hw = h * w
    with torch.no_grad():
        c = int(prob_model(img).argmax(1)) if target is None else target
    n_steps = math.ceil(hw / step)
    if mode == "deletion":
        start, finish = img.clone(), substrate.clone()
    else:
        start, finish = substrate.clone(), img.clone()
    order = np.flip(np.argsort(saliency.reshape(hw).numpy()))
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = float(prob_model(start)[0, c])
        if i < n_steps:
            idx = torch.from_numpy(order[step * i: step * (i + 1)].copy())
            s_flat, f_flat = start.view(1, c_, hw), finish.view(1, c_, hw)
            s_flat[:, :, idx] = f_flat[:, :, idx]
    area = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)
    return scores, area


# --------------------------------------------------------------------------- fixtures


def classifier(seed=0, classes=5):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes))
    return net.double().eval()


def softmaxed(net):
    return lambda x: torch.softmax(net(x), 1)


def data(b=3, h=10, w=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)
    sal = torch.randn(b, h, w, generator=g, dtype=torch.float64)  # continuous: tie-free
    return x, sal


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.rows = net, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x)


# --------------------------------------------------------------------------- the blur


def test_blur_kernel_matches_the_spec_weights_and_scipy():
    k = metrics.blur_kernel()
    torch.testing.assert_close(k, torch.tensor(metrics.BLUR_WEIGHTS, dtype=torch.float64), rtol=0, atol=1e-7)
    g = gkern_oracle(1)[0, 0]
    torch.testing.assert_close(torch.outer(k, k), g, rtol=0, atol=1e-15)
    assert abs(float(torch.outer(k, k).sum()) - 1.0) < 1e-12


def test_blur_equals_rise_conv2d_and_center_shifts_the_padding():
    x, _ = data(2, 17, 13)
    torch.testing.assert_close(metrics.blur(x), blur_oracle(x), rtol=0, atol=1e-14)
    mean = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    m = mean.view(1, 3, 1, 1)
    torch.testing.assert_close(metrics.blur(x, center=mean), blur_oracle(x - m) + m, rtol=0, atol=1e-14)
    # A constant image equal to the centre is its own blur; with zero padding it is not.
    flat = m.expand(1, 3, 9, 9).clone()
    torch.testing.assert_close(metrics.blur(flat, center=mean), flat, rtol=0, atol=1e-15)
    assert not torch.allclose(metrics.blur(flat), flat)


# --------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("step", [12, 7, 1, 120, 500])
@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_equals_the_oracle_on_tie_free_maps(mode, step):
    """Every score of every image and the AUC, float64, for steps that divide
    H*W = 120, that do not, one pixel, the whole image at once and more."""
    net = classifier()
    x, sal = data()
    fn = metrics.deletion if mode == "deletion" else metrics.insertion
    curve, area = fn(net, x, sal, step=step)
    assert curve.shape == (3, math.ceil(120 / step) + 1) and area.shape == (3,)
    sub = torch.zeros_like(x) if mode == "deletion" else blur_oracle(x)
    for i in range(3):
        want, want_auc = rise_causal_oracle(softmaxed(net), x[i:i + 1], sal[i], mode, step, sub[i:i + 1])
        torch.testing.assert_close(curve[i], torch.from_numpy(want), rtol=0, atol=1e-12)
        assert abs(float(area[i]) - want_auc) < 1e-12


def test_equals_the_oracle_with_tensor_substrate_center_and_targets():
    net = classifier(seed=3)
    x, sal = data(seed=4)
    mean = torch.tensor([0.3, 0.4, 0.5], dtype=torch.float64)
    tgt = [4, 0, 2]
    curve, area = metrics.insertion(net, x, sal[:, None], target=tgt, step=9, center=mean, batch_size=5)
    sub = blur_oracle(x - mean.view(1, 3, 1, 1)) + mean.view(1, 3, 1, 1)
    other = torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    dcurve, _ = metrics.deletion(net, x, sal, step=9, substrate=other, target=tgt)
    for i in range(3):
        want, want_auc = rise_causal_oracle(softmaxed(net), x[i:i + 1], sal[i], "insertion", 9, sub[i:i + 1], tgt[i])
        torch.testing.assert_close(curve[i], torch.from_numpy(want), rtol=0, atol=1e-12)
        assert abs(float(area[i]) - want_auc) < 1e-12
        want, _ = rise_causal_oracle(softmaxed(net), x[i:i + 1], sal[i], "deletion", 9, other[i:i + 1], tgt[i])
        torch.testing.assert_close(dcurve[i], torch.from_numpy(want), rtol=0, atol=1e-12)


def test_float32_model_close_to_the_oracle():
    net = classifier(seed=6)
    x, sal = data(seed=7)
    curve, _ = metrics.deletion(net.float(), x.float(), sal.float(), step=11)
    assert curve.dtype == torch.float32
    for i in range(3):
        want, _ = rise_causal_oracle(softmaxed(net.double()), x[i:i + 1], sal[i], "deletion", 11,
                                     torch.zeros_like(x[i:i + 1]))
        torch.testing.assert_close(curve[i].double(), torch.from_numpy(want), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_endpoints(mode):
    """Deletion starts at the image's score and ends at the substrate's;
    insertion the reverse (the target fixed by the original image)."""
    net = classifier(seed=8)
    x, sal = data(b=4, seed=9)
    sub = torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    fn = metrics.deletion if mode == "deletion" else metrics.insertion
    curve, _ = fn(net, x, sal, step=13, substrate=sub)
    with torch.no_grad():
        c = net(x).argmax(1)
        p_x = torch.softmax(net(x), 1).gather(1, c[:, None])[:, 0]
        p_s = torch.softmax(net(sub), 1).gather(1, c[:, None])[:, 0]
    first, last = (p_x, p_s) if mode == "deletion" else (p_s, p_x)
    torch.testing.assert_close(curve[:, 0], first, rtol=0, atol=1e-14)
    torch.testing.assert_close(curve[:, -1], last, rtol=0, atol=1e-14)


def test_auc_identities():
    for k in (0.0, 0.37, 1.0, -2.5):
        for n in (1, 2, 7, 225):
            assert float(metrics.auc(torch.full((n,), k, dtype=torch.float64))) == pytest.approx(k, abs=1e-15)
    assert float(metrics.auc(torch.tensor([0.0, 1.0]))) == 0.5
    curve = torch.rand(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    want = np.trapezoid(curve.numpy(), dx=1 / 29, axis=1) if hasattr(np, "trapezoid") else np.trapz(curve.numpy(), dx=1 / 29, axis=1)
    torch.testing.assert_close(metrics.auc(curve), torch.from_numpy(want), rtol=0, atol=1e-14)


def test_constant_model_gives_constant_curve_and_auc():
    const = lambda z: torch.full((z.shape[0], 3), 0.25, dtype=z.dtype)  # noqa: E731
    x, sal = data()
    for fn in (metrics.deletion, metrics.insertion):
        curve, area = fn(const, x, sal, step=16, activation=None, target=1)
        assert bool((curve == 0.25).all())
        torch.testing.assert_close(area, torch.full((3,), 0.25, dtype=torch.float64), rtol=0, atol=1e-15)


def test_closed_form_for_the_channel_mean_model():
    """f = mean of channel 0, zero substrate, positive inputs, saliency = the
    channel itself (the true order): the deletion curve decreases monotonically,
    equals the total minus the cumulative sums of the sorted values, and so
    does its AUC."""
    mean0 = lambda z: z[:, 0].flatten(1).mean(1, keepdim=True)  # noqa: E731
    x, _ = data(b=2, h=8, w=9, seed=12)
    x = x + 0.1
    step = 5
    curve, area = metrics.deletion(mean0, x, x[:, 0], step=step, activation=None, target=0)
    assert bool((curve[:, 1:] < curve[:, :-1]).all())
    for i in range(2):
        v = np.sort(x[i, 0].flatten().numpy())[::-1]
        n_steps = math.ceil(72 / step)  # 15: the last step removes the 2 pixels left
        removed = np.concatenate([[0.0], np.cumsum(v)])[np.minimum(np.arange(n_steps + 1) * step, 72)]
        want = (v.sum() - removed) / 72
        torch.testing.assert_close(curve[i], torch.from_numpy(want), rtol=0, atol=1e-14)
        assert abs(float(area[i]) - (want.sum() - want[0] / 2 - want[-1] / 2) / (len(want) - 1)) < 1e-14


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_chunked_equals_unchunked_and_per_image_equals_batched(mode):
    net = classifier(seed=13)
    x, sal = data(b=5, seed=14)
    fn = metrics.deletion if mode == "deletion" else metrics.insertion
    full, full_auc = fn(net, x, sal, step=10, batch_size=10_000)
    for bs in (1, 4, 13, 64, None):
        curve, area = fn(net, x, sal, step=10, batch_size=bs)
        torch.testing.assert_close(curve, full, rtol=0, atol=1e-14)
        torch.testing.assert_close(area, full_auc, rtol=0, atol=1e-14)
    for i in range(5):
        curve, area = fn(net, x[i:i + 1], sal[i:i + 1], step=10, batch_size=7)
        torch.testing.assert_close(curve[0], full[i], rtol=0, atol=1e-14)
        torch.testing.assert_close(area[0], full_auc[i], rtol=0, atol=1e-14)


def test_one_forward_pass_per_tile():
    """The whole curve of every image goes through the model in tiles of
    batch_size rows: 2 images x 13 points in one pass (plus one pass for the
    target on the original images), never one call per step."""
    counted = Counting(classifier(seed=15))
    x, sal = data(b=2, seed=16)
    metrics.deletion(counted, x, sal, step=10, batch_size=26)
    assert (counted.calls, counted.rows) == (2, 2 + 26)
    counted.calls = counted.rows = 0
    metrics.deletion(counted, x, sal, step=10, batch_size=8, target=0)
    assert counted.calls == math.ceil(26 / 8) and counted.rows == 26


# --------------------------------------------------------------------------- segmentation


class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(17)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_region_target_of_a_segmentation_model_equals_the_oracle():
    """Deletion/insertion of a region target: the score is the sum of the
    sigmoid map over each image's region; the oracle scores it per step."""
    net = TinySeg().double().eval()
    x, sal = data(b=2, h=8, w=8, seed=18)
    regions = torch.zeros(2, 8, 8, dtype=torch.bool)
    regions[0, 2:5, 3:7] = True
    regions[1, 5:, :4] = True
    tgt = targets.region(regions)
    for mode, fn in (("deletion", metrics.deletion), ("insertion", metrics.insertion)):
        curve, area = fn(net, x, sal, target=tgt, step=6, activation="sigmoid", batch_size=9)
        sub = torch.zeros_like(x) if mode == "deletion" else blur_oracle(x)
        for i in range(2):
            def prob(z, i=i):
                return (torch.sigmoid(net(z)) * regions[i]).flatten(1).sum(1, keepdim=True)
            want, want_auc = rise_causal_oracle(prob, x[i:i + 1], sal[i], mode, 6, sub[i:i + 1], target=0)
            torch.testing.assert_close(curve[i], torch.from_numpy(want), rtol=0, atol=1e-12)
            assert abs(float(area[i]) - want_auc) < 1e-12


# --------------------------------------------------------------------------- pointing games


def test_pointing_game_hits_misses_tolerance_and_ties():
    sal = torch.zeros(4, 10, 10)
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    sal[0, 3, 3] = 1  # inside
    sal[1, 3, 7] = 1  # 4 px right of the mask (column 3)
    sal[2, 8, 8] = 1  # (8,8) to (3,3): sqrt(50) = 7.07
    sal[3, 9, 9] = sal[3, 2, 2] = 1  # tie: the first in row-major order, (2, 2), counts
    assert metrics.pointing_game(sal, masks, tolerance=0).tolist() == [True, False, False, True]
    assert metrics.pointing_game(sal, masks, tolerance=4).tolist() == [True, True, False, True]
    assert metrics.pointing_game(sal, masks, tolerance=7.0).tolist() == [True, True, False, True]
    assert metrics.pointing_game(sal[:, None], masks[:, None].float(), tolerance=7.1).tolist() == [True] * 4


def test_energy_pointing_game_closed_form():
    sal = torch.tensor([[[1.0, 2.0], [3.0, -4.0]], [[0.0, 0.0], [0.0, -1.0]]])
    masks = torch.tensor([[[True, False], [True, True]], [[True, True], [False, False]]])
    torch.testing.assert_close(metrics.energy_pointing_game(sal, masks), torch.tensor([4 / 6, 0.0]))


def test_heatmap():
    a = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(metrics.heatmap(a), a.sum(1).abs())
    assert torch.equal(metrics.heatmap(a[:, :1]), a[:, 0])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(saliency=torch.zeros(2, 10, 12)), ValueError,
     r"saliency must have shape \(3, 10, 12\) or \(3, 1, 10, 12\) \(one map per image of inputs \(3, 3, 10, 12\)\), "
     r"got \(2, 10, 12\)"),
    (dict(saliency=torch.full((3, 10, 12), float("nan"))), ValueError, "saliency contains NaN or infinite values"),
    (dict(step=0), ValueError, "step must be at least 1 pixel, got 0"),
    (dict(step=2.5), TypeError, r"step must be an int \(pixels per step\), got float"),
    (dict(substrate="noise"), ValueError, "substrate must be 'zeros', 'blur', a number or a tensor, got 'noise'"),
    (dict(substrate=torch.zeros(3, 3, 5, 5)), ValueError, r"substrate of shape \(3, 3, 5, 5\) does not broadcast"),
    (dict(activation="relu"), ValueError, "activation must be one of"),
    (dict(center=[0.1, 0.2]), ValueError, r"center must be a number or one value per channel \(3\), got shape \(2,\)"),
    (dict(inputs=torch.zeros(3, 10, 12)), ValueError, r"inputs must be images \(B, C, H, W\)"),
])
def test_errors(kwargs, error, match):
    x, sal = data()
    args = dict(inputs=x, saliency=sal)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        metrics.deletion(classifier(), **args)


def test_pointing_game_errors():
    sal = torch.rand(2, 5, 5)
    with pytest.raises(ValueError, match=r"masks of images \[1\] are empty"):
        m = torch.zeros(2, 5, 5, dtype=torch.bool)
        m[0, 0, 0] = True
        metrics.pointing_game(sal, m)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 5, 5\)"):
        metrics.pointing_game(sal, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        metrics.pointing_game(sal, torch.ones(2, 5, 5, dtype=torch.bool), tolerance=-1)


def test_a_coarser_step_reads_every_kth_image_of_the_curve():
    """Step k*s removes t*k*s pixels at its step t, which the curve at step s
    reaches at step k*t: when k*s tiles H*W, the coarse curve is every k-th
    score of the fine one (benchmarks/seed_claim.py reads RISE's 8-row step off
    the protocol's 1-row curve this way)."""
    net = classifier(seed=19)
    x, sal = data(b=2, h=8, w=12, seed=20)
    fine, _ = metrics.insertion(net, x, sal, step=12)  # 8 steps
    coarse, area = metrics.insertion(net, x, sal, step=48)  # 2 steps
    torch.testing.assert_close(coarse, fine[:, ::4], rtol=0, atol=1e-14)
    torch.testing.assert_close(area, metrics.auc(fine[:, ::4]), rtol=0, atol=1e-14)
