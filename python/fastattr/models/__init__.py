"""Models to explain: ``fastattr.models``.

>>> from fastattr import models
>>> models.available()
['lesions-unet', 'shapes-resnet', 'shapes-vgg']
>>> net = models.load("shapes-vgg")              # bundled weights, eval mode
>>> models.info("shapes-vgg")["metrics"]         # what the shipped weights achieve

Bundled models (weights ship in ``fastattr/assets``; trained with
``python -m fastattr.training <name>``) take images in [0, 1], as the
:mod:`fastattr.data` sets give them, and normalise inside:

- ``"shapes-vgg"``: small VGG (conv / ``nn.ReLU`` / ``nn.MaxPool2d`` blocks and
  a linear classifier), 5 classes of the ``"shapes"`` set, 64×64 input;
- ``"shapes-resnet"``: small ResNet (basic blocks with batch norm and
  functional ``F.relu``), same task;
- ``"lesions-unet"``: small U-Net for ``"lesions"``, one output channel of
  lesion logits (B, 1, H, W), 128×128 input (any multiple of 8 works).

Other specs accepted by :func:`load`:

- ``"torchvision:resnet50"``: ``torchvision.models.get_model`` with the
  default weights; ``"torchvision:resnet50?weights=none"`` for random
  initialisation, ``?weights=IMAGENET1K_V1`` for a named set;
- ``"timm:<name>"``: ``timm.create_model(name, pretrained=True)`` (needs timm;
  ``?weights=none`` for random initialisation);
- ``"package.module:callable"``: imports the module and calls the callable
  (``?key=value`` options become keyword arguments); an ``nn.Module`` attribute
  is used as is;
- a path to a TorchScript file (``*.pt``, ``*.ts``, ``*.pth``; ``torch.jit.save``)
  or a ``torch.export`` archive (``*.pt2``; ``torch.export.save``).

Every failure raises :class:`ModelLoadError` with the spec in the message;
weights that cannot be downloaded (no network) give the place to put them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import _arch
from ._arch import ARCHITECTURES, BasicBlock, LesionUNet, Normalize, ShapesResNet, ShapesVGG
from ._external import ModelLoadError, load_callable, load_file, load_timm, load_torchvision, set_eval, split_query

__all__ = [
    "available",
    "info",
    "load",
    "ModelLoadError",
    "assets_dir",
    "weights_path",
    "ShapesVGG",
    "ShapesResNet",
    "LesionUNet",
    "BasicBlock",
    "Normalize",
]

_FILE_SUFFIXES = (".pt", ".ts", ".pth", ".pt2", ".jit", ".ptc")


def assets_dir() -> Path:
    """The folder with the shipped weights (``<name>.safetensors``) and their metadata (``<name>.json``)."""
    return Path(__file__).resolve().parent.parent / "assets"


def weights_path(name: str) -> Path:
    _check_bundled(name)
    return assets_dir() / f"{name}.safetensors"


def available() -> list[str]:
    """Names of the bundled models."""
    return sorted(ARCHITECTURES)


def _check_bundled(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ModelLoadError(
            f"fastattr.models: unknown model {name!r}; bundled models: {', '.join(available())} "
            "(or give 'torchvision:<name>', 'timm:<name>', 'package.module:callable', or a .pt / .pt2 file)"
        )


def info(name: str) -> dict:
    """Metadata of a bundled model: task, dataset, classes, input_size, mean/std,
    the metrics the shipped weights achieve, how they were trained, parameter count."""
    _check_bundled(name)
    meta_path = assets_dir() / f"{name}.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"fastattr.models: the metadata of {name!r} is missing ({meta_path}); "
            f"train it with `python -m fastattr.training {name} --out {assets_dir()}`"
        ) from None
    return meta


def _load_bundled(name: str) -> nn.Module:
    from safetensors.torch import load_file as load_safetensors

    path = weights_path(name)
    if not path.is_file():
        raise ModelLoadError(
            f"fastattr.models: the weights of {name!r} are missing ({path}); "
            f"train them with `python -m fastattr.training {name} --out {assets_dir()}`"
        )
    model = _arch.build(name)
    state = load_safetensors(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"fastattr.models: {path} does not match the {name!r} architecture "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return model


def load(spec: str, device="cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring), in eval mode,
    on ``device`` and, if given, in floating-point ``dtype``."""
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec:
        raise ModelLoadError(f"fastattr.models: a model spec must be a non-empty string, got {spec!r}")
    base, params = split_query(spec)
    if base in ARCHITECTURES:
        if params:
            raise ModelLoadError(f"fastattr.models: bundled model {base!r} takes no options, got {spec!r}")
        model = _load_bundled(base)
    elif base.startswith("torchvision:"):
        model = load_torchvision(spec, base[len("torchvision:"):], params)
    elif base.startswith("timm:"):
        model = load_timm(spec, base[len("timm:"):], params)
    elif Path(spec).suffix in _FILE_SUFFIXES or Path(spec).is_file():
        model = load_file(spec, Path(spec))
    elif ":" in base and all(p.isidentifier() for p in base.split(":")[0].split(".")):
        model = load_callable(spec, base, params)
    else:
        _check_bundled(base)  # raises, listing what exists
    model = set_eval(model)
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ModelLoadError(f"fastattr.models: dtype must be a floating-point dtype, got {dtype}")
        model = model.to(device=device, dtype=dtype)
    else:
        model = model.to(device=device)
    return model
