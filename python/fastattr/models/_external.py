"""Loading models that are not bundled: torchvision, timm, ``module:callable``,
TorchScript and ``torch.export`` files."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import socket
import urllib.error
import warnings
from pathlib import Path

import torch
from torch import nn


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model (the message says why and what to do)."""


# Errors that mean "the weights could not be fetched": no network, DNS failure,
# refused connection, HTTP error, TLS failure, timeout.
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, socket.gaierror, ConnectionError, TimeoutError)


def split_query(spec: str) -> tuple[str, dict]:
    """``"name?weights=none&x=1"`` → ``("name", {"weights": "none", "x": "1"})``."""
    base, sep, query = spec.partition("?")
    params = {}
    if sep:
        for part in filter(None, query.split("&")):
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise ModelLoadError(f"fastattr.models: bad option {part!r} in {spec!r}; options look like ?key=value&key2=value2")
            params[key.strip()] = value.strip()
    return base, params


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _hub_hint() -> str:
    return f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}"


def load_torchvision(spec: str, name: str, params: dict) -> nn.Module:
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover - torchvision is a dependency of the venv
        raise ModelLoadError(f"fastattr.models: {spec!r} needs torchvision (pip install torchvision)") from e
    from torchvision import models as tvm

    weights_opt = params.pop("weights", "DEFAULT")
    if name not in tvm.list_models():
        raise ModelLoadError(
            f"fastattr.models: torchvision has no model {name!r} (torchvision {torchvision.__version__}); "
            f"e.g. {', '.join(sorted(tvm.list_models(module=tvm))[:8])}, ... (torchvision.models.list_models())"
        )
    if weights_opt.lower() in ("none", "random", ""):
        weights = None
    else:
        enum = tvm.get_model_weights(name)
        try:
            weights = enum[weights_opt] if weights_opt in enum.__members__ else enum[weights_opt.upper()]
        except KeyError:
            raise ModelLoadError(
                f"fastattr.models: {spec!r}: unknown weights {weights_opt!r} for {name}; "
                f"choose one of {', '.join(enum.__members__)} or none"
            ) from None
    kwargs = {k: _literal(v) for k, v in params.items()}
    # Segmentation and detection builders also fetch ImageNet weights for their
    # backbone unless told not to: random weights mean no download at all.
    takes_backbone = "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters
    backbone = kwargs.get("weights_backbone")
    if isinstance(backbone, str) and backbone.lower() in ("none", "random", ""):
        kwargs["weights_backbone"] = None
    elif isinstance(backbone, str) and takes_backbone:
        enum = type(inspect.signature(tvm.get_model_builder(name)).parameters["weights_backbone"].default)
        try:
            kwargs["weights_backbone"] = enum[backbone.removeprefix(enum.__name__ + ".")]
        except KeyError:
            raise ModelLoadError(f"fastattr.models: {spec!r}: unknown weights_backbone {backbone!r} for {name}; "
                                 f"choose one of {', '.join(enum.__members__)} or none") from None
    elif weights is None and takes_backbone and "weights_backbone" not in kwargs:
        kwargs["weights_backbone"] = None
    if "weights_backbone" in kwargs and not takes_backbone:
        raise ModelLoadError(f"fastattr.models: {spec!r}: torchvision's {name} has no weights_backbone option")
    try:
        return tvm.get_model(name, weights=weights, **kwargs)
    except NETWORK_ERRORS as e:
        # The weights that failed: the model's, else its backbone's.
        fetched = weights if weights is not None else kwargs.get("weights_backbone")
        url = getattr(fetched, "url", None)
        where = (f"Download {url} on a machine with network access and put it at "
                 f"{os.path.join(_hub_hint(), os.path.basename(url))} (torch hub cache, set by TORCH_HOME), or use "
                 if url else "Use ")
        random_spec = f"{spec.split('?')[0]}?weights=none" + ("&weights_backbone=none" if takes_backbone else "")
        raise ModelLoadError(
            f"fastattr.models: could not download the weights for {spec!r} ({fetched}): {e}. "
            f"There seems to be no network access. {where}'{random_spec}' for random weights."
        ) from e


def load_timm(spec: str, name: str, params: dict) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ModelLoadError(
            f"fastattr.models: {spec!r} needs the 'timm' package, which is not installed (pip install timm)"
        ) from e
    weights_opt = params.pop("weights", "pretrained").lower()
    pretrained = weights_opt not in ("none", "random", "")
    kwargs = {k: _literal(v) for k, v in params.items()}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ModelLoadError(f"fastattr.models: timm has no model {name!r} (see timm.list_models())") from e
        raise
    except (OSError, *NETWORK_ERRORS) as e:
        # huggingface_hub / urllib report offline failures as OSError subclasses.
        raise ModelLoadError(
            f"fastattr.models: could not fetch the pretrained weights for {spec!r}: {e}. "
            "There seems to be no network access: download them where there is (they land in the "
            "Hugging Face cache, HF_HOME, or the torch hub cache at "
            f"{_hub_hint()}), or use '{spec.split('?')[0]}?weights=none' for random weights."
        ) from e


def load_callable(spec: str, target: str, params: dict) -> nn.Module:
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelLoadError(f"fastattr.models: cannot import module {module_name!r} for {spec!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelLoadError(f"fastattr.models: module {module_name!r} has no attribute {attr!r} ({spec!r})") from None
    kwargs = {k: _literal(v) for k, v in params.items()}
    model = obj(**kwargs) if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"fastattr.models: {spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_file(spec: str, path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"fastattr.models: no such model file {str(path)!r}")
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise ModelLoadError(f"fastattr.models: {str(path)!r} is not a torch.export archive (torch.export.save): {e}") from e
        _warn_static_batch(program, path)
        return program.module()
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in recent torch, but files made with it are still common.
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelLoadError(
            f"fastattr.models: {str(path)!r} is not a TorchScript file (torch.jit.save): {e}. "
            "Save the model with torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x), path), "
            "or torch.export.save(torch.export.export(model, (x,)), 'model.pt2'), "
            "or give a 'package.module:factory' spec that builds it"
        ) from e


def _warn_static_batch(program, path: Path) -> None:
    """Attribution methods run the model on chunks of path points / copies whose
    row count differs from the batch it was exported with: a static batch size
    fails there, so say how to export it instead."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 1 and isinstance(val.shape[0], int):
                warnings.warn(
                    f"fastattr.models: {str(path)!r} was exported with a static batch size of {val.shape[0]}; "
                    "attribution methods evaluate chunks of other sizes, which it will refuse. Export it with a "
                    "dynamic batch: torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))",
                    UserWarning, stacklevel=4)
            return


def set_eval(model: nn.Module) -> nn.Module:
    try:
        model.eval()
    except NotImplementedError:
        # torch.export modules refuse train()/eval(); their mode was fixed when exported.
        pass
    return model
