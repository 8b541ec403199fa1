"""fastattr.models: bundled models (and what their shipped weights achieve),
and the loaders for torchvision / timm / module:callable / TorchScript /
torch.export specs."""

import math
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fastattr import data, models
from fastattr.models import ModelLoadError

BUNDLED = ["lesions-unet", "shapes-resnet", "shapes-vgg"]


def wilson_lower(successes: int, n: int, z: float = 2.576) -> float:
    """Lower end of the Wilson score interval (z = 2.576: two-sided 99%)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def test_available_and_info():
    assert models.available() == BUNDLED
    for name in BUNDLED:
        meta = models.info(name)
        assert meta["name"] == name
        assert meta["dataset"] in data.available()
        assert meta["classes"] == data.classes(meta["dataset"])
        assert meta["task"] == data.info(meta["dataset"])["task"]
        assert len(meta["mean"]) == len(meta["std"]) == 3
        assert meta["input_size"][1:] == data.info(meta["dataset"])["image_size"]
        assert models.weights_path(name).stat().st_size < 2_000_000
    # The shipped metrics are not checked here (a file the training wrote); the
    # weights' accuracy and Dice are measured below.


@pytest.mark.parametrize("name,shape,out", [
    ("shapes-vgg", (2, 3, 64, 64), (2, 5)),
    ("shapes-resnet", (2, 3, 64, 64), (2, 5)),
    ("lesions-unet", (2, 3, 128, 128), (2, 1, 128, 128)),
])
def test_bundled_load(name, shape, out):
    model = models.load(name)
    assert isinstance(model, nn.Module) and model.fastattr_normalizes_input
    assert not any(m.training for m in model.modules())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    x = torch.rand(shape)
    with torch.no_grad():
        y = model(x)
        assert y.shape == out and torch.isfinite(y).all()
        assert torch.equal(model(x), y)  # eval mode: no dropout / batch statistics
    # The normalisation is inside the model and matches the metadata.
    meta = models.info(name)
    assert torch.allclose(model.normalize.mean, torch.tensor(meta["mean"]))
    assert torch.allclose(model.normalize.std, torch.tensor(meta["std"]))
    double = models.load(name, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
    with torch.no_grad():
        torch.testing.assert_close(double(x.double()).float(), y, rtol=1e-4, atol=1e-4)


class _CountCalls(TorchFunctionMode):
    def __init__(self, funcs):
        super().__init__()
        self.funcs = funcs
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.funcs:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_relu_styles():
    vgg = models.load("shapes-vgg")
    resnet = models.load("shapes-resnet")
    assert sum(isinstance(m, nn.ReLU) for m in vgg.modules()) >= 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 4
    # The residual net calls F.relu directly (no module a hook could see) as well as nn.ReLU.
    assert any(isinstance(m, nn.ReLU) for m in resnet.modules())
    with _CountCalls({F.relu}) as mode, torch.no_grad():
        resnet(torch.rand(1, 3, 64, 64))
    assert mode.count >= 6


# -- what the shipped weights achieve -----------------------------------------

@pytest.fixture(scope="module")
def shapes_test_500():
    return data.load("shapes", "test", size=500).batch(range(500))


@pytest.mark.parametrize("name", ["shapes-vgg", "shapes-resnet"])
def test_shipped_classifiers_accuracy(name, shapes_test_500):
    """≥ 95% on the test split, at 99% confidence: 500 held-out images,
    Wilson lower bound of the accuracy ≥ 0.95 (needs ≥ ~97.3% measured)."""
    images, labels, _ = shapes_test_500
    model = models.load(name)
    with torch.no_grad():
        pred = torch.cat([model(images[i : i + 250]).argmax(1) for i in range(0, 500, 250)])
    correct = int((pred == labels).sum())
    assert wilson_lower(correct, 500) >= 0.95, f"{name}: {correct}/500 correct"


def test_shipped_unet_dice():
    """Dice ≥ 0.85 on 150 held-out test images (about 300 lesions): pooled Dice
    over all pixels, and the mean per-image Dice minus 2.58 standard errors."""
    n = 150
    images, labels, masks = data.load("lesions", "test", size=n).batch(range(n))
    model = models.load("lesions-unet")
    with torch.no_grad():
        pred = torch.cat([model(images[i : i + 50]) for i in range(0, n, 50)])[:, 0] > 0
    inter = (pred & masks).flatten(1).sum(1).double()
    sums = (pred.flatten(1).sum(1) + masks.flatten(1).sum(1)).double()
    pooled = float(2 * inter.sum() / sums.sum())
    per_image = 2 * inter / sums
    lower = float(per_image.mean() - 2.576 * per_image.std() / math.sqrt(n))
    assert pooled >= 0.85 and lower >= 0.85, (pooled, lower)


# -- other specs ----------------------------------------------------------------

def test_unknown_name_lists_available():
    with pytest.raises(ModelLoadError, match="lesions-unet, shapes-resnet, shapes-vgg"):
        models.load("shapes-vgg16")
    with pytest.raises(ModelLoadError, match="lesions-unet, shapes-resnet, shapes-vgg"):
        models.info("resnet")
    with pytest.raises(ModelLoadError, match="takes no options"):
        models.load("shapes-vgg?weights=none")


def test_torchvision_random_weights():
    model = models.load("torchvision:resnet18?weights=none")
    assert type(model).__name__ == "ResNet" and not model.training
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    small = models.load("torchvision:resnet18?weights=none&num_classes=7")
    assert small.fc.out_features == 7
    with pytest.raises(ModelLoadError, match="no model 'resnet5000'"):
        models.load("torchvision:resnet5000?weights=none")
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1"):
        models.load("torchvision:resnet18?weights=BOGUS")


def test_torchvision_without_network_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty cache: weights must be downloaded

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelLoadError) as info:
        models.load("torchvision:resnet18")
    msg = str(info.value)
    assert "'torchvision:resnet18'" in msg and "no network" in msg
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "?weights=none" in msg


def test_timm_missing_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelLoadError, match="pip install timm"):
        models.load("timm:resnet18")


def test_module_callable():
    ident = models.load("torch.nn:Identity")
    assert isinstance(ident, nn.Identity)
    lin = models.load("torch.nn:Linear?in_features=4&out_features=2&bias=False", dtype=torch.float64)
    assert lin.weight.shape == (2, 4) and lin.bias is None and lin.weight.dtype == torch.float64
    vgg = models.load("fastattr.models:ShapesVGG?num_classes=3")
    assert vgg.classifier[-1].out_features == 3 and not vgg.training
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_pkg.sub'"):
        models.load("no_such_pkg.sub:make")
    with pytest.raises(ModelLoadError, match="has no attribute 'Nope'"):
        models.load("torch.nn:Nope")
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        models.load("collections:OrderedDict")


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_torchscript_round_trip(tmp_path):
    model = models.load("shapes-resnet")
    x = torch.rand(2, 3, 64, 64)
    path = tmp_path / "resnet.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, x), str(path))
        loaded = models.load(str(path))
        torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a TorchScript file"):
        models.load(str(bad))
    with pytest.raises(ModelLoadError, match="no such model file"):
        models.load(str(tmp_path / "missing.pt"))


def test_export_round_trip(tmp_path):
    model = models.load("shapes-vgg")
    x = torch.rand(2, 3, 64, 64)
    path = tmp_path / "vgg.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(path))
    loaded = models.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded(x[:1]), model(x[:1]))  # any batch size
    x.requires_grad_(True)
    loaded(x)[:, 0].sum().backward()  # usable for gradients
    assert x.grad is not None and x.grad.abs().sum() > 0
