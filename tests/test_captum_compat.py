"""fastattr.captum is a drop-in for captum.attr: the same calls through both
imports give the same results (float64, normwise relative error <= 1e-5)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

import fastattr.captum as fc  # noqa: E402
from utils import CaptumNoiseFeed

F64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's hook warnings
        yield


def assert_rel(actual, expected, rel=1e-5):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_rel(a, e, rel)
        return
    assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape, (type(actual), expected.shape)
    err = (actual - expected.to(actual.dtype)).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale + 1e-12, f"max error {err:.3e} vs scale {scale:.3e}"


def mlp(seed=0, c=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, c)).to(F64).eval()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 8), nn.ReLU(),
        nn.Linear(8, 3)
    ).to(F64).eval()


def both(name, model, *args, **kwargs):
    return getattr(captum_attr, name)(model, *args, **kwargs), getattr(fc, name)(model, *args, **kwargs)


GRADIENT_METHODS = ["Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution", "IntegratedGradients"]


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("target", [2, [0, 2, 1], "tensor", "scalar_tensor"])
def test_methods_match(name, target):
    model, x = cnn(), torch.randn(3, 2, 6, 6, dtype=F64)
    if target == "tensor":
        target = torch.tensor([1, 0, 2])
    elif target == "scalar_tensor":
        target = torch.tensor(1)
    ref, ours = both(name, model)
    assert_rel(ours.attribute(x, target=target), ref.attribute(x, target=target))


@pytest.mark.parametrize("abs_", [True, False])
def test_saliency_abs_and_tuple_inputs(abs_):
    model, x = mlp(), torch.randn(4, 6, dtype=F64)
    ref, ours = both("Saliency", model)
    out = ours.attribute((x,), target=3, abs=abs_)
    assert isinstance(out, tuple) and len(out) == 1
    assert_rel(out, ref.attribute((x,), target=3, abs=abs_))
    assert (out[0] >= 0).all() if abs_ else (out[0] < 0).any()


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
@pytest.mark.parametrize("baselines", [None, 0.3, "same_shape", "one_row", "tuple"])
def test_integrated_gradients_options(method, baselines):
    model, x = mlp(), torch.randn(3, 6, dtype=F64)
    if baselines == "same_shape":
        baselines = torch.randn(3, 6, dtype=F64)
    elif baselines == "one_row":
        baselines = torch.randn(1, 6, dtype=F64)
    elif baselines == "tuple":
        baselines = (torch.randn(3, 6, dtype=F64),)
    ref, ours = both("IntegratedGradients", model)
    kw = dict(baselines=baselines, target=[1, 3, 0], n_steps=9, method=method, return_convergence_delta=True)
    (a, da), (b, db) = ours.attribute(x, **kw), ref.attribute(x, **kw)
    assert_rel(a, b)
    assert_rel(da, db)
    assert_rel(ours.attribute(x, internal_batch_size=4, **kw)[0], b)


def test_defaults_and_properties():
    model = mlp()
    ref, ours = both("IntegratedGradients", model)
    x = torch.randn(2, 6, dtype=F64)
    assert_rel(ours.attribute(x, target=0), ref.attribute(x, target=0))  # n_steps=50, gausslegendre, zeros
    assert ours.multiplies_by_inputs and ours.has_convergence_delta()
    assert fc.InputXGradient(model).multiplies_by_inputs and not fc.Saliency(model).multiplies_by_inputs
    nt = fc.NoiseTunnel(ours)
    assert nt.has_convergence_delta() and nt.multiplies_by_inputs and nt.forward_func is model


@pytest.mark.parametrize("name", ["Saliency", "IntegratedGradients"])
def test_target_none_scalar_outputs(name):
    net = mlp(c=1)
    for model in (net, lambda z: net(z)[:, 0]):
        x = torch.randn(3, 6, dtype=F64)
        ref = getattr(captum_attr, name)(model).attribute(x)
        assert_rel(getattr(fc, name)(model).attribute(x), ref)


def test_target_none_multi_output_raises_like_captum():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    with pytest.raises(AssertionError):
        captum_attr.Saliency(model).attribute(x)
    with pytest.raises(ValueError, match="[Tt]arget"):
        fc.Saliency(model).attribute(x)


class Grid(nn.Module):
    """Output of shape (N, 2, 3): targets are tuples of indices."""

    def __init__(self):
        super().__init__()
        self.net = mlp(c=6)

    def forward(self, x):
        return self.net(x).view(-1, 2, 3)


@pytest.mark.parametrize("name", ["Saliency", "IntegratedGradients"])
def test_tuple_and_list_of_tuple_targets(name):
    model, x = Grid(), torch.randn(3, 6, dtype=F64)
    ref, ours = both(name, model)
    assert_rel(ours.attribute(x, target=(1, 2)), ref.attribute(x, target=(1, 2)))
    targets = [(0, 1), (1, 0), (1, 2)]
    assert_rel(ours.attribute(x, target=targets), ref.attribute(x, target=targets))


class WithArgs(nn.Module):
    """forward(x, scale, shift, flip): scale (N, 1) per example, shift 0-dim, flip a Python bool."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x, scale, shift, flip=False):
        out = self.net(x * scale + shift)
        return -out if flip else out


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_additional_forward_args(name):
    model, x = WithArgs(), torch.randn(3, 6, dtype=F64)
    args = (torch.rand(3, 1, dtype=F64) + 0.5, torch.tensor(0.2, dtype=F64), True)
    ref, ours = both(name, model)
    kw = dict(target=[1, 0, 2], additional_forward_args=args)
    if name == "IntegratedGradients":
        kw.update(n_steps=7, return_convergence_delta=True)
    assert_rel(ours.attribute(x, **kw), ref.attribute(x, **kw))
    # A single non-tuple argument is wrapped like Captum does.
    single = WithArgsSingle()
    ref, ours = both(name, single)
    assert_rel(ours.attribute(x, target=1, additional_forward_args=args[0]),
               ref.attribute(x, target=1, additional_forward_args=args[0]))


class WithArgsSingle(WithArgs):
    def forward(self, x, scale):
        return self.net(x * scale)


# --------------------------------------------------------------------------- NoiseTunnel



def feed(monkeypatch, eps, batch, n):
    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(CaptumNoiseFeed(eps, batch, n)))


def unit_noise(batch, n, shape, seed=1):
    return torch.randn((batch * n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_matches(monkeypatch, name, nt_type):
    model, x = cnn(), torch.randn(2, 2, 6, 6, dtype=F64)
    n = 4
    eps = unit_noise(2, n, x.shape[1:])
    feed(monkeypatch, eps, 2, n)
    kw = dict(nt_type=nt_type, nt_samples=n, stdevs=0.4, target=[2, 1])
    if name == "IntegratedGradients":
        kw.update(n_steps=6)
    ref = captum_attr.NoiseTunnel(getattr(captum_attr, name)(model)).attribute(x, **kw)
    ours = fc.NoiseTunnel(getattr(fc, name)(model)).attribute(x, noise=eps, **kw)
    assert_rel(ours, ref)


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
def test_noise_tunnel_ig_chunks_deltas_args(monkeypatch, chunk):
    model, x = WithArgs(), torch.randn(3, 6, dtype=F64)
    n = 5
    eps = unit_noise(3, n, (6,))
    feed(monkeypatch, eps, 3, n)
    args = (torch.rand(3, 1, dtype=F64) + 0.5, torch.tensor(-0.1, dtype=F64))
    kw = dict(nt_type="vargrad", nt_samples=n, nt_samples_batch_size=chunk, stdevs=(0.3,),
              target=torch.tensor([0, 3, 1]),
              baselines=torch.randn(3, 6, dtype=F64), additional_forward_args=args, n_steps=8,
              internal_batch_size=10, return_convergence_delta=True)
    ref, ref_delta = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model)).attribute(x, **kw)
    ours, delta = fc.NoiseTunnel(fc.IntegratedGradients(model)).attribute(x, noise=eps, **kw)
    assert_rel(ours, ref)
    assert delta.shape == (3 * n,)
    assert_rel(delta, ref_delta)


def test_noise_tunnel_baseline_distribution(monkeypatch):
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    n, k = 4, 5
    eps = unit_noise(2, n, (6,))
    dist = torch.randn(k, 6, dtype=F64)
    # fastattr draws the baseline rows with the generator: randint(K, (B*n,)).
    idx = torch.randint(k, (2 * n,), generator=torch.Generator().manual_seed(7))
    assert len(set(idx.tolist())) > 1
    feed(monkeypatch, eps, 2, n)
    monkeypatch.setattr(np.random, "choice", lambda num, size: idx.numpy()[:size])
    kw = dict(nt_samples=n, stdevs=0.2, draw_baseline_from_distrib=True, baselines=dist, target=1, n_steps=6)
    ref = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model)).attribute(x, **kw)
    ours = fc.NoiseTunnel(fc.IntegratedGradients(model)).attribute(
        x, noise=eps, generator=torch.Generator().manual_seed(7), **kw)
    assert_rel(ours, ref)


def test_noise_tunnel_generator_reproducible():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    nt = fc.NoiseTunnel(fc.Saliency(model))
    a = nt.attribute(x, nt_samples=3, target=0, generator=torch.Generator().manual_seed(3))
    b = nt.attribute(x, nt_samples=3, target=0, generator=torch.Generator().manual_seed(3))
    c = nt.attribute(x, nt_samples=3, target=0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- unsupported / errors


def test_unsupported_and_errors():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    with pytest.raises(NotImplementedError, match="one input tensor"):
        fc.Saliency(model).attribute((x, x), target=0)
    with pytest.raises(NotImplementedError, match="multiply_by_inputs"):
        fc.IntegratedGradients(model, multiply_by_inputs=False)
    with pytest.raises(NotImplementedError, match="stdevs"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(x, stdevs=(0.1, 0.2), target=0)
    with pytest.raises(TypeError, match="fastattr.captum"):
        fc.NoiseTunnel(captum_attr.Saliency(model))
    with pytest.raises(TypeError, match="nn.Module"):
        fc.GuidedBackprop(lambda z: model(z))
    with pytest.raises(TypeError, match="baselines"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(x, target=0, baselines=x)
    with pytest.raises(ValueError, match="nt_type"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(x, target=0, nt_type="smoothgrad_abs")
    with pytest.raises(ValueError, match="nt_samples"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(x, target=0, nt_samples=0)
    with pytest.raises(ValueError, match="target"):
        fc.Saliency(model).attribute(x, target=[0, 1, 2])
