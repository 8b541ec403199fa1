"""Heatmaps of attributions: normalised maps, overlays on the image, grids.

The map shown for an attribution ``A`` of shape (C, H, W) is ``|sum_c A[c]|``,
divided by its ``percentile``-th percentile (99 by default, so a few extreme
pixels do not wash the rest out) and clipped to [0, 1]. It is coloured with a
matplotlib colormap when matplotlib is installed (``inferno`` by default) and
with a built-in black-red-yellow-white ramp otherwise, then alpha-blended over
a dimmed, desaturated copy of the image, with the blend weight growing with
the map so that unattributed pixels show the (dimmed) image.

Only PIL, numpy and torch are needed; nothing here imports the command line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["attribution_map", "colorize", "to_pil", "overlay", "save_heatmap", "grid"]


def attribution_map(attribution: Tensor, percentile: float = 99.0, signed: bool = False,
                    relative: bool = False) -> Tensor:
    """A (H, W) float32 map in [0, 1] (or [-1, 1] when ``signed``) from a (C, H, W) or (H, W) attribution.

    Channels are summed first; the absolute value is taken after the sum
    (``signed=True`` keeps the sign). The result is scaled by the
    ``percentile``-th percentile of its absolute values; an all-zero
    attribution gives an all-zero map. ``relative=True`` (saliency maps such
    as RISE's, whose values share a large offset: the mean score) measures
    each value from the map's minimum instead of from zero.
    """
    a = torch.as_tensor(attribution).detach().to("cpu", torch.float32)
    if a.dim() == 3:
        a = a.sum(0)
    elif a.dim() != 2:
        raise ValueError(f"fastattr.visualize: attribution must be (C, H, W) or (H, W), got {tuple(a.shape)}")
    if not 0 < percentile <= 100:
        raise ValueError(f"fastattr.visualize: percentile must be in (0, 100], got {percentile}")
    a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if relative and a.numel():
        a = a - a.min()
    mag = a.abs()
    scale = float(torch.quantile(mag.flatten(), percentile / 100.0)) if mag.numel() else 0.0
    if scale <= 0:
        scale = float(mag.max()) if mag.numel() else 0.0
    if scale <= 0:
        return torch.zeros_like(a)
    out = a if signed else mag
    return (out / scale).clamp(-1.0, 1.0)


def _ramp(values: np.ndarray) -> np.ndarray:
    """Black → red → yellow → white, for when matplotlib is not installed."""
    r = np.clip(3.0 * values, 0, 1)
    g = np.clip(3.0 * values - 1.0, 0, 1)
    b = np.clip(3.0 * values - 2.0, 0, 1)
    return np.stack([r, g, b], axis=-1)


def colorize(heat: Tensor | np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(H, W) values in [0, 1] → (H, W, 3) uint8 RGB."""
    v = np.clip(np.asarray(torch.as_tensor(heat).to(torch.float32).cpu()), 0.0, 1.0)
    try:
        import matplotlib

        rgb = matplotlib.colormaps[cmap](v)[..., :3]
    except ImportError:
        rgb = _ramp(v)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def to_pil(image: Tensor | np.ndarray, scale: int = 1) -> Image.Image:
    """A (3, H, W) or (1, H, W) or (H, W) float image in [0, 1] → RGB PIL image (enlarged ``scale`` times)."""
    t = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if t.dim() == 3 and t.shape[0] in (1, 3):
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        arr = t.permute(1, 2, 0)
    elif t.dim() == 2:
        arr = t.unsqueeze(-1).expand(-1, -1, 3)
    else:
        raise ValueError(f"fastattr.visualize: image must be (3, H, W), (1, H, W) or (H, W), got {tuple(t.shape)}")
    arr = (arr.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    out = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if scale != 1:
        out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    return out


def overlay(image: Tensor, attribution: Tensor, alpha: float = 0.8, cmap: str = "inferno",
            percentile: float = 99.0, scale: int = 1, desaturate: float = 0.7, dim: float = 0.75,
            relative: bool | None = None) -> Image.Image:
    """The coloured map of ``attribution`` blended over ``image`` (both (C, H, W)); an RGB PIL image.

    ``relative`` (see :func:`attribution_map`) defaults to True for a
    one-channel map over a multi-channel image: one saliency map per image
    (RISE, MFPP) rather than per-channel attributions.

    The image is first partly desaturated and dimmed (``desaturate``, ``dim``) so
    that the colours of the map stand out; each pixel is then
    ``(1 - alpha * m) * base + alpha * m * colour(m)`` for the map value ``m``.
    ``scale`` enlarges the result (nearest neighbour) for small inputs.
    """
    base = np.asarray(to_pil(image), dtype=np.float32)
    if relative is None:
        a, im = torch.as_tensor(attribution), torch.as_tensor(image)
        relative = a.dim() == 3 and a.shape[0] == 1 and im.dim() == 3 and im.shape[0] > 1
    heat = attribution_map(attribution, percentile, relative=relative)
    if tuple(heat.shape) != base.shape[:2]:
        raise ValueError(
            f"fastattr.visualize: attribution is {tuple(heat.shape)} but the image is {base.shape[:2]}"
        )
    gray = base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    base = dim * ((1.0 - desaturate) * base + desaturate * gray[..., None])
    colour = colorize(heat, cmap).astype(np.float32)
    w = (alpha * heat.numpy())[..., None]
    mixed = (1.0 - w) * base + w * colour
    out = Image.fromarray((mixed + 0.5).clip(0, 255).astype(np.uint8), "RGB")
    if scale != 1:
        out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    return out


def causal_colours(heat: Tensor | np.ndarray) -> np.ndarray:
    """PdCR's colouring of an ATE map (H, W) (spec §2.4): with ``h = heat /
    max|heat|``, negative effects (the block supports the RoI's segmentation)
    ``(1, 1 + h, 1 + h)`` (red), positive ``(1 - h, 1 - h, 1)`` (blue), zero
    white; (H, W, 3) float in [0, 1]."""
    h = np.asarray(torch.as_tensor(heat).detach().cpu().double().squeeze())
    top = np.abs(h).max()
    h = h / top if top > 0 else h
    neg, pos = np.minimum(h, 0), np.maximum(h, 0)
    return np.stack([1 - pos, 1 + neg - pos, 1 + neg], -1).clip(0, 1)


def causal_overlay(image: Tensor, heat: Tensor, scale: int = 1) -> Image.Image:
    """The image tinted by :func:`causal_colours` (multiplied: white keeps it)."""
    base = np.asarray(to_pil(image), dtype=np.float32)
    colours = causal_colours(heat)
    if colours.shape[:2] != base.shape[:2]:
        raise ValueError(f"fastattr.visualize: the map is {colours.shape[:2]} but the image is {base.shape[:2]}")
    out = Image.fromarray((base * colours + 0.5).clip(0, 255).astype(np.uint8), "RGB")
    if scale != 1:
        out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    return out


def save_heatmap(path: str | os.PathLike, image: Tensor, attribution: Tensor, style: str = "heat",
                 **options) -> Path:
    """Write :func:`overlay` (``style="heat"``) or :func:`causal_overlay`
    (``style="causal"``, signed ATE maps) as a PNG at ``path``, atomically
    (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        picture = causal_overlay(image, attribution, **options) if style == "causal" else overlay(
            image, attribution, **options)
        picture.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def grid(tiles: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, pad: int = 4, background=(255, 255, 255)) -> Image.Image:
    """Tile PIL images in rows (``None`` leaves a cell empty), with optional text labels.

    All cells take the size of the largest tile; labels use PIL's default font.
    """
    rows = [list(r) for r in tiles]
    if not rows or not any(rows):
        raise ValueError("fastattr.visualize: grid needs at least one tile")
    cells = [t for r in rows for t in r if t is not None]
    cw = max(t.width for t in cells)
    ch = max(t.height for t in cells)
    ncols = max(len(r) for r in rows)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(s):
        left, top, right, bottom = probe.textbbox((0, 0), s, font=font)
        return right - left, bottom - top

    left = max((text_size(s)[0] for s in row_labels), default=0) + pad if row_labels else 0
    top = max((text_size(s)[1] for s in col_labels), default=0) + 2 * pad if col_labels else 0
    width = left + ncols * (cw + pad) + pad
    height = top + len(rows) * (ch + pad) + pad
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or ()):
        tw, _ = text_size(label)
        x = left + pad + j * (cw + pad) + max(0, (cw - tw) // 2)
        draw.text((x, pad), label, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = top + pad + i * (ch + pad)
        if row_labels and i < len(row_labels):
            _, th = text_size(row_labels[i])
            draw.text((pad // 2, y + max(0, (ch - th) // 2)), row_labels[i], fill=(0, 0, 0), font=font)
        for j, tile in enumerate(row):
            if tile is not None:
                canvas.paste(tile, (left + pad + j * (cw + pad), y))
    return canvas
