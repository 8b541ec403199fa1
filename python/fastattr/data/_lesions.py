"""The "lesions" segmentation set: a medical-style 128×128 RGB image (a
fundus / dermoscopy-like tissue background) with 1–4 lesion-like blobs, thin
curvilinear vessels and small pigment specks.

The target is the lesions only. Vessels are drawn in the same dark-red /
brown range of colours as the lesions and pass under them, so colour alone
does not separate the two: shape (compact blob vs thin curve) does. Specks are
much smaller than the smallest lesion.
"""

from __future__ import annotations

import numpy as np

from ._render import blur3, box, composite, coverage, pixel_grid, smooth_noise, stamp_polyline, to_uint8

SIZE = 128
CLASSES = ("lesion",)
_HARMONICS = np.arange(2, 6)


def _vessel(rng: np.random.Generator, h: int, w: int, s: float):
    """Points (N, 2) and half-widths (N,) of one smooth random curve."""
    # Start on a random border (vessels enter the field of view) or inside.
    side = int(rng.integers(0, 5))
    t = rng.uniform(0.1, 0.9)
    inner = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
    start = [(t * w, 0.0), (t * w, h), (0.0, t * h), (w, t * h), inner][side]
    towards_centre = np.arctan2(h / 2 - start[1], w / 2 - start[0])
    heading = towards_centre + rng.uniform(-0.9, 0.9)
    n = int(rng.uniform(90, 300) * s)
    step = 0.6
    # Curvature: a smooth random function along the curve (a few control values,
    # interpolated), so the curve bends slowly and changes direction: mostly
    # radii of curvature above ~40 px.
    control = rng.normal(0.0, 0.009, size=6)
    turn = np.interp(np.linspace(0.0, 5.0, n), np.arange(6), control)
    angles = heading + np.cumsum(turn)
    pts = np.empty((n, 2))
    pts[:, 0] = start[0] + step * np.cumsum(np.cos(angles))
    pts[:, 1] = start[1] + step * np.cumsum(np.sin(angles))
    w0 = rng.uniform(0.7, 1.9) * s
    radius = w0 * np.linspace(1.0, rng.uniform(0.45, 0.9), n)
    inside = (pts[:, 0] > -3) & (pts[:, 0] < w + 3) & (pts[:, 1] > -3) & (pts[:, 1] < h + 3)
    return pts[inside], radius[inside]


def render(rng: np.random.Generator, size: int = SIZE):
    """Draw one item: (uint8 image (H, W, 3), bool lesion mask (H, W))."""
    h = w = size
    x, y = pixel_grid(h, w)
    s = size / SIZE

    # Tissue: a pinkish-orange base colour, slow illumination changes, a
    # mottled mid-frequency texture and fine grain.
    base = np.array([rng.uniform(0.62, 0.92), rng.uniform(0.36, 0.6), rng.uniform(0.22, 0.48)])
    illum = 1.0 + rng.uniform(0.06, 0.16) * smooth_noise(rng, h, w, cells=3)[0]
    mottle = np.moveaxis(smooth_noise(rng, h, w, cells=int(rng.integers(10, 20)), channels=3), 0, -1)
    img = base * illum[..., None] + rng.uniform(0.015, 0.04) * mottle
    # Vignette, as from a round field of view.
    rr2 = ((x - w / 2) ** 2 + (y - h / 2) ** 2) / (0.25 * (h * h + w * w))
    img *= (1.0 - rng.uniform(0.05, 0.25) * rr2)[..., None]

    # Dark-red palette shared by vessels and lesions.
    def dark_colour():
        f = rng.uniform(0.35, 0.75)
        return base * np.array([f, f * rng.uniform(0.55, 0.9), f * rng.uniform(0.5, 0.95)])

    for _ in range(int(rng.integers(2, 7))):
        pts, rad = _vessel(rng, h, w, s)
        colour = dark_colour()
        if not len(pts):
            continue
        reach = rad.max() + 2.0
        (x0, y0), (x1, y1) = pts.min(axis=0) - reach, pts.max(axis=0) + reach
        sl = box(x0, x1, y0, y1, h, w)
        if sl is not None:
            one = np.zeros((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
            stamp_polyline(one, pts - np.array([sl[1].start, sl[0].start]), rad)
            composite(img[sl], 0.9 * one, colour)

    # Pigment specks (tiny; not lesions).
    for _ in range(int(rng.integers(0, 7))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = rng.uniform(0.6, 1.8) * s
        colour = dark_colour()
        sl = box(cx - rad - 1, cx + rad + 1, cy - rad - 1, cy + rad + 1, h, w)
        if sl is not None:
            composite(img[sl], 0.85 * coverage(np.hypot(x[sl] - cx, y[sl] - cy) - rad), colour)

    # Lesions: irregular blobs (a radius modulated by a few angular harmonics,
    # slightly elliptical) with soft edges, a darker core and inner texture.
    mask = np.zeros((h, w), dtype=bool)
    texture = smooth_noise(rng, h, w, cells=24)[0][..., None]
    for _ in range(int(rng.integers(1, 5))):
        rad = rng.uniform(6.0, 17.0) * s
        margin = 0.6 * rad
        cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
        amp = rng.uniform(0.0, 0.16, size=4) / np.sqrt(_HARMONICS - 1)
        ph = rng.uniform(0.0, 2 * np.pi, size=4)
        stretch = rng.uniform(0.75, 1.0)
        tilt = rng.uniform(0.0, np.pi)
        soft = rng.uniform(0.8, 1.8)
        colour = dark_colour()
        darker_core = rng.uniform(0.0, 0.3)
        reach = rad * (1.0 + amp.sum()) + 2.0
        sl = box(cx - reach, cx + reach, cy - reach, cy + reach, h, w)
        if sl is None:
            continue
        xs, ys = x[sl], y[sl]
        ang = np.arctan2(ys - cy, xs - cx)
        modulation = 1.0 + np.tensordot(amp, np.cos(_HARMONICS[:, None, None] * ang + ph[:, None, None]), axes=1)
        squash = 0.5 * (1 + stretch) + 0.5 * (1 - stretch) * np.cos(2 * (ang - tilt))
        d = (np.hypot(xs - cx, ys - cy) - rad * modulation) * squash
        core = np.clip(-d / 8.0, 0.0, 1.0)[..., None]
        lesion_rgb = colour * (1.0 - darker_core * core) * (1.0 + 0.08 * texture[sl])
        composite(img[sl], coverage(d, soft), lesion_rgb)
        mask[sl] |= d < 0.0

    img = blur3(img) * 0.5 + img * 0.5  # a slightly soft optical look
    img += rng.uniform(0.008, 0.025) * rng.standard_normal((h, w, 3))
    return to_uint8(img), mask
