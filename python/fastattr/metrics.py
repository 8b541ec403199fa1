"""Evaluation metrics of attribution maps: ``fastattr.metrics``.

Faithfulness (RISE's causal metric, spec §3.4):

- :func:`deletion`: starting from the image, remove ``step`` pixels at a time
  in descending saliency (they take the substrate, zeros by default) and
  record the target's probability after each step;
- :func:`insertion`: the mirror, starting from the substrate (RISE's blur by
  default) and putting the image's pixels back in the same order.

Each returns the curve ``(B, n_steps + 1)`` (``n_steps = ceil(H*W / step)``;
entry ``i`` is the score after ``i`` steps) and its area, RISE's trapezoid
``(Σ s − s_0 / 2 − s_n / 2) / n`` (:func:`auc`). All the images of the curve
are written by the ``rank_masked_batch`` op straight from each pixel's rank
(:func:`fastattr.ops.saliency_ranks`: descending saliency, ties by ascending
pixel index) and run through the engine's forward-only score evaluator in
tiles of ``batch_size`` rows, several images and steps per forward pass; there
is no per-step Python loop and no host sync per tile.

Localisation:

- :func:`pointing_game`: a hit when the saliency maximum lies within
  ``tolerance`` pixels of the ground-truth mask;
- :func:`energy_pointing_game`: the share of the (positive) saliency that
  falls inside the mask.

:func:`heatmap` turns attributions into the single-channel map the metrics
rank (the GNL protocol's ``|Σ_c attribution|``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops as ops
from . import engine
from .methods._common import non_finite_error
from .methods.perturbation import _check_images, _mask_scores, with_activation
from .targets import Target, resolve

__all__ = [
    "BLUR_WEIGHTS", "CausalCurve", "auc", "blur", "blur_kernel", "causal_curve", "deletion", "energy_pointing_game",
    "heatmap", "insertion", "make_substrate", "pointing_game",
]

# RISE's insertion substrate: gkern(klen=11, nsig=5), each channel's kernel being
# scipy.ndimage.gaussian_filter of an 11x11 delta with sigma 5 (mode 'reflect',
# truncate 4). It is separable; its 1-D weights (spec §3.4, to 8 digits):
BLUR_WEIGHTS = (0.08795815, 0.08889612, 0.0904742, 0.09219112, 0.09348939, 0.09398206,
                0.09348939, 0.09219112, 0.0904742, 0.08889612, 0.08795815)
_BLUR_SIZE, _BLUR_SIGMA, _BLUR_TRUNCATE = 11, 5.0, 4.0


class CausalCurve(NamedTuple):
    """A deletion or insertion result: ``curve`` (B, n_steps + 1), ``auc`` (B,)."""

    curve: Tensor
    auc: Tensor


# --------------------------------------------------------------------------- substrates


def blur_kernel(dtype: torch.dtype = torch.float64) -> Tensor:
    """The exact 1-D weights of RISE's blur, (11,), computed as scipy does:
    ``gaussian_filter`` (sigma 5, truncate 4: 41 taps ``exp(-j² / 50)``,
    normalised) of a centred 11-sample delta with the half-sample symmetric
    ('reflect') boundary, so taps falling outside fold back onto the delta.
    The 2-D kernel is the outer product with itself."""
    radius = int(_BLUR_TRUNCATE * _BLUR_SIGMA + 0.5)
    j = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (j / _BLUR_SIGMA) ** 2)
    taps = taps / taps.sum()
    n, centre = _BLUR_SIZE, _BLUR_SIZE // 2
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for t, weight in zip(j.tolist(), taps.tolist()):
            q = i + int(t)
            # 'reflect' (d c b a | a b c d | d c b a), period 2n
            q %= 2 * n
            q = 2 * n - 1 - q if q >= n else q
            if q == centre:
                out[i] += weight
    return out.to(dtype)


def _center(center, x: Tensor) -> Tensor | None:
    """``center`` as a (1, C, 1, 1) tensor in x's dtype and device (or None)."""
    if center is None:
        return None
    c = torch.as_tensor(center, dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        c = c.expand(x.shape[1])
    if c.shape != (x.shape[1],):
        raise ValueError(f"fastattr.metrics: center must be a number or one value per channel ({x.shape[1]}), "
                         f"got shape {tuple(c.shape)}")
    return c.view(1, -1, 1, 1)


def blur(inputs: Tensor, center=None) -> Tensor:
    """RISE's insertion substrate: every channel convolved with the exact
    11x11 kernel of :func:`blur_kernel` (zero padding of 5, as
    ``F.conv2d(x, gkern(11, 5), padding=5)``). With ``center`` (per-channel
    values, e.g. a model's normalisation mean), the blur is taken in that
    centred space, ``center + blur(x − center)``: the padding is then the
    centre colour, as RISE's zero padding is the mean colour of an
    ImageNet-normalised input."""
    x = _check_images(inputs)
    c = _center(center, x)
    k1 = blur_kernel(torch.float64)
    k2 = torch.outer(k1, k1).to(dtype=x.dtype, device=x.device)
    weight = k2.expand(x.shape[1], 1, _BLUR_SIZE, _BLUR_SIZE)
    z = x if c is None else x - c
    out = F.conv2d(z, weight, padding=_BLUR_SIZE // 2, groups=x.shape[1])
    return out if c is None else out + c


def make_substrate(kind, inputs: Tensor, center=None) -> Tensor:
    """The images a metric moves towards (deletion) or starts from (insertion):
    ``"zeros"`` (RISE's deletion substrate: zeros, or ``center`` when given),
    ``"blur"`` (:func:`blur`), a number (a constant image), or a tensor
    broadcastable to ``inputs``."""
    x = _check_images(inputs)
    if isinstance(kind, str):
        if kind == "zeros":
            c = _center(center, x)
            return torch.zeros_like(x) if c is None else c.expand_as(x).clone()
        if kind == "blur":
            return blur(x, center)
        raise ValueError(f"fastattr.metrics: substrate must be 'zeros', 'blur', a number or a tensor, got {kind!r}")
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        if not math.isfinite(kind):
            raise ValueError(f"fastattr.metrics: substrate must be finite, got {kind}")
        return torch.full_like(x, float(kind))
    if not isinstance(kind, Tensor):
        raise TypeError(f"fastattr.metrics: substrate must be 'zeros', 'blur', a number or a tensor, "
                        f"got {type(kind).__name__}")
    if kind.device != x.device:
        raise ValueError(f"fastattr.metrics: substrate must be on {x.device} like inputs, got {kind.device}")
    try:
        out = torch.broadcast_to(kind, x.shape)
    except RuntimeError:
        raise ValueError(f"fastattr.metrics: substrate of shape {tuple(kind.shape)} does not broadcast to inputs of "
                         f"shape {tuple(x.shape)}") from None
    if not bool(torch.isfinite(out).all()):
        raise non_finite_error(kind, "substrate", "fastattr.metrics")
    return out.to(x.dtype).contiguous()


# --------------------------------------------------------------------------- deletion and insertion


def auc(curve: Tensor) -> Tensor:
    """RISE's area under a curve sampled at ``n + 1`` evenly spaced points of
    [0, 1] (last dimension): ``(Σ s − s_0 / 2 − s_n / 2) / n``, the trapezoid
    rule. A single point (n = 0) is its own area."""
    if not isinstance(curve, Tensor) or curve.dim() < 1 or curve.shape[-1] < 1:
        raise ValueError("fastattr.metrics.auc: curve must be a tensor with at least one point on its last dimension")
    n = curve.shape[-1] - 1
    if n == 0:
        return curve[..., 0].clone()
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / n


def _check_saliency(saliency, x: Tensor) -> Tensor:
    if not isinstance(saliency, Tensor):
        raise TypeError(f"fastattr.metrics: saliency must be a tensor, got {type(saliency).__name__}")
    b, _, h, w = x.shape
    sal = saliency[:, 0] if saliency.dim() == 4 and saliency.shape[1] == 1 else saliency
    if sal.shape != (b, h, w):
        raise ValueError(f"fastattr.metrics: saliency must have shape ({b}, {h}, {w}) or ({b}, 1, {h}, {w}) (one map "
                         f"per image of inputs {tuple(x.shape)}), got {tuple(saliency.shape)}")
    if sal.dtype.is_complex or sal.dtype == torch.bool:
        raise TypeError(f"fastattr.metrics: saliency must be real numbers, got {sal.dtype}")
    if sal.device != x.device:
        raise ValueError(f"fastattr.metrics: saliency must be on {x.device} like inputs, got {sal.device}")
    if sal.dtype.is_floating_point and not bool(torch.isfinite(sal).all()):
        raise non_finite_error(sal, "saliency", "fastattr.metrics")
    return sal


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"fastattr.metrics: step must be an int (pixels per step), got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"fastattr.metrics: step must be at least 1 pixel, got {step}")
    return step


def causal_curve(mode: str, model, inputs: Tensor, saliency: Tensor, target: Target = None, step: int = 224,
                 substrate: Tensor | str | float | None = None, batch_size: int | None = None,
                 activation: str | None = "softmax", center=None) -> CausalCurve:
    """:func:`deletion` (``mode="deletion"``) or :func:`insertion` (``"insertion"``);
    ``substrate=None`` is the mode's default (zeros / blur)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"fastattr.metrics: mode must be 'deletion' or 'insertion', got {mode!r}")
    x = _check_images(inputs)
    sal = _check_saliency(saliency, x)
    step = _check_step(step)
    if substrate is None:
        substrate = "zeros" if mode == "deletion" else "blur"
    sub = make_substrate(substrate, x, center)
    scored = with_activation(model, activation)
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    target = resolve(scored, x, target, batch_size)  # None: each image's top class on the original
    ranks = ops.saliency_ranks(sal)
    n_points = -(-x.shape[2] * x.shape[3] // step) + 1
    # rank_masked_batch moves its first operand towards its second.
    first, second = (x, sub) if mode == "deletion" else (sub, x)

    def build(t):
        return ops.rank_masked_batch(first[t.s0:t.s1], second[t.s0:t.s1], ranks[t.s0:t.s1], step, t.k0, t.n_points)

    curve = _mask_scores(scored, x.shape[0], target, n_points, batch_size, build).T.contiguous()
    return CausalCurve(curve, auc(curve))


def deletion(model, inputs: Tensor, saliency: Tensor, target: Target = None, step: int = 224,
             substrate: Tensor | str | float = "zeros", batch_size: int | None = None,
             activation: str | None = "softmax", center=None) -> CausalCurve:
    """RISE's deletion metric (spec §3.4), batched.

    Args:
        model: returns (N, classes), or a segmentation map with a region target.
        inputs: images (B, C, H, W).
        saliency: (B, H, W) or (B, 1, H, W); pixels are removed in descending
            saliency, ties by ascending flat index. See :func:`heatmap` for
            attributions with channels.
        target: as in every method; ``None`` is each image's top class on the
            original image. :func:`fastattr.targets.region` scores a region of
            a segmentation output (use ``activation="sigmoid"`` or ``None`` for
            a one-channel map).
        step: pixels removed per step (RISE: 224, one row at 224x224; its
            batch evaluation: 224 * 8).
        substrate: what removed pixels become: ``"zeros"`` (RISE), ``"blur"``,
            a number or a tensor broadcastable to ``inputs``.
        batch_size: rows (images of the curve) per forward pass; ``None``: the
            engine's default for these inputs.
        activation: ``"softmax"`` (RISE wraps the model in a softmax),
            ``"sigmoid"``, ``"auto"`` or ``None`` (raw outputs).
        center: per-channel values that are zero in the model's normalised
            space (its normalisation mean) when the model normalises its
            inputs itself: ``"zeros"`` then means that colour, and ``"blur"``
            pads with it, as RISE's substrates do on normalised inputs.

    Returns:
        :class:`CausalCurve` ``(curve, auc)``: the scores after 0..n_steps
        steps, (B, n_steps + 1) (entry 0: the image; the last: the
        substrate), and their area, (B,), in the scores' dtype.
    """
    return causal_curve("deletion", model, inputs, saliency, target, step, substrate, batch_size, activation, center)


def insertion(model, inputs: Tensor, saliency: Tensor, target: Target = None, step: int = 224,
              substrate: Tensor | str | float = "blur", batch_size: int | None = None,
              activation: str | None = "softmax", center=None) -> CausalCurve:
    """RISE's insertion metric (spec §3.4), batched: the mirror of
    :func:`deletion`. The curve starts at the substrate (RISE's exact blur,
    :func:`blur`, by default) and puts the image's pixels back ``step`` at a
    time in descending saliency; entry 0 is the substrate's score, the last
    the image's. Arguments as :func:`deletion`."""
    return causal_curve("insertion", model, inputs, saliency, target, step, substrate, batch_size, activation, center)


# --------------------------------------------------------------------------- localisation


def heatmap(attributions: Tensor) -> Tensor:
    """The single-channel map the metrics rank, (B, H, W): ``|Σ_c attribution|``
    (the GNL protocol's heatmap, without its division by the maximum, which
    changes no rank) for (B, C, H, W) attributions with C > 1; a one-channel
    map (B, 1, H, W) (RISE, MFPP) or (B, H, W) as it is."""
    if not isinstance(attributions, Tensor) or attributions.dim() not in (3, 4):
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(f"fastattr.metrics.heatmap: attributions must be (B, C, H, W) or (B, H, W), got {shape}")
    if attributions.dim() == 3:
        return attributions
    if attributions.shape[1] == 1:
        return attributions[:, 0]
    return attributions.sum(1).abs()


def _check_masks(masks, sal: Tensor, name: str) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"fastattr.metrics.{name}: masks must be a tensor, got {type(masks).__name__}")
    m = masks[:, 0] if masks.dim() == 4 and masks.shape[1] == 1 else masks
    if m.shape != sal.shape:
        raise ValueError(f"fastattr.metrics.{name}: masks must have shape {tuple(sal.shape)} (or with a channel of "
                         f"1), like the saliency maps, got {tuple(masks.shape)}")
    m = (m > 0.5) if m.dtype.is_floating_point else m.bool()
    return m.to(sal.device)


def _maps(saliency, name: str) -> Tensor:
    if not isinstance(saliency, Tensor):
        raise TypeError(f"fastattr.metrics.{name}: saliency must be a tensor, got {type(saliency).__name__}")
    sal = saliency[:, 0] if saliency.dim() == 4 and saliency.shape[1] == 1 else saliency
    if sal.dim() != 3 or sal.shape[0] == 0:
        raise ValueError(f"fastattr.metrics.{name}: saliency must have shape (B, H, W) or (B, 1, H, W) with B >= 1, "
                         f"got {tuple(saliency.shape)}")
    if not sal.dtype.is_floating_point:
        raise TypeError(f"fastattr.metrics.{name}: saliency must be finite floating-point maps, got {sal.dtype}")
    if not bool(torch.isfinite(sal).all()):
        raise non_finite_error(sal, "saliency", f"fastattr.metrics.{name}")
    return sal


def pointing_game(saliency: Tensor, masks: Tensor, tolerance: float = 15.0) -> Tensor:
    """The pointing game (Zhang et al., ECCV 2016): per image, a hit when the
    saliency maximum (the first in row-major order when tied) lies within
    ``tolerance`` pixels (Euclidean) of a pixel of the ground-truth mask
    (TorchRay's default: 15 px at 224x224). ``saliency`` (B, H, W) or
    (B, 1, H, W); ``masks`` the same shape, bool (or > 0.5). An empty mask is
    an error (no hit is defined). Returns (B,) bool."""
    sal = _maps(saliency, "pointing_game")
    m = _check_masks(masks, sal, "pointing_game")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"fastattr.metrics.pointing_game: tolerance must be a number >= 0 (pixels), got {tolerance!r}")
    empty = ~m.flatten(1).any(1)
    if bool(empty.any()):
        raise ValueError(f"fastattr.metrics.pointing_game: masks of images {empty.nonzero()[:, 0].tolist()} are empty")
    b, h, w = sal.shape
    top = sal.reshape(b, -1).argmax(1)
    r, c = (top // w).view(b, 1, 1), (top % w).view(b, 1, 1)
    rows = torch.arange(h, device=sal.device).view(1, h, 1)
    cols = torch.arange(w, device=sal.device).view(1, 1, w)
    near = (rows - r) ** 2 + (cols - c) ** 2 <= tolerance * tolerance
    return (near & m).flatten(1).any(1)


def energy_pointing_game(saliency: Tensor, masks: Tensor) -> Tensor:
    """The energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020):
    per image, the share of the saliency's positive part inside the
    ground-truth mask, ``Σ_mask s⁺ / Σ s⁺`` in [0, 1] (0 for a map with no
    positive value). Returns (B,) in the saliency's dtype."""
    sal = _maps(saliency, "energy_pointing_game")
    m = _check_masks(masks, sal, "energy_pointing_game")
    pos = sal.clamp_min(0)
    total = pos.flatten(1).sum(1)
    inside = torch.where(m, pos, 0).flatten(1).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), 0)
