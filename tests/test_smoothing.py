"""SmoothGrad / NoiseTunnel and SmoothTaylor (spec §5): exact identities given
the drawn noise, a per-copy autograd oracle, and Captum's NoiseTunnel fed the
same noise."""

import pytest
import torch
from torch import nn

import fastattr
from fastattr.methods import METHODS
from fastattr.methods.smoothing import smooth_grad, smooth_taylor
from utils import CaptumNoiseFeed

F64 = torch.float64


def assert_rel(actual, expected, rel=1e-5):
    """Normwise relative error: max|a - e| <= rel * max|e| (+ tiny absolute floor)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale + 1e-12, f"max error {err:.3e} vs scale {scale:.3e}"


def mlp(d=6, h=16, c=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, c)).to(F64).eval()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)
    ).to(F64).eval()


class Quadratic(nn.Module):
    """f(x) = 1/2 x^T A x + b^T x (A symmetric), returned as an (N, 1) output."""

    def __init__(self, d, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(d, d, generator=g, dtype=F64)
        self.A = (m + m.T) / 2
        self.b = torch.randn(d, generator=g, dtype=F64)

    def forward(self, x):
        return (0.5 * ((x @ self.A) * x).sum(1) + x @ self.b).unsqueeze(1)


def unit_noise(batch, n, shape, seed=1):
    return torch.randn((batch * n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=F64)


def grad_oracle(model, x, target, context=None):
    """Per-row gradient of model(x)[row, target[row]] by plain autograd."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    score = out.gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(score, x)
    return g


# --------------------------------------------------------------------------- SmoothGrad


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_sigma_zero_is_plain_gradient(kind):
    model, x = mlp(), torch.randn(3, 6, dtype=F64)
    target = torch.tensor([0, 2, 3])
    g = grad_oracle(model, x, target)
    out = smooth_grad(model, x, target, n_samples=4, stdevs=0.0, kind=kind, abs=False,
                      generator=torch.Generator().manual_seed(0))
    expected = {"smoothgrad": g, "smoothgrad_sq": g * g, "vargrad": torch.zeros_like(g)}[kind]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


BASES = sorted(set(METHODS) - {"smooth_grad", "smooth_taylor", "rise", "mfpp", "causal_ate"})
BASE_OPTIONS = {"integrated_gradients": {"n_steps": 8}, "gnl_integrated_gradients": {"n_steps": 8},
                "occlusion": {"sliding_window_shapes": (2, 3, 3), "strides": (2, 3, 3)}}


def test_registry_holds_the_smoothing_methods():
    assert METHODS["smooth_grad"] is smooth_grad and METHODS["smooth_taylor"] is smooth_taylor
    assert fastattr.smooth_grad is smooth_grad and fastattr.smooth_taylor is smooth_taylor
    assert len(BASES) >= 6


@pytest.mark.parametrize("name", BASES)
def test_sigma_zero_every_registry_base(name):
    model, x = cnn(), torch.randn(2, 2, 6, 6, dtype=F64)
    kwargs = BASE_OPTIONS.get(name, {})
    out = smooth_grad(model, x, [1, 2], base=name, n_samples=3, stdevs=0.0, **kwargs)
    torch.testing.assert_close(out, METHODS[name](model, x, [1, 2], **kwargs), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["rise", "mfpp", "smooth_taylor", "causal_ate"])
def test_mask_sampling_methods_are_not_bases(name):
    """RISE and MFPP sample their own masks and return one map per image;
    PdCR's causal ATE explains a segmentation region by interventions."""
    with pytest.raises(ValueError, match=f"unknown base '{name}'"):
        smooth_grad(cnn(), torch.randn(2, 2, 6, 6, dtype=F64), 0, base=name)


def test_linear_model_gives_weights_exactly():
    torch.manual_seed(3)
    model = nn.Linear(5, 3).to(F64)
    x = torch.randn(4, 5, dtype=F64)
    target = torch.tensor([0, 1, 2, 1])
    out = smooth_grad(model, x, target, n_samples=7, stdevs=2.5, abs=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, model.weight.detach()[target], rtol=1e-14, atol=1e-14)
    # IG on a linear model with a zero baseline: (x + sigma eps) * w, averaged.
    eps = unit_noise(4, 7, (5,))
    ig = smooth_grad(model, x, target, base="integrated_gradients", n_samples=7, stdevs=2.5, noise=eps, n_steps=3)
    mean_eps = eps.view(4, 7, 5).mean(1)
    torch.testing.assert_close(ig, (x + 2.5 * mean_eps) * model.weight.detach()[target], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_size", [None, 1, 4, 9])
def test_quadratic_identity(batch_size):
    d, batch, n, sigma = 5, 3, 6, 0.7
    model, x = Quadratic(d), torch.randn(batch, d, dtype=F64)
    eps = unit_noise(batch, n, (d,))
    out = smooth_grad(model, x, 0, n_samples=n, stdevs=sigma, noise=eps, abs=False, batch_size=batch_size)
    mean_eps = sigma * eps.view(batch, n, d).mean(1)
    expected = x @ model.A + model.b + mean_eps @ model.A
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_size", [None, 2, 5])
def test_kinds_match_per_copy_oracle(batch_size):
    model, x = mlp(), torch.randn(3, 6, dtype=F64)
    n, sigma = 5, 0.8
    target = torch.tensor([1, 0, 3])
    eps = unit_noise(3, n, (6,))
    copies = grad_oracle(model, x.repeat_interleave(n, 0) + sigma * eps, target.repeat_interleave(n)).view(3, n, 6)
    expected = {
        "smoothgrad": copies.mean(1),
        "smoothgrad_sq": (copies ** 2).mean(1),
        "vargrad": copies.var(1, unbiased=False),
    }
    for kind, exp in expected.items():
        out = smooth_grad(model, x, target, n_samples=n, stdevs=sigma, kind=kind, noise=eps, abs=False,
                          batch_size=batch_size)
        torch.testing.assert_close(out, exp, rtol=1e-10, atol=1e-13)
    var = smooth_grad(model, x, target, n_samples=n, stdevs=sigma, kind="vargrad", noise=eps)
    assert (var >= -1e-15).all()
    assert var.max() > 0


def test_batch_size_bounds_rows_and_keeps_result():
    model, x = mlp(), torch.randn(4, 6, dtype=F64)
    seen = []

    def counting(z):
        seen.append(z.shape[0])
        return model(z)

    ref = smooth_grad(model, x, 1, n_samples=5, generator=torch.Generator().manual_seed(4))
    for bs in (1, 3, 5, 7, 20):
        seen.clear()
        out = smooth_grad(counting, x, 1, n_samples=5, generator=torch.Generator().manual_seed(4), batch_size=bs)
        assert max(seen) <= bs
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    seen.clear()
    smooth_grad(counting, x, 1, base="integrated_gradients", n_samples=5, stdevs=0.3, n_steps=6, batch_size=4,
                generator=torch.Generator().manual_seed(4))
    assert max(seen) <= 4


def test_default_target_is_resolved_on_clean_input():
    model, x = mlp(c=3), torch.randn(4, 6, dtype=F64)
    n, sigma = 6, 4.0
    eps = unit_noise(4, n, (6,))
    clean = model(x).argmax(1)
    noisy_top = model(x.repeat_interleave(n, 0) + sigma * eps).argmax(1)
    assert (noisy_top != clean.repeat_interleave(n)).any()  # copies disagree, so the test can tell
    out = smooth_grad(model, x, None, n_samples=n, stdevs=sigma, noise=eps)
    torch.testing.assert_close(out, smooth_grad(model, x, clean, n_samples=n, stdevs=sigma, noise=eps))
    per_copy = grad_oracle(model, x.repeat_interleave(n, 0) + sigma * eps, noisy_top).abs().view(4, n, 6).mean(1)
    assert not torch.allclose(out, per_copy)


def test_callable_target_and_callable_base():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    eps = unit_noise(2, 3, (6,))
    calls = []

    def base(model, inputs, target=None, batch_size=None, scale=1.0):
        calls.append(inputs.shape[0])
        return scale * fastattr.saliency(model, inputs, target, abs=False)

    out = smooth_grad(model, x, lambda o: o[:, 2], base=base, n_samples=3, stdevs=0.5, noise=eps, scale=3.0)
    expected = 3.0 * grad_oracle(model, x.repeat_interleave(3, 0) + 0.5 * eps, torch.full((6,), 2)).view(2, 3, 6)
    torch.testing.assert_close(out, expected.mean(1))
    assert calls == [6]


def test_generator_reproducibility_and_draw():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    a = smooth_grad(model, x, 0, n_samples=4, generator=torch.Generator().manual_seed(11))
    b = smooth_grad(model, x, 0, n_samples=4, generator=torch.Generator().manual_seed(11))
    c = smooth_grad(model, x, 0, n_samples=4, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The documented draw: one randn of shape (B*n, ...) from the generator.
    eps = torch.randn((8, 6), generator=torch.Generator().manual_seed(11), dtype=F64)
    torch.testing.assert_close(smooth_grad(model, x, 0, n_samples=4, noise=eps), a, rtol=0, atol=0)
    # The global RNG is used (and advanced) only without a generator.
    state = torch.get_rng_state()
    smooth_grad(model, x, 0, n_samples=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


def test_ig_base_per_row_baselines_and_deltas():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    n, sigma = 3, 0.4
    eps = unit_noise(2, n, (6,))
    rows = torch.randn(2 * n, 6, dtype=F64)
    noisy = x.repeat_interleave(n, 0) + sigma * eps
    attr, delta = smooth_grad(model, x, [1, 2], base="integrated_gradients", n_samples=n, stdevs=sigma, noise=eps,
                              baselines=rows, n_steps=10, return_delta=True, batch_size=4)
    ref, ref_delta = fastattr.integrated_gradients(model, noisy, torch.tensor([1, 2]).repeat_interleave(n),
                                                   baselines=rows, n_steps=10, return_delta=True)
    torch.testing.assert_close(attr, ref.view(2, n, 6).mean(1))
    torch.testing.assert_close(delta, ref_delta)
    # One baseline per example is expanded to its copies.
    per_example = torch.randn(2, 6, dtype=F64)
    out = smooth_grad(model, x, [1, 2], base="integrated_gradients", n_samples=n, stdevs=sigma, noise=eps,
                      baselines=per_example, n_steps=10)
    ref = fastattr.integrated_gradients(model, noisy, torch.tensor([1, 2]).repeat_interleave(n),
                                        baselines=per_example.repeat_interleave(n, 0), n_steps=10)
    torch.testing.assert_close(out, ref.view(2, n, 6).mean(1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="smoothgrad_abs"), "kind"),
        (dict(base="rise"), "base"),
        (dict(base="smooth_grad"), "base"),
        (dict(base=3), "base"),
        (dict(stdevs=-0.1), "stdevs"),
        (dict(stdevs=float("nan")), "stdevs"),
        (dict(n_samples=0), "n_samples"),
        (dict(n_samples=2.0), "n_samples"),
        (dict(noise=torch.zeros(5, 6, dtype=F64)), "noise"),
        (dict(noise=torch.zeros(4, 5, dtype=F64)), "noise"),
        (dict(noise=torch.zeros(4, 6, dtype=torch.long)), "noise"),
        (dict(generator=1234), "generator"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_smooth_grad_errors_name_the_argument(kwargs, match):
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    kwargs = dict(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        smooth_grad(model, x, 0, n_samples=kwargs.pop("n_samples", 2), **kwargs)


# --------------------------------------------------------------------------- Captum NoiseTunnel



@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_matches_captum_noise_tunnel_saliency(monkeypatch, nt_type, chunk):
    from captum.attr import NoiseTunnel, Saliency

    model, x = cnn(), torch.randn(2, 2, 6, 6, dtype=F64)
    n, sigma = 5, 0.6
    eps = unit_noise(2, n, x.shape[1:])
    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(CaptumNoiseFeed(eps, 2, n)))
    ref = NoiseTunnel(Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=n, nt_samples_batch_size=chunk,
                                                 stdevs=sigma, target=[2, 0])
    out = smooth_grad(model, x, [2, 0], n_samples=n, stdevs=sigma, kind=nt_type, noise=eps, batch_size=chunk)
    assert_rel(out, ref)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_matches_captum_noise_tunnel_ig(monkeypatch, nt_type):
    from captum.attr import IntegratedGradients, NoiseTunnel

    model, x = mlp(), torch.randn(3, 6, dtype=F64)
    baselines = torch.randn(3, 6, dtype=F64)
    n, sigma = 4, 0.5
    eps = unit_noise(3, n, (6,))
    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(CaptumNoiseFeed(eps, 3, n)))
    ref, ref_delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_type=nt_type, nt_samples=n, stdevs=sigma, target=1, baselines=baselines, n_steps=12,
        method="riemann_middle", return_convergence_delta=True)
    out, delta = smooth_grad(model, x, 1, base="integrated_gradients", n_samples=n, stdevs=sigma, kind=nt_type,
                             noise=eps, baselines=baselines, n_steps=12, method="riemann_middle", return_delta=True)
    assert_rel(out, ref)
    assert_rel(delta, ref_delta.to(delta.dtype))


# --------------------------------------------------------------------------- SmoothTaylor


def test_smooth_taylor_sigma_zero_is_zero():
    model, x = mlp(), torch.randn(3, 6, dtype=F64)
    out = smooth_taylor(model, x, n_roots=4, noise_scale=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.zeros_like(x))
    out = smooth_taylor(model, x, n_roots=4, noise_scale=10.0, percent=True, noise=torch.zeros(12, 6, dtype=F64))
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("percent", [False, True])
def test_smooth_taylor_linear(percent):
    torch.manual_seed(5)
    model = nn.Linear(6, 3).to(F64)
    x = torch.randn(3, 6, dtype=F64)
    n, scale = 9, 0.4 if not percent else 15.0
    eps = unit_noise(3, n, (6,))
    target = torch.tensor([2, 0, 1])
    out = smooth_taylor(model, x, target, n_roots=n, noise_scale=scale, percent=percent, noise=eps, batch_size=4)
    sigma = (scale / 100) * (x.amax(1) - x.amin(1)) if percent else torch.full((3,), scale, dtype=F64)
    expected = -sigma[:, None] * eps.view(3, n, 6).mean(1) * model.weight.detach()[target]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_smooth_taylor_quadratic_identity(batch_size):
    d, batch, n, sigma = 5, 2, 8, 0.9
    model, x = Quadratic(d, seed=2), torch.randn(batch, d, dtype=F64)
    eps = unit_noise(batch, n, (d,), seed=3)
    out = smooth_taylor(model, x, 0, n_roots=n, noise_scale=sigma, noise=eps, batch_size=batch_size)
    z = x.repeat_interleave(n, 0) + sigma * eps
    diff = x.repeat_interleave(n, 0) - z
    fz = model(z)[:, 0].view(batch, n)
    quad = 0.5 * ((diff @ model.A) * diff).sum(1).view(batch, n)
    expected = model(x)[:, 0] - fz.mean(1) - quad.mean(1)
    torch.testing.assert_close(out.sum(1), expected, rtol=1e-10, atol=1e-12)
    # Elementwise: (x - z_i) * (A z_i + b), averaged.
    torch.testing.assert_close(out, (diff * (z @ model.A + model.b)).view(batch, n, d).mean(1))


def test_smooth_taylor_oracle_generator_and_default_target():
    model, x = cnn(), torch.randn(2, 2, 6, 6, dtype=F64)
    n, sigma = 6, 0.5
    a = smooth_taylor(model, x, n_roots=n, noise_scale=sigma, generator=torch.Generator().manual_seed(9))
    b = smooth_taylor(model, x, n_roots=n, noise_scale=sigma, generator=torch.Generator().manual_seed(9),
                      batch_size=5)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    eps = torch.randn((2 * n, 2, 6, 6), generator=torch.Generator().manual_seed(9), dtype=F64)
    target = model(x).argmax(1)
    z = x.repeat_interleave(n, 0) + sigma * eps
    g = grad_oracle(model, z, target.repeat_interleave(n))
    expected = ((x.repeat_interleave(n, 0) - z) * g).view((2, n) + x.shape[1:]).mean(1)
    torch.testing.assert_close(a, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_roots=0), "n_roots"),
        (dict(noise_scale=-1.0), "noise_scale"),
        (dict(percent="yes"), "percent"),
        (dict(noise=torch.zeros(3, 6, dtype=F64)), "noise"),
        (dict(batch_size=-2), "batch_size"),
    ],
)
def test_smooth_taylor_errors_name_the_argument(kwargs, match):
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    kwargs.setdefault("n_roots", 2)
    with pytest.raises((ValueError, TypeError), match=match):
        smooth_taylor(model, x, 0, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype_and_accuracy(dtype):
    model32, x32 = mlp(), torch.randn(2, 6, dtype=F64)
    model32, x32 = model32.float(), x32.float()
    eps = unit_noise(2, 6, (6,)).to(dtype)
    ref = smooth_grad(model32, x32.to(dtype).float(), 1, n_samples=6, stdevs=0.5, noise=eps.float(), kind="vargrad")
    model = mlp().to(dtype)
    out = smooth_grad(model, x32.to(dtype), 1, n_samples=6, stdevs=0.5, noise=eps, kind="vargrad")
    assert out.dtype == dtype
    assert_rel(out.float(), ref, rel=5e-2)
    st = smooth_taylor(model, x32.to(dtype), 1, n_roots=6, noise_scale=0.5, noise=eps)
    st_ref = smooth_taylor(model32, x32.to(dtype).float(), 1, n_roots=6, noise_scale=0.5, noise=eps.float())
    assert st.dtype == dtype
    assert_rel(st.float(), st_ref, rel=5e-2)
