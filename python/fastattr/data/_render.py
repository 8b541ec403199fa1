"""Small vectorised rendering helpers shared by the procedural datasets.

Everything works on float64 numpy arrays in [0, 1] (H, W, 3) and on signed
distance fields (negative inside a shape, in pixel units), so that edges are
anti-aliased by ``coverage = clip(0.5 - d / softness, 0, 1)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, each (H, W), read-only."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=None)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation from ``n_in`` control points spanning the axis to ``n_out`` pixels."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    m.setflags(write=False)
    return m


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise, about unit variance: a (cells+1)² Gaussian grid upsampled bilinearly.

    Returns (channels, H, W).
    """
    g = rng.standard_normal((channels, cells + 1, cells + 1))
    ay = _interp_matrix(h, cells + 1)
    ax = _interp_matrix(w, cells + 1)
    out = np.matmul(np.matmul(ay, g), ax.T)
    return out * 1.6  # bilinear interpolation lowers the variance; bring it back near 1


def coverage(d: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (pixels)."""
    return np.clip(0.5 - d / softness, 0.0, 1.0)


def composite(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """In place: ``img = img * (1 - alpha) + colour * alpha``; colour (3,) or (H, W, 3)."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, dtype=np.float64)


def box(x0: float, x1: float, y0: float, y1: float, h: int, w: int):
    """Slices (rows, cols) of the pixels whose centres can lie in [x0, x1] × [y0, y1], clipped
    to the image; ``None`` when empty."""
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, w)
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def segment_distance(x: np.ndarray, y: np.ndarray, a, b) -> np.ndarray:
    """Distance from every pixel to the segment a–b (a, b are (2,) arrays)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(x - ax - t * dx, y - ay - t * dy)


def rotate(x: np.ndarray, y: np.ndarray, cx: float, cy: float, theta: float):
    """Coordinates relative to (cx, cy) in a frame rotated by ``theta``."""
    c, s = np.cos(theta), np.sin(theta)
    u = x - cx
    v = y - cy
    return c * u + s * v, -s * u + c * v


def stamp_polyline(canvas: np.ndarray, pts: np.ndarray, radius: np.ndarray) -> None:
    """Rasterise a thick polyline into ``canvas`` (H, W) in place by max-coverage.

    ``pts`` (N, 2) are points spaced at most ~0.7 px apart, ``radius`` (N,) the
    half-width at each point; each point contributes an anti-aliased disc.
    """
    h, w = canvas.shape
    reach = int(np.ceil(radius.max() + 1.0))
    off = np.arange(-reach, reach + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    base = np.floor(pts).astype(np.int64)
    px = base[:, 0, None] + ox.reshape(1, -1)
    py = base[:, 1, None] + oy.reshape(1, -1)
    d = np.hypot(px + 0.5 - pts[:, 0, None], py + 0.5 - pts[:, 1, None]) - radius[:, None]
    cov = np.clip(0.5 - d, 0.0, 1.0)
    keep = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (cov > 0)
    np.maximum.at(canvas, (py[keep], px[keep]), cov[keep])


def blur3(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur over the first two axes, edges replicated."""
    p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    p = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Quantise to 8 bits: items are stored and compared at this precision, so
    last-ulp differences between machines' math libraries cannot show."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
