"""Targets (fastattr.targets): region targets for segmentation work batched with
every method, callables get the rows' sample indices or are checked to be
row-wise, and errors speak of the user's batch.

Oracle for "batched": the same method called on each image alone (where no
chunk ever holds another image), concatenated."""

import pytest
import torch
import torch.nn as nn

import fastattr
from fastattr.targets import box, region
from models import single_thread  # noqa: F401

B, H = 3, 16


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(50)
    return fastattr.models.LesionUNet(widths=(4, 6, 8, 8)).double().eval()


@pytest.fixture(scope="module")
def two_class_unet():
    torch.manual_seed(51)
    return fastattr.models.LesionUNet(widths=(4, 6, 8, 8), out_channels=2).double().eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(B, 3, H, H, dtype=torch.float64, generator=torch.Generator().manual_seed(52))


@pytest.fixture(scope="module")
def masks():
    m = torch.zeros(B, 1, H, H, dtype=torch.bool)
    m[0, 0, 2:9, 3:7] = True
    m[1, 0, 8:15, 8:16] = True
    m[2, 0, 0:4, 0:16] = True
    return m


N_NOISE = 4


def noise_for(x):
    return torch.randn((x.shape[0] * N_NOISE,) + tuple(x.shape[1:]), dtype=x.dtype,
                       generator=torch.Generator().manual_seed(53))


# method -> call(model, x, target, batch_size, noise rows for x)
CALLS = {
    "saliency": lambda m, x, t, bs, e: fastattr.saliency(m, x, t, batch_size=bs),
    "input_x_gradient": lambda m, x, t, bs, e: fastattr.input_x_gradient(m, x, t, batch_size=bs),
    "guided_backprop": lambda m, x, t, bs, e: fastattr.guided_backprop(m, x, t, batch_size=bs),
    "deconvnet": lambda m, x, t, bs, e: fastattr.deconvnet(m, x, t, batch_size=bs),
    "integrated_gradients": lambda m, x, t, bs, e: fastattr.integrated_gradients(m, x, t, n_steps=5, batch_size=bs),
    "gnl_integrated_gradients": lambda m, x, t, bs, e: fastattr.gnl_integrated_gradients(m, x, t, n_steps=5,
                                                                                         batch_size=bs),
    "smooth_grad": lambda m, x, t, bs, e: fastattr.smooth_grad(m, x, t, n_samples=N_NOISE, stdevs=0.1, noise=e,
                                                               batch_size=bs),
    "smooth_grad_ig": lambda m, x, t, bs, e: fastattr.smooth_grad(m, x, t, base="integrated_gradients", n_steps=3,
                                                                  n_samples=N_NOISE, stdevs=0.1, noise=e,
                                                                  batch_size=bs),
    "smooth_taylor": lambda m, x, t, bs, e: fastattr.smooth_taylor(m, x, t, n_roots=N_NOISE, noise_scale=0.1,
                                                                   noise=e, batch_size=bs),
    # RISE draws one set of masks for all images (same seed: same masks)
    "rise": lambda m, x, t, bs, e: fastattr.rise(m, x, t, n_masks=24, grid_size=4, batch_size=bs,
                                                 generator=torch.Generator().manual_seed(54)),
    "mfpp": lambda m, x, t, bs, e: mfpp_fixed_draws(m, x, t, bs),
    "occlusion": lambda m, x, t, bs, e: fastattr.occlusion(m, x, t, sliding_window_shapes=(3, 6, 6), strides=(1, 4, 4),
                                                           batch_size=bs),
    # PdCR's causal ATE in zeros mode (no draws), the region's masks as its ground truth
    "causal_ate": lambda m, x, t, bs, e: fastattr.METHODS["causal_ate"](
        m, x, t, roi=[0, 0, 4], block=4, mode="zeros", n_screen=1, n_samples=1, tau=0.0, outcome="soft_dice",
        activation="sigmoid", batch_size=bs),
    "feature_ablation": lambda m, x, t, bs, e: fastattr.feature_ablation(
        m, x, t, feature_mask=(torch.arange(H)[:, None] // 4 * 4 + torch.arange(H)[None] // 4)[None, None],
        batch_size=bs),
}


def mfpp_fixed_draws(model, x, target, batch_size):
    """MFPP with the same pyramid and draws for every image, so that a batch and
    each image alone see the same masks."""
    pyramid = [torch.arange(H)[:, None] // 8 * 2 + torch.arange(H)[None] // 8, torch.arange(H * H).view(H, H) // 32]
    g = torch.Generator().manual_seed(55)
    draws = [torch.rand(4, generator=g) < 0.5] * 2 + [torch.rand(8, generator=g) < 0.5] * 2
    crops = torch.randint(0, H // 2 + 1, (16, 2), generator=g)
    n = x.shape[0]
    return fastattr.mfpp(model, x, target, n_masks=16, n_levels=2, masks_per_draw=4, resize_offset=0.5,
                         segments=[pyramid] * n, draws=[draws] * n, crops=crops, batch_size=batch_size)


def test_every_method_is_in_the_table():
    assert set(fastattr.METHODS) <= set(CALLS)


@pytest.mark.parametrize("batch_size", [2, 5, None])
@pytest.mark.parametrize("name", list(CALLS))
def test_region_batched_equals_each_image_alone(unet, x, masks, name, batch_size):
    call = CALLS[name]
    eps = noise_for(x)
    batched = call(unet, x, region(masks), batch_size, eps)
    alone = torch.cat([call(unet, x[b:b + 1], region(masks[b:b + 1]), batch_size,
                            eps[b * N_NOISE:(b + 1) * N_NOISE]) for b in range(B)])
    torch.testing.assert_close(batched, alone, rtol=1e-9, atol=1e-12)
    # and the regions matter: another image's region gives another map
    swapped = call(unet, x, region(masks.roll(1, 0)), batch_size, eps)
    assert not torch.allclose(swapped, batched)


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "smooth_grad"])
def test_index_callable_equals_region(unet, x, masks, name):
    call = CALLS[name]
    eps = noise_for(x)
    weights = masks.double()

    def score(out, index):
        return (out * weights[index]).flatten(1).sum(1)

    torch.testing.assert_close(call(unet, x, score, 4, eps), call(unet, x, region(masks), 4, eps),
                               rtol=1e-12, atol=1e-14)


def test_box_equals_its_mask(unet, x):
    boxes = [(2, 3, 7, 4), (8, 8, 7, 8), (0, 0, 4, 16)]
    m = torch.zeros(B, H, H, dtype=torch.bool)
    for b, (r, c, h, w) in enumerate(boxes):
        m[b, r:r + h, c:c + w] = True
    torch.testing.assert_close(fastattr.integrated_gradients(unet, x, box(boxes), n_steps=4),
                               fastattr.integrated_gradients(unet, x, region(m), n_steps=4), rtol=0, atol=0)
    shared = fastattr.saliency(unet, x, box((2, 3, 7, 4)))
    torch.testing.assert_close(shared, fastattr.saliency(unet, x, region(m[:1])), rtol=0, atol=0)


def test_region_scores_are_the_masked_sums(two_class_unet, x, masks):
    out = two_class_unet(x)
    w = torch.rand(B, 2, H, H, dtype=torch.float64)
    torch.testing.assert_close(region(masks)(out), (out * masks).flatten(1).sum(1))
    torch.testing.assert_close(region(masks, channel=1)(out), (out[:, 1:] * masks).flatten(1).sum(1))
    torch.testing.assert_close(region(masks[:, 0])(out), (out * masks).flatten(1).sum(1))  # (B, H, W)
    torch.testing.assert_close(region(w)(out), (out * w).flatten(1).sum(1))  # per-channel weights
    index = torch.tensor([2, 2, 0, 1])
    torch.testing.assert_close(region(masks)(out[index], index), (out[index] * masks[index]).flatten(1).sum(1))


def test_channel_selects_the_class(two_class_unet, x, masks):
    a1 = fastattr.saliency(two_class_unet, x, region(masks, channel=1), abs=False)
    expected = fastattr.saliency(two_class_unet, x, lambda out, index: (out[:, 1:] * masks[index]).flatten(1).sum(1),
                                 abs=False)
    torch.testing.assert_close(a1, expected, rtol=0, atol=0)
    assert not torch.allclose(a1, fastattr.saliency(two_class_unet, x, region(masks, channel=0), abs=False))


def test_a_callable_that_pairs_rows_with_images_is_refused(unet, x, masks):
    """The issue's example: one mask per image in a one-argument callable. The
    engine's rows are path points / copies, so this would be silently wrong."""
    def per_image(out):
        return (out * masks).flatten(1).sum(1)

    for fn in (lambda t: fastattr.integrated_gradients(unet, x, t, n_steps=4),
               lambda t: fastattr.saliency(unet, x, t),
               lambda t: fastattr.smooth_grad(unet, x, t, n_samples=2, stdevs=0.1)):
        with pytest.raises(ValueError, match=r"(does not score each row on its own|must score each row on its own).*index"):
            fn(per_image)


def test_a_rowwise_callable_is_accepted(unet, x, masks):
    def lesion_sum(out):  # the same pixels for every row: row-wise
        return (out * masks[:1]).flatten(1).sum(1)

    torch.testing.assert_close(fastattr.integrated_gradients(unet, x, lesion_sum, n_steps=4, batch_size=4),
                               fastattr.integrated_gradients(unet, x, region(masks[:1]), n_steps=4),
                               rtol=1e-12, atol=1e-14)


def test_class_target_errors_speak_of_the_users_batch(unet, x):
    for target in (0, None, [0, 0]):
        with pytest.raises(ValueError, match=r"returned \(1, 16, 16\) per sample.*targets.region"):
            fastattr.integrated_gradients(unet, x[:2], target, n_steps=5)


def test_class_target_range_is_checked():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"target 4 is out of range for a model with 4 outputs"):
        fastattr.integrated_gradients(net, x, [0, 1, 2, 3, 4], n_steps=3, batch_size=2)
    # a 0-d integer tensor is one class for every sample
    torch.testing.assert_close(fastattr.saliency(net, x, torch.tensor(2)), fastattr.saliency(net, x, 2))


def test_region_errors(unet, x, masks):
    with pytest.raises(ValueError, match=r"masks of spatial size \(8, 8\) do not match the model output's \(16, 16\)"):
        fastattr.saliency(unet, x, region(masks[:, :, :8, :8]))
    with pytest.raises(ValueError, match=r"box 1 .* = \(8, 8, 9, 8\) does not lie inside the 16x16 output"):
        fastattr.saliency(unet, x, box([(0, 0, 2, 2), (8, 8, 9, 8), (0, 0, 1, 1)]))
    with pytest.raises(ValueError, match="channel 1 is out of range for a model output with 1 channels"):
        fastattr.saliency(unet, x, region(masks, channel=1))
    with pytest.raises(ValueError, match="2 regions for 3 images"):
        fastattr.saliency(unet, x, region(masks[:2]))
    with pytest.raises(ValueError, match=r"masks must be \(B, H, W\)"):
        region(masks[0, 0])
    with pytest.raises(ValueError, match="channel=1 cannot be combined"):
        region(torch.ones(B, 2, H, H), channel=1)
    with pytest.raises(TypeError, match="boxes must be integers"):
        box([(0.5, 0, 2, 2)])
    with pytest.raises(ValueError, match=r"\(row, col, height, width\) or \(B, 4\)"):
        box([(0, 0, 2)])
    with pytest.raises(ValueError, match="NaN"):
        region(torch.full((1, H, H), float("nan")))
    with pytest.raises(ValueError, match="must be a segmentation map"):
        region(masks)(torch.randn(3, 5))
