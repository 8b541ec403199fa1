"""Determinism of the stochastic methods (issue 13).

With a seeded ``torch.Generator``, every stochastic method (SmoothGrad and its
noise tunnels over other bases, SmoothTaylor, RISE, MFPP, PdCR's causal ATE,
component ATE with resampled references) gives

- bit-identical results for any ``batch_size`` (the draws are made once, and
  the per-sample sums are folded in a fixed order, never per chunk), given a
  batch-invariant model: the model here evaluates one row at a time, because a
  BLAS call on 1 row may round differently from one on 64, which is the
  model's business, not the method's;
- bit-identical results run after run, and results that change with the seed
  (so the comparison can fail);
- the global RNG untouched when a generator is given;
- the same shard bytes from ``torchrun --nproc-per-node=2`` as from one process
  (the job runner seeds each shard from (seed, shard)).

CUDA: fastattr's CUDA kernels use no atomics (checked below on the sources);
the backward formulas that scatter (``index_add`` / ``scatter_add``) are torch
ops, which under ``torch.use_deterministic_algorithms(True)`` take torch's
deterministic path (checked on a GPU).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fastattr
from fastattr.methods.causal import causal_ate, component_ate

from models import single_thread  # noqa: F401  (one intra-op thread for this module)
from utils import TINY_MODELS_SOURCE

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 3, 7, 64, None)


class RowByRow(nn.Module):
    """A model evaluated one row at a time: batch-invariant by construction."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return torch.cat([self.model(z[i:i + 1]) for i in range(z.shape[0])])


def _classifier():
    with torch.random.fork_rng():  # initialised from a seed, leaving the global RNG as it was
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    return RowByRow(net.eval())


def _segmenter(row_by_row=True):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = nn.Sequential()
        net.add_module("hidden", RowByRow(nn.Conv2d(3, 4, 3, padding=1)))
        net.add_module("relu", nn.ReLU())
        net.add_module("head", RowByRow(nn.Conv2d(4, 1, 3, padding=1)))
    return RowByRow(net.eval()) if row_by_row else net.eval()


def _images(b=2, size=12):
    return torch.rand((b, 3, size, size), generator=torch.Generator().manual_seed(3))


def _seg_problem():
    x = _images(1, 16)
    gt = (torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(4)) < 0.5).float()
    bank = torch.rand((9, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    return x, gt, bank


def _smooth_grad(base, **kw):
    def run(seed, batch_size):
        return fastattr.smooth_grad(_classifier(), _images(), target=[1, 2], base=base, n_samples=6, stdevs=0.2,
                                    generator=torch.Generator().manual_seed(seed), batch_size=batch_size, **kw)
    return run


def _smooth_taylor(seed, batch_size):
    return fastattr.smooth_taylor(_classifier(), _images(), target=[0, 3], n_roots=7, noise_scale=0.3,
                                  generator=torch.Generator().manual_seed(seed), batch_size=batch_size)


def _rise(seed, batch_size):
    return fastattr.rise(_classifier(), _images(), target=[1, 0], n_masks=40, grid_size=3,
                         generator=torch.Generator().manual_seed(seed), batch_size=batch_size)


def _mfpp(seed, batch_size):
    return fastattr.mfpp(_classifier(), _images(), target=[2, 1], n_masks=24, n_levels=2, base_segments=4,
                         masks_per_draw=8, generator=torch.Generator().manual_seed(seed), batch_size=batch_size)


def _causal_ate(seed, batch_size):
    x, gt, bank = _seg_problem()
    heat, _ = causal_ate(_segmenter(), x, gt, (4, 4, 8), block=4, patch_bank=bank, n_screen=2, n_samples=5,
                         tau=0.0, outcome="soft_dice", activation="sigmoid",
                         generator=torch.Generator().manual_seed(seed),
                         batch_size=batch_size)
    return heat


def _component_ate(seed, batch_size):
    x, gt, _ = _seg_problem()
    refs = torch.rand((5, 3, 16, 16), generator=torch.Generator().manual_seed(6))
    # component_ate intervenes on each row of a pass through a hook on a layer's
    # output, so that layer's output must hold the whole pass: here each layer
    # (not the whole model) runs one row at a time.
    res = component_ate(_segmenter(row_by_row=False), x, gt, (4, 4, 8), layers=["hidden"], intervention="resample",
                        n_samples=3, reference_inputs=refs, outcome="soft_dice", activation="sigmoid",
                        generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    return res.effects["hidden"]


METHODS = {
    "smooth_grad": _smooth_grad("saliency", abs=False),
    "smooth_grad_sq-input_x_gradient": _smooth_grad("input_x_gradient", kind="smoothgrad_sq"),
    "vargrad-guided_backprop": _smooth_grad("guided_backprop", kind="vargrad"),
    "smooth_grad-integrated_gradients": _smooth_grad("integrated_gradients", n_steps=5),
    "smooth_grad-gnl_integrated_gradients": _smooth_grad("gnl_integrated_gradients", n_steps=4),
    "smooth_taylor": _smooth_taylor,
    "rise": _rise,
    "mfpp": _mfpp,
    "causal_ate": _causal_ate,
    "component_ate-resample": _component_ate,
}


@pytest.mark.parametrize("name", list(METHODS))
def test_bit_identical_for_any_batch_size(name):
    run = METHODS[name]
    reference = run(11, BATCH_SIZES[-1])
    assert torch.isfinite(reference).all() and (reference != 0).any(), "the check must see real values"
    for batch_size in BATCH_SIZES[:-1]:
        out = run(11, batch_size)
        assert out.dtype == reference.dtype and torch.equal(out, reference), (
            f"{name}: batch_size={batch_size} differs from batch_size=None by "
            f"{(out - reference).abs().max().item():.3g}")


@pytest.mark.parametrize("name", list(METHODS))
def test_bit_identical_across_runs_and_seed_dependent(name):
    run = METHODS[name]
    state = torch.get_rng_state()
    first, second = run(21, 5), run(21, 5)
    assert torch.equal(torch.get_rng_state(), state), "a call with a generator must leave the global RNG alone"
    assert torch.equal(first, second)
    assert not torch.equal(first, run(22, 5)), "another seed must give another result"


def test_smooth_grad_fold_is_the_sequential_sum():
    """The per-copy fold is ((0 + a_0) + a_1) + ..., not a chunked sum: compared
    with that sum written as a Python loop over copies (an independent oracle)."""
    model = _classifier()
    x = _images(2)
    n = 9
    eps = torch.randn((2 * n, 3, 12, 12), generator=torch.Generator().manual_seed(7))
    out = fastattr.smooth_grad(model, x, [0, 1], n_samples=n, stdevs=0.3, noise=eps, abs=False, batch_size=4)
    noisy = x.repeat_interleave(n, 0) + 0.3 * eps
    grads = fastattr.saliency(model, noisy, target=torch.tensor([0, 1]).repeat_interleave(n), abs=False)
    grads = grads.view(2, n, 3, 12, 12)
    total = torch.zeros_like(x)
    for i in range(n):
        total = total + grads[:, i]
    assert torch.equal(out, total / n)


# --------------------------------------------------------------------------- torchrun: 1 vs 2 processes

TINY = "fa_det_tiny_models:classifier"
SHAPES = ["--model", TINY, "--data", "bundled:shapes"]
JOBS = {
    "rise": SHAPES + ["-O", "n_masks=24", "-O", "grid_size=3"],
    "mfpp": SHAPES + ["-O", "n_masks=16", "-O", "n_levels=2", "-O", "base_segments=8"],
    "smooth_taylor": SHAPES + ["-O", "n_roots=3", "-O", "noise_scale=0.2"],
    "smooth_grad-integrated_gradients": SHAPES + ["-O", "n_samples=2", "-O", "base=integrated_gradients", "-O",
                                                  "n_steps=3"],
    # PdCR's draws from the bundled lesion patch bank, on the bundled U-Net.
    "causal_ate": ["--model", "lesions-unet", "--data", "bundled:lesions", "--target", "label", "-O", "n_samples=2",
                   "-O", "n_screen=1", "-O", "block=32", "-O", "per_image=8"],
}


def _fastattr_run(out, method, options, env, nproc=None):
    method = method.split("-")[0]
    args = ["run", "--method", method, "--out", str(out), *options, "--limit", "10", "--shard-size", "3",
            "--batch-size", "2", "--seed", "9", "--threads", "1"]
    if nproc is None:
        cmd = [sys.executable, "-m", "fastattr", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "fastattr", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("method", list(JOBS))
def test_torchrun_two_processes_give_the_same_shards(tmp_path, method):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fa_det_tiny_models.py").write_text(TINY_MODELS_SOURCE)
    # One intra-op thread in every process (torchrun's default), as in test_distributed.py.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(mods)] + [p for p in [env.get("PYTHONPATH")] if p])
    one, two = tmp_path / "one", tmp_path / "two"
    _fastattr_run(one, method, JOBS[method], env)
    _fastattr_run(two, method, JOBS[method], env, nproc=2)
    shards = sorted(p.name for p in (one / "shards").glob("*.safetensors"))
    assert len(shards) == 4  # 10 images in shards of 3: both ranks got work
    assert shards == sorted(p.name for p in (two / "shards").glob("*.safetensors"))
    for name in shards:
        assert (one / "shards" / name).read_bytes() == (two / "shards" / name).read_bytes(), name


# --------------------------------------------------------------------------- CUDA


def test_cuda_kernels_use_no_atomics():
    """The README states that fastattr's CUDA kernels are deterministic (no
    atomics, fixed-order reductions): a kernel that starts using atomics must
    add a deterministic path under torch.use_deterministic_algorithms and
    update that statement."""
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu*"))
    assert sources, "no CUDA sources found"
    for path in sources:
        code = re.sub(r"//[^\n]*", "", path.read_text())  # comments may mention atomics
        assert not re.search(r"\batomic[A-Z]\w*\s*\(", code), f"{path.name} uses atomics"


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", ["rise_masks", "segment_masked_batch", "block_patch_batch"])
def test_cuda_scattering_backward_is_deterministic(name):
    """The three backward formulas that scatter-add (gradients w.r.t. RISE
    grids, segment keep rows and the causal patch bank; many rows hit the
    same entry) give bit-identical gradients run to run under
    torch.use_deterministic_algorithms(True)."""
    from op_harness import op_cases

    case = op_cases.CASES[f"fastattr::{name}"]
    args = case.args("cuda", torch.float32, False)
    grad_at = {"rise_masks": 0, "segment_masked_batch": 3, "block_patch_batch": 1}[name]
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(3):
            a = list(args)
            a[grad_at] = a[grad_at].detach().clone().requires_grad_()
            out = case.overload(*a)
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
            (g,) = torch.autograd.grad((out * w).sum(), a[grad_at])
            grads.append(g)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
