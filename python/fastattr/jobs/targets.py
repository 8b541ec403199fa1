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
    ``label``          the same sum over the pixels of the ground-truth mask;
    ``mask``           the same over the pixels of a mask: for a folder, the file
                       ``NAME.mask.png`` beside each image ``NAME.EXT`` (cropped and
                       resized like the image; values are class indices, 0 =
                       background, or 0/255 for one foreground class), for a
                       bundled data set its object mask;
    an integer or a class name: that class's channel, summed over the pixels
                       the model assigns to that class (argmax) on the
                       unperturbed image;
    ``box:TOP,LEFT,BOTTOM,RIGHT``: the predicted foreground (as ``auto``) inside
                       the box (output pixels, rows TOP..BOTTOM-1, columns
                       LEFT..RIGHT-1).

A segmentation score is a :func:`fastattr.targets.region` over per-channel
pixel weights, one set per image; the engine hands it each row's image index,
so the method runs on the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..targets import region
from .sources import MASK_SUFFIX
from .spec import JobError

SPECIAL = ("auto", "pred", "label")
SEGMENTATION_ONLY = ("mask",)


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
        if m.dtype == torch.bool:
            m = m.to(like.dtype)
        if m.shape[0] == 1 and like.shape[1] > 1:
            if m.max() >= like.shape[1] or m.min() < 0:
                raise JobError(f"a mask holds class {int(m.max())} but the model has {like.shape[1]} output "
                               f"channels (mask values are class indices 0..{like.shape[1] - 1}, 0 = background)")
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
        self.box: tuple[int, int, int, int] | None = None
        if self.spec in SPECIAL:
            return
        if self.spec in SEGMENTATION_ONLY or self.spec.startswith("box:"):
            if task != "segmentation":
                raise JobError(f"--target {self.spec} is for segmentation models; this is a {task} model "
                               "(use auto, pred, label, a class index or a class name)")
            if self.spec.startswith("box:"):
                self.box = _parse_box(self.spec)
            return
        try:
            self.fixed = int(self.spec)
        except ValueError:
            if classes and self.spec in classes:
                self.fixed = list(classes).index(self.spec)
            else:
                names = f"; class names: {', '.join(classes)}" if classes else ""
                seg = ", mask, box:TOP,LEFT,BOTTOM,RIGHT" if task == "segmentation" else ""
                raise JobError(f"--target must be auto, pred, label{seg}, a class index or a class name, "
                               f"got {self.spec!r}{names}") from None
        if self.fixed < 0 or (classes and self.fixed >= len(classes)):
            raise JobError(f"--target class {self.fixed} is out of range" + (f" (0..{len(classes) - 1})" if classes else ""))

    def resolve(self, model, images: Tensor, labels: list, masks: list | None = None) -> tuple[object, list]:
        """``(target for the method, JSON-able record per image)``."""
        if self.task == "segmentation":
            with torch.no_grad():
                out = model(images)
            if out.dim() != 4:
                raise JobError(f"a segmentation model must output (N, C, H, W), got {tuple(out.shape)}")
            if self.spec == "label":
                w, kind = label_weights(labels, out), {"kind": "label_pixels"}
            elif self.spec == "mask":
                if masks is None or any(m is None for m in masks):
                    raise JobError(f"--target mask needs a mask per image: a file NAME{MASK_SUFFIX} beside each "
                                   "image NAME.png/.jpg of the folder")
                w, kind = label_weights(masks, out), {"kind": "mask_pixels"}
            elif self.fixed is not None:
                if self.fixed >= max(2, out.shape[1]):
                    raise JobError(f"--target class {self.fixed} is out of range: the model has {out.shape[1]} "
                                   "output channels")
                w, kind = class_weights(out, self.fixed), {"kind": "class_pixels", "class": self.fixed}
            else:
                w, kind = foreground_weights(out), {"kind": "predicted_foreground"}
                if self.box is not None:
                    top, left, bottom, right = self.box
                    if bottom > out.shape[2] or right > out.shape[3]:
                        raise JobError(f"--target {self.spec}: the box reaches beyond the model's output of "
                                       f"{out.shape[2]}x{out.shape[3]} pixels")
                    inside = torch.zeros_like(w)
                    inside[:, :, top:bottom, left:right] = 1
                    w = w * inside
                    kind = {"kind": "predicted_foreground_in_box", "box": list(self.box)}
            pixels = w.flatten(1).sum(1).tolist()
            return region(w), [dict(kind, pixels=int(p)) for p in pixels]
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


def class_weights(output: Tensor, cls: int) -> Tensor:
    """Channel ``cls`` over the pixels the model assigns to it (argmax; one-channel
    models: class 1 is logit > 0, class 0 is logit <= 0, both on channel 0)."""
    if output.shape[1] == 1:
        fg = output > 0
        return (fg if cls == 1 else ~fg).to(output.dtype)
    pred = output.argmax(1, keepdim=True)
    w = torch.zeros_like(output)
    w[:, cls:cls + 1] = (pred == cls).to(output.dtype)
    return w


def _parse_box(spec: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in spec[len("box:"):].split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
        raise JobError(f"--target box must be box:TOP,LEFT,BOTTOM,RIGHT with 0 <= TOP < BOTTOM and "
                       f"0 <= LEFT < RIGHT (output pixels), got {spec!r}")
    return box
