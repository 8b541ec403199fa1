"""``fastattr run --metrics``: per-image quality metrics stored beside each attribution.

- ``deletion`` / ``insertion``: the AUCs of :func:`fastattr.metrics.deletion`
  and :func:`~fastattr.metrics.insertion` with the GNL paper's protocol (spec
  §1.4): one image row per step (``step = W``), the probability of the
  explained target (softmax over classes; a segmentation region's summed
  sigmoid), the heatmap ``|Σ_c attribution|`` (a one-channel map as it is),
  and RISE's substrates (zeros; the exact 11x11 blur) taken in the model's
  normalised space when it normalises its inputs itself (a
  :class:`fastattr.models.Normalize` inside it, as the bundled and
  torchvision/timm models have): a deleted pixel becomes the normalisation
  mean, and the blur pads with it;
- ``pointing``: the pointing-game hit (tolerance 15 px at 224x224, scaled
  with the image) and the energy-based pointing game against the data set's
  ground-truth mask.

Each image's record (shard record and manifest) gets ``"metrics"``; the
manifest gets the means, which the runner prints at the end.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import metrics as M
from .spec import JobError


def _normalisation_mean(model) -> list[float] | None:
    from ..models import Normalize

    for module in model.modules():
        if isinstance(module, Normalize):
            return [float(v) for v in module.mean.detach().cpu()]
    return None


def metric_protocol(model, image_shape, names) -> dict:
    """What ``--metrics`` computes, and its record for the job spec."""
    h, w = (int(image_shape[-2]), int(image_shape[-1])) if image_shape is not None else (224, 224)
    center = _normalisation_mean(model)
    tolerance = 15.0 * min(h, w) / 224.0
    record = {
        "names": list(names),
        "step": w,
        "step_rule": "one image row per step (224 pixels at 224x224, spec 1.4)",
        "activation": "auto (softmax over classes; sigmoid of a one-channel segmentation map)",
        "heatmap": "|sum over channels| of the attribution (a one-channel map as it is)",
        "deletion_substrate": "zeros in the model's normalised space" if center else "zeros",
        "insertion_substrate": "RISE blur (11x11, sigma 5)" + (" in the model's normalised space" if center else ""),
        "center": center,
        "pointing_tolerance_px": round(tolerance, 4),
    }
    return {"names": tuple(names), "step": w, "center": center, "tolerance": tolerance, "record": record}


def image_metrics(model, x: Tensor, attributions: Tensor, target, masks, protocol: dict) -> list[dict]:
    """The metrics of every image of the batch ``x``, one JSON-able dict each."""
    names = protocol["names"]
    sal = M.heatmap(attributions).to(x.dtype)
    out = [{} for _ in range(x.shape[0])]
    center = protocol["center"]
    if center is not None and len(center) != x.shape[1]:
        center = None
    try:
        for name in ("deletion", "insertion"):
            if name in names:
                fn = M.deletion if name == "deletion" else M.insertion
                _, area = fn(model, x, sal, target=target, step=protocol["step"], activation="auto", center=center)
                for row, v in zip(out, area.double().cpu().tolist()):
                    row[f"{name}_auc"] = v
        if "pointing" in names:
            gt = _masks(masks, sal)
            hits = M.pointing_game(sal.float(), gt, tolerance=protocol["tolerance"])
            energy = M.energy_pointing_game(sal.float(), gt)
            for row, hit, e in zip(out, hits.cpu().tolist(), energy.double().cpu().tolist()):
                row["pointing_hit"] = bool(hit)
                row["energy_pointing"] = e
    except (ValueError, TypeError) as e:
        raise JobError(f"--metrics failed: {str(e).removeprefix('fastattr: ')}") from e
    return out


def _masks(masks, sal: Tensor) -> Tensor:
    if masks is None or any(m is None for m in masks):
        raise JobError("--metrics pointing needs a ground-truth mask per image (a bundled data set)")
    m = torch.stack([torch.as_tensor(v) for v in masks]).to(sal.device)
    m = m[:, 0] if m.dim() == 4 else m
    if tuple(m.shape) != tuple(sal.shape):
        raise JobError(f"--metrics pointing: masks of shape {tuple(m.shape[1:])} do not match the attribution maps "
                       f"{tuple(sal.shape[1:])} (was the image resized?)")
    return m.bool() if not m.dtype.is_floating_point else m > 0.5


def metric_means(images: list[dict]) -> dict:
    """``{metric: {"mean", "n"}}`` over the images that carry it (hits as a rate)."""
    sums: dict = {}
    for img in images:
        for k, v in (img.get("metrics") or {}).items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            total, n = sums.get(k, (0.0, 0))
            sums[k] = (total + float(v), n + 1)
    return {k: {"mean": total / n, "n": n} for k, (total, n) in sums.items() if n}
