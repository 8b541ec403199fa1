"""fastattr.captum is a drop-in for captum.attr: the same calls through both
imports give the same results (float64, normwise relative error <= 1e-5)."""

import warnings
import zlib

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


# --------------------------------------------------------------------------- the parity matrix
# Fresh random models and inputs per case (seeded by the case), three layer-free
# shapes of one input (vectors, images, sequences of embeddings) and a model of
# three inputs with per-example and constant forward arguments.


class Sequence(nn.Module):
    """Sequences of embeddings (N, T, E) -> 4 classes."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(5, 8)
        self.act = nn.ReLU()
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.act(self.mix(x)).mean(1))


class ThreeInputs(nn.Module):
    """forward(vec (N, 6), img (N, 2, 5, 5), seq (N, 4, 3), scale (N, 1), shift 0-d, flip bool) -> (N, 4)."""

    def __init__(self):
        super().__init__()
        self.vec = nn.Linear(6, 8)
        self.conv = nn.Conv2d(2, 3, 3)
        self.seq = nn.Linear(3, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8 + 27 + 8, 4)

    def forward(self, vec, img, seq, scale=None, shift=None, flip=False):
        h = torch.cat([self.relu(self.vec(vec)), self.relu(self.conv(img)).flatten(1),
                       self.relu(self.seq(seq)).mean(1)], 1)
        out = self.head(h)
        if scale is not None:
            out = out * scale + shift
        return -out if flip else out


def seed_of(*parts) -> int:
    """A fixed seed per test case (str hashes change from run to run)."""
    return zlib.crc32(repr(parts).encode()) % 10000


def make_case(kind, seed, batch=3):
    """(model, inputs, additional_forward_args) of a fresh random case."""
    torch.manual_seed(seed)
    if kind == "vector":
        return mlp(seed), torch.randn(batch, 6, dtype=F64), None
    if kind == "image":
        return cnn(seed), torch.randn(batch, 2, 6, 6, dtype=F64), None
    if kind == "sequence":
        return Sequence().to(F64).eval(), torch.randn(batch, 7, 5, dtype=F64), None
    model = ThreeInputs().to(F64).eval()
    xs = (torch.randn(batch, 6, dtype=F64), torch.randn(batch, 2, 5, 5, dtype=F64), torch.randn(batch, 4, 3, dtype=F64))
    args = (torch.rand(batch, 1, dtype=F64) + 0.5, torch.tensor(0.3, dtype=F64), True) if kind == "multi+args" else None
    return model, xs, args


KINDS = ["vector", "image", "sequence", "multi", "multi+args"]
TARGETS = ["int", "0d", "1-tuple", "list", "tensor"]


def make_target(form, batch=3, classes=(3, 4)):
    c = min(classes)
    return {"int": 2, "0d": torch.tensor(1), "1-tuple": (c - 1,), "list": [0, 2, 1][:batch],
            "tensor": torch.tensor([2, 1, 0][:batch])}[form]


def make_baselines(form, inputs, seed=5):
    g = torch.Generator().manual_seed(seed)
    xs = inputs if isinstance(inputs, tuple) else (inputs,)

    def one(x, f):
        if f == "scalar":
            return 0.25
        if f == "full":
            return torch.randn(x.shape, generator=g, dtype=F64)
        return torch.randn((1,) + tuple(x.shape[1:]), generator=g, dtype=F64)  # "row"

    if form == "none":
        return None
    if form == "mixed":  # a tuple of scalars and tensors
        return tuple(one(x, ["scalar", "full", "row"][i % 3]) for i, x in enumerate(xs))
    if isinstance(inputs, tuple):
        return tuple(one(x, form) for x in xs)
    return one(inputs, form)


def call_both(name, model, ctor=None, **kw):
    ctor = ctor or {}
    ref = getattr(captum_attr, name)(model, **ctor).attribute(**kw)
    ours = getattr(fc, name)(model, **ctor).attribute(**kw)
    return ours, ref


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution"])
def test_matrix_gradient_methods(name, target, kind):
    model, x, args = make_case(kind, seed=seed_of(name, target, kind))
    ours, ref = call_both(name, model, inputs=x, target=make_target(target), additional_forward_args=args)
    assert isinstance(ours, tuple) == isinstance(x, tuple)
    assert_rel(ours, ref)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("baselines", ["none", "scalar", "full", "row", "mixed"])
@pytest.mark.parametrize("target", TARGETS)
def test_matrix_integrated_gradients(kind, baselines, target):
    model, x, args = make_case(kind, seed=seed_of(baselines, target, kind))
    kw = dict(inputs=x, baselines=make_baselines(baselines, x), target=make_target(target),
              additional_forward_args=args, n_steps=11, return_convergence_delta=True)
    (ours, d_ours), (ref, d_ref) = call_both("IntegratedGradients", model, **kw)
    assert_rel(ours, ref)
    assert_rel(d_ours, d_ref)


@pytest.mark.parametrize("kind", ["vector", "multi+args"])
@pytest.mark.parametrize("internal_batch_size", [1, 4, 7, 200])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_ig_internal_batch_size(kind, internal_batch_size, method):
    model, x, args = make_case(kind, seed=internal_batch_size)
    kw = dict(inputs=x, target=[1, 0, 2], additional_forward_args=args, n_steps=9, method=method,
              internal_batch_size=internal_batch_size, baselines=make_baselines("mixed", x))
    assert_rel(*call_both("IntegratedGradients", model, **kw))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["int", "list"])
def test_ig_multiply_by_inputs_false(kind, target):
    model, x, args = make_case(kind, seed=11)
    kw = dict(inputs=x, baselines=make_baselines("mixed", x), target=make_target(target),
              additional_forward_args=args, n_steps=8, return_convergence_delta=True)
    (ours, d_ours), (ref, d_ref) = call_both("IntegratedGradients", model, ctor={"multiply_by_inputs": False}, **kw)
    assert_rel(ours, ref)
    assert_rel(d_ours, d_ref)
    assert not fc.IntegratedGradients(model, multiply_by_inputs=False).multiplies_by_inputs


@pytest.mark.parametrize("kind", KINDS)
def test_compute_convergence_delta(kind):
    model, x, args = make_case(kind, seed=21)
    start = make_baselines("mixed", x)
    attr = captum_attr.IntegratedGradients(model).attribute(x, baselines=start, target=[1, 2, 0],
                                                            additional_forward_args=args, n_steps=5)
    ref = captum_attr.IntegratedGradients(model).compute_convergence_delta(
        attr, start, x, target=[1, 2, 0], additional_forward_args=args)
    ours = fc.IntegratedGradients(model).compute_convergence_delta(
        attr, start, x, target=[1, 2, 0], additional_forward_args=args)
    assert_rel(ours, ref)
    assert ref.abs().max() > 1e-6  # 5 steps: the gap is not zero, so the test can fail


def window_for(x):
    return tuple(min(2, d) for d in x.shape[1:])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("baselines", ["none", "scalar", "full", "row", "mixed"])
@pytest.mark.parametrize("perturbations_per_eval", [1, 3, 1000])
def test_matrix_occlusion(kind, baselines, perturbations_per_eval):
    model, x, args = make_case(kind, seed=seed_of(kind, baselines, perturbations_per_eval))
    xs = x if isinstance(x, tuple) else (x,)
    windows = tuple(window_for(t) for t in xs)
    strides = tuple(tuple(1 + (i % 2) for i in range(t.dim() - 1)) for t in xs)
    kw = dict(inputs=x, sliding_window_shapes=windows if isinstance(x, tuple) else windows[0],
              strides=strides if isinstance(x, tuple) else strides[0], baselines=make_baselines(baselines, x),
              target=[1, 0, 2], additional_forward_args=args, perturbations_per_eval=perturbations_per_eval)
    assert_rel(*call_both("Occlusion", model, **kw))


@pytest.mark.parametrize("target", TARGETS)
def test_occlusion_targets_and_int_strides(target):
    model, x, _ = make_case("image", seed=3)
    kw = dict(inputs=(x,), sliding_window_shapes=((2, 3, 3),), strides=2, target=make_target(target))
    ours, ref = call_both("Occlusion", model, **kw)
    assert isinstance(ours, tuple)
    assert_rel(ours, ref)


def masks_for(x, seed):
    """A feature mask with a batch dimension of 1, ids 0..3 (shared across inputs)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (1,) + tuple(x.shape[1:]), generator=g)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("baselines", ["none", "scalar", "full", "row", "mixed"])
@pytest.mark.parametrize("mask", ["none", "mask"])
@pytest.mark.parametrize("perturbations_per_eval", [1, 4])
def test_matrix_feature_ablation(kind, baselines, mask, perturbations_per_eval):
    model, x, args = make_case(kind, seed=seed_of(kind, baselines, mask, perturbations_per_eval))
    feature_mask = None
    if mask == "mask":
        feature_mask = tuple(masks_for(t, i) for i, t in enumerate(x)) if isinstance(x, tuple) else masks_for(x, 0)
    kw = dict(inputs=x, baselines=make_baselines(baselines, x), target=[2, 0, 1], additional_forward_args=args,
              feature_mask=feature_mask, perturbations_per_eval=perturbations_per_eval)
    assert_rel(*call_both("FeatureAblation", model, **kw))


@pytest.mark.parametrize("target", TARGETS)
def test_feature_ablation_targets_per_example_masks(target):
    model, x, _ = make_case("vector", seed=8)
    mask = torch.stack([torch.arange(6) // 2, torch.arange(6) % 3, torch.zeros(6, dtype=torch.long)])
    kw = dict(inputs=x, target=make_target(target), feature_mask=mask, perturbations_per_eval=2)
    assert_rel(*call_both("FeatureAblation", model, **kw))


class MultiFeed:
    """Captum's NoiseTunnel adds noise input by input, chunk after chunk: feed
    each input's unit draw eps[i] (sample-major) in that order."""

    def __init__(self, eps, batch, n):
        self.feeds = [CaptumNoiseFeed(e, batch, n) for e in eps]
        self.calls = 0

    def __call__(self, inp, stdev, p):
        feed_ = self.feeds[self.calls % len(self.feeds)]
        self.calls += 1
        return feed_(inp, stdev, p)


@pytest.mark.parametrize("kind", ["multi", "multi+args", "sequence"])
@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("chunk", [None, 2])
def test_noise_tunnel_several_inputs(monkeypatch, kind, name, chunk):
    model, x, args = make_case(kind, seed=31)
    xs = x if isinstance(x, tuple) else (x,)
    n = 5
    eps = tuple(unit_noise(3, n, t.shape[1:], seed=40 + i) for i, t in enumerate(xs))
    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(MultiFeed(eps, 3, n)))
    stdevs = tuple(0.1 * (i + 1) for i in range(len(xs))) if isinstance(x, tuple) else 0.2
    kw = dict(nt_type="smoothgrad_sq", nt_samples=n, nt_samples_batch_size=chunk, stdevs=stdevs,
              target=[0, 3, 1], additional_forward_args=args)
    if name == "IntegratedGradients":
        kw.update(n_steps=5, baselines=make_baselines("mixed", x), return_convergence_delta=True)
    ref = captum_attr.NoiseTunnel(getattr(captum_attr, name)(model)).attribute(x, **kw)
    ours = fc.NoiseTunnel(getattr(fc, name)(model)).attribute(x, noise=eps if isinstance(x, tuple) else eps[0],
                                                             **kw)
    assert_rel(ours, ref)


def test_show_progress_counts_forward_passes(capsys):
    model, x, args = make_case("multi+args", seed=2)
    kw = dict(inputs=x, target=1, additional_forward_args=args, perturbations_per_eval=2, show_progress=True)
    ours, ref = call_both("FeatureAblation", model, **kw)
    assert_rel(ours, ref)
    err = capsys.readouterr().err
    n_features = sum(t[0].numel() for t in x)
    # one pass for f(x), then n_features ablations 2 per pass
    assert f"{1 + -(-n_features // 2)}pass" in err.replace(" ", "") or f"{1 + -(-n_features // 2)}/" in err


# --------------------------------------------------------------------------- Captum's errors


def _invalid_calls():
    x, model, grid = torch.randn(2, 6, dtype=F64), mlp(), Grid()
    xs = (x, torch.randn(2, 6, dtype=F64))
    two = lambda a, b: model(a) + model(b)  # noqa: E731  (a model of two inputs)
    return {
        "inputs is a list": ("Saliency", model, dict(inputs=[x], target=0)),
        "target None, several outputs (gradient)": ("Saliency", model, dict(inputs=x)),
        "target None, several outputs (IG)": ("IntegratedGradients", model, dict(inputs=x)),
        "target list too short": ("Saliency", model, dict(inputs=x, target=[0])),
        "target tensor of a wrong shape": ("InputXGradient", model, dict(inputs=x, target=torch.tensor([[0, 1]]))),
        "target list of strings": ("Saliency", model, dict(inputs=x, target=["a", "b"])),
        "target of a wrong type": ("Saliency", model, dict(inputs=x, target=1.5)),
        "baselines of the wrong count": ("IntegratedGradients", model, dict(inputs=x, baselines=(0.0, 0.0),
                                                                           target=0)),
        "baselines for two inputs, one given": ("IntegratedGradients", two,
                                                dict(inputs=xs, baselines=0.0, target=0)),
        "baseline of a wrong type": ("IntegratedGradients", model, dict(inputs=x, baselines="zero", target=0)),
        "baseline of a wrong batch": ("IntegratedGradients", model, dict(inputs=x, baselines=torch.zeros(3, 6,
                                                                                                      dtype=F64),
                                                                        target=0)),
        "IG method unknown": ("IntegratedGradients", model, dict(inputs=x, target=0, method="simpson")),
        "occlusion window too large": ("Occlusion", model, dict(inputs=x, sliding_window_shapes=(7,), target=0)),
        "occlusion windows count": ("Occlusion", two, dict(inputs=xs, sliding_window_shapes=((2,),), target=0)),
        "occlusion window rank": ("Occlusion", model, dict(inputs=x, sliding_window_shapes=((2, 2),), target=0)),
        "occlusion stride > window": ("Occlusion", model, dict(inputs=x, sliding_window_shapes=(2,), strides=3,
                                                               target=0)),
        "occlusion strides count": ("Occlusion", two, dict(inputs=xs, sliding_window_shapes=((2,), (2,)),
                                                           strides=(1, 1, 1), target=0)),
        "ablation perturbations_per_eval 0": ("FeatureAblation", model, dict(inputs=x, target=0,
                                                                             perturbations_per_eval=0)),
        "tuple target in a 2-D output": ("Saliency", grid, dict(inputs=x, target=(0, 1, 2))),
    }


INVALID = _invalid_calls()


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_arguments_raise_captums_exception_type(case):
    name, model, kw = INVALID[case]
    with pytest.raises(Exception) as ref:
        getattr(captum_attr, name)(model).attribute(**kw)
    with pytest.raises(Exception) as ours:
        getattr(fc, name)(model).attribute(**kw)
    assert isinstance(ours.value, ref.type), (ref.type, ours.value)
    assert "fastattr" in str(ours.value)


def test_noise_tunnel_invalid_arguments():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    for kw in (dict(nt_type="smoothgrad_abs"), dict(stdevs=(0.1, 0.2))):
        with pytest.raises(AssertionError):
            captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(x, target=0, **kw)
        with pytest.raises(AssertionError):
            fc.NoiseTunnel(fc.Saliency(model)).attribute(x, target=0, **kw)


def test_fastattr_errors_without_captum_twin():
    model, x = mlp(), torch.randn(2, 6, dtype=F64)
    with pytest.raises(TypeError, match="nn.Module"):
        fc.GuidedBackprop(lambda z: model(z))
    with pytest.raises(TypeError, match="baselines"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(x, target=0, baselines=x)
    with pytest.raises(TypeError, match="gradient method"):
        fc.NoiseTunnel(fc.Occlusion(model))
    with pytest.raises(TypeError, match="multiply_by_inputs"):
        fc.IntegratedGradients(model, multiply_by_inputs="no")
    with pytest.raises(ValueError, match="nt_samples"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(x, target=0, nt_samples=0)


# --------------------------------------------------------------------------- deliberate differences


class FunctionalRelu(nn.Module):
    """The cnn's layers with functional (one in place) ReLUs instead of nn.ReLU modules."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        h = torch.nn.functional.relu(n[0](x))
        h = n[3](n[2](h))
        return n[6](n[4](h).relu_())


@pytest.mark.parametrize("name", ["GuidedBackprop", "Deconvolution"])
def test_functional_relus_are_guided_in_fastattr(name):
    """Captum's hooks see nn.ReLU modules only: on functional ReLUs it silently
    gives plain gradients. fastattr guides every ReLU, so on the functional
    model it gives what Captum gives on the same weights with nn.ReLU modules."""
    net = cnn(4)
    functional = FunctionalRelu(net).eval()
    x = torch.randn(3, 2, 6, 6, dtype=F64)
    target = [0, 1, 2]
    modules = getattr(captum_attr, name)(net).attribute(x, target=target)
    ours = getattr(fc, name)(functional).attribute(x, target=target)
    assert_rel(ours, modules)
    captum_functional = getattr(captum_attr, name)(functional).attribute(x, target=target)
    plain = captum_attr.Saliency(functional).attribute(x, target=target, abs=False)
    assert_rel(captum_functional, plain)  # Captum: an ordinary gradient here
    assert (captum_functional - ours).abs().max() > 1e-3


def test_occlusion_dtype_differs():
    model, x, _ = make_case("vector", seed=1)
    ours, ref = call_both("Occlusion", model, inputs=x, sliding_window_shapes=(2,), target=0)
    assert ref.dtype == torch.float32 and ours.dtype == F64  # Captum divides in float32
    assert_rel(ours, ref)


# --------------------------------------------------------------------------- fastattr's own classes


def test_gnl_ig_class_is_ig_without_relus_and_max_pools():
    """GNL only changes ReLU and max-pool gradients: on a model with neither it is Captum's IG."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 4)).to(F64).eval()
    x = (torch.randn(3, 6, dtype=F64),)
    kw = dict(baselines=(0.1,), target=[1, 2, 3], n_steps=4, method="riemann_left", return_convergence_delta=True)
    (ours, d_ours) = fc.GNLIntegratedGradients(model).attribute(x, **kw)
    (ref, d_ref) = captum_attr.IntegratedGradients(model).attribute(x, **kw)
    assert_rel(ours, ref)
    assert_rel(d_ours, d_ref)
    assert d_ref.abs().max() > 1e-4  # 4 left Riemann steps: a real gap


def test_gnl_ig_class_several_inputs_guides_relus():
    """Several inputs and a per-example forward argument: the oracle is a
    midpoint sum of Captum's GuidedBackprop along the path, times x - x'."""
    model, x, args = make_case("multi+args", seed=5)
    # ThreeInputs has nn.ReLU modules and no max-pool: GNL's rules are guided ReLUs only.
    n = 5
    gb = captum_attr.GuidedBackprop(model)
    parts = [gb.attribute(tuple(t * (k + 0.5) / n for t in x), target=[0, 2, 1], additional_forward_args=args)
             for k in range(n)]
    ref = tuple(sum(p[i] for p in parts) / n * x[i] for i in range(3))
    ours = fc.GNLIntegratedGradients(model).attribute(x, target=[0, 2, 1], additional_forward_args=args, n_steps=n,
                                                      method="riemann_middle")
    assert_rel(ours, ref)


def test_gnl_ig_class_guides_relus():
    """With nn.ReLU modules, the guided path gradient is Captum's GuidedBackprop
    at every path point: a Riemann sum of GuidedBackprop x (x - x') is the oracle."""
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).to(F64).eval()
    x = torch.randn(2, 6, dtype=F64)
    n = 6
    gb = captum_attr.GuidedBackprop(net)
    ref = sum(gb.attribute(x * (k + 0.5) / n, target=[0, 2]) for k in range(n)) / n * x
    ours = fc.GNLIntegratedGradients(net).attribute(x, target=[0, 2], n_steps=n, method="riemann_middle")
    assert_rel(ours, ref)


def test_rise_class():
    """RISE's class runs fastattr.rise with the class's keywords: its masks (the
    generator's draws, replayed by rise_draws) give S = sum_k f(x * M_k) M_k / (N p)."""
    from fastattr import reference
    from fastattr.methods.perturbation import rise_draws, rise_geometry

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).to(F64).eval()
    scale = torch.tensor([[0.5], [2.0]], dtype=F64)  # a per-example forward argument

    def model(z, s):
        return net(z) * s

    x = torch.rand(2, 3, 8, 8, dtype=F64)
    out = fc.RISE(model).attribute(x, target=torch.tensor([2, 0]), additional_forward_args=(scale,), n_masks=40,
                                   grid_size=3, p=0.5,
                                   internal_batch_size=7, generator=torch.Generator().manual_seed(5),
                                   upsample="torch", activation=None)
    grids, shifts = rise_draws(40, 3, 0.5, (8, 8), torch.Generator().manual_seed(5))
    _, up = rise_geometry((8, 8), 3)
    masks = reference.rise_masks(grids.to(F64), torch.arange(40), shifts, (8, 8), up, "clamp")
    masks = masks.to(F64).view(40, 1, 8, 8)
    expected = torch.stack([
        sum(model(x[b:b + 1] * masks[k], scale[b:b + 1])[0, t] * masks[k, 0] for k in range(40)) / (40 * 0.5)
        for b, t in ((0, 2), (1, 0))]).unsqueeze(1)
    assert_rel(out, expected.detach(), rel=1e-6)


def test_causal_ate_class_zeros_mode():
    """CausalATE's class in "zeros" mode against a float64 loop written here: each
    4x4 block outside the RoI set to 0, the RoI Dice change kept where >= tau."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 1, 7, padding=3)).to(F64).eval()
    x = torch.rand(1, 3, 16, 16, dtype=F64)
    gt = torch.zeros(1, 1, 16, 16, dtype=F64)
    gt[..., 6:10, 5:11] = 1
    r0, c0, size = 4, 4, 8  # RoI box (row, col, size)
    with torch.no_grad():
        threshold = float(model(x)[0, 0, r0:r0 + size, c0:c0 + size].median())

    def dice(batch):
        with torch.no_grad():
            pred = (model(batch)[0, 0] > threshold).double()[r0:r0 + size, c0:c0 + size]
        g = gt[0, 0, r0:r0 + size, c0:c0 + size]
        return 100.0 * 2.0 * float((pred * g).sum()) / (float(pred.sum()) + float(g.sum()) + 1e-10)

    base = dice(x)
    expected = torch.zeros(16, 16, dtype=F64)
    for i in range(0, 16, 4):
        for j in range(0, 16, 4):
            if r0 - 4 < i < r0 + size and c0 - 4 < j < c0 + size:
                continue  # a block with RoI pixels
            z = x.clone()
            z[..., i:i + 4, j:j + 4] = 0
            d = dice(z) - base
            if abs(d) >= 0.02:
                expected[i:i + 4, j:j + 4] = d
    assert (expected != 0).any()
    out = fc.CausalATE(model).attribute(x, gt, (r0, c0, size), target=torch.tensor(0), block=4, mode="zeros",
                                        threshold=threshold, internal_batch_size=5)
    assert out.shape == (1, 1, 16, 16)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-9)
    # A constant forward argument is passed through; per-example ones need one image per call.
    shifted = fc.CausalATE(lambda z, c: model(z) + c).attribute(
        x, gt, (r0, c0, size), block=4, mode="zeros", threshold=threshold + 0.25,
        additional_forward_args=torch.tensor(0.25, dtype=F64))
    torch.testing.assert_close(shifted[0, 0], expected, rtol=0, atol=1e-9)
    two = torch.cat([x, x])
    with pytest.raises(ValueError, match="one image per call"):
        fc.CausalATE(lambda z, c: model(z) * c).attribute(two, gt, (r0, c0, size), block=4, mode="zeros",
                                                          additional_forward_args=torch.ones(2, 1, 1, 1, dtype=F64))


# --------------------------------------------------------------------------- the functional API with several inputs


@pytest.mark.parametrize("name,captum_name", [("saliency", "Saliency"), ("input_x_gradient", "InputXGradient"),
                                              ("guided_backprop", "GuidedBackprop"),
                                              ("deconvnet", "Deconvolution")])
def test_functional_several_inputs(name, captum_name):
    import fastattr

    model, x, args = make_case("multi+args", seed=seed_of(name))
    ours = getattr(fastattr, name)(model, x, target=[3, 1, 0], additional_forward_args=args, batch_size=2)
    ref = getattr(captum_attr, captum_name)(model).attribute(x, target=[3, 1, 0], additional_forward_args=args)
    if name == "saliency":
        ref = tuple(r.abs() for r in ref)
    assert isinstance(ours, tuple) and len(ours) == 3
    assert_rel(ours, ref)


def test_functional_ig_and_ablation_several_inputs():
    import fastattr

    model, x, args = make_case("multi+args", seed=77)
    base = make_baselines("mixed", x)
    ours, delta = fastattr.integrated_gradients(model, x, target=2, baselines=base, n_steps=10, batch_size=5,
                                                additional_forward_args=args, return_delta=True)
    ref, ref_delta = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=base, target=2, n_steps=10, additional_forward_args=args, return_convergence_delta=True)
    assert_rel(ours, ref)
    assert_rel(delta, ref_delta)
    masks = tuple(masks_for(t, i) for i, t in enumerate(x))
    ours = fastattr.feature_ablation(model, x, target=2, feature_mask=masks, baselines=base,
                                     additional_forward_args=args, batch_size=6)
    ref = captum_attr.FeatureAblation(model).attribute(x, target=2, feature_mask=masks, baselines=base,
                                                       additional_forward_args=args, perturbations_per_eval=2)
    assert_rel(ours, ref)


def test_functional_forward_args_single_input():
    """One input tensor with additional_forward_args returns one tensor; the default target (argmax) sees the args."""
    import fastattr

    model, x = WithArgs(), torch.randn(3, 6, dtype=F64)
    args = (torch.rand(3, 1, dtype=F64) + 0.5, torch.tensor(0.2, dtype=F64), True)
    top = model(x, *args).argmax(1)
    ours = fastattr.integrated_gradients(model, x, additional_forward_args=args, n_steps=6)
    ref = captum_attr.IntegratedGradients(model).attribute(x, target=top, additional_forward_args=args, n_steps=6)
    assert isinstance(ours, torch.Tensor)
    assert_rel(ours, ref)


def test_functional_several_inputs_errors():
    import fastattr

    model, (a, b, c), _ = make_case("multi", seed=1)
    with pytest.raises(ValueError, match=r"same batch size.*inputs\[1\] has 2"):
        fastattr.saliency(model, (a, b[:2], c), target=0)
    with pytest.raises(TypeError, match=r"same dtype.*inputs\[2\] is torch.float32"):
        fastattr.saliency(model, (a, b, c.float()), target=0)
    with pytest.raises(TypeError, match=r"inputs\[1\] must be a torch.Tensor"):
        fastattr.saliency(model, (a, [1.0], c), target=0)
    with pytest.raises(TypeError, match="baselines must be a number or a tuple of 3"):
        fastattr.integrated_gradients(model, (a, b, c), target=0, baselines=torch.zeros_like(a))
    with pytest.raises(ValueError, match="baselines must be a tuple of 3"):
        fastattr.integrated_gradients(model, (a, b, c), target=0, baselines=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"baselines\[1\] of shape"):
        fastattr.integrated_gradients(model, (a, b, c), target=0, baselines=(0.0, torch.zeros(3, 2), 0.0))
    with pytest.raises(TypeError, match=r"feature_mask\[0\] must be an integer tensor"):
        fastattr.feature_ablation(model, (a, b, c), target=0, feature_mask=(None, None, None))


@pytest.mark.parametrize("name", ["GuidedBackprop", "Deconvolution"])
def test_torchscript_refused_with_several_inputs(name):
    """Guided rules cannot reach inside TorchScript: refused, also when the
    engine wraps the model for several inputs or forward arguments."""
    scripted = torch.jit.script(TwoScriptable().to(F64).eval())
    x = (torch.randn(2, 6, dtype=F64), torch.randn(2, 6, dtype=F64))
    with pytest.raises(TypeError, match="TorchScript"):
        getattr(fc, name)(scripted).attribute(x, target=0, additional_forward_args=torch.ones(2, 1, dtype=F64))


class TwoScriptable(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, a, b, scale):
        return self.net(a + b) * scale


@pytest.mark.parametrize("name", GRADIENT_METHODS + ["NoiseTunnel", "Occlusion", "FeatureAblation"])
def test_signatures_are_captums(name):
    """Constructors and attribute() take Captum 0.9's parameters, in its order,
    with its defaults (NoiseTunnel adds the keyword-only generator and noise,
    IntegratedGradients the keyword-only tolerance and max_evals of method="adaptive")."""
    import inspect

    def params(fn, drop=()):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name not in drop]

    ours, ref = getattr(fc, name), getattr(captum_attr, name)
    assert params(ours.__init__) == params(ref.__init__)
    assert params(ours.attribute, drop=("generator", "noise", "tolerance", "max_evals")) == params(ref.attribute)


# --------------------------------------------------------------------------- random shapes (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class AnyInputs(nn.Module):
    """One linear map per flattened input, summed, then ReLU and a linear head."""

    def __init__(self, sizes, classes):
        super().__init__()
        self.parts = nn.ModuleList(nn.Linear(s, 7) for s in sizes)
        self.relu = nn.ReLU()
        self.head = nn.Linear(7, classes)

    def forward(self, *xs):
        # xs: the inputs, then optionally a per-example scale (N, 1) as a forward argument
        h = sum(p(x.flatten(1)) for p, x in zip(self.parts, xs))
        out = self.head(self.relu(h))
        return out * xs[-1] if len(xs) > len(self.parts) else out


@st.composite
def random_cases(draw):
    batch = draw(st.integers(1, 4))
    shapes = draw(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3))
    classes = draw(st.integers(2, 5))
    name = draw(st.sampled_from(["IntegratedGradients", "Saliency", "InputXGradient", "GuidedBackprop",
                                 "FeatureAblation", "Occlusion", "NoiseTunnel"]))
    target = draw(st.one_of(st.integers(0, classes - 1),
                            st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))
    rows = draw(st.one_of(st.none(), st.integers(1, 12)))
    return batch, shapes, classes, name, target, rows, draw(st.integers(0, 2**16)), draw(st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases())
def test_random_shapes_match_captum(case):
    batch, shapes, classes, name, target, rows, seed, with_args = case
    torch.manual_seed(seed)
    model = AnyInputs([math_prod(s) for s in shapes], classes).to(F64).eval()
    xs = tuple(torch.randn((batch,) + s, dtype=F64) for s in shapes)
    inputs = xs if len(xs) > 1 or seed % 2 else xs[0]  # a tensor, or a tuple of one or more
    kw = dict(inputs=inputs, target=target)
    if with_args:
        kw.update(additional_forward_args=(torch.rand(batch, 1, dtype=F64) + 0.5,))
    if name == "NoiseTunnel":  # stdevs 0: the noisy copies are the inputs, whatever the draws
        ref = captum_attr.NoiseTunnel(captum_attr.InputXGradient(model)).attribute(
            nt_type="smoothgrad_sq", nt_samples=3, nt_samples_batch_size=rows, stdevs=0.0, **kw)
        ours = fc.NoiseTunnel(fc.InputXGradient(model)).attribute(
            nt_type="smoothgrad_sq", nt_samples=3, nt_samples_batch_size=rows, stdevs=0.0, **kw)
        assert_rel(ours, ref)
        return
    if name == "IntegratedGradients":
        kw.update(n_steps=6, internal_batch_size=rows, baselines=tuple(0.1 * i for i in range(len(xs)))
                  if isinstance(inputs, tuple) else 0.3)
    elif name in ("FeatureAblation", "Occlusion"):
        kw.update(perturbations_per_eval=rows or 1)
        if name == "Occlusion":
            windows = tuple(tuple(max(1, d // 2) for d in s) for s in shapes)
            kw.update(sliding_window_shapes=windows if isinstance(inputs, tuple) else windows[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_rel(*call_both(name, model, **kw))


def math_prod(shape):
    out = 1
    for d in shape:
        out *= d
    return out


@pytest.mark.parametrize("strides", [None, 2, (2,), (1, 2), ((2, 1),)])
def test_occlusion_stride_forms(strides):
    """Captum's stride forms for one input: None, an int, a 1-tuple (its entry
    for the one input, an int for every dim), a tuple per dim, a tuple per input."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).to(F64).eval()
    x = torch.randn(2, 3, 4, dtype=F64)
    kw = dict(inputs=x, sliding_window_shapes=(2, 2), strides=strides, target=1)
    assert_rel(*call_both("Occlusion", model, **kw))


def test_functional_occlusion_several_inputs():
    import fastattr

    model, x, args = make_case("multi+args", seed=12)
    windows = ((2,), (1, 2, 2), (2, 3))
    ours = fastattr.occlusion(model, x, target=[1, 2, 0], sliding_window_shapes=windows, strides=(1, (1, 2, 2), 1),
                              baselines=(0.5, 0.0, -0.1), batch_size=9, additional_forward_args=args)
    ref = captum_attr.Occlusion(model).attribute(x, sliding_window_shapes=windows, strides=(1, (1, 2, 2), 1),
                                                 baselines=(0.5, 0.0, -0.1), target=[1, 2, 0],
                                                 additional_forward_args=args, perturbations_per_eval=3)
    assert isinstance(ours, tuple) and len(ours) == 3
    assert_rel(ours, ref)
    with pytest.raises(ValueError, match="sliding_window_shapes must be a tuple of 3"):
        fastattr.occlusion(model, x, target=0, sliding_window_shapes=(2,))


def test_noise_tunnel_baseline_distribution_several_inputs(monkeypatch):
    """Per input, a tensor baseline is a distribution: both draw one row per noisy
    copy, input after input (scalars drawn nothing); fastattr's generator draws
    randint(K_i, (B * n,)) in that order, fed to Captum's numpy.random.choice."""
    model, x, args = make_case("multi+args", seed=9)
    n, b = 4, 3
    dists = (torch.randn(5, 6, dtype=F64), 0.2, torch.randn(4, 4, 3, dtype=F64))
    g = torch.Generator().manual_seed(7)
    draws = [torch.randint(5, (b * n,), generator=g), torch.randint(4, (b * n,), generator=g)]
    assert len(set(draws[0].tolist())) > 1
    queue = [d.numpy() for d in draws]
    monkeypatch.setattr(np.random, "choice", lambda num, size: queue.pop(0)[:size])
    eps = tuple(unit_noise(b, n, t.shape[1:], seed=50 + i) for i, t in enumerate(x))
    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(MultiFeed(eps, b, n)))
    kw = dict(nt_samples=n, stdevs=(0.1, 0.2, 0.3), draw_baseline_from_distrib=True, baselines=dists,
              target=[1, 0, 3], additional_forward_args=args, n_steps=5)
    ref = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model)).attribute(x, **kw)
    assert not queue  # Captum drew once per tensor baseline
    ours = fc.NoiseTunnel(fc.IntegratedGradients(model)).attribute(
        x, noise=eps, generator=torch.Generator().manual_seed(7), **kw)
    assert_rel(ours, ref)


# --------------------------------------------------------------------------- method="adaptive" (issue 14)

@pytest.mark.parametrize("n", [2, 3, 5])
def test_ig_adaptive_within_start_nodes_is_the_trapezoid_rule(n):
    """With a budget of at most its 5 start nodes, adaptive IG is the textbook
    trapezoid rule on linspace(0, 1, n) (zero baseline): checked against
    Captum's gradients at those nodes, weighted in float64 here."""
    model = cnn(3)
    x = torch.randn(2, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(n))
    ours, delta = fc.IntegratedGradients(model).attribute(x, target=1, n_steps=n, method="adaptive",
                                                         return_convergence_delta=True)
    weights = torch.full((n,), 1.0 / (n - 1), dtype=F64)
    weights[0] = weights[-1] = 0.5 / (n - 1)
    grads = [captum_attr.Saliency(model).attribute(x * a, target=1, abs=False)
             for a in torch.linspace(0, 1, n, dtype=F64)]
    assert_rel(ours, sum(w * g for w, g in zip(weights, grads)) * x, 1e-10)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert torch.allclose(delta, ours.flatten(1).sum(1) - gap, rtol=1e-9, atol=1e-12)


def test_ig_adaptive_options_through_captum_layer():
    model = cnn(4)
    x = torch.randn(2, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(9))
    ig = fc.IntegratedGradients(model)
    with pytest.raises(ValueError, match="tolerance"):
        ig.attribute(x, target=0, tolerance=0.1)  # only for method="adaptive"
    with pytest.raises(ValueError, match="max_evals"):
        ig.attribute(x, target=0, method="adaptive", max_evals=1)
    attr, delta = ig.attribute(x, target=0, method="adaptive", max_evals=65, tolerance=0.0,
                               return_convergence_delta=True)
    exact = captum_attr.IntegratedGradients(model).attribute(x, target=0, n_steps=2048, method="riemann_middle")
    # A small ReLU CNN: 65 adaptive nodes are close to the (near-)exact integral.
    assert float((attr - exact).norm() / exact.norm()) < 0.05
    with torch.no_grad():
        gap = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    assert torch.allclose(delta, attr.flatten(1).sum(1) - gap, rtol=1e-9, atol=1e-12)
    nt = fc.NoiseTunnel(ig).attribute(x, target=0, nt_samples=2, method="adaptive", max_evals=9,
                                      generator=torch.Generator().manual_seed(0))
    assert nt.shape == x.shape and torch.isfinite(nt).all()
