"""The "shapes" classification set: one foreground shape per image on a
cluttered, textured background (64×64 RGB).

Class = the shape of the single large, high-contrast object. The background is
a mix of a smooth colour field, an oriented grating and pixel noise; the clutter
is thin lines, small dots and faint soft blobs, some of them drawn over the
object, none of them as large or as thick as an object.
"""

from __future__ import annotations

import numpy as np

from ._render import box, composite, coverage, pixel_grid, rotate, segment_distance, smooth_noise, to_uint8

SIZE = 64
CLASSES = ("circle", "square", "triangle", "cross", "ring")
_SQRT3 = np.sqrt(3.0)


def _shape_distance(cls: int, x, y, cx, cy, r, theta):
    """Signed distance (px) of the object of class ``cls`` with half-extent ``r``."""
    name = CLASSES[cls]
    if name == "circle":
        return np.hypot(x - cx, y - cy) - r
    if name == "ring":
        rho = np.hypot(x - cx, y - cy)
        return np.abs(rho - 0.74 * r) - 0.26 * r
    u, v = rotate(x, y, cx, cy, theta)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82 * r
    if name == "cross":
        arm, half = r, 0.3 * r
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - arm, av - half), np.maximum(au - half, av - arm))
    if name == "triangle":
        # Equilateral, circumradius 1.15 r: the three edge half-planes at inradius R/2.
        inr = 0.5 * 1.15 * r
        d1 = v - inr
        d2 = (-_SQRT3 * u - v) * 0.5 - inr
        d3 = (_SQRT3 * u - v) * 0.5 - inr
        return np.maximum(np.maximum(d1, d2), d3)
    raise AssertionError(name)


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_dist: float) -> np.ndarray:
    cand = rng.uniform(0.0, 1.0, size=(16, 3))
    dist = np.linalg.norm(cand - against, axis=1)
    ok = np.flatnonzero(dist >= min_dist)
    return cand[ok[0]] if ok.size else cand[np.argmax(dist)]


def render(rng: np.random.Generator, cls: int, size: int = SIZE):
    """Draw one item: (uint8 image (H, W, 3), bool object mask (H, W))."""
    h = w = size
    x, y = pixel_grid(h, w)
    s = size / SIZE  # every length below is given for 64×64

    # Background: smooth colour field + oriented grating + fine noise.
    bg = rng.uniform(0.15, 0.85, size=3)
    img = np.empty((h, w, 3))
    img[:] = bg
    field = smooth_noise(rng, h, w, cells=int(rng.integers(2, 6)), channels=3)
    img += rng.uniform(0.03, 0.09) * np.moveaxis(field, 0, -1)
    freq = rng.uniform(0.08, 0.45) / s
    ori = rng.uniform(0.0, np.pi)
    phase = rng.uniform(0.0, 2 * np.pi)
    grating = np.sin(freq * (x * np.cos(ori) + y * np.sin(ori)) + phase)
    img += rng.uniform(0.02, 0.08) * grating[..., None] * rng.uniform(-1.0, 1.0, size=3)

    # Faint soft blobs (under everything).
    for _ in range(int(rng.integers(0, 4))):
        bx, by = rng.uniform(0, w), rng.uniform(0, h)
        br = rng.uniform(4, 10) * s
        peak = rng.uniform(0.15, 0.35)
        colour = rng.uniform(0, 1, size=3)
        sl = box(bx - 3 * br, bx + 3 * br, by - 3 * br, by + 3 * br, h, w)
        if sl is not None:
            a = peak * np.exp(-((x[sl] - bx) ** 2 + (y[sl] - by) ** 2) / (2 * br * br))
            composite(img[sl], a, colour)

    def clutter_lines(n):
        for _ in range(n):
            p0 = rng.uniform(0, w, size=2)
            ang = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(8, 36) * s
            p1 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
            width = rng.uniform(0.6, 1.0) * s
            colour = rng.uniform(0, 1, size=3)
            pad = width + 1.0
            sl = box(min(p0[0], p1[0]) - pad, max(p0[0], p1[0]) + pad, min(p0[1], p1[1]) - pad, max(p0[1], p1[1]) + pad, h, w)
            if sl is not None:
                composite(img[sl], coverage(segment_distance(x[sl], y[sl], p0, p1) - width * 0.5), colour)

    def clutter_dots(n):
        for _ in range(n):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            rr = rng.uniform(0.8, 2.3) * s
            colour = rng.uniform(0, 1, size=3)
            sl = box(cx - rr - 1, cx + rr + 1, cy - rr - 1, cy + rr + 1, h, w)
            if sl is not None:
                composite(img[sl], coverage(np.hypot(x[sl] - cx, y[sl] - cy) - rr), colour)

    clutter_lines(int(rng.integers(3, 9)))
    clutter_dots(int(rng.integers(2, 8)))

    # The object.
    r = rng.uniform(8.0, 15.0) * s
    margin = r * 1.17 + 1.0  # the square's corner reaches 1.16 r: objects lie fully inside
    cx = rng.uniform(margin, w - margin)
    cy = rng.uniform(margin, h - margin)
    theta = rng.uniform(0.0, 2 * np.pi)
    d = _shape_distance(cls, x, y, cx, cy, r, theta)
    colour = _contrasting_colour(rng, bg, 0.45)
    shade = 1.0 + rng.uniform(-0.12, 0.12) * ((x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)) / r
    composite(img, coverage(d), np.clip(colour * shade[..., None], 0.0, 1.0))
    mask = d < 0.0

    # A little clutter over the object, then sensor noise.
    clutter_lines(int(rng.integers(0, 3)))
    clutter_dots(int(rng.integers(0, 3)))
    img += rng.uniform(0.01, 0.04) * rng.standard_normal((h, w, 3))
    return to_uint8(img), mask
