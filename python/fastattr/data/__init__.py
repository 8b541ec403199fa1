"""Procedural benchmark data sets for attribution: ``fastattr.data``.

>>> from fastattr import data
>>> data.available()
['lesions', 'shapes']
>>> ds = data.load("shapes", split="test")          # 2000 items
>>> image, label, mask = ds[0]

Every item is a tuple ``(image, label, mask)``:

- ``image``: float32 tensor (3, H, W) in [0, 1] (values are multiples of 1/255);
- ``label``: an ``int`` class index for ``"shapes"``; a float32 tensor (1, H, W)
  of 0/1 for ``"lesions"`` (the segmentation target);
- ``mask``: a bool tensor (H, W), where the ground-truth object is (for
  localisation metrics such as pointing game or energy-in-mask). For
  ``"lesions"`` it equals the label.

Items are generated on the fly from ``(name, split, index)`` alone, with a
numpy ``Generator`` seeded from those three values, so they are the same on
every machine, random access is O(1), and nothing is downloaded. The splits use
disjoint seeds. ``size`` can exceed the default length of a split (the index
space is unbounded); the first ``n`` items of a split never depend on ``size``.

``"shapes"`` (64×64, classification, 5 classes): one large shape (circle,
square, triangle, cross, ring) at a random position, size (half-extent 8–15
px), rotation and colour, on a textured background (smooth colour field,
oriented grating, noise) with clutter: thin lines, small dots, faint blobs, a
few of them over the object. Classes are exactly balanced within every block of
5 consecutive indices (in a per-block random order).

``"lesions"`` (128×128, segmentation): fundus/dermoscopy-like tissue with 1–4
irregular lesion blobs (the target), 2–6 thin vessel-like curves and tiny
pigment specks in the same dark colours (distractors).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from . import _lesions, _shapes

__all__ = ["available", "load", "classes", "info", "SyntheticDataset", "SPLITS"]

SPLITS = ("train", "val", "test")
_SPLIT_ID = {"train": 1, "val": 2, "test": 3}
_ROOT_SEED = 0xFA57A77  # fixed forever: changing it changes every item


@dataclass(frozen=True)
class _Spec:
    name: str
    task: str
    image_size: int
    classes: tuple
    sizes: dict
    description: str


_SPECS = {
    "shapes": _Spec(
        name="shapes",
        task="classification",
        image_size=_shapes.SIZE,
        classes=_shapes.CLASSES,
        sizes={"train": 50_000, "val": 2_000, "test": 2_000},
        description="64x64 RGB, one shape (circle/square/triangle/cross/ring) on cluttered textured backgrounds",
    ),
    "lesions": _Spec(
        name="lesions",
        task="segmentation",
        image_size=_lesions.SIZE,
        classes=_lesions.CLASSES,
        sizes={"train": 10_000, "val": 500, "test": 2_000},
        description="128x128 RGB medical-style tissue with lesion blobs (target) and vessel-like curves (distractors)",
    ),
}


def available() -> list[str]:
    """Names of the data sets."""
    return sorted(_SPECS)


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"fastattr.data: unknown data set {name!r}; available: {', '.join(available())}") from None


def classes(name: str) -> list[str]:
    """Class names: the index of each is the ``label`` (shapes) or the output channel (lesions)."""
    return list(_spec(name).classes)


def info(name: str) -> dict:
    """Task, image size, classes, default split sizes and a one-line description."""
    sp = _spec(name)
    return {
        "name": sp.name,
        "task": sp.task,
        "image_size": [sp.image_size, sp.image_size],
        "channels": 3,
        "classes": list(sp.classes),
        "splits": dict(sp.sizes),
        "description": sp.description,
    }


def _seed(name: str, split: str, index: int, stream: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([_ROOT_SEED, zlib.crc32(name.encode()), _SPLIT_ID[split], int(index), stream])


class SyntheticDataset(Dataset):
    """One split of a procedural data set (see :mod:`fastattr.data`)."""

    def __init__(self, name: str, split: str = "test", size: int | None = None):
        self.spec = _spec(name)
        if split not in _SPLIT_ID:
            raise ValueError(f"fastattr.data: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if size is None:
            size = self.spec.sizes[split]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"fastattr.data: size must be a positive int, got {size!r}")
        self.name = name
        self.split = split
        self.size = int(size)

    # -- metadata ---------------------------------------------------------
    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.spec.image_size, self.spec.image_size)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SyntheticDataset({self.name!r}, split={self.split!r}, size={self.size})"

    # -- items ------------------------------------------------------------
    def _index(self, index) -> int:
        if isinstance(index, torch.Tensor):
            index = index.item()
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"fastattr.data: index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"fastattr.data: index {index} out of range for {self!r}")
        return i

    def label_of(self, index: int) -> int:
        """Class of a "shapes" item without rendering it (balanced per block of n_classes)."""
        i = self._index(index)
        k = len(self.spec.classes)
        block_rng = np.random.default_rng(_seed(self.name, self.split, i // k, stream=1))
        return int(block_rng.permutation(k)[i % k])

    def render(self, index: int):
        """numpy item: (uint8 image (H, W, 3), label (int, or bool (H, W) for lesions), bool mask (H, W))."""
        i = self._index(index)
        rng = np.random.default_rng(_seed(self.name, self.split, i))
        if self.name == "shapes":
            cls = self.label_of(i)
            img, mask = _shapes.render(rng, cls)
            return img, cls, mask
        img, mask = _lesions.render(rng)
        return img, mask, mask

    def __getitem__(self, index):
        img, label, mask = self.render(index)
        # numpy, not torch, for the conversion: single-threaded, so no thread-pool
        # start-up for a small tensor (it is the same float32 division).
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0))
        if self.spec.task == "segmentation":
            label = torch.from_numpy(label.astype(np.float32))[None]
        return image, label, torch.from_numpy(mask)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacked items: images (N, 3, H, W) float32, labels (N,) int64 or (N, 1, H, W) float32, masks (N, H, W) bool."""
        items = [self[i] for i in indices]
        if not items:
            raise ValueError("fastattr.data: batch() needs at least one index")
        images = torch.stack([it[0] for it in items])
        if self.spec.task == "classification":
            labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
        else:
            labels = torch.stack([it[1] for it in items])
        masks = torch.stack([it[2] for it in items])
        return images, labels, masks

    def uint8_arrays(self, start: int = 0, stop: int | None = None, progress: Callable[[int], None] | None = None):
        """Items start..stop as compact numpy arrays: images (N, H, W, 3) uint8,
        labels (N,) int64 or (N, H, W) bool, masks (N, H, W) bool (for training)."""
        stop = self.size if stop is None else stop
        n = stop - start
        h, w = self.image_size
        images = np.empty((n, h, w, 3), dtype=np.uint8)
        masks = np.empty((n, h, w), dtype=bool)
        labels = np.empty((n,), dtype=np.int64) if self.task == "classification" else masks
        for j in range(n):
            img, label, mask = self.render(start + j)
            images[j] = img
            masks[j] = mask
            if self.task == "classification":
                labels[j] = label
            if progress is not None:
                progress(j)
        return images, labels, masks


def load(name: str, split: str = "test", size: int | None = None) -> SyntheticDataset:
    """The ``split`` ("train", "val" or "test") of data set ``name``, ``size`` items (default per split)."""
    return SyntheticDataset(name, split, size)
