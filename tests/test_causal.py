"""causal_ate (PdCR input-region ATE, spec §2) against a clean-room oracle loop
written here from spec §2.3 (float64, numpy Dice, the reference's draw order
on the same generator), and the spec's structural, locality-null and
analytic-toy tests (§2.6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastattr
from fastattr.methods.causal import causal_ate, patch_bank

N0, N1, TAU = 3, 10, 0.02


def _dice100(pred: np.ndarray, gt: np.ndarray) -> float:
    """100 * 2 Σ pg / (Σ p + Σ g + 1e-10), summed over everything (spec §2.2)."""
    return 100.0 * 2.0 * float((pred * gt).sum()) / (float(pred.sum()) + float(gt.sum()) + 1e-10)


def oracle(model, x, gt, roi_box, bank, block, n0=N0, n1=N1, tau=TAU, mode="patches", generator=None):
    """The reference loop of spec §2.3 (mode 'zeros': the zero_local ablation with
    the same RoI skip), one block at a time in row-major order; returns
    (heat (H, W) float64, base, forward rows)."""
    r0, c0, size = roi_box
    _, _, h, w = x.shape
    g = gt[0, 0].numpy().astype(np.float64)
    passes = [0]

    def y_of(batch):
        passes[0] += batch.shape[0]
        with torch.no_grad():
            out = model(batch).numpy()
        pred = (out > 0.5).astype(np.float64)[:, :, r0:r0 + size, c0:c0 + size]
        return np.array([_dice100(p, g[r0:r0 + size, c0:c0 + size]) for p in pred])

    base = y_of(x)[0]
    heat = np.zeros((h, w))
    roi = np.zeros((h, w), dtype=bool)
    roi[r0:r0 + size, c0:c0 + size] = True
    k = bank.shape[0]
    for i in range(0, h - block + 1, block):
        for j in range(0, w - block + 1, block):
            if roi[i:i + block, j:j + block].any():
                continue
            if mode == "zeros":
                x0 = x.clone()
                x0[:, :, i:i + block, j:j + block] = 0
                d = y_of(x0)[0] - base
                if abs(d) >= tau:
                    heat[i:i + block, j:j + block] = d
                continue
            idx0 = torch.randint(0, k, (n0,), generator=generator)
            x0 = x.repeat(n0, 1, 1, 1)
            x0[:, :, i:i + block, j:j + block] = bank[idx0]
            d0 = y_of(x0) - base
            if (np.abs(d0) < tau).all():
                continue
            idx1 = torch.randint(0, k, (n1,), generator=generator)
            x1 = x.repeat(n1, 1, 1, 1)
            x1[:, :, i:i + block, j:j + block] = bank[idx1]
            ate = (y_of(x1) - base).mean()
            if abs(ate) < tau:
                continue
            heat[i:i + block, j:j + block] = ate
    heat[roi] = 0
    return heat, base, passes[0]


class Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def _segmenter(seed=0):
    """A small deterministic float64 CNN whose RoI prediction depends on the
    blocks within ~6 px (two 7x7 convs), with raw scores around the 0.5 threshold."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 6, 7, padding=3), nn.Tanh(), nn.Conv2d(6, 1, 7, padding=3)).double().eval()
    with torch.no_grad():
        m[2].bias.fill_(0.5)
    return m


def _problem(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 3, size, size), generator=g, dtype=torch.float64)
    bank = torch.rand((40, 3, 4, 4), generator=g, dtype=torch.float64)
    model = _segmenter(seed)
    with torch.no_grad():
        gt = (model(x) > 0.5).double()
    gt[:, :, 14:16, :] = 1 - gt[:, :, 14:16, :]  # not the prediction itself
    return model, x, gt, bank


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_oracle_loop_global_generator(seed):
    """generator=None draws from torch's global generator, as the reference does."""
    model, x, gt, bank = _problem(seed)
    box = (12, 8, 8)
    torch.manual_seed(100 + seed)
    expected, base, _ = oracle(model, x, gt, box, bank, 4)
    torch.manual_seed(100 + seed)
    heat, factual = causal_ate(model, x, gt, box, block=4, patch_bank=bank, n_screen=N0, n_samples=N1, tau=TAU)
    after = torch.randint(0, 1 << 30, (4,))
    torch.manual_seed(100 + seed)
    oracle(model, x, gt, box, bank, 4)
    assert torch.equal(after, torch.randint(0, 1 << 30, (4,))), "the generator must end where the reference's does"
    assert factual.item() == pytest.approx(base, abs=1e-9)
    assert (expected != 0).sum() > 0 and (expected == 0).sum() > 64, "the problem must have kept and zero blocks"
    np.testing.assert_allclose(heat[0, 0].numpy(), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 5, 13, 400])
def test_explicit_generator_and_batch_size_independent(batch_size):
    model, x, gt, bank = _problem(2)
    box = (8, 12, 8)
    expected, _, _ = oracle(model, x, gt, box, bank, 4, generator=torch.Generator().manual_seed(7))
    heat, _ = causal_ate(model, x, gt, box, block=4, patch_bank=bank, n_screen=N0, n_samples=N1, tau=TAU,
                         generator=torch.Generator().manual_seed(7), batch_size=batch_size)
    np.testing.assert_allclose(heat[0, 0].numpy(), expected, rtol=0, atol=1e-9)


def test_predrawn_indices_and_structure():
    model, x, gt, bank = _problem(3)
    box = (12, 12, 8)
    gen = torch.Generator().manual_seed(5)
    nb = 64 - 4
    screen = torch.randint(0, 40, (nb, N0), generator=gen)
    full = torch.randint(0, 40, (nb, N1), generator=gen)
    # The oracle: the reference's decisions cell by cell, with each cell's own pair.
    expected = np.zeros((32, 32))
    heat, base = causal_ate(model, x, gt, box, block=4, patch_bank=bank, n_screen=N0, n_samples=N1, tau=TAU,
                            indices=(screen, full))
    _, base_oracle, _ = oracle(model, x, gt, box, bank, 4, n0=N0, n1=N1, generator=torch.Generator())
    cells = [(i, j) for i in range(0, 32, 4) for j in range(0, 32, 4) if not (12 <= i < 20 and 12 <= j < 20)]
    g = gt[0, 0, 12:20, 12:20].numpy()
    for (i, j), s, f in zip(cells, screen, full):
        def y(idx):
            xx = x.repeat(len(idx), 1, 1, 1)
            xx[:, :, i:i + 4, j:j + 4] = bank[idx]
            with torch.no_grad():
                out = (model(xx).numpy() > 0.5)[:, :, 12:20, 12:20].astype(float)
            return np.array([_dice100(p, g) for p in out]) - base_oracle
        if (np.abs(y(s)) < TAU).all():
            continue
        ate = y(f).mean()
        if abs(ate) >= TAU:
            expected[i:i + 4, j:j + 4] = ate
    np.testing.assert_allclose(heat[0, 0].numpy(), expected, rtol=0, atol=1e-9)
    h = heat[0, 0]
    # Structure: block-constant, 0 on the RoI, |nonzero| >= tau, within [-100, 100].
    assert torch.equal(h, h.reshape(8, 4, 8, 4)[:, :1, :, :1].expand(8, 4, 8, 4).reshape(32, 32))
    assert (h[12:20, 12:20] == 0).all()
    nz = h[h != 0]
    assert nz.numel() > 0 and (nz.abs() >= TAU).all() and (h.abs() <= 100).all()
    assert base.item() == pytest.approx(base_oracle)


def test_locality_null_model_all_zero_after_exact_passes():
    """A per-pixel model (1x1 conv): no block outside the RoI changes the RoI's
    prediction, so every block fails screening: exactly 1 + n_screen * N_blocks rows."""
    torch.manual_seed(0)
    model = Counting(nn.Conv2d(3, 1, 1).double())
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, 3, 32, 32), generator=g, dtype=torch.float64)
    bank = torch.rand((20, 3, 8, 8), generator=g, dtype=torch.float64)
    gt = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    gt[..., 8:24, 8:24] = 1
    heat, _ = causal_ate(model, x, gt, (8, 8, 16), block=8, patch_bank=bank, n_screen=3, n_samples=50,
                         generator=torch.Generator().manual_seed(0), batch_size=17)
    n_blocks = 16 - 4
    assert (heat == 0).all()
    assert model.rows == 1 + 3 * n_blocks


class _Toy(nn.Module):
    """Spec §2.6's analytic toy: 1 on the whole image iff mean(block B*) > t."""

    def __init__(self, block_rc, size, t):
        super().__init__()
        self.r, self.c, self.b, self.t = *block_rc, size, t

    def forward(self, x):
        m = x[:, :, self.r:self.r + self.b, self.c:self.c + self.b].mean((1, 2, 3))
        return (m > self.t).double()[:, None, None, None].expand(x.shape[0], 1, *x.shape[2:])


@pytest.mark.parametrize("t", [0.35, 0.5, 0.6])
def test_analytic_toy(t):
    g = torch.Generator().manual_seed(3)
    x = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    x[:, :, 0:4, 8:12] = 0.55  # B* = block (0, 8): base = 100 iff 0.55 > t
    bank = torch.rand((30, 3, 4, 4), generator=g, dtype=torch.float64)
    gt = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    gt[..., 8:12, 4:8] = 1  # GT = 1 on the RoI
    model = Counting(_Toy((0, 8), 4, t))
    nb = 16 - 1
    screen = torch.randint(0, 30, (nb, 4), generator=g)
    full = torch.randint(0, 30, (nb, 20), generator=g)
    heat, base = causal_ate(model, x, gt, (8, 4, 4), block=4, patch_bank=bank, n_screen=4, n_samples=20,
                            tau=0.5, indices=(screen, full), batch_size=9)
    one = 100.0 * 2 * 16 / (32 + 1e-10)  # Y when the RoI is predicted: the reference's Dice keeps its 1e-10
    expect_base = one if 0.55 > t else 0.0
    assert base.item() == pytest.approx(expect_base, abs=1e-12)
    cells = [(i, j) for i in range(0, 16, 4) for j in range(0, 16, 4) if (i, j) != (8, 4)]
    star = cells.index((0, 8))
    means = bank.mean((1, 2, 3))
    flips = (one * (means[screen[star]] > t).double() - expect_base).abs() >= 0.5
    ate = (one * (means[full[star]] > t).double()).mean().item() - expect_base
    expected = torch.zeros(16, 16, dtype=torch.float64)
    if bool(flips.any()) and abs(ate) >= 0.5:
        expected[0:4, 8:12] = ate
    assert torch.allclose(heat[0, 0], expected, rtol=0, atol=1e-12)
    assert model.rows == 1 + 4 * nb + (20 if bool(flips.any()) else 0)


def test_zeros_mode_equals_zero_local_oracle():
    model, x, gt, bank = _problem(4)
    box = (12, 8, 8)
    expected, _, _ = oracle(model, x, gt, box, bank, 4, mode="zeros")
    counting = Counting(model)
    heat, _ = causal_ate(counting, x, gt, box, block=4, mode="zeros", tau=TAU, batch_size=11)
    np.testing.assert_allclose(heat[0, 0].numpy(), expected, rtol=0, atol=1e-9)
    assert counting.rows == 1 + 60
    assert (expected != 0).any()


def test_multiclass_target_class_softmax():
    """target_class picks a channel of a 3-class softmax output and the class of an
    integer label map; equal to the oracle loop on that channel's probabilities."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.Tanh(), nn.Conv2d(4, 3, 5, padding=2)).double().eval()
    g = torch.Generator().manual_seed(9)
    x = torch.rand((1, 3, 16, 16), generator=g, dtype=torch.float64)
    bank = torch.rand((25, 3, 4, 4), generator=g, dtype=torch.float64)
    with torch.no_grad():
        labels = net(x).argmax(1)  # (1, H, W)
    labels[:, 5, :] = 1

    def channel_prob(z):
        return torch.softmax(net(z), 1)[:, 1:2]

    expected, _, _ = oracle(channel_prob, x, (labels == 1)[:, None].double(), (4, 4, 8), bank, 4,
                            n0=2, n1=6, generator=torch.Generator().manual_seed(3))
    heat, _ = causal_ate(net, x, labels, (4, 4, 8), block=4, patch_bank=bank, n_screen=2, n_samples=6,
                         target_class=1, activation="softmax", generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(heat[0, 0].numpy(), expected, rtol=0, atol=1e-9)


def test_patch_bank_cuts_grid_cells():
    g = torch.Generator().manual_seed(0)
    images = torch.rand((3, 3, 16, 24), generator=g)
    bank = patch_bank(images, block=8, per_image=4, generator=torch.Generator().manual_seed(1))
    assert bank.shape == (12, 3, 8, 8)
    again = patch_bank(images, block=8, per_image=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bank, again)
    for n, patch in enumerate(bank):
        img = images[n // 4]
        hits = [(i, j) for i in range(0, 16, 8) for j in range(0, 24, 8) if torch.equal(img[:, i:i + 8, j:j + 8], patch)]
        assert len(hits) == 1
    assert fastattr.causal.patch_bank is patch_bank


def test_bad_arguments_name_themselves():
    model, x, gt, bank = _problem(0)
    kw = dict(patch_bank=bank, block=4)
    with pytest.raises(ValueError, match="roi box .* lies outside the 32x32 image"):
        causal_ate(model, x, gt, (28, 8, 8), **kw)
    with pytest.raises(ValueError, match="block 5x5 does not divide the image grid 32x32"):
        causal_ate(model, x, gt, (8, 8, 8), patch_bank=bank, block=5)
    with pytest.raises(ValueError, match=r"patch_bank must hold block-sized patches \(K, 3, 8, 8\).*got shape \(40, 3, 4, 4\)"):
        causal_ate(model, x, gt, (8, 8, 8), patch_bank=bank, block=8)
    with pytest.raises(ValueError, match=r"ground_truth must have shape .* got \(1, 1, 16, 16\)"):
        causal_ate(model, x, gt[..., :16, :16], (8, 8, 8), **kw)
    with pytest.raises(ValueError, match="mode must be one of"):
        causal_ate(model, x, gt, (8, 8, 8), mode="noise", **kw)
    with pytest.raises(ValueError, match=r"indices\[0\] must be integer tensors of shapes \(60, 3\)"):
        causal_ate(model, x, gt, (12, 12, 8), indices=(torch.zeros(5, 3, dtype=torch.long),
                                                       torch.zeros(5, 10, dtype=torch.long)), n_samples=10, **kw)
