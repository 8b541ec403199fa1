"""component_ate (network-component ATE, an extension beyond the PdCR
reference): closed forms on an analytic toy network, the model left exactly as
it was, and the job form of causal_ate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastattr.methods.causal import component_ate


def _toy():
    """x -> a = W1 x (1x1 conv, 4 channels, the layer 'hidden') -> z = w . a + b.
    Linear, so with outcome mean_prob on raw scores each channel's effect is
    known in closed form."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("hidden", nn.Conv2d(3, 4, 1))
    net.add_module("head", nn.Conv2d(4, 1, 1))
    return net.double().eval()


def test_channel_effects_closed_form():
    net = _toy()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((2, 3, 8, 8), generator=g, dtype=torch.float64)
    gt = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    box = (2, 3, 4, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kw = dict(layers=["hidden"], outcome="mean_prob", batch_size=3)
    zero = component_ate(net, x, gt, box, intervention="zero", **kw)
    mean = component_ate(net, x, gt, box, intervention="mean", **kw)
    with torch.no_grad():
        a = net.hidden(x).numpy()  # (B, 4, H, W)
    w = net.head.weight.detach().numpy()[0, :, 0, 0]
    roi = np.zeros((8, 8), dtype=bool)
    roi[2:6, 3:6] = True
    a_roi = a[:, :, roi].mean(-1)  # (B, 4)
    np.testing.assert_allclose(zero.effects["hidden"].numpy(), -100 * w * a_roi, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mean.effects["hidden"].numpy(), 100 * w * (a.mean((2, 3)) - a_roi), rtol=1e-10,
                               atol=1e-10)
    with torch.no_grad():
        z = net(x).numpy()[:, 0]
    np.testing.assert_allclose(zero.factual.numpy(), 100 * z[:, roi].mean(-1), rtol=1e-12)
    # The model is left exactly as it was: same parameters, no hooks.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks for m in net.modules())


def test_module_and_resample_closed_form():
    net = _toy()
    g = torch.Generator().manual_seed(2)
    x = torch.rand((1, 3, 8, 8), generator=g, dtype=torch.float64)
    refs = torch.rand((5, 3, 8, 8), generator=g, dtype=torch.float64)
    gt = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    box = (0, 0, 8)
    out = component_ate(net, x, gt, box, layers=["hidden"], unit="module", intervention="zero", outcome="mean_prob")
    b = net.head.bias.item()
    with torch.no_grad():
        z = net(x).mean().item()
    assert out.effects["hidden"].shape == (1, 1)
    assert out.effects["hidden"].item() == pytest.approx(100 * (b - z), abs=1e-10)
    res = component_ate(net, x, gt, box, layers=["hidden"], intervention="resample", n_samples=6,
                        reference_inputs=refs, outcome="mean_prob", generator=torch.Generator().manual_seed(3))
    pick = torch.randint(0, 5, (4 * 6,), generator=torch.Generator().manual_seed(3)).view(4, 6)
    with torch.no_grad():
        a_x = net.hidden(x)[0].mean((1, 2)).numpy()
        a_r = net.hidden(refs).mean((2, 3)).numpy()  # (5, 4)
    w = net.head.weight.detach().numpy()[0, :, 0, 0]
    expected = [100 * w[c] * (a_r[pick[c], c].mean() - a_x[c]) for c in range(4)]
    np.testing.assert_allclose(res.effects["hidden"][0].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_component_bad_arguments():
    net = _toy()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    gt = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layers \['nope'\] are not modules"):
        component_ate(net, x, gt, (0, 0, 4), layers=["nope"])
    with pytest.raises(ValueError, match="intervention must be one of"):
        component_ate(net, x, gt, (0, 0, 4), layers=["hidden"], intervention="noise")
    with pytest.raises(ValueError, match="needs reference_inputs"):
        component_ate(net, x, gt, (0, 0, 4), layers=["hidden"], intervention="resample")
    with pytest.raises(ValueError, match="roi box .* lies outside"):
        component_ate(net, x, gt, (6, 6, 4), layers=["hidden"])


def test_fastattr_run_causal_ate_on_bundled_lesions(tmp_path):
    """`fastattr run --method causal_ate` on the bundled segmentation set: RoI
    from the command line (a box, or one box per connected lesion), maps
    written with the reference's red/blue colouring, equal to a direct call."""
    from PIL import Image

    from fastattr import cli, data, models
    from fastattr.jobs.reader import open_output
    from fastattr.methods.causal import _bundled_bank, causal_ate, lesion_boxes

    common = ["--model", "lesions-unet", "--data", "bundled:lesions", "--method", "causal_ate", "--limit", "1",
              "--target", "label", "--heatmaps", "-q", "-O", "block=16", "-O", "n_samples=4", "-O", "n_screen=2",
              "-O", "bank_images=2", "-O", "per_image=8"]
    assert cli.main(["run", *common, "--out", str(tmp_path / "box"), "-O", "roi=[48,48,32]"]) == 0
    assert cli.main(["run", *common, "--out", str(tmp_path / "lesions"), "-O", "roi=\"lesions\""]) == 0
    image, _, mask = data.load("lesions", split="test")[0]
    model = models.load("lesions-unet")
    gt = torch.as_tensor(mask).float().reshape(1, 1, 128, 128)
    x = image[None].float()
    bank = _bundled_bank("lesions", (16, 16), 8, 2, x)
    for name, roi in (("box", (48, 48, 32)), ("lesions", lesion_boxes(gt[0, 0]))):
        result = open_output(str(tmp_path / name))
        maps = result.attributions()
        assert maps.shape == (1, 1, 128, 128)
        seed_gen = torch.Generator().manual_seed(0)
        from fastattr.jobs.spec import shard_seed

        seed_gen.manual_seed(shard_seed(0, 0))
        torch.manual_seed(shard_seed(0, 0))
        direct = causal_ate(model, x, gt, roi, block=16, patch_bank=bank, n_screen=2, n_samples=4,
                            generator=seed_gen).map
        torch.testing.assert_close(maps.float(), direct.float())
        png = Image.open(tmp_path / name / result.images[0]["heatmap"]).convert("RGB")
        arr = np.asarray(png).astype(int)
        assert arr.shape == (128, 128, 3)
        heat = direct[0, 0].numpy()
        if (heat < 0).any():  # red tint: the blue and green channels are dimmed most
            r, c = np.argwhere(heat == heat.min())[0]
            assert arr[r, c, 0] >= arr[r, c, 2]
