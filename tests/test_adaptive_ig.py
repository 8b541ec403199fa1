"""Integrated gradients with adaptive node allocation (issue 14): ``method="adaptive"``.

Oracles: closed forms of one-hidden-layer ReLU networks along the straight path
(exact IG from each unit's active fraction of the path, ExactLine-style), float64
loops of autograd gradients at given nodes with textbook trapezoid weights, and
Captum's trapezoid rule.
"""

import pytest
import torch
from torch import nn

import fastattr
from fastattr import cli
from fastattr.jobs import JobConfig, open_output, run_job
from fastattr.methods import METHODS
from fastattr.methods.integrated_gradients import adaptive_integrated_gradients

D = torch.float64


class OneLayer(nn.Module):
    """F_c(x) = sum_j V[c, j] relu(W x + b)_j + U[c] . x, in float64."""

    def __init__(self, n_in=12, hidden=6, classes=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(hidden, n_in, generator=g, dtype=D))
        self.b = nn.Parameter(torch.randn(hidden, generator=g, dtype=D))
        self.V = nn.Parameter(torch.randn(classes, hidden, generator=g, dtype=D))
        self.U = nn.Parameter(torch.randn(classes, n_in, generator=g, dtype=D) * 0.1)

    def forward(self, x):
        z = x.flatten(1) @ self.W.T + self.b
        return torch.relu(z) @ self.V.T + x.flatten(1) @ self.U.T

    def kinks_and_fractions(self, x, xb):
        """Per sample: the alphas where a unit's pre-activation crosses 0, and each
        unit's active fraction of alpha in [0, 1] (closed form)."""
        z0 = xb.flatten(1) @ self.W.T + self.b
        dz = (x - xb).flatten(1) @ self.W.T
        t = -z0 / dz  # crossing of z0 + t dz = 0
        frac = torch.where(dz > 0, 1 - t.clamp(0, 1), t.clamp(0, 1))
        frac = torch.where(dz == 0, (z0 > 0).to(D), frac)
        return t, frac

    def exact_ig(self, x, xb, c):
        """Exact IG of class c: (x - x') * (W^T (V_c * frac) + U_c)."""
        _, frac = self.kinks_and_fractions(x, xb)
        grad = (frac * self.V[c]) @ self.W + self.U[c]
        return ((x - xb).flatten(1) * grad).view_as(x).detach()


class Elementwise(nn.Module):
    """A model whose per-row arithmetic never mixes rows or uses BLAS: its outputs
    for a row do not depend on the other rows of the batch."""

    def __init__(self, n_in=12, dtype=D):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(n_in, generator=g, dtype=dtype))
        self.b = nn.Parameter(torch.randn(n_in, generator=g, dtype=dtype))

    def forward(self, x):
        h = torch.relu(x.flatten(1) * self.w + self.b)
        return torch.stack([(h * h.roll(1, 1)).sum(1), (h * h).sum(1) - h.sum(1)], 1)


def trapezoid_loop(model, x, xb, c, alphas):
    """(x - x') * sum_k w_k grad F_c(x' + a_k (x - x')) with textbook trapezoid weights, one node at a time."""
    a = [float(v) for v in alphas]
    w = [0.0] * len(a)
    for k in range(len(a) - 1):
        w[k] += (a[k + 1] - a[k]) / 2
        w[k + 1] += (a[k + 1] - a[k]) / 2
    total = torch.zeros_like(x)
    for ak, wk in zip(a, w):
        z = (xb + ak * (x - xb)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(z.unsqueeze(0))[0, c], z)
        total += wk * grad
    return (x - xb) * total


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return OneLayer(), torch.randn(4, 3, 2, 2, dtype=D)


def test_linear_model_is_exact_from_the_start():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    x = torch.randn(3, 3, 2, 2, dtype=D)
    res = adaptive_integrated_gradients(model, x, 1, tolerance=1e-9, max_evals=40)
    expected = x * model[1].weight[1].view(3, 2, 2)
    torch.testing.assert_close(res.attributions, expected.detach(), rtol=1e-12, atol=1e-13)
    # All residuals vanish (up to rounding) on the 5 uniform nodes: nothing more is spent.
    assert res.evals.tolist() == [5, 5, 5] and bool(res.converged.all())
    assert float(res.residual.max()) < 1e-12


def test_piecewise_linear_toy_converges_to_exact_ig(toy):
    model, x = toy
    xb = torch.zeros_like(x)
    res = adaptive_integrated_gradients(model, x, 0, tolerance=0.0, max_evals=200)
    exact = model.exact_ig(x, xb, 0)
    # The error of each unit's active fraction is at most half the final segment
    # that holds its kink; 200 nodes put ~2^-30-wide segments around 6 kinks.
    torch.testing.assert_close(res.attributions, exact, rtol=1e-7, atol=1e-8)
    assert res.evals.tolist() == [200] * 4


@pytest.mark.parametrize("select", ["residual", "jump"])
def test_nodes_are_spent_only_where_the_path_function_bends(toy, select):
    """Residuals vanish inside a linear piece (up to float64 rounding), so no node
    is added inside a cell of the 5-node start grid where F is linear along the
    path (no unit's kink in it), while cells with a kink get refined."""
    model, x = toy
    xb = torch.zeros_like(x)
    res = adaptive_integrated_gradients(model, x, 0, tolerance=0.0, max_evals=45, select=select)
    kinks, _ = model.kinks_and_fractions(x, xb)
    kinks = kinks.detach()
    for i in range(x.shape[0]):
        inside = [float(t) for t in kinks[i] if 0 <= t <= 1]
        bent = {min(int(t * 4), 3) for t in inside}
        added = [a for a in res.alphas[i].tolist() if a * 4 != int(a * 4)]
        assert len(added) == 40
        assert all(int(a * 4) in bent for a in added), (i, added, inside)
        assert all(any(int(a * 4) == c for a in added) for c in bent)


def test_fully_bracketed_kinks_make_delta_match_residuals(toy):
    """sum(A) - (F(x) - F(x')) = -sum r exactly in exact arithmetic; the bound |delta| <= sum |r|."""
    model, x = toy
    res = adaptive_integrated_gradients(model, x, 1, tolerance=1e-6, max_evals=120)
    gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    delta = res.attributions.flatten(1).sum(1) - gap
    torch.testing.assert_close(res.delta, delta.detach(), rtol=1e-9, atol=1e-12)
    assert bool((res.delta.abs() <= res.residual + 1e-12).all())


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_budget_of_the_start_grid_is_the_uniform_trapezoid_rule(toy, n):
    """max_evals <= 5 leaves nothing to allocate: the textbook trapezoid rule on
    linspace(0, 1, n), i.e. Captum's riemann_trapezoid times n / (n - 1) (Captum's
    weights sum to 1 - 1/n)."""
    model, x = toy
    xb = torch.full_like(x, 0.3)
    res = adaptive_integrated_gradients(model, x, 1, baselines=0.3, tolerance=0.0, max_evals=n)
    assert res.evals.tolist() == [n] * 4
    for i in range(4):
        torch.testing.assert_close(res.alphas[i], torch.linspace(0, 1, n, dtype=D))
        torch.testing.assert_close(res.attributions[i], trapezoid_loop(model, x[i], xb[i], 1, res.alphas[i]),
                                   rtol=1e-12, atol=1e-13)
    if n in (2, 3, 5):  # float32 linspace (Captum's nodes) is exact there
        captum_rule = fastattr.integrated_gradients(model, x, 1, baselines=0.3, n_steps=n, method="riemann_trapezoid")
        torch.testing.assert_close(res.attributions, captum_rule * n / (n - 1), rtol=1e-12, atol=1e-13)


def test_equal_residuals_give_the_uniform_9_node_rule():
    """A path function with constant third derivative (F = (w . x)^3) has equal
    residuals on equal segments, so the one round after the 5-node grid bisects
    all 4 segments: at tolerance 0 and max_evals 9, the uniform trapezoid rule on 9 nodes."""
    w = torch.randn(12, dtype=D)

    def cubic(z):
        return ((z.flatten(1) @ w) ** 3)[:, None]

    x = torch.randn(3, 12, dtype=D)
    res = adaptive_integrated_gradients(cubic, x, 0, tolerance=0.0, max_evals=9)
    for i in range(3):
        torch.testing.assert_close(res.alphas[i], torch.linspace(0, 1, 9, dtype=D), rtol=0, atol=0)
        torch.testing.assert_close(res.attributions[i], trapezoid_loop(cubic, x[i], torch.zeros(12, dtype=D), 0,
                                                                       res.alphas[i]), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("select", ["residual", "jump"])
def test_result_is_the_trapezoid_rule_on_its_reported_nodes(toy, select):
    model, x = toy
    res = adaptive_integrated_gradients(model, x, 0, tolerance=0.0, max_evals=23, select=select)
    for i in range(4):
        a = res.alphas[i]
        assert len(a) == 23 and a[0] == 0 and a[-1] == 1 and bool((a[1:] > a[:-1]).all())
        torch.testing.assert_close(res.weights[i].sum(), torch.tensor(1.0, dtype=D))
        torch.testing.assert_close(res.attributions[i], trapezoid_loop(model, x[i], torch.zeros_like(x[i]), 0, a),
                                   rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gnl", [False, True])
def test_bit_identical_across_batch_size(dtype, gnl):
    """Images stop at different rounds (tolerance > 0, one class per image); the
    method adds no dependence on batch_size (the model here is row-independent)."""
    model = Elementwise(dtype=dtype)
    x = torch.randn(7, 3, 2, 2, dtype=dtype, generator=torch.Generator().manual_seed(5))
    target = [0, 1, 0, 1, 1, 0, 0]
    whole = adaptive_integrated_gradients(model, x, target, tolerance=1e-2, max_evals=33, batch_size=10_000, gnl=gnl)
    assert len(set(whole.evals.tolist())) > 1  # the images really stop at different rounds
    for bs in (1, 3, 8):
        part = adaptive_integrated_gradients(model, x, target, tolerance=1e-2, max_evals=33, batch_size=bs, gnl=gnl)
        assert torch.equal(part.attributions, whole.attributions)
        assert torch.equal(part.delta, whole.delta) and torch.equal(part.evals, whole.evals)
        assert all(torch.equal(a, b) for a, b in zip(part.alphas, whole.alphas))


@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_tolerance_met_on_every_image_or_budget_reached(toy, tol):
    model, x = toy
    x = torch.cat([x, torch.randn(4, 3, 2, 2, dtype=D) * 3])
    res = adaptive_integrated_gradients(model, x, 0, tolerance=tol, max_evals=37)
    gap = (model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]).detach().abs()
    for i in range(x.shape[0]):
        met = float(res.residual[i]) <= tol * float(gap[i])
        assert bool(res.converged[i]) == met
        assert met or int(res.evals[i]) == 37
        assert int(res.evals[i]) <= 37 and len(res.alphas[i]) == int(res.evals[i])
        assert abs(float(res.delta[i])) <= float(res.residual[i]) + 1e-12
    assert bool(res.converged.any())  # some images stop early: the tolerance is acted on
    assert int(res.evals[res.converged].min()) < 37


def test_functional_api_matches_the_result_object(toy):
    model, x = toy
    attr, delta = fastattr.integrated_gradients(model, x, 0, method="adaptive", tolerance=1e-3, max_evals=21,
                                                return_delta=True)
    res = adaptive_integrated_gradients(model, x, 0, tolerance=1e-3, max_evals=21)
    assert torch.equal(attr, res.attributions) and torch.equal(delta, res.delta)
    # max_evals defaults to n_steps
    assert torch.equal(fastattr.integrated_gradients(model, x, 0, n_steps=21, method="adaptive", tolerance=1e-3), attr)


def test_gnl_adaptive_is_the_guided_trapezoid_on_its_nodes(toy):
    """Guided ReLU passes positive gradients only: for the one-layer toy the guided
    gradient is W^T (V_c * [z > 0] * [V_c > 0]) + U_c, in closed form."""
    model, x = toy
    res = adaptive_integrated_gradients(model, x, 0, tolerance=0.0, max_evals=17, gnl=True)
    # tolerance 0: the whole budget, unless the guided integrand is equal at all nodes
    assert all(e == 17 or float(r) == 0 for e, r in zip(res.evals.tolist(), res.residual))
    gnl = fastattr.gnl_integrated_gradients(model, x, 0, method="adaptive", tolerance=0.0, max_evals=17)
    assert torch.equal(gnl, res.attributions)
    for i in range(4):
        total = torch.zeros(12, dtype=D)
        for a, w in zip(res.alphas[i].tolist(), res.weights[i].tolist()):
            z = model.W @ (a * x[i].flatten()) + model.b
            v = model.V[0]
            total += w * (model.W.T @ (v * (z > 0) * (v > 0)) + model.U[0])
        torch.testing.assert_close(res.attributions[i].flatten(), (x[i].flatten() * total).detach(),
                                   rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kw, err, match", [
    ({"tolerance": -0.1}, ValueError, r"tolerance must be finite and >= 0.*got -0.1"),
    ({"tolerance": float("nan")}, ValueError, "tolerance must be finite"),
    ({"tolerance": float("inf")}, ValueError, "tolerance must be finite"),
    ({"tolerance": "0.1"}, TypeError, "tolerance must be a number.*got str"),
    ({"tolerance": True}, TypeError, "tolerance must be a number.*got bool"),
    ({"max_evals": 1}, ValueError, r"max_evals must be at least 2.*got 1"),
    ({"max_evals": 8.0}, TypeError, "max_evals must be an int.*got float"),
    ({"max_evals": True}, TypeError, "max_evals must be an int.*got bool"),
    ({"n_steps": 1}, ValueError, r"max_evals must be at least 2.*got 1"),
])
def test_bad_arguments(toy, kw, err, match):
    model, x = toy
    calls = []
    counted = lambda z: calls.append(z.shape[0]) or model(z)  # noqa: E731
    with pytest.raises(err, match=match):
        fastattr.integrated_gradients(counted, x, 0, method="adaptive", **kw)
    assert calls == []  # refused before any model evaluation


@pytest.mark.parametrize("fn", [fastattr.integrated_gradients, fastattr.gnl_integrated_gradients])
def test_adaptive_options_refused_with_a_fixed_rule(toy, fn):
    model, x = toy
    with pytest.raises(ValueError, match=r"tolerance only apply to method='adaptive', got method='gausslegendre'"):
        fn(model, x, 0, tolerance=0.01)
    with pytest.raises(ValueError, match=r"tolerance, max_evals only apply .* method='riemann_middle'"):
        fn(model, x, 0, method="riemann_middle", tolerance=0.01, max_evals=9)
    with pytest.raises(TypeError, match="gnl must be a bool"):
        adaptive_integrated_gradients(model, x, 0, gnl=1)
    with pytest.raises(ValueError, match=r"select must be one of \('residual', 'jump'\), got 'midpoint'"):
        adaptive_integrated_gradients(model, x, 0, select="midpoint")


def test_store_is_split_into_groups_without_changing_results(toy, monkeypatch):
    import importlib

    ig = importlib.import_module("fastattr.methods.integrated_gradients")

    model, x = toy
    whole = adaptive_integrated_gradients(model, x, [0, 1, 1, 0], tolerance=1e-3, max_evals=21)
    monkeypatch.setattr(ig, "_ADAPTIVE_CPU_STORE", 21 * 12 * 3)  # three images per group
    parts = adaptive_integrated_gradients(model, x, [0, 1, 1, 0], tolerance=1e-3, max_evals=21)
    torch.testing.assert_close(parts.attributions, whole.attributions, rtol=1e-13, atol=1e-14)
    assert torch.equal(parts.evals, whole.evals)


def tiny_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def test_job_runner_passes_adaptive_options(tmp_path):
    data = [(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)), i % 3,
             torch.zeros(8, 8, dtype=torch.bool)) for i in range(5)]
    cfg = JobConfig(model="tiny", data="tiny", method="integrated_gradients", out=str(tmp_path / "o"), quiet=True,
                    shard_size=5, batch_size=5, threads=1,
                    method_options={"method": "adaptive", "tolerance": 0.02, "max_evals": 9})
    run_job(cfg, model=tiny_classifier(), dataset=data, task="classification", methods=METHODS)
    out = open_output(tmp_path / "o")
    opts = out.manifest["job"]["method_options"]
    assert (opts["method"], opts["tolerance"], opts["max_evals"]) == ("adaptive", 0.02, 9)
    model = tiny_classifier()
    x = torch.stack([d[0] for d in data])
    expected = adaptive_integrated_gradients(model, x, model(x).argmax(1), tolerance=0.02, max_evals=9)
    torch.testing.assert_close(out.attributions(), expected.attributions, rtol=1e-5, atol=1e-6)


def test_cli_flags_become_method_options():
    parser = cli.build_parser()
    argv = ["run", "--model", "m", "--data", "d", "--method", "integrated_gradients", "--out", "o",
            "--integration", "adaptive", "--tolerance", "0.05", "--max-evals", "17"]
    cfg = cli._run_config(parser, parser.parse_args(argv))
    assert cfg.method_options == {"method": "adaptive", "tolerance": 0.05, "max_evals": 17}


def test_region_targets_on_the_bundled_unet():
    """Per-image box targets on the bundled lesions U-Net: the batch gives each
    image what it gets alone (the adaptive rounds subset the region target)."""
    from fastattr import targets

    model = fastattr.models.load("lesions-unet")
    ds = fastattr.data.load("lesions", split="test")
    x = torch.stack([ds[i][0] for i in range(2)]).float()
    boxes = [[40, 40, 32, 32], [10, 60, 32, 32]]
    together = fastattr.integrated_gradients(model, x, target=targets.box(boxes), method="adaptive", max_evals=9)
    alone = torch.cat([fastattr.integrated_gradients(model, x[i:i + 1], target=targets.box(boxes[i]),
                                                     method="adaptive", max_evals=9) for i in range(2)])
    assert together.abs().amax() > 0
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
