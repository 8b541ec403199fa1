import warnings

import pytest
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients

import fastattr
from fastattr.methods.quadrature import METHODS
from models import ConvNet, Quadratic, assert_same_state, hook_state, single_thread  # noqa: F401


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def captum_ig(model, x, target, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IntegratedGradients(model).attribute(x, target=target, **kw)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ConvNet(size=10).double().eval()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 10, 10, dtype=torch.float64, generator=g)


TARGET = [0, 3, 4]


# Captum needs n_steps > 1 for the Riemann rules.
@pytest.mark.parametrize("method, n", [(m, n) for m in METHODS for n in (1, 2, 7, 50)
                                       if n > 1 or m == "gausslegendre"])
def test_matches_captum(net, x, method, n):
    ours = fastattr.integrated_gradients(net, x, TARGET, n_steps=n, method=method)
    ref = captum_ig(net, x, TARGET, n_steps=n, method=method)
    assert ours.dtype == torch.float64 and ours.shape == x.shape
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("method, batch_size, internal", [
    ("gausslegendre", 3, 3), ("gausslegendre", 7, 7), ("riemann_trapezoid", 10, 10),
    ("riemann_left", 2, 1),  # ours splits the batch, Captum runs one step of all samples
])
def test_matches_captum_batched(net, x, method, batch_size, internal):
    ours = fastattr.integrated_gradients(net, x, TARGET, n_steps=11, method=method, batch_size=batch_size)
    ref = captum_ig(net, x, TARGET, n_steps=11, method=method, internal_batch_size=internal)
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("baselines", ["tensor", "sample_tensor", 0.25, -1])
def test_matches_captum_baselines(net, x, baselines):
    if baselines == "tensor":
        baselines = torch.randn_like(x)
    elif baselines == "sample_tensor":
        baselines = torch.randn(1, *x.shape[1:], dtype=x.dtype)
    ours = fastattr.integrated_gradients(net, x, TARGET, baselines=baselines, n_steps=20)
    ref = captum_ig(net, x, TARGET, baselines=baselines if not isinstance(baselines, torch.Tensor)
                    else baselines.expand_as(x), n_steps=20)
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("target", [2, (1, 0, 4), torch.tensor([4, 4, 1])])
def test_matches_captum_targets(net, x, target):
    ours = fastattr.integrated_gradients(net, x, target, n_steps=10, batch_size=4)
    ref = captum_ig(net, x, target if not isinstance(target, tuple) else list(target), n_steps=10)
    assert rel_err(ours, ref) <= 1e-5


def test_default_target_is_argmax_of_unperturbed_input(net, x):
    c = net(x).argmax(1)
    assert torch.equal(fastattr.integrated_gradients(net, x, n_steps=5),
                       fastattr.integrated_gradients(net, x, c, n_steps=5))


def test_callable_target_matches_captum_on_segmentation_output():
    torch.manual_seed(3)
    seg = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).double().eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    def score(out):  # class-1 logit summed over a region, one scalar per row
        return out[:, 1, 1:4, 2:5].sum((1, 2))
    ours, delta = fastattr.integrated_gradients(seg, x, score, n_steps=9, batch_size=5, return_delta=True)
    wrapped = lambda z: score(seg(z))  # noqa: E731
    ref, ref_delta = captum_ig(wrapped, x, None, n_steps=9, return_convergence_delta=True)
    assert rel_err(ours, ref) <= 1e-5
    # Captum rounds the weights to float32: compare deltas at that scale.
    torch.testing.assert_close(delta, ref_delta, rtol=0, atol=1e-6 * ours.abs().sum().item())
    explicit = IntegratedGradients(wrapped).compute_convergence_delta(ours, torch.zeros_like(x), x)
    torch.testing.assert_close(delta, explicit, rtol=1e-10, atol=1e-12)


def test_batch_larger_than_batch_size_is_split(net):
    x = torch.randn(7, 3, 10, 10, dtype=torch.float64)
    t = torch.arange(7) % 5
    whole = fastattr.integrated_gradients(net, x, t, n_steps=6, batch_size=1000)
    for bs in (2, 3, 13):
        torch.testing.assert_close(fastattr.integrated_gradients(net, x, t, n_steps=6, batch_size=bs), whole,
                                   rtol=1e-10, atol=1e-12)


class RowCounter(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = []

    def forward(self, z):
        self.rows.append(z.shape[0])
        return self.inner(z)


@pytest.mark.parametrize("b, batch_size, n, expected", [
    (3, 8, 50, [6] * 25),        # 2 steps of 3 samples per chunk
    (3, 2, 4, [2, 2, 2, 2, 1, 1, 1, 1]),  # batch split: samples 0-1 then 2, one step each
    (2, 100, 30, [60]),
])
def test_rows_per_forward_bounded_by_batch_size(net, b, batch_size, n, expected):
    counter = RowCounter(net)
    x = torch.randn(b, 3, 10, 10, dtype=torch.float64)
    fastattr.integrated_gradients(counter, x, 0, n_steps=n, batch_size=batch_size)
    assert counter.rows == expected


def test_default_batch_size_bounds_rows_not_n_steps(net):
    """With batch_size=None the rows per pass follow the engine's planner (the
    planner's own properties are tested in test_engine.py), whatever n_steps."""
    counter = RowCounter(net)
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    fastattr.integrated_gradients(counter, x, 0, n_steps=200)
    cap = fastattr.engine.default_batch_size(x)
    assert max(counter.rows) <= cap < 800 and sum(counter.rows) == 800
    assert all(r % 4 == 0 for r in counter.rows)  # every pass holds whole steps of the 4 samples


# ---------------------------------------------------------------------------
# Analytic checks (fp32)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, n", [("gausslegendre", 1), ("gausslegendre", 2), ("gausslegendre", 9),
                                       ("riemann_middle", 1), ("riemann_middle", 4), ("riemann_middle", 25)])
def test_quadratic_exact(method, n):
    torch.manual_seed(4)
    f = Quadratic(12, classes=3)
    x = torch.randn(4, 3, 2, 2)
    xb = torch.randn(4, 3, 2, 2)
    c = torch.tensor([0, 1, 2, 1])
    ours = fastattr.integrated_gradients(f, x, c, baselines=xb, n_steps=n, method=method)
    exact = f.double().exact_ig(x.double(), xb.double(), c).float()
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


@pytest.mark.parametrize("method", METHODS)
def test_linear_model(method):
    torch.manual_seed(5)
    lin = nn.Linear(10, 3).double()
    x, xb = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64)
    ours = fastattr.integrated_gradients(lin, x, 2, baselines=xb, n_steps=6, method=method)
    total = 1 - 1 / 6 if method == "riemann_trapezoid" else 1.0  # Captum's trapezoid weights
    torch.testing.assert_close(ours, total * (x - xb) * lin.weight[2].detach(), rtol=1e-7, atol=1e-12)


def test_completeness_delta_shrinks_with_n(net, x):
    x = x * 3
    deltas = [fastattr.integrated_gradients(net, x, TARGET, n_steps=n, return_delta=True)[1].abs().max().item()
              for n in (2, 16, 256)]
    assert deltas[2] < deltas[1] < deltas[0]
    assert deltas[2] < 1e-3 * net(x).abs().max().item()


@pytest.mark.parametrize("method, n, bs", [("gausslegendre", 50, None), ("riemann_right", 7, 4)])
def test_delta_equals_captum(net, x, method, n, bs):
    attr, delta = fastattr.integrated_gradients(net, x, TARGET, baselines=0.5, n_steps=n, method=method,
                                                batch_size=bs, return_delta=True)
    ref, ref_delta = captum_ig(net, x, TARGET, baselines=0.5, n_steps=n, method=method,
                               return_convergence_delta=True)
    ig = IntegratedGradients(net)
    explicit = ig.compute_convergence_delta(attr, torch.full_like(x, 0.5), x, target=TARGET)
    assert delta.shape == (3,)
    torch.testing.assert_close(delta, ref_delta, rtol=0, atol=1e-6 * attr.abs().sum().item())
    torch.testing.assert_close(delta, explicit, rtol=1e-10, atol=1e-12)


def test_low_precision_accumulates_in_float32():
    torch.manual_seed(6)
    lin = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(2, 16)
    ref = fastattr.integrated_gradients(lin.double(), x.double(), 1, n_steps=64)
    out = fastattr.integrated_gradients(lin.bfloat16(), x.bfloat16(), 1, n_steps=64)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=5e-2, atol=5e-2 * ref.abs().max().item())


# ---------------------------------------------------------------------------
# The model and the inputs are left alone
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [fastattr.integrated_gradients, fastattr.gnl_integrated_gradients])
def test_model_and_inputs_untouched(fn):
    torch.manual_seed(7)
    model = ConvNet(size=8).double().eval()
    model.conv1.weight.requires_grad_(False)
    model.fc2.register_forward_hook(lambda *a: None)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    before = hook_state(model)
    fn(model, x, 1, n_steps=5, batch_size=4)
    assert_same_state(before, hook_state(model))
    assert not model.training and x.grad is None and torch.equal(x.detach(), x0)
    assert all(p.grad is None for p in model.parameters())
    model.train()
    fn(model, x, 1, n_steps=3)
    assert model.training


def test_works_inside_no_grad(net, x):
    with torch.no_grad():
        out = fastattr.integrated_gradients(net, x, TARGET, n_steps=5)
    torch.testing.assert_close(out, fastattr.integrated_gradients(net, x, TARGET, n_steps=5))
