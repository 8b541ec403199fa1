"""Wrong calls of the functional API get clear errors (issue 13, input validation):
each test checks the exception type and that the message names the argument and
the value received."""

from __future__ import annotations

import inspect
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
