import warnings

import pytest
import torch
import torch.nn as nn
from captum.attr import Deconvolution, GuidedBackprop, InputXGradient, Saliency

import fastattr
from models import ConvNet, assert_same_state, hook_state, single_thread  # noqa: F401


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def captum(cls, model, x, target, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(x, target=target, **kw)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(10)
    return ConvNet(size=12, pool=dict(kernel_size=3, stride=2, padding=1)).double().eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(11))


TARGET = [1, 0, 4, 2]

CASES = [
    ("saliency", Saliency, {}, {}),
    ("saliency_signed", Saliency, {"abs": False}, {"abs": False}),
    ("input_x_gradient", InputXGradient, {}, {}),
    ("guided_backprop", GuidedBackprop, {}, {}),
    ("deconvnet", Deconvolution, {}, {}),
]


@pytest.mark.parametrize("name, cls, ours_kw, captum_kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_matches_captum(net, x, name, cls, ours_kw, captum_kw, batch_size):
    fn = getattr(fastattr, name.replace("_signed", ""))
    ours = fn(net, x, TARGET, batch_size=batch_size, **ours_kw)
    ref = captum(cls, net, x, TARGET, **captum_kw)
    assert ours.shape == x.shape and ours.dtype == x.dtype
    assert rel_err(ours, ref) <= 1e-5


def test_signed_saliency_is_the_gradient(net, x):
    z = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net(z)[torch.arange(4), torch.tensor(TARGET)].sum(), z)
    torch.testing.assert_close(fastattr.saliency(net, x, TARGET, abs=False), g, rtol=0, atol=0)
    torch.testing.assert_close(fastattr.saliency(net, x, TARGET), g.abs(), rtol=0, atol=0)


def test_guided_rules_differ_from_plain_gradient(net, x):
    plain = fastattr.saliency(net, x, TARGET, abs=False)
    gbp = fastattr.guided_backprop(net, x, TARGET)
    dec = fastattr.deconvnet(net, x, TARGET)
    assert not torch.allclose(gbp, plain) and not torch.allclose(dec, plain) and not torch.allclose(gbp, dec)


class _GuidedReLUOracle(torch.autograd.Function):
    """clamp(v, 0, upper) whose backward is g * 1[0 < v < upper] * 1[g > 0], written out by hand."""

    @staticmethod
    def forward(ctx, v, upper):
        ctx.save_for_backward(v)
        ctx.upper = upper
        return v.clamp(0, upper)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        keep = (v > 0) & (g > 0)
        if ctx.upper is not None:
            keep &= v < ctx.upper
        return torch.where(keep, g, torch.zeros_like(g)), None


def test_relu6_is_guided_too():
    # Captum hooks nn.ReLU only; fastattr also guides ReLU6 (g * 1[0<x<6] * 1[g>0]).
    torch.manual_seed(12)
    m = ConvNet(size=8, relu6=True).double().eval()
    with torch.no_grad():
        m.conv2.weight.mul_(8)  # push some ReLU6 inputs above 6
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gb = _GuidedReLUOracle.apply
    z = x.clone().requires_grad_()
    h = m.conv2(m.pool1(gb(m.conv1(z), None)))
    assert (h > 6).any() and (h < 0).any()
    out = m.fc2(gb(m.fc1(m.pool2(gb(h, 6.0)).flatten(1)), None))
    (expected,) = torch.autograd.grad(out[:, 3].sum(), z)
    torch.testing.assert_close(fastattr.guided_backprop(m, x, 3), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet"])
def test_model_untouched_and_no_param_grads(name):
    torch.manual_seed(13)
    model = ConvNet(size=8, inplace=True).double().eval()
    model.fc1.weight.requires_grad_(False)
    model.act1.register_forward_pre_hook(lambda *a: None)
    model.fc2.register_full_backward_hook(lambda *a: None)
    before = hook_state(model)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    getattr(fastattr, name)(model, x, batch_size=2)
    assert_same_state(before, hook_state(model))
    assert x.grad is None and all(p.grad is None for p in model.parameters())


def test_registry_lists_methods():
    for name in ("saliency", "input_x_gradient", "guided_backprop", "deconvnet",
                 "integrated_gradients", "gnl_integrated_gradients"):
        assert fastattr.METHODS[name] is getattr(fastattr, name)
        assert fastattr.methods.METHODS[name] is getattr(fastattr, name)


# ---------------------------------------------------------------------------
# Bad input errors, for every method
# ---------------------------------------------------------------------------

ALL = ["saliency", "input_x_gradient", "guided_backprop", "deconvnet",
       "integrated_gradients", "gnl_integrated_gradients"]
IG = ["integrated_gradients", "gnl_integrated_gradients"]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(14)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs(small, name):
    fn = getattr(fastattr, name)
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        fn(small, x.tolist(), 0)
    with pytest.raises(TypeError, match="inputs must be a floating-point tensor"):
        fn(small, x.long(), 0)
    with pytest.raises(ValueError, match="inputs contains NaN"):
        fn(small, torch.where(x > 1, float("nan"), x), 0)
    with pytest.raises(ValueError, match="inputs must have a non-empty batch"):
        fn(small, x[:0], 0)
    with pytest.raises(ValueError, match="out of range"):
        fn(small, x, 3)
    with pytest.raises(ValueError, match="negative"):
        fn(small, x, -1)
    with pytest.raises(ValueError, match="one per sample"):
        fn(small, x, [0, 1, 2])
    with pytest.raises(ValueError, match="target callable must return one score per row"):
        fn(small, x, lambda out: out)
    with pytest.raises(TypeError, match=r"model must return one tensor of scores, got a tuple of 2 items.*"
                                        r"model\(x\)\[0\]"):
        fn(lambda z: (small(z), z), x, 0)
    with pytest.raises(TypeError, match=r"got a dict with keys \['out'\].*lambda x: model\(x\)\['out'\]"):
        fn(lambda z: {"out": small(z)}, x, 0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        fn(small, x, 0, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be None or an int"):
        fn(small, x, 0, batch_size=2.0)
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        fn(lambda z: small(z)[:, :, None], x, 0)


@pytest.mark.parametrize("name", IG)
def test_bad_ig_arguments(small, name):
    fn = getattr(fastattr, name)
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="baselines of shape"):
        fn(small, x, 0, baselines=torch.zeros(3, 3, 4))
    with pytest.raises(TypeError, match="baselines must be None, a number or a tensor"):
        fn(small, x, 0, baselines="zero")
    with pytest.raises(ValueError, match="baselines contains NaN"):
        fn(small, x, 0, baselines=float("nan"))
    with pytest.raises(ValueError, match="method must be one of"):
        fn(small, x, 0, method="simpson")
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        fn(small, x, 0, n_steps=0)
    with pytest.raises(TypeError, match="return_delta must be a bool"):
        fn(small, x, 0, return_delta="yes")


def test_bad_saliency_abs(small):
    with pytest.raises(TypeError, match="abs must be a bool"):
        fastattr.saliency(small, torch.randn(2, 3, 4), 0, abs="no")
