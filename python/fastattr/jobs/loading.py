"""Loading the model of a job: :func:`fastattr.models.load` plus what a job needs around it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from .spec import JobError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``model((x - mean) / std)``: lets a job feed images in [0, 1] to ImageNet models.

    Attributions are then with respect to the [0, 1] image, the space the
    heatmaps are drawn in.
    """

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


class CountingModel(nn.Module):
    """Counts the rows (images) that go through ``model``'s forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x):
        self.rows += int(x.shape[0])
        return self.model(x)


class SelectOutput(nn.Module):
    """``model(x)[key]``: one entry of a model that returns a dict (``key`` a
    name, e.g. ``"out"`` of torchvision's segmentation models) or a tuple/list
    (``key`` an index). ``--output-key``."""

    def __init__(self, model: nn.Module, key):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, dict):
            if self.key in out:
                return out[self.key]
            raise JobError(f"--output-key {self.key!r}: the model's output has no such key; "
                           f"its keys are {', '.join(map(repr, out))}")
        if isinstance(out, (tuple, list)):
            try:
                i = int(self.key)
            except (TypeError, ValueError):
                raise JobError(f"--output-key {self.key!r}: the model returns a {type(out).__name__} of "
                               f"{len(out)} entries; give an index 0..{len(out) - 1}") from None
            if not -len(out) <= i < len(out):
                raise JobError(f"--output-key {i}: the model returns a {type(out).__name__} of {len(out)} "
                               f"entries; give an index 0..{len(out) - 1}")
            return out[i]
        raise JobError(f"--output-key {self.key!r} was given but the model returns a single "
                       f"{type(out).__name__}; leave --output-key out")


def _file_identity(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path.resolve()), "sha256": h.hexdigest()}


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes), so that a
    resumed job notices retrained or re-initialised weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_info(spec: str) -> dict:
    """:func:`fastattr.models.info` when it knows ``spec``, else ``{}``."""
    try:
        from .. import models
    except ImportError:
        return {}
    try:
        info = models.info(spec)
    except (KeyError, ValueError, FileNotFoundError, ImportError, RuntimeError, TypeError):
        return {}
    return dict(info or {})


def _torchvision_input_size(spec: str):
    """The crop size of the model's default weights' transforms (224 for most), or None."""
    try:
        from torchvision import models as tvm

        name = spec.split(":", 1)[1].split("?", 1)[0]
        crop = tvm.get_model_weights(name).DEFAULT.transforms().crop_size
        return (int(crop[0]), int(crop[-1]))
    except Exception:  # noqa: BLE001 - unknown name, no weights enum: fall back to the usual size
        return (224, 224)


def load_model(spec: str, device, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, dict]:
    """``(model in eval mode on device/dtype, description for the manifest)``.

    Bundled models normalise their [0, 1] input themselves. ``torchvision:NAME``
    models get :class:`Normalize` with the ImageNet statistics in front, and
    ``timm:NAME`` models with the statistics of their ``pretrained_cfg``, so
    that jobs always feed images in [0, 1] (a model marked with
    ``fastattr_normalizes_input = True`` is left alone). The description gets
    ``input_size`` for these (torchvision: the default weights' crop size;
    timm: ``pretrained_cfg["input_size"]``). A model given as a file is
    identified by its sha256, so resuming after the file changed is refused.
    The model is built under ``torch.manual_seed(seed)`` (torch's global RNG is
    restored afterwards), so random-weight models (``?weights=none``) are the
    same on every run and their jobs resume.
    """
    try:
        from .. import models
    except ImportError as e:
        raise JobError(f"fastattr.models is not available ({e})") from None
    load_error = getattr(models, "ModelLoadError", RuntimeError)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = models.load(spec, device=device, dtype=dtype)
    except (load_error, FileNotFoundError, KeyError, ValueError, ImportError) as e:
        raise JobError(f"cannot load model {spec!r}: {str(e).removeprefix('fastattr.models: ')}") from None
    desc: dict = {"spec": spec}
    if os.path.isfile(spec):
        desc["file"] = _file_identity(Path(spec))
    wrap = None
    if not getattr(model, "fastattr_normalizes_input", False):
        if spec.startswith("torchvision:"):
            wrap = (IMAGENET_MEAN, IMAGENET_STD)
            desc["input_size"] = list(_torchvision_input_size(spec))
        elif spec.startswith("timm:"):
            cfg = dict(getattr(model, "pretrained_cfg", None) or {})
            wrap = (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
            if cfg.get("input_size"):
                desc["input_size"] = list(cfg["input_size"][-2:])
    if wrap is not None:
        model = Normalize(model, *wrap).to(device=device, dtype=dtype)
        desc["normalize"] = {"mean": list(wrap[0]), "std": list(wrap[1])}
    try:
        model.eval()
    except NotImplementedError:
        pass  # torch.export modules have a fixed mode
    for p in model.parameters():
        p.requires_grad_(False)
    return model, desc


def infer_task(model: nn.Module, sample: torch.Tensor) -> str:
    """``classification`` for (N, K) outputs, ``segmentation`` for (N, C, H, W)."""
    with torch.no_grad():
        out = model(sample)
    if isinstance(out, dict):
        keys = list(out)
        raise JobError(f"the model returns a dict ({type(out).__name__}) with keys {', '.join(map(repr, keys))}, not a "
                       f"tensor; pass --output-key KEY to explain one entry (e.g. --output-key {keys[0]})")
    if isinstance(out, (tuple, list)):
        raise JobError(f"the model returns a {type(out).__name__} of {len(out)} entries, not a tensor; pass "
                       f"--output-key INDEX to explain one entry (e.g. --output-key 0)")
    if not isinstance(out, torch.Tensor):
        raise JobError(f"the model returned {type(out).__name__}, not a tensor")
    if out.dim() == 2:
        return "classification"
    if out.dim() == 4:
        return "segmentation"
    raise JobError(f"cannot tell the task of a model with output shape {tuple(out.shape)}")


def input_size(info: dict):
    size = info.get("input_size")
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return size[-2:] if len(size) >= 2 else (size[0], size[0])
