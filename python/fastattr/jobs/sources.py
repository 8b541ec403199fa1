"""Where a job's images come from: a folder of PNG/JPEG files or a bundled data set.

Both are map-style: item ``i`` is always the same image, which is what lets a
job be split into shards by index, resumed and spread over processes. Items are
dicts ``{"index", "id", "path", "image", "label", "mask"}`` with ``image`` a
float32 (3, H, W) tensor in [0, 1]; ``label``/``mask`` are None for folders.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
BUNDLED_PREFIX = "bundled:"
RESIZE_MODES = ("crop", "stretch")


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return (size[0], size[0])
    return size[-2:]


class ImageFolderSource(torch.utils.data.Dataset):
    """Every PNG/JPEG under ``root`` (recursively), in sorted order of relative path.

    Images are converted to RGB and brought to ``size`` (H, W): ``resize="crop"``
    scales the shorter side and crops the centre (keeps the aspect ratio),
    ``"stretch"`` scales both sides. Values are in [0, 1]; any normalisation is
    the model's business. Hidden files and folders, and the folder ``exclude``
    (a job's own output, when it lies inside ``root``), are skipped.
    """

    def __init__(self, root: str | os.PathLike, size=None, resize: str = "crop", exclude=None):
        self.root = Path(root)
        skip = Path(exclude).resolve() if exclude is not None else None
        if not self.root.is_dir():
            raise FileNotFoundError(f"fastattr: data directory {str(root)!r} does not exist or is not a directory")
        if resize not in RESIZE_MODES:
            raise ValueError(f"fastattr: resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.size = _pair(size)
        self.resize = resize
        files = []
        for dirpath, dirnames, names in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and (skip is None or Path(dirpath, d).resolve() != skip))
            for name in names:
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath, name).relative_to(self.root).as_posix())
        self.files = sorted(files)
        if not self.files:
            raise FileNotFoundError(f"fastattr: no PNG or JPEG images under {str(root)!r}")

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> dict:
        """What identifies the data: the folder, its file names and sizes (not the pixels)."""
        h = hashlib.sha256()
        for rel in self.files:
            h.update(rel.encode())
            h.update(b"\0%d\n" % (self.root / rel).stat().st_size)
        return {"kind": "folder", "root": str(self.root.resolve()), "files": len(self.files),
                "listing_sha256": h.hexdigest(), "size": list(self.size) if self.size else None,
                "resize": self.resize}

    def load_image(self, rel: str) -> torch.Tensor:
        with Image.open(self.root / rel) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            if self.size is not None:
                h, w = self.size
                if self.resize == "crop":
                    im = ImageOps.fit(im, (w, h), method=Image.BICUBIC)
                else:
                    im = im.resize((w, h), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)

    def __getitem__(self, index: int) -> dict:
        rel = self.files[index]
        return {"index": index, "id": rel, "path": str(self.root.resolve() / rel), "image": self.load_image(rel),
                "label": None, "mask": None}


class BundledSource(torch.utils.data.Dataset):
    """A data set of :mod:`fastattr.data` (items ``(image, label, mask)``), or any such Dataset."""

    def __init__(self, name: str, split: str = "test", size=None, dataset=None):
        if dataset is None:
            from .. import data

            names = list(data.available())
            if name not in names:
                raise ValueError(f"fastattr: unknown bundled data set {name!r}; available: {', '.join(names)}")
            dataset = data.load(name, split=split)
        self.name = name
        self.split = split
        self.dataset = dataset
        self.size = _pair(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict:
        return {"kind": "bundled", "name": self.name, "split": self.split, "items": len(self.dataset),
                "size": list(self.size) if self.size else None}

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            image, label, mask = (list(item) + [None, None])[:3]
        else:
            image, label, mask = item, None, None
        image = torch.as_tensor(image).to(torch.float32)
        if self.size is not None and tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp_(0, 1)
        return {"index": index, "id": f"{self.name}/{self.split}/{index:06d}", "path": None, "image": image,
                "label": label, "mask": mask}


def open_source(spec: str, split: str = "test", size=None, resize: str = "crop", exclude=None):
    """``bundled:NAME`` → :class:`BundledSource`; anything else is a directory of images."""
    if spec.startswith(BUNDLED_PREFIX):
        return BundledSource(spec[len(BUNDLED_PREFIX):], split=split, size=size)
    return ImageFolderSource(spec, size=size, resize=resize, exclude=exclude)


def collate(items: list[dict]) -> dict:
    """Stack the images of a batch; keep the other fields as lists."""
    out = {k: [it[k] for it in items] for k in items[0] if k != "image"}
    out["image"] = torch.stack([it["image"] for it in items])
    return out
