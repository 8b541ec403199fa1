"""Every model form a user can load is guided exactly, or refused with a clear error.

The oracle is the eager model's guided result (itself checked against Captum /
the GNL hook oracle in test_guided_models.py). ``torch.fx`` graph modules
(``symbolic_trace`` calls ``F.relu`` / modules), ``torch.export`` programs
(ATen overloads, in-place ``relu_``, ``hardtanh`` for ReLU6) and compiled models must give the same guided gradient,
never the ordinary one; TorchScript must raise.
"""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastattr
from fastattr.guidance import guided
from models import ConvNet, FunctionalReluNet, assert_same_state, hook_state, single_thread  # noqa: F401

METHODS = {
    "guided_backprop": lambda m, x, t: fastattr.guided_backprop(m, x, t),
    "deconvnet": lambda m, x, t: fastattr.deconvnet(m, x, t),
    "gnl_integrated_gradients": lambda m, x, t: fastattr.gnl_integrated_gradients(m, x, t, n_steps=6),
}


def unet():
    torch.manual_seed(40)
    return fastattr.models.LesionUNet(widths=(4, 6, 8, 8)).double().eval()


def relu6_net():
    torch.manual_seed(41)
    return ConvNet(size=12, relu6=True, inplace=True, pool=dict(kernel_size=3, stride=2, padding=1)).double().eval()


MODELS = {
    # module ReLUs and 3x3/s2/p1 max-pools
    "convnet": (lambda: (torch.manual_seed(42), ConvNet(size=12, pool=dict(kernel_size=3, stride=2, padding=1)))[1]
                .double().eval(), (3, 3, 12, 12), "classes"),
    # in-place ReLU modules and an in-place ReLU6 (hardtanh in exported graphs)
    "relu6_inplace": (relu6_net, (3, 3, 12, 12), "classes"),
    # F.relu, torch.relu, Tensor.relu_ and an in-place module
    "functional": (lambda: (torch.manual_seed(43), FunctionalReluNet(size=12))[1].double().eval(),
                   (3, 3, 12, 12), "classes"),
    # segmentation: U-Net with max-pools, explained through a region target
    "unet": (unet, (2, 3, 16, 16), "region"),
}


def make_case(name):
    make, shape, kind = MODELS[name]
    model = make()
    g = torch.Generator().manual_seed(44)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    if kind == "classes":
        target = [0, 2, 4]
    else:
        target = fastattr.targets.region(torch.rand(shape[0], 1, *shape[2:], generator=g) > 0.5)
    return model, x, target


def export(model, x):
    # The batch must be dynamic: methods evaluate chunks of path points / copies.
    return torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def forms(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notes
        yield "fx.symbolic_trace", torch.fx.symbolic_trace(model)
        yield "export", export(model, x).module()
        yield "compile", torch.compile(model, backend="aot_eager")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_graph_forms_give_the_eager_guided_result(name, method):
    model, x, target = make_case(name)
    fn = METHODS[method]
    eager = fn(model, x, target)
    plain = fastattr.saliency(model, x, target, abs=False)
    assert rel(plain, eager) > 1e-3, "the guided rule must matter on this model for the test to mean anything"
    for form, graph in forms(model, x):
        before = hook_state(graph)
        code = getattr(graph, "code", None)
        ours = fn(graph, x, target)
        assert rel(ours, eager) <= 1e-6, f"{form}: {rel(ours, eager):.2e} from the eager guided result"
        assert_same_state(before, hook_state(graph))  # the graph module is left as it was
        assert getattr(graph, "code", None) == code


def test_exported_program_file_through_models_load(tmp_path):
    """A .pt2 file, loaded the way `fastattr run --model x.pt2` loads it, is guided exactly."""
    model, x, target = make_case("functional")
    path = tmp_path / "net.pt2"
    torch.export.save(export(model, x), str(path))
    loaded = fastattr.models.load(str(path), dtype=torch.float64)
    for fn in METHODS.values():
        assert rel(fn(loaded, x, target), fn(model, x, target)) <= 1e-6


@pytest.mark.parametrize("how", ["script", "trace", "file", "submodule"])
def test_torchscript_is_refused(tmp_path, how):
    model, x, target = make_case("convnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "script":
            ts = torch.jit.script(model)
        elif how == "trace":
            ts = torch.jit.trace(model, x)
        elif how == "file":
            torch.jit.save(torch.jit.script(model), str(tmp_path / "net.pt"))
            ts = fastattr.models.load(str(tmp_path / "net.pt"), dtype=torch.float64)
        else:
            ts = nn.Sequential(nn.Identity(), torch.jit.trace(model, x))
    for fn in METHODS.values():
        with pytest.raises(TypeError, match="TorchScript.*torch.export"):
            fn(ts, x, target)
    with pytest.raises(TypeError, match="submodule" if how == "submodule" else "the model is TorchScript"):
        guided(ts)
    # Methods without guided rules still work on TorchScript.
    torch.testing.assert_close(fastattr.saliency(ts, x, target), fastattr.saliency(model, x, target))


def test_cli_refuses_torchscript_for_guided_methods(tmp_path):
    from fastattr.cli import main

    model, x, _ = make_case("convnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model.float()), str(tmp_path / "net.pt"))
    out = tmp_path / "out"
    code = main(["run", "--model", str(tmp_path / "net.pt"), "--data", "bundled:shapes", "--input-size", "12", "12",
                 "--method", "guided_backprop", "--limit", "2", "--out", str(out), "--quiet"])
    assert code != 0
    assert not out.exists()


def test_max_pool2d_with_indices_keeps_its_pair():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected_out, expected_idx = F.max_pool2d(x, 2, return_indices=True)
    with guided(maxpool=True):
        x.relu()
        for result in (F.max_pool2d_with_indices(x, 2), F.max_pool2d(x, 2, return_indices=True),
                       torch.ops.aten.max_pool2d_with_indices.default(x, [2, 2])):
            out, idx = result
            assert torch.equal(out, expected_out) and torch.equal(idx, expected_idx)
        single = F.max_pool2d(x, 2)
        assert isinstance(single, torch.Tensor) and torch.equal(single, expected_out)
        single = torch.ops.aten.max_pool2d.default(x, [2, 2])
        assert isinstance(single, torch.Tensor) and torch.equal(single, expected_out)


def test_a_pass_without_relu_warns_once():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 6, 6)
    net(x)
    with pytest.warns(RuntimeWarning, match="no ReLU or ReLU6 ran"):
        fastattr.guided_backprop(net, x, 0, batch_size=1)  # two passes, one warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mode = guided(net)
        for _ in range(3):
            with mode:
                net(x)
    assert len([w for w in caught if "no ReLU" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model with ReLUs does not warn
        fastattr.guided_backprop(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)), x, 0)


def test_unguided_max_pools_warn():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(16, 2))
    with pytest.warns(RuntimeWarning, match="adaptive_max_pool2d.*does not cover"):
        fastattr.gnl_integrated_gradients(net, torch.randn(2, 3, 8, 8), 0, n_steps=2)


def test_hardtanh_outside_the_relu_family_is_not_rerouted():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 5, dtype=torch.float64)
    with guided() as mode:
        y = F.hardtanh(x, -1.0, 1.0) + F.relu(x)
    assert mode.relu_calls == 1
    (grad,) = torch.autograd.grad(y, x, g)
    expected = g * ((x > -1) & (x < 1)) + g * (x > 0) * (g > 0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_static_batch_export_warns_at_load(tmp_path):
    model, x, _ = make_case("convnet")
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "static.pt2"))
    with pytest.warns(UserWarning, match="static batch size of 3.*dynamic_shapes"):
        fastattr.models.load(str(tmp_path / "static.pt2"))
    torch.export.save(export(model, x), str(tmp_path / "dynamic.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fastattr.models.load(str(tmp_path / "dynamic.pt2"))


def test_compiled_model_guided_then_plain():
    """A compiled model reused across guided and plain calls: its cached graphs
    must not leak the guided rule into a plain call (or the reverse), and a
    guided call served from the cache must not warn that no ReLU ran."""
    model, x, target = make_case("functional")
    compiled = torch.compile(model, backend="aot_eager")
    eager_guided = fastattr.guided_backprop(model, x, target)
    eager_plain = fastattr.saliency(model, x, target, abs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(2):
            assert rel(fastattr.guided_backprop(compiled, x, target), eager_guided) <= 1e-6
            assert rel(fastattr.saliency(compiled, x, target, abs=False), eager_plain) <= 1e-6
