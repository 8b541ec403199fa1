"""What a job explains for each image: ``--target``.

Classification models (output (N, classes)):
    ``auto``/``pred``  the top class on the unperturbed image (argmax);
    ``label``          the data set's label;
    an integer or a class name: that class for every image.

Segmentation models (output (N, C, H, W)):
    ``auto``/``pred``  the predicted foreground: the score explained is the sum of
                       the logits over the pixels that the model assigns to the
                       foreground *on the unperturbed image* (one-channel models:
                       logit > 0; several channels: pixels whose argmax is not
                       channel 0, summing the logit of that argmax channel). The
                       pixel set is fixed per image, so along an IG path or under
                       noise the same pixels' logits are summed;
    ``label``          the same sum over the pixels of the ground-truth mask.

A segmentation score is a :func:`fastattr.targets.region` over per-channel
pixel weights, one set per image; the engine hands it each row's image index,
so the method runs on the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..targets import region
from .spec import JobError

SPECIAL = ("auto", "pred", "label")


def foreground_weights(output: Tensor) -> Tensor:
    """Pixel weights of the predicted foreground of segmentation logits (N, C, H, W)."""
    if output.shape[1] == 1:
        return (output > 0).to(output.dtype)
    pred = output.argmax(1, keepdim=True)
    onehot = torch.zeros_like(output).scatter_(1, pred, 1.0)
    onehot[:, 0] = 0
    return onehot


def label_weights(labels: list, like: Tensor) -> Tensor:
    """Pixel weights from ground-truth masks (each (1, H, W), (H, W) or (C, H, W))."""
    out = []
    for lab in labels:
        if lab is None:
            raise JobError("--target label needs a data set with labels (a bundled data set)")
        m = torch.as_tensor(lab).to(like.device, like.dtype)
        if m.dim() == 2:
            m = m.unsqueeze(0)
        if m.shape[0] == 1 and like.shape[1] > 1:
            onehot = torch.zeros(like.shape[1:], dtype=like.dtype, device=like.device)
            onehot.scatter_(0, m.long(), 1.0)
            onehot[0] = 0
            m = onehot
        else:
            m = (m > 0.5).to(like.dtype)
        if m.shape != like.shape[1:]:
            raise JobError(f"label mask of shape {tuple(m.shape)} does not match the model output {tuple(like.shape[1:])}")
        out.append(m)
    return torch.stack(out)


class TargetPolicy:
    """Turns ``--target`` into per-batch targets for a task, and into what the manifest records."""

    def __init__(self, spec: str, task: str, classes: list[str] | None = None):
        self.spec = str(spec)
        self.task = task
        self.fixed: int | None = None
        if self.spec in SPECIAL:
            return
        if task == "segmentation":
            raise JobError(f"--target for a segmentation model must be one of {', '.join(SPECIAL)}, got {self.spec!r}")
        try:
            self.fixed = int(self.spec)
        except ValueError:
            if classes and self.spec in classes:
                self.fixed = list(classes).index(self.spec)
            else:
                names = f"; class names: {', '.join(classes)}" if classes else ""
                raise JobError(f"--target must be auto, pred, label, a class index or a class name, got {self.spec!r}{names}") from None
        if self.fixed < 0 or (classes and self.fixed >= len(classes)):
            raise JobError(f"--target class {self.fixed} is out of range" + (f" (0..{len(classes) - 1})" if classes else ""))

    def resolve(self, model, images: Tensor, labels: list) -> tuple[object, list]:
        """``(target for the method, JSON-able record per image)``."""
        if self.task == "segmentation":
            with torch.no_grad():
                out = model(images)
            if out.dim() != 4:
                raise JobError(f"a segmentation model must output (N, C, H, W), got {tuple(out.shape)}")
            w = label_weights(labels, out) if self.spec == "label" else foreground_weights(out)
            kind = "label_pixels" if self.spec == "label" else "predicted_foreground"
            pixels = w.flatten(1).sum(1).tolist()
            return region(w), [{"kind": kind, "pixels": int(p)} for p in pixels]
        n = images.shape[0]
        if self.fixed is not None:
            t = torch.full((n,), self.fixed, dtype=torch.long, device=images.device)
        elif self.spec == "label":
            if any(lab is None for lab in labels):
                raise JobError("--target label needs a data set with labels (a bundled data set)")
            t = torch.as_tensor([int(lab) for lab in labels], dtype=torch.long, device=images.device)
        else:
            with torch.no_grad():
                out = model(images)
            if out.dim() != 2:
                raise JobError(f"a classification model must output (N, classes), got {tuple(out.shape)}; "
                               "is it a segmentation model?")
            t = out.argmax(1)
        return t, [int(v) for v in t.tolist()]
