"""Wrong calls of the functional API get clear errors (issue 13, input validation):
each test checks the exception type and that the message names the argument and
the value received."""

from __future__ import annotations

import inspect
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import fastattr
from fastattr.methods import METHODS

from models import single_thread  # noqa: F401  (one intra-op thread for this module)


def _net(dropout: bool = False, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(4, 5))
    return nn.Sequential(*layers).eval()


def _x(b: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)


# Options that make each method quick (or that it needs).
FAST = {"integrated_gradients": dict(n_steps=4), "gnl_integrated_gradients": dict(n_steps=4),
        "smooth_grad": dict(n_samples=2), "smooth_taylor": dict(n_roots=2),
        "occlusion": dict(sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8)), "rise": dict(n_masks=8),
        "mfpp": dict(n_masks=8)}
CLASSIFIER_METHODS = sorted(m for m in METHODS if m != "causal_ate")


def _call(name, model, x, target, **kw):
    fn = METHODS[name]
    if "generator" in inspect.signature(fn).parameters:
        kw["generator"] = torch.Generator().manual_seed(0)
    return fn(model, x, target=target, **FAST.get(name, {}), **kw)


# --------------------------------------------------------------------------- 0-d tensor targets


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_zero_dim_tensor_target_is_one_class_for_all(name):
    model, x = _net(), _x()
    t = model(x).argmax(1)[0]
    assert t.dim() == 0
    expected = _call(name, model, x, int(t))
    torch.testing.assert_close(_call(name, model, x, t), expected, rtol=0, atol=0)


@pytest.mark.parametrize("target", [torch.tensor(3, dtype=torch.int32), np.int64(3)])
def test_zero_dim_integer_targets_of_other_types(target):
    model, x = _net(), _x()
    torch.testing.assert_close(fastattr.saliency(model, x, target=target), fastattr.saliency(model, x, target=3))


def test_zero_dim_float_target_is_refused():
    with pytest.raises(ValueError, match=r"target must be an int .* got \(\) of torch.float32"):
        fastattr.saliency(_net(), _x(), target=torch.tensor(3.0))


def test_zero_dim_target_out_of_range():
    with pytest.raises(ValueError, match=r"target 7 is out of range for a model with 5 outputs"):
        fastattr.saliency(_net(), _x(), target=torch.tensor(7))


# --------------------------------------------------------------------------- a missing batch dimension


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "integrated_gradients", "smooth_grad",
                                  "guided_backprop"])
@pytest.mark.parametrize("target", [0, None])
def test_missing_batch_dimension(name, target):
    image = _x(1)[0]  # (3, 16, 16): one image without its batch dimension
    with pytest.raises(ValueError) as e:
        _call(name, _net(), image, target)
    msg = str(e.value)
    assert "inputs must have a batch dimension" in msg
    assert "expects 4-D input (batch, channels, H, W)" in msg
    assert "(16, 16)" in msg and "3-D" in msg
    assert "inputs.unsqueeze(0)" in msg


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet",
                                  "integrated_gradients"])
def test_missing_batch_dimension_through_batch_norm(name):
    """A convolution takes (C, H, W) as one unbatched image; the batch norm after
    it then raises torch's ValueError ("expected 4D input"): explained too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    with pytest.raises(ValueError) as e:
        getattr(fastattr, name)(model, torch.rand(3, 16, 16), target=0)
    msg = str(e.value)
    assert "inputs must have a batch dimension" in msg and "inputs.unsqueeze(0)" in msg, msg
    assert "(16, 16)" in msg and "3-D" in msg, msg


def test_missing_batch_dimension_without_a_model_error():
    # The convolution accepts (C, H, W) as one unbatched image and the model returns
    # one row for three "samples": the batch check names the cause too.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(0), nn.Unflatten(0, (1, 4)))
    with pytest.raises(ValueError, match=r"inputs must have a batch dimension.*expects 4-D input.*returned shape "
                                         r"\(1, 4\)"):
        fastattr.saliency(model, _x(1)[0], target=0)


def test_perturbation_methods_name_the_rank():
    with pytest.raises(ValueError, match=r"inputs must be images \(B, C, H, W\), got shape \(3, 16, 16\)"):
        fastattr.rise(_net(), _x(1)[0], target=0, n_masks=4)


def test_model_errors_of_other_causes_are_not_rewritten():
    def model(x):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="^something else$"):
        fastattr.saliency(model, _x(), target=0)


# --------------------------------------------------------------------------- model/input dtype and device


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "smooth_grad", "occlusion", "rise"])
@pytest.mark.parametrize("model_dtype,input_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_dtype_mismatch_names_both(name, model_dtype, input_dtype):
    model = _net().to(model_dtype)
    with pytest.raises(TypeError) as e:
        _call(name, model, _x(dtype=input_dtype), 0)
    msg = str(e.value)
    assert "model and inputs have different dtypes" in msg
    assert f"parameters are {model_dtype}" in msg and f"inputs are {input_dtype}" in msg


def test_dtype_mismatch_with_target_none():
    with pytest.raises(TypeError, match=r"parameters are torch.float32, inputs are torch.float64"):
        fastattr.integrated_gradients(_net(), _x(dtype=torch.float64), target=None, n_steps=2)


def test_model_that_casts_its_inputs_is_accepted():
    class Casting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x.float()).to(x.dtype)

    x = _x(dtype=torch.float64)
    a = fastattr.saliency(Casting(), x, target=1)
    assert a.dtype == torch.float64 and a.shape == x.shape


def test_device_mismatch_names_both():
    model = _net().to("meta")
    with pytest.raises(ValueError) as e:
        fastattr.saliency(model, _x(), target=0)
    msg = str(e.value)
    assert "model and inputs are on different devices" in msg
    assert "parameters are on meta" in msg and "inputs on cpu" in msg


# --------------------------------------------------------------------------- tuple / dict outputs


def test_dict_output_gets_guidance():
    net = _net()

    def model(x):
        return {"out": net(x), "aux": net(x)}

    with pytest.raises(TypeError) as e:
        fastattr.saliency(model, _x(), target=0)
    msg = str(e.value)
    assert "model must return one tensor of scores, got a dict with keys ['out', 'aux']" in msg
    assert "lambda x: model(x)['out']" in msg


@pytest.mark.parametrize("name", ["integrated_gradients", "occlusion", "rise"])
def test_tuple_output_gets_guidance(name):
    net = _net()
    with pytest.raises(TypeError) as e:
        _call(name, lambda x: (net(x), x), _x(), 0)
    msg = str(e.value)
    assert "got a tuple of 2 items" in msg and "lambda x: model(x)[0]" in msg


def test_selected_output_runs():
    net = _net()
    a = fastattr.saliency(lambda x: {"out": net(x)}["out"], _x(), target=0)
    torch.testing.assert_close(a, fastattr.saliency(net, _x(), target=0))


# --------------------------------------------------------------------------- non-finite model outputs


class _Poisoned(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.net = _net()
        self.value = value

    def forward(self, x):
        out = self.net(x)
        return out + torch.tensor([0.0, self.value, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "smooth_grad", "occlusion", "rise"])
def test_non_finite_target_scores(name, value):
    with pytest.raises(ValueError) as e:
        _call(name, _Poisoned(value), _x(), 1)
    msg = str(e.value)
    assert "model output gave non-finite target scores" in msg
    # RISE scores the softmax of the output, which turns an Inf into NaN.
    assert f"e.g. {'nan' if name == 'rise' else value}" in msg


def test_non_finite_scores_with_a_callable_target():
    with pytest.raises(ValueError, match=r"non-finite target scores \(2 of 2 rows of the first chunk, e.g. nan\)"):
        fastattr.saliency(_Poisoned(float("nan")), _x(), target=lambda out: out[:, 1])


def test_non_finite_scores_of_another_class_are_allowed():
    x = _x()
    a = fastattr.saliency(_Poisoned(float("nan")), x, target=2)
    torch.testing.assert_close(a, fastattr.saliency(_net(), x, target=2))


# --------------------------------------------------------------------------- a model in training mode


@pytest.mark.parametrize("kind", ["dropout", "batchnorm"])
def test_training_mode_warns_once_per_call(kind):
    model = _net(dropout=kind == "dropout", batchnorm=kind == "batchnorm").train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastattr.smooth_grad(model, _x(), target=0, n_samples=4, batch_size=2)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "training mode" in str(w.message)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "model is in training mode" in msg and "model.eval()" in msg
    assert ("Dropout" if kind == "dropout" else "BatchNorm2d") in msg


def test_eval_mode_and_modules_without_train_behaviour_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastattr.saliency(_net(dropout=True).eval(), _x(), target=0)
        fastattr.saliency(_net().train(), _x(), target=0)  # no dropout, no batch norm: deterministic


def test_model_must_be_callable():
    with pytest.raises(TypeError, match=r"model must be callable .* got str"):
        fastattr.saliency("resnet18", _x(), target=0)


# =========================================================================== every public method x every case
# The list of wrong calls, tried on every public method: the twelve
# classifier methods, PdCR's causal ATE and the component ATE (segmentation),
# and the deletion / insertion metrics. Each case asserts the exception type
# and that the message names the argument, what was expected and what came.

from fastattr import metrics, targets  # noqa: E402
from fastattr.methods.causal import causal_ate, component_ate  # noqa: E402

SEGMENTATION = ["causal_ate", "component_ate"]
CURVES = ["deletion", "insertion"]
ALL_METHODS = CLASSIFIER_METHODS + SEGMENTATION + CURVES
assert len(CLASSIFIER_METHODS) == 12


def _seg() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("hidden", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("relu", nn.ReLU())
    net.add_module("head", nn.Conv2d(4, 1, 3, padding=1))
    return net.eval()


def _model(name: str) -> nn.Module:
    return _seg() if name in SEGMENTATION else _net()


def _gt(b: int) -> torch.Tensor:
    gt = torch.zeros(b, 1, 16, 16)
    gt[:, :, 4:8, 4:8] = 1
    return gt


def _first_conv(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _run(name, model, x, target=0, **kw):
    """Method ``name`` on ``x`` with small settings; ``target`` is the class
    (the classifiers and curves) or ``target_class`` (segmentation, None = all)."""
    b = x.shape[0] if x.dim() == 4 else 1
    if name == "causal_ate":
        kw.setdefault("patch_bank", torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(2)))
        kw.setdefault("ground_truth", _gt(b))
        return causal_ate(model, x, kw.pop("ground_truth"), kw.pop("roi", (4, 4, 4)), block=kw.pop("block", 4),
                          n_screen=kw.pop("n_screen", 1), n_samples=kw.pop("n_samples", 2),
                          target_class=None if target == 0 else target, generator=torch.Generator().manual_seed(0),
                          **kw)
    if name == "component_ate":
        kw.setdefault("ground_truth", _gt(b))
        layers = [_first_conv(model)] if isinstance(model, nn.Module) else ["hidden"]
        return component_ate(model, x, kw.pop("ground_truth"), kw.pop("roi", (4, 4, 4)), layers=layers,
                             target_class=None if target == 0 else target, **kw)
    if name in CURVES:
        saliency = kw.pop("saliency", torch.rand(b, 16, 16, generator=torch.Generator().manual_seed(3)))
        return getattr(metrics, name)(model, x, saliency, target, step=kw.pop("step", 64), **kw)
    return _call(name, model, x, target, **kw)


class _Wrap(nn.Module):
    """A model around ``net`` whose output is changed by ``post``."""

    def __init__(self, net, post):
        super().__init__()
        self.net = net
        self.post = post

    def forward(self, x):
        return self.post(self.net(x))


def _poison(value):
    def post(out):
        bad = torch.zeros_like(out)
        bad.view(out.shape[0], -1)[:, 0] = value
        return out + bad
    return post


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_missing_batch_dimension(name):
    with pytest.raises(ValueError) as e:
        _run(name, _model(name), _x(1)[0])
    msg = str(e.value)
    assert "inputs" in msg and "unsqueeze(0)" in msg, msg
    assert "(3, 16, 16)" in msg or "(16, 16)" in msg, msg  # what came
    assert "(B, C, H, W)" in msg or "4-D" in msg or "batch dimension" in msg, msg  # what was expected


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64], ids=str)
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_integer_and_unsupported_dtypes(name, dtype):
    x = (_x() * 200).to(dtype) if dtype != torch.complex64 else _x().to(dtype)
    with pytest.raises(TypeError, match=rf"inputs must be a floating-point tensor, got {dtype}"):
        _run(name, _model(name), x)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_empty_batch(name):
    with pytest.raises(ValueError, match=r"inputs must have a non-empty batch dimension, got shape \(0, 3, 16, 16\)"):
        _run(name, _model(name), _x()[:0])


@pytest.mark.parametrize("value", [float("nan"), float("-inf")], ids=["nan", "-inf"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_non_finite_inputs(name, value):
    x = _x()
    x[1, 2, 5, 7] = value
    with pytest.raises(ValueError) as e:
        _run(name, _model(name), x)
    msg = str(e.value)
    assert "inputs contains NaN or infinite values: expected finite values, got 1 non-finite of 1536" in msg, msg
    assert f"e.g. {value} at index (1, 2, 5, 7)" in msg, msg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_model_input_dtype_mismatch(name):
    with pytest.raises(TypeError) as e:
        _run(name, _model(name).double(), _x())
    msg = str(e.value)
    assert "model and inputs have different dtypes" in msg, msg
    assert "parameters are torch.float64, inputs are torch.float32" in msg, msg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_model_input_device_mismatch(name):
    with pytest.raises(ValueError) as e:
        _run(name, _model(name).to("meta"), _x())
    msg = str(e.value)
    assert "model and inputs are on different devices" in msg and "meta" in msg and "cpu" in msg, msg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_tuple_output_gets_guidance(name):
    with pytest.raises(TypeError) as e:
        _run(name, _Wrap(_model(name), lambda out: (out, out)), _x())
    msg = str(e.value)
    assert "model must return one tensor of scores, got a tuple of 2 items" in msg and "model(x)[0]" in msg, msg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_dict_output_gets_guidance(name):
    with pytest.raises(TypeError) as e:
        _run(name, _Wrap(_model(name), lambda out: {"out": out, "aux": out}), _x())
    msg = str(e.value)
    assert "got a dict with keys ['out', 'aux']" in msg and "model(x)['out']" in msg, msg


def test_component_ate_needs_a_module():
    seg = _seg()
    with pytest.raises(TypeError, match=r"component_ate needs an nn.Module .* got function"):
        component_ate(lambda x: seg(x), _x(), _gt(2), (4, 4, 4), layers=["hidden"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_non_finite_model_outputs(name, value):
    with pytest.raises(ValueError) as e:
        _run(name, _Wrap(_model(name), _poison(value)), _x())
    msg = str(e.value)
    assert "non-finite" in msg and ("e.g. nan" in msg or f"e.g. {value}" in msg), msg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_warns_in_training_mode(name):
    model = nn.Sequential(_model(name), nn.Dropout(0.1)).train()
    with pytest.warns(RuntimeWarning, match=r"model is in training mode \(its Dropout '1' is training\).*"
                                            r"call model.eval\(\) first"):
        _run(name, model, _x())


@pytest.mark.parametrize("name", CLASSIFIER_METHODS + CURVES)
def test_every_method_target_out_of_range(name):
    with pytest.raises(ValueError, match=r"target 7 is out of range for a model with 5 outputs \(classes 0..4\)"):
        _run(name, _net(), _x(), target=7)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_target_class_out_of_range(name):
    with pytest.raises(ValueError, match=r"target_class must be None or an int in \[0, 1\) for a model output with "
                                         r"1 channel\(s\), got 3"):
        _run(name, _seg(), _x(), target=3)


@pytest.mark.parametrize("name", CLASSIFIER_METHODS + CURVES)
def test_every_method_target_of_the_wrong_length(name):
    with pytest.raises(ValueError, match=r"target must be an int or 2 integer class indices \(one per sample\), "
                                         r"got \(3,\) of torch.int64"):
        _run(name, _net(), _x(), target=[0, 1, 2])


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_ground_truth_of_the_wrong_length(name):
    with pytest.raises(ValueError, match=r"ground_truth must have shape \(B, H, W\) or \(B, 1, H, W\) with B = 2 "
                                         r"and \(H, W\) = \(16, 16\) .*got \(3, 1, 16, 16\)"):
        _run(name, _seg(), _x(), ground_truth=_gt(3))


@pytest.mark.parametrize("name", CURVES)
def test_curves_accept_zero_dim_tensor_targets(name):
    model, x = _net(), _x()
    t = model(x).argmax(1)[0]
    assert t.dim() == 0
    a, b = _run(name, model, x, target=t), _run(name, model, x, target=int(t))
    assert torch.equal(a.curve, b.curve)


def test_segmentation_accepts_zero_dim_tensor_target_class():
    seg = nn.Conv2d(3, 2, 3, padding=1).eval()  # two classes: target_class selects one
    x, gt = _x(), _gt(2)
    t = seg(x).mean((2, 3)).argmax(1)[0]
    assert t.dim() == 0
    heat_t, _ = causal_ate(seg, x, gt, (4, 4, 4), block=4, mode="zeros", target_class=t)
    heat_i, _ = causal_ate(seg, x, gt, (4, 4, 4), block=4, mode="zeros", target_class=int(t))
    assert torch.equal(heat_t, heat_i)
    eff_t = component_ate(seg, x, gt, (4, 4, 4), layers=[""], unit="module", target_class=t).effects[""]
    eff_i = component_ate(seg, x, gt, (4, 4, 4), layers=[""], unit="module", target_class=int(t)).effects[""]
    assert torch.equal(eff_t, eff_i)


# --------------------------------------------------------------------------- per-argument cases

BASELINE_METHODS = ["integrated_gradients", "gnl_integrated_gradients", "occlusion", "feature_ablation", "rise",
                    "mfpp"]


@pytest.mark.parametrize("name", BASELINE_METHODS + ["smooth_grad"])
def test_baselines_that_do_not_broadcast(name):
    kw = dict(base="integrated_gradients", n_steps=2) if name == "smooth_grad" else {}
    with pytest.raises(ValueError, match=r"baselines of shape \(2, 3, 5, 5\) does not broadcast to inputs of shape "
                                         r"\(2, 3, 16, 16\)"):
        _run(name, _net(), _x(), baselines=torch.zeros(2, 3, 5, 5), **kw)


@pytest.mark.parametrize("name", BASELINE_METHODS)
def test_non_finite_baselines(name):
    b = torch.zeros(1, 3, 16, 16)
    b[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"baselines contains NaN or infinite values: expected finite values, got 1 "
                                         r"non-finite of 768 \(e.g. inf at index \(0, 1, 2, 3\)\)"):
        _run(name, _net(), _x(), baselines=b)
    with pytest.raises(ValueError, match=r"baselines contains NaN or infinite values: expected a finite number, "
                                         r"got nan"):
        _run(name, _net(), _x(), baselines=float("nan"))


@pytest.mark.parametrize("name", BASELINE_METHODS)
def test_complex_and_bool_baselines(name):
    for dtype in (torch.complex64, torch.bool):
        with pytest.raises(TypeError, match=rf"baselines must hold real numbers .* got {dtype}"):
            _run(name, _net(), _x(), baselines=torch.zeros(1, 3, 16, 16, dtype=dtype))


@pytest.mark.parametrize("name", CURVES)
def test_substrates_that_do_not_broadcast_or_are_not_finite(name):
    with pytest.raises(ValueError, match=r"substrate of shape \(2, 3, 5, 5\) does not broadcast to inputs of shape "
                                         r"\(2, 3, 16, 16\)"):
        _run(name, _net(), _x(), substrate=torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"substrate contains NaN or infinite values: expected finite values, got "
                                         r"768 non-finite of 768"):
        _run(name, _net(), _x(), substrate=torch.full((1, 3, 16, 16), float("nan")))


@pytest.mark.parametrize("name", CURVES)
def test_curve_saliency_of_the_wrong_shape_or_not_finite(name):
    with pytest.raises(ValueError, match=r"saliency must have shape \(2, 16, 16\) or \(2, 1, 16, 16\) .*got "
                                         r"\(2, 8, 8\)"):
        _run(name, _net(), _x(), saliency=torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match=r"saliency contains NaN or infinite values: expected finite values, got "
                                         r"512 non-finite of 512"):
        _run(name, _net(), _x(), saliency=torch.full((2, 16, 16), float("nan")))


COUNTS = [
    ("integrated_gradients", dict(n_steps=0), "n_steps must be at least 1, got 0"),
    ("integrated_gradients", dict(n_steps=-3), "n_steps must be at least 1, got -3"),
    ("gnl_integrated_gradients", dict(n_steps=0), "n_steps must be at least 1, got 0"),
    ("smooth_grad", dict(base="integrated_gradients", n_steps=0), "n_steps must be at least 1, got 0"),
    ("smooth_grad", dict(n_samples=0), "n_samples must be >= 1, got 0"),
    ("smooth_taylor", dict(n_roots=-1), "n_roots must be >= 1, got -1"),
    ("rise", dict(n_masks=0), "n_masks must be at least 1, got 0"),
    ("mfpp", dict(n_masks=0), "n_masks must be at least 1, got 0"),
    ("causal_ate", dict(n_samples=0), "n_samples must be at least 1, got 0"),
    ("causal_ate", dict(n_screen=0), "n_screen must be at least 1, got 0"),
    ("component_ate", dict(intervention="resample", n_samples=0, reference_inputs=torch.rand(2, 3, 16, 16)),
     "n_samples must be at least 1, got 0"),
    ("deletion", dict(step=0), "step must be at least 1 pixel, got 0"),
    ("insertion", dict(step=-4), "step must be at least 1 pixel, got -4"),
]


@pytest.mark.parametrize("name, kw, message", COUNTS, ids=[f"{n}-{'-'.join(map(str, k.items()))[:40]}"
                                                           for n, k, _ in COUNTS])
def test_step_and_sample_counts_below_one(name, kw, message):
    kw = dict(kw)
    if name in FAST:  # the count under test replaces the quick default
        kw = {**{k: v for k, v in FAST[name].items() if k not in kw}, **kw}
        with pytest.raises(ValueError, match=re.escape(message)):
            METHODS[name](_model(name), _x(), target=0, generator=torch.Generator().manual_seed(0), **kw) \
                if "generator" in inspect.signature(METHODS[name]).parameters \
                else METHODS[name](_model(name), _x(), target=0, **kw)
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        _run(name, _model(name), _x(), **kw)


GEOMETRY = [
    ("occlusion-window", lambda: fastattr.occlusion(_net(), _x(), 0, sliding_window_shapes=(3, 20, 20)),
     r"sliding_window_shapes must be between 1 and the per-sample input shape \(3, 16, 16\) in every dim, got "
     r"\(3, 20, 20\)"),
    ("occlusion-stride", lambda: fastattr.occlusion(_net(), _x(), 0, sliding_window_shapes=(3, 4, 4),
                                                    strides=(3, 20, 20)),
     r"strides \(3, 20, 20\) must be >= 1 and at most the window \(3, 4, 4\)"),
    ("occlusion-window-with-batch-dim",
     lambda: fastattr.occlusion(_net(), _x(1)[0], 0, sliding_window_shapes=(3, 4, 4)),
     r"sliding_window_shapes \(3, 4, 4\) has one entry more than the per-sample shape \(16, 16\) of inputs "
     r"\(3, 16, 16\): inputs must have a batch dimension \(for a single sample pass inputs.unsqueeze\(0\)\)"),
    ("feature_ablation-grid", lambda: fastattr.feature_ablation(_net(), _x(), 0, feature_mask="grid:20"),
     r"feature_mask='grid:20': a grid cell of 20x20 pixels is larger than the 16x16 image .*expected K <= 16"),
    ("rise-grid", lambda: fastattr.rise(_net(), _x(), 0, n_masks=4, grid_size=20),
     r"grid_size 20 is larger than the image \(16x16\)"),
    ("causal_ate-block", lambda: _run("causal_ate", _seg(), _x(), block=32),
     r"block 32x32 is larger than the 16x16 image; expected a block that divides the image"),
    ("causal_ate-block-not-dividing", lambda: _run("causal_ate", _seg(), _x(), block=5),
     r"block 5x5 does not divide the image grid 16x16"),
]

ROIS = [
    ("causal_ate-box", lambda: _run("causal_ate", _seg(), _x(), roi=(12, 12, 8)),
     r"roi box \(row, col, height, width\) = \(12, 12, 8, 8\) lies outside the 16x16 image"),
    ("causal_ate-negative", lambda: _run("causal_ate", _seg(), _x(), roi=(-1, 0, 4)),
     r"roi box \(row, col, height, width\) = \(-1, 0, 4, 4\) lies outside the 16x16 image"),
    ("causal_ate-mask-shape", lambda: _run("causal_ate", _seg(), _x(), roi=torch.ones(8, 8, dtype=torch.bool)),
     r"roi mask must have shape \(H, W\), \(B, H, W\) or \(B, 1, H, W\) with \(H, W\) = \(16, 16\) and B = 2, got "
     r"\(8, 8\)"),
    ("component_ate-box", lambda: _run("component_ate", _seg(), _x(), roi=(4, 14, 4)),
     r"roi box \(row, col, height, width\) = \(4, 14, 4, 4\) lies outside the 16x16 image"),
    ("targets.box", lambda: fastattr.saliency(_seg(), _x(), targets.box((12, 12, 8, 8))),
     r"box 0 \(row, col, height, width\) = \(12, 12, 8, 8\) does not lie inside the 16x16 output"),
    ("targets.region-size", lambda: fastattr.saliency(_seg(), _x(), targets.region(torch.ones(1, 8, 8,
                                                                                              dtype=torch.bool))),
     r"masks of spatial size \(8, 8\) do not match the model output's \(16, 16\)"),
    ("pointing_game-masks", lambda: metrics.pointing_game(torch.rand(2, 16, 16), torch.ones(2, 8, 8, dtype=torch.bool)),
     r"masks must have shape \(2, 16, 16\) \(or with a channel of 1\), like the saliency maps, got \(2, 8, 8\)"),
    ("pointing_game-empty-masks", lambda: metrics.pointing_game(torch.rand(2, 16, 16),
                                                                torch.zeros(2, 16, 16, dtype=torch.bool)),
     r"masks of images \[0, 1\] are empty"),
]

BANKS = [
    ("channels", torch.rand(5, 1, 4, 4), ValueError, r"patch_bank must hold block-sized patches \(K, 3, 4, 4\) with "
                                                     r"K >= 1, got shape \(5, 1, 4, 4\)"),
    ("block", torch.rand(5, 3, 8, 8), ValueError, r"patch_bank must hold block-sized patches \(K, 3, 4, 4\) with "
                                                  r"K >= 1, got shape \(5, 3, 8, 8\)"),
    ("rank", torch.rand(3, 4, 4), ValueError, r"patch_bank must hold block-sized patches \(K, 3, 4, 4\) with K >= 1, "
                                              r"got shape \(3, 4, 4\)"),
    ("empty", torch.rand(0, 3, 4, 4), ValueError, r"with K >= 1, got shape \(0, 3, 4, 4\)"),
    ("integer", torch.ones(5, 3, 4, 4, dtype=torch.long), TypeError, r"patch_bank must be floating-point, got "
                                                                     r"torch.int64"),
    ("nan", torch.full((5, 3, 4, 4), float("nan")), ValueError, r"patch_bank contains NaN or infinite values: "
                                                                r"expected finite values, got 240 non-finite of 240"),
    ("not-a-tensor", [[0.0]], TypeError, r"patch_bank must be a tensor \(K, C, bh, bw\) for mode='patches' .*got list"),
]

POINTING = [
    ("empty-batch", lambda: metrics.pointing_game(torch.rand(0, 16, 16), torch.ones(0, 16, 16, dtype=torch.bool)),
     ValueError, r"saliency must have shape \(B, H, W\) or \(B, 1, H, W\) with B >= 1, got \(0, 16, 16\)"),
    ("integer-saliency", lambda: metrics.pointing_game(torch.ones(2, 16, 16, dtype=torch.long),
                                                       torch.ones(2, 16, 16, dtype=torch.bool)),
     TypeError, r"saliency must be finite floating-point maps, got torch.int64"),
    ("nan-saliency", lambda: metrics.pointing_game(torch.full((2, 16, 16), float("nan")),
                                                   torch.ones(2, 16, 16, dtype=torch.bool)),
     ValueError, r"saliency contains NaN or infinite values: expected finite values, got 512 non-finite of 512"),
    ("negative-tolerance", lambda: metrics.pointing_game(torch.rand(2, 16, 16), torch.ones(2, 16, 16, dtype=torch.bool),
                                                         tolerance=-1),
     ValueError, r"tolerance must be a number >= 0 \(pixels\), got -1"),
    ("rank", lambda: metrics.pointing_game(torch.rand(16, 16), torch.ones(16, 16, dtype=torch.bool)),
     ValueError, r"saliency must have shape \(B, H, W\) or \(B, 1, H, W\) with B >= 1, got \(16, 16\)"),
]


@pytest.mark.parametrize("call, match", [pytest.param(c, m, id=i) for i, c, m in GEOMETRY])
def test_grids_and_windows_larger_than_the_image(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [pytest.param(c, m, id=i) for i, c, m in ROIS])
def test_regions_outside_the_image(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("bank, error, match", [pytest.param(b, e, m, id=i) for i, b, e, m in BANKS])
def test_patch_bank_of_the_wrong_shape_or_kind(bank, error, match):
    with pytest.raises(error, match=match):
        _run("causal_ate", _seg(), _x(), patch_bank=bank)


@pytest.mark.parametrize("call, error, match", [pytest.param(c, e, m, id=i) for i, c, e, m in POINTING])
def test_pointing_game_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_integer_feature_mask_and_noise_dtypes():
    with pytest.raises(TypeError, match=r"feature_mask must hold integer feature ids, got torch.float32"):
        fastattr.feature_ablation(_net(), _x(), 0, feature_mask=torch.zeros(1, 3, 16, 16))
    with pytest.raises(TypeError, match=r"noise must be a floating-point tensor, got torch.int64"):
        fastattr.smooth_grad(_net(), _x(), 0, n_samples=2, noise=torch.zeros(4, 3, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"noise must have shape \(4, 3, 16, 16\) \(batch 2 x 2 samples, "
                                         r"sample-major, then the input's shape\), got \(3, 3, 16, 16\)"):
        fastattr.smooth_grad(_net(), _x(), 0, n_samples=2, noise=torch.zeros(3, 3, 16, 16))
