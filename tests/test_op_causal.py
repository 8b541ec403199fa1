"""The causal-ATE ops' own oracles (numpy, float64, written from spec §2.2-2.3)
and error messages; the generic properties (dtypes, layouts, empty batches,
opcheck, compile, gradients' registration) are in tests/test_op_harness.py.

block_patch_batch, region_outcome, causal_ate_map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastattr import _ops as ops
from op_harness import assert_same_error


def test_block_patch_batch_numpy_oracle_and_layouts():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 9, 11), generator=g)
    bank = torch.rand((6, 3, 3, 2), generator=g)
    index = torch.tensor([5, 0, 3, 3])
    blocks = torch.tensor([[0, 0], [6, 9], [2, 4], [6, 0]])
    expected = np.repeat(x.numpy()[None], 4, 0)  # (N, S, C, H, W)
    for n, (p, (r, c)) in enumerate(zip(index.tolist(), blocks.tolist())):
        expected[n, :, :, r:r + 3, c:c + 2] = bank.numpy()[p]
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        out = ops.block_patch_batch(xx, bank, index, blocks)
        assert np.array_equal(out.numpy(), expected.reshape(8, 3, 9, 11))  # exact copies
    with pytest.raises(ValueError, match=r"patch_index must lie in \[0, P\) = \[0, 6\), got values from 0 to 6"):
        ops.block_patch_batch(x, bank, torch.tensor([0, 6]), blocks[:2])
    with pytest.raises(ValueError, match=r"blocks must place the 3x2 patch inside the 9x11 image \(rows in \[0, 6\]"):
        ops.block_patch_batch(x, bank, index[:1], torch.tensor([[7, 0]]))
    bad = ops.block_patch_batch(x, bank, torch.tensor([9]), torch.tensor([[0, 0]]), check=False)
    assert torch.isnan(bad).all()  # never read out of range: a NaN row


def test_block_patch_batch_gradients_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, 2, 4, 4), generator=g, dtype=torch.float64, requires_grad=True)
    bank = torch.rand((3, 2, 2, 2), generator=g, dtype=torch.float64, requires_grad=True)
    index, blocks = torch.tensor([1, 1, 2]), torch.tensor([[0, 0], [2, 2], [0, 2]])
    w = torch.rand((3, 2, 4, 4), generator=g, dtype=torch.float64)
    (ops.block_patch_batch(x, bank, index, blocks) * w).sum().backward()
    gx = w.sum(0).numpy().copy()
    gb = np.zeros((3, 2, 2, 2))
    for n, (p, (r, c)) in enumerate(zip(index.tolist(), blocks.tolist())):
        gx[:, r:r + 2, c:c + 2] -= w[n, :, r:r + 2, c:c + 2].numpy()
        gb[p] += w[n, :, r:r + 2, c:c + 2].numpy()
    np.testing.assert_allclose(x.grad[0].numpy(), gx)
    np.testing.assert_allclose(bank.grad.numpy(), gb)


def _np_outcome(z, roi, gt, channel, outcome, activation, threshold, empty_is_one):
    z = z.astype(np.float64)
    if activation == "sigmoid":
        p = 1 / (1 + np.exp(-z))
    elif activation == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
    else:
        p = z
    if channel >= 0:
        p = p[:, channel:channel + 1]
    out = []
    for row in p:
        pr, gr = row[:, roi], gt[:, roi]
        if outcome == "mean_prob":
            out.append(100 * pr.mean())
            continue
        q = (pr > threshold).astype(np.float64) if outcome == "dice" else pr
        total = q.sum() + gr.sum()
        out.append(100.0 if (empty_is_one and total == 0) else 100 * 2 * (q * gr).sum() / (total + 1e-10))
    return np.array(out)


@pytest.mark.parametrize("args", [(-1, "dice", "none", 0.5, False), (-1, "dice", "none", 0.5, True),
                                  (2, "dice", "softmax", 0.3, False), (0, "soft_dice", "sigmoid", 0.5, False),
                                  (1, "mean_prob", "softmax", 0.5, False), (-1, "soft_dice", "softmax", 0.5, True)])
def test_region_outcome_numpy_oracle(args):
    g = torch.Generator().manual_seed(2)
    k = 1 if args[0] == -1 and args[2] == "none" else 3
    z = torch.randn((6, k, 7, 9), generator=g, dtype=torch.float64) * 2
    z[0] = -5  # an empty prediction
    roi = torch.zeros(7, 9, dtype=torch.bool)
    roi[1:5, 2:8] = True
    gt = (torch.rand((k if args[0] < 0 else 1, 7, 9), generator=g) < 0.3).double()
    if args[4]:
        gt.zero_()  # empty truth: row 0 is empty vs empty
    out = ops.region_outcome(z, roi, gt, None if args[0] < 0 else args[0], *args[1:])
    np.testing.assert_allclose(out.numpy(), _np_outcome(z.numpy(), roi.numpy(), gt.numpy(), *args), rtol=1e-12,
                               atol=1e-12)
    if args[1] == "dice" and args[0] == -1 and args[2] == "none":
        assert out[0].item() == (100.0 if args[4] else 0.0)  # reference: empty vs empty is 0


def test_region_outcome_gradient_matches_autograd_of_the_formula():
    """The registered formula against torch autograd through the float64 formula."""
    g = torch.Generator().manual_seed(3)
    z = (torch.randn((3, 3, 5, 6), generator=g, dtype=torch.float64)).requires_grad_()
    gt = (torch.rand((1, 5, 6), generator=g) < 0.5).double().requires_grad_()
    roi = torch.ones(5, 6, dtype=torch.bool)
    roi[0] = False
    for outcome, act in (("soft_dice", "softmax"), ("mean_prob", "sigmoid"), ("dice", "none")):
        w = torch.rand(3, generator=g, dtype=torch.float64)
        got = torch.autograd.grad((ops.region_outcome(z, roi, gt, 1, outcome, act) * w).sum(), (z, gt),
                                  allow_unused=True)
        p = {"softmax": torch.softmax(z, 1), "sigmoid": torch.sigmoid(z), "none": z}[act][:, 1:2]
        m = roi.double()
        if outcome == "mean_prob":
            y = 100 * (p * m).sum((1, 2, 3)) / m.sum()
        else:
            q = (p > 0.5).double() if outcome == "dice" else p
            y = 200 * (q * gt * m).sum((1, 2, 3)) / ((q * m).sum((1, 2, 3)) + (gt * m).sum() + 1e-10)
        want = torch.autograd.grad((y * w).sum(), (z, gt), allow_unused=True)
        for a, b, like in zip(got, want, (z, gt)):
            zero = torch.zeros_like(like)
            torch.testing.assert_close(zero if a is None else a, zero if b is None else b)


def test_causal_ate_map_numpy_oracle():
    g = torch.Generator().manual_seed(4)
    base = torch.tensor([50.0, 10.0], dtype=torch.float64)
    effect = torch.randn((2, 3, 4, 1), generator=g, dtype=torch.float64) * (torch.rand((2, 3, 4, 1), generator=g) < 0.6)
    screen = base[:, None, None, None] + effect + torch.rand((2, 3, 4, 2), generator=g, dtype=torch.float64) * 0.01
    full = base[:, None, None, None] + effect * torch.rand((2, 3, 4, 5), generator=g, dtype=torch.float64) * 2
    visited = torch.rand((2, 3, 4), generator=g) < 0.8
    tau = 0.3
    out = ops.causal_ate_map(screen, full, base, visited, (2, 3), tau)
    s, f, b, v = screen.numpy(), full.numpy(), base.numpy(), visited.numpy()
    expected = np.zeros((2, 6, 12))
    for img in range(2):
        for i in range(3):
            for j in range(4):
                if not v[img, i, j] or (np.abs(s[img, i, j] - b[img]) < tau).all():
                    continue
                ate = (f[img, i, j] - b[img]).mean()
                if abs(ate) >= tau:
                    expected[img, 2 * i:2 * i + 2, 3 * j:3 * j + 3] = ate
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    assert (expected != 0).any() and (expected == 0).any()


def test_error_messages_name_the_argument():
    assert_same_error(lambda: torch.ops.fastattr.block_patch_batch.default(
        torch.rand(1, 3, 8, 8), torch.rand(4, 3, 9, 2), torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 2, dtype=torch.long)), r"bank must have shape \(P, C, bh, bw\) .* got shape \[4, 3, 9, 2\]")
    assert_same_error(lambda: torch.ops.fastattr.block_patch_batch.default(
        torch.rand(1, 3, 8, 8), torch.rand(4, 3, 2, 2), torch.zeros(2, dtype=torch.long),
        torch.zeros(3, 2, dtype=torch.long)), r"blocks must have shape \(N, 2\) = \[2, 2\]")
    assert_same_error(lambda: torch.ops.fastattr.region_outcome.default(
        torch.rand(2, 1, 8, 8), torch.ones(8, 7, dtype=torch.bool), torch.rand(1, 8, 8), -1, "dice", "none", 0.5,
        False), r"roi must have shape \(H, W\) = \[8, 8\], got shape \[8, 7\]")
    assert_same_error(lambda: torch.ops.fastattr.region_outcome.default(
        torch.rand(2, 3, 8, 8), torch.ones(8, 8, dtype=torch.bool), torch.rand(1, 8, 8), -1, "dice", "none", 0.5,
        False), r"gt must have shape \(G, H, W\) = \[3, 8, 8\]")
    assert_same_error(lambda: torch.ops.fastattr.region_outcome.default(
        torch.rand(2, 3, 8, 8), torch.ones(8, 8, dtype=torch.bool), torch.rand(1, 8, 8), 3, "dice", "none", 0.5,
        False), r"channel must be -1 \(every channel\) or in \[0, 3\)")
    assert_same_error(lambda: torch.ops.fastattr.region_outcome.default(
        torch.rand(2, 1, 8, 8), torch.ones(8, 8, dtype=torch.bool), torch.rand(1, 8, 8), -1, "iou", "none", 0.5,
        False), r"outcome must be 'dice', 'soft_dice' or 'mean_prob', got 'iou'")
    assert_same_error(lambda: torch.ops.fastattr.causal_ate_map.default(
        torch.rand(1, 2, 2, 3), torch.rand(1, 2, 3, 5), torch.rand(1), torch.ones(1, 2, 2, dtype=torch.bool),
        [4, 4], 0.02), r"full must have shape \(B, gh, gw, n_samples\) = \[1, 2, 2, n_samples\]")
    assert_same_error(lambda: torch.ops.fastattr.causal_ate_map.default(
        torch.rand(1, 2, 2, 3), torch.rand(1, 2, 2, 5), torch.rand(1), torch.ones(1, 2, 3, dtype=torch.bool),
        [4, 4], 0.02), r"visited must have shape \(B, gh, gw\) = \[1, 2, 2\]")
