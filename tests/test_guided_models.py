"""GNL (spec §1.5) and guided backprop on real architectures, against module-hook oracles."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients

import fastattr
from fastattr.guidance import guided
from models import (ConvNet, FunctionalReluNet, LinearNet, assert_same_state, hook_state, oracle_copy,
                    register_gnl_oracle, single_thread)  # noqa: F401


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def grad_of(model, x, target, context=None):
    z = x.clone().requires_grad_()
    with context if context is not None else torch.enable_grad():
        out = model(z)
    (g,) = torch.autograd.grad(out[torch.arange(x.shape[0]), torch.as_tensor(target)].sum(), z)
    return g


def gnl_oracle_grad(model, x, target):
    oracle = oracle_copy(model)
    handles = register_gnl_oracle(oracle)
    try:
        return grad_of(oracle, x, target)
    finally:
        for h in handles:
            h.remove()


POOLS = {
    "2x2": (dict(kernel_size=2, stride=2), 12),
    "2x2_odd": (dict(kernel_size=2, stride=2), 11),   # 11 -> 5: the nearest cell is sometimes a neighbour window
    "3s2p1": (dict(kernel_size=3, stride=2, padding=1), 12),
    "3s2p1_odd": (dict(kernel_size=3, stride=2, padding=1), 13),
    "3s1p1_ceil": (dict(kernel_size=3, stride=1, padding=1, ceil_mode=True), 9),
    "3s2_ceil": (dict(kernel_size=3, stride=2, ceil_mode=True), 11),
}


@pytest.mark.parametrize("pool", POOLS, ids=list(POOLS))
def test_gnl_gradient_equals_hook_oracle(pool):
    kw, size = POOLS[pool]
    torch.manual_seed(20)
    model = ConvNet(size=size, pool=kw).double().eval()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    target = [0, 2, 4]
    ours = grad_of(model, x, target, guided(model, maxpool=True))
    expected = gnl_oracle_grad(model, x, target)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    relu_only = grad_of(model, x, target, guided(model))
    if pool == "2x2":
        # non-overlapping pools of ReLU outputs: the pool rule is relu(routed gradient), which
        # the guided ReLU upstream applies anyway
        torch.testing.assert_close(relu_only, expected, rtol=1e-12, atol=1e-14)
    else:
        # the nearest-cell mask differs from the routing window: the pool rule matters
        assert not torch.allclose(relu_only, expected)


@pytest.mark.parametrize("pool", ["3s2p1", "3s1p1_ceil"])
def test_gnl_ig_equals_captum_ig_with_oracle_hooks(pool):
    kw, size = POOLS[pool]
    torch.manual_seed(21)
    model = ConvNet(size=size, pool=kw).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    oracle = oracle_copy(model)
    register_gnl_oracle(oracle)
    ref = quiet(IntegratedGradients(oracle).attribute, x, target=[1, 3], n_steps=50, method="gausslegendre")
    ours = fastattr.gnl_integrated_gradients(model, x, [1, 3])
    assert rel_err(ours, ref) <= 1e-5


def test_gnl_ig_batching_and_baselines():
    kw, size = POOLS["3s2_ceil"]
    torch.manual_seed(29)
    model = ConvNet(size=size, pool=kw).double().eval()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    xb = torch.rand_like(x)
    oracle = oracle_copy(model)
    register_gnl_oracle(oracle)
    ref = quiet(IntegratedGradients(oracle).attribute, x, baselines=xb, target=[0, 1, 2], n_steps=8,
                method="riemann_middle", internal_batch_size=6)
    for bs in (None, 2, 7):
        ours = fastattr.gnl_integrated_gradients(model, x, [0, 1, 2], baselines=xb, n_steps=8,
                                                 method="riemann_middle", batch_size=bs)
        assert rel_err(ours, ref) <= 1e-5
    assert rel_err(fastattr.integrated_gradients(model, x, [0, 1, 2], baselines=xb, n_steps=8,
                                                 method="riemann_middle"), ref) > 1e-3


def test_invariant_no_relu_no_maxpool():
    torch.manual_seed(22)
    model = LinearNet().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="no ReLU or ReLU6 ran"):  # nothing to guide, and it says so
        gnl = fastattr.gnl_integrated_gradients(model, x, 2, n_steps=20)
    torch.testing.assert_close(gnl, fastattr.integrated_gradients(model, x, 2, n_steps=20), rtol=0, atol=0)


def test_invariant_nonnegative_weights():
    torch.manual_seed(23)
    model = ConvNet(size=12).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
        for m in (model.conv1, model.conv2, model.fc1):
            m.bias.sub_(m.bias.mean() + 0.3)  # keep some ReLUs inactive
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    gnl = fastattr.gnl_integrated_gradients(model, x, 1, n_steps=16)
    ig = fastattr.integrated_gradients(model, x, 1, n_steps=16)
    torch.testing.assert_close(gnl, ig, rtol=1e-12, atol=1e-14)
    # but a model with negative weights gives a different answer
    torch.manual_seed(23)
    model = ConvNet(size=12).double().eval()
    assert not torch.allclose(fastattr.gnl_integrated_gradients(model, x, 1, n_steps=16),
                              fastattr.integrated_gradients(model, x, 1, n_steps=16))


@pytest.mark.parametrize("size", [8, 14])
def test_invariant_vgg_pool_is_relu_of_standard_gradient(size):
    x = torch.randn(2, 4, size, size, dtype=torch.float64, requires_grad=True)
    g_out = torch.randn(2, 4, size // 2, size // 2, dtype=torch.float64)
    (standard,) = torch.autograd.grad(F.max_pool2d(x, 2, 2), x, g_out)
    with pytest.warns(RuntimeWarning, match="no ReLU"), guided(maxpool=True):
        y = nn.MaxPool2d(2, 2)(x)
    (gnl,) = torch.autograd.grad(y, x, g_out)
    torch.testing.assert_close(gnl, standard.clamp_min(0), rtol=0, atol=0)
    assert (standard < 0).any()


def test_gnl_heatmap():
    torch.manual_seed(24)
    model = ConvNet(size=12).double().eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    attr = fastattr.gnl_integrated_gradients(model, x, 0, n_steps=10)
    heat = fastattr.gnl_heatmap(attr)
    assert heat.shape == (2, 1, 12, 12)
    assert heat.min() >= 0 and torch.equal(heat.amax(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64))
    expected = attr.sum(1, keepdim=True).abs()
    torch.testing.assert_close(heat, expected / expected.flatten(1).max(1).values.view(2, 1, 1, 1))
    attr[1] = 0
    with pytest.warns(RuntimeWarning, match="all zero"):
        heat = fastattr.gnl_heatmap(attr)
    assert torch.equal(heat[1], torch.zeros_like(heat[1])) and heat[0].max() == 1
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        fastattr.gnl_heatmap(attr[0])


# ---------------------------------------------------------------------------
# Functional and in-place ReLUs: Captum is silently wrong, fastattr is not
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def functional_net():
    torch.manual_seed(25)
    return FunctionalReluNet(size=12).double().eval()


def test_functional_relus_guided_backprop(functional_net):
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    target = [0, 1, 2]
    modules = functional_net.as_modules()
    torch.testing.assert_close(modules(x), functional_net(x), rtol=0, atol=0)
    correct = quiet(GuidedBackprop(modules).attribute, x, target=target)
    ours = fastattr.guided_backprop(functional_net, x, target)
    assert rel_err(ours, correct) <= 1e-10
    captum_on_functional = quiet(GuidedBackprop(functional_net).attribute, x, target=target)
    assert rel_err(captum_on_functional, correct) > 1e-2  # Captum misses F.relu, torch.relu, relu_
    # deconvnet likewise
    correct = quiet(Deconvolution(modules).attribute, x, target=target)
    assert rel_err(fastattr.deconvnet(functional_net, x, target), correct) <= 1e-10
    assert rel_err(quiet(Deconvolution(functional_net).attribute, x, target=target), correct) > 1e-2


def test_functional_relus_gnl(functional_net):
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    oracle = functional_net.as_modules()
    register_gnl_oracle(oracle)
    ref = quiet(IntegratedGradients(oracle).attribute, x, target=[3, 4], n_steps=50)
    assert rel_err(fastattr.gnl_integrated_gradients(functional_net, x, [3, 4]), ref) <= 1e-8


# ---------------------------------------------------------------------------
# torchvision architectures (random init, eval)
# ---------------------------------------------------------------------------

TORCHVISION = {
    "resnet18": (lambda: torchvision.models.resnet18(), 48, torch.float64),
    "vgg11": (lambda: torchvision.models.vgg11(), 32, torch.float32),
    "googlenet": (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True), 32, torch.float64),
    "densenet121": (lambda: torchvision.models.densenet121(), 32, torch.float64),
}


@pytest.fixture(scope="module", params=list(TORCHVISION))
def tv_model(request):
    make, size, dtype = TORCHVISION[request.param]
    torch.manual_seed(26)
    model = make().to(dtype).eval()
    x = torch.randn(1, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(27))
    return request.param, model, x


def test_torchvision_guided_backprop_and_gnl(tv_model):
    name, model, x = tv_model
    before = hook_state(model)
    target = model(x).argmax(1)
    tol = 1e-10 if x.dtype == torch.float64 else 1e-4

    gbp = fastattr.guided_backprop(model, x)
    gnl = fastattr.gnl_integrated_gradients(model, x, n_steps=4)
    assert_same_state(before, hook_state(model))
    assert not model.training

    # Oracle: every ReLU (incl. the functional ones) as an out-of-place module with hooks.
    oracle = oracle_copy(model)
    torch.testing.assert_close(oracle(x), model(x), rtol=0, atol=0)
    correct_gbp = quiet(GuidedBackprop(oracle).attribute, x, target=target)
    assert rel_err(gbp, correct_gbp) <= tol
    register_gnl_oracle(oracle)
    correct_gnl = quiet(IntegratedGradients(oracle).attribute, x, target=target, n_steps=4)
    assert rel_err(gnl, correct_gnl) <= tol

    # The oracle has module ReLUs where GoogLeNet and DenseNet call F.relu, so the equalities above
    # show that fastattr guided those calls. Hook-based Captum on the unmodified model misses them:
    if name == "googlenet":
        captum_gbp = quiet(GuidedBackprop(model).attribute, x, target=target)
        assert rel_err(captum_gbp, correct_gbp) > 1e-3
        assert_same_state(before, hook_state(model))


def test_guided_under_torch_compile_equals_eager():
    torch.manual_seed(28)
    model = FunctionalReluNet(size=12).eval()
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager = grad_of(model, x, [0, 1], guided(model, maxpool=True))
    comp = grad_of(compiled, x, [0, 1], guided(model, maxpool=True))
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(eager, grad_of(model, x, [0, 1]))
