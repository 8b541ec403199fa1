"""Where a job's images come from: a folder of PNG/JPEG files or a bundled data set.

Both are map-style: item ``i`` is always the same image, which is what lets a
job be split into shards, resumed and spread over processes. Items are dicts
``{"index", "id", "path", "image", "label", "mask"}`` with ``image`` a float32
(3, H, W) tensor in [0, 1]; ``label``/``mask`` are None for folders. A folder's
items also carry ``crop_box`` (left, top, right, bottom in the pixels of the
file, after EXIF rotation: the region that became the input) and
``original_size`` (width, height). An image that cannot be read or decoded
gives an item with ``image`` None and ``error`` saying why (the job fails
naming the file, or with ``--on-error skip`` records it as skipped).

Each image has an identity, ``(id, sha256)``: a folder's id is the file's path
relative to the folder and the sha256 is that of the file's bytes, so a job can
tell which of its finished results still belong to the folder's current files.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
BUNDLED_PREFIX = "bundled:"
RESIZE_MODES = ("crop", "stretch")
# Mask files (--target mask): NAME.mask.png beside NAME.EXT; never taken as images.
MASK_SUFFIX = ".mask.png"
# Transparent pixels are composited onto this colour before the alpha channel is dropped.
BACKGROUND = (255, 255, 255)


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

    def __init__(self, root: str | os.PathLike, size=None, resize: str = "crop", exclude=None,
                 mask_suffix: str | None = None):
        self.root = Path(root)
        self.mask_suffix = mask_suffix
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
                if name.lower().endswith(MASK_SUFFIX):
                    continue  # a mask, not an image (whatever --target is)
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath, name).relative_to(self.root).as_posix())
        self.files = sorted(files)
        if not self.files:
            raise FileNotFoundError(f"fastattr: no PNG or JPEG images under {str(root)!r}")

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> dict:
        """What identifies the data for the job's fingerprint: the folder and how
        images become inputs. The files themselves are identified one by one
        (:meth:`identity`), so adding or removing files does not change it."""
        desc = {"kind": "folder", "root": str(self.root.resolve()), "size": list(self.size) if self.size else None,
                "resize": self.resize, "alpha": "composited onto white"}
        if self.mask_suffix is not None:
            desc["masks"] = f"NAME{self.mask_suffix} beside NAME.EXT"
        return desc

    def mask_path(self, rel: str) -> Path:
        return self.root / (os.path.splitext(rel)[0] + self.mask_suffix)

    def listing(self, n: int | None = None) -> dict:
        """The current files (names and sizes) of the first ``n`` images, for the manifest."""
        h = hashlib.sha256()
        files = self.files[:n] if n is not None else self.files
        for rel in files:
            try:
                size = (self.root / rel).stat().st_size
            except OSError:
                size = -1  # unreadable: its item says why
            h.update(rel.encode())
            h.update(b"\0%d\n" % size)
        return {"files": len(files), "listing_sha256": h.hexdigest()}

    def identity(self, index: int, known: dict | None = None) -> dict:
        """``{"id", "path", "sha256", "stat"}`` of image ``index``; sha256 is None
        when the file cannot be read (its item then reports the error). ``stat``
        is (size, mtime_ns) of the file (and of its mask). ``known`` maps ids to
        identities recorded earlier: one whose ``stat`` is unchanged gives its
        sha256 without the file being read again (as make and rsync decide)."""
        rel = self.files[index]
        paths = [self.root / rel] + ([self.mask_path(rel)] if self.mask_suffix is not None else [])
        ident = {"id": rel, "path": str(self.root.resolve() / rel), "sha256": None, "stat": None}
        try:
            stat = []
            for p in paths:
                st = p.stat()
                stat += [st.st_size, st.st_mtime_ns]
            ident["stat"] = stat
        except OSError:
            return ident
        old = (known or {}).get(rel)
        if old is not None and old.get("stat") == stat and old.get("sha256"):
            ident["sha256"] = old["sha256"]
            return ident
        h = hashlib.sha256()
        try:
            for p in paths:
                with open(p, "rb") as f:  # a changed mask changes the result too
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            ident["sha256"] = h.hexdigest()
        except OSError:
            pass
        return ident

    def _box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of the file (after EXIF rotation) that becomes the input."""
        if self.size is not None and self.resize == "crop":
            h, w = self.size
            # scale the shorter side to fit, crop the centre
            scale = max(w / width, h / height)
            cw, ch = w / scale, h / scale
            left, top = (width - cw) / 2, (height - ch) / 2
            return (left, top, left + cw, top + ch)
        return (0.0, 0.0, float(width), float(height))

    def load_mask(self, rel: str, size: tuple[int, int]) -> torch.Tensor:
        """The mask of image ``rel`` as (H, W) class indices (0/255 files become 0/1),
        cropped and resized (nearest) like the image (``size``: the file's width, height)."""
        path = self.mask_path(rel)
        with Image.open(path) as m:
            m = ImageOps.exif_transpose(m)
            if m.mode not in ("1", "L", "P", "I", "I;16"):
                raise ValueError(f"mask {path} is {m.mode}; give a one-channel PNG of class indices (mode L or P)")
            if m.size != tuple(size):
                raise ValueError(f"mask {path} is {m.size[0]}x{m.size[1]} but its image is {size[0]}x{size[1]}")
            if self.size is not None:
                h, w = self.size
                m = m.resize((w, h), Image.NEAREST, box=self._box(*size))
            arr = np.asarray(m).astype(np.int64)
        if arr.size and set(np.unique(arr).tolist()) <= {0, 255}:
            arr = arr // 255
        return torch.from_numpy(arr)

    def load_image(self, rel: str) -> tuple[torch.Tensor, list[float], list[int]]:
        """``(image, crop_box, original_size)``."""
        with warnings.catch_warnings():
            # A decompression-bomb warning or a broken EXIF block is no reason to fail.
            warnings.simplefilter("ignore")
            with Image.open(self.root / rel) as im:
                im.load()  # decode now: a truncated file fails here, not later
                im = ImageOps.exif_transpose(im)
                im = _flatten_alpha(im)
                width, height = im.size
                box = self._box(width, height)
                if self.size is not None:
                    h, w = self.size
                    im = im.resize((w, h), Image.BICUBIC, box=box)
                arr = np.asarray(im, dtype=np.uint8)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
        return image, [round(v, 3) for v in box], [width, height]

    def __getitem__(self, index: int) -> dict:
        rel = self.files[index]
        item = {"index": index, "id": rel, "path": str(self.root.resolve() / rel), "image": None,
                "label": None, "mask": None}
        try:
            image, box, size = self.load_image(rel)
            if self.mask_suffix is not None:
                item["mask"] = self.load_mask(rel, size)
            item.update(image=image, crop_box=box, original_size=size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # OSError covers unreadable, truncated and unidentifiable (PIL.UnidentifiedImageError) files.
            item["error"] = f"{type(e).__name__}: {e}"
        return item


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto :data:`BACKGROUND` (not dropped,
    which would show whatever colour the transparent pixels happen to hold)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info) or \
            (im.mode in ("RGB", "L") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


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
        return {"kind": "bundled", "name": self.name, "split": self.split,
                "size": list(self.size) if self.size else None}

    def listing(self, n: int | None = None) -> dict:
        return {"items": len(self.dataset) if n is None else min(n, len(self.dataset))}

    def identity(self, index: int, known: dict | None = None) -> dict:
        """A bundled item is identified by its id (the data set is fixed by the fastattr version)."""
        return {"id": f"{self.name}/{self.split}/{index:06d}", "path": None, "sha256": None}

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


def open_source(spec: str, split: str = "test", size=None, resize: str = "crop", exclude=None,
                mask_suffix: str | None = None):
    """``bundled:NAME`` → :class:`BundledSource`; anything else is a directory of images
    (with ``mask_suffix``, each image's mask file is read beside it)."""
    if spec.startswith(BUNDLED_PREFIX):
        return BundledSource(spec[len(BUNDLED_PREFIX):], split=split, size=size)
    return ImageFolderSource(spec, size=size, resize=resize, exclude=exclude, mask_suffix=mask_suffix)


def collate(items: list[dict]) -> dict:
    """Stack the images of a batch; keep the other fields as lists. Items that
    could not be read are left out, and listed (as items without image) under
    ``"failed"``; ``"image"`` is None when no item of the batch could be read."""
    good = [it for it in items if it.get("image") is not None]
    keys = list(dict.fromkeys(k for it in items for k in it if k not in ("image", "error")))
    out = {k: [it.get(k) for it in good] for k in keys}
    out["image"] = torch.stack([it["image"] for it in good]) if good else None
    out["failed"] = [{k: v for k, v in it.items() if k != "image"} for it in items if it.get("image") is None]
    return out
