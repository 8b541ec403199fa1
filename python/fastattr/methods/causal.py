"""Causal explanations of segmentation models (PdCR, Jiang et al.; spec §2).

:func:`causal_ate` is the input-region ATE map: for each ``block x block``
cell of the image outside the region of interest (RoI), the average treatment
effect on the RoI's outcome (100 x Dice by default) of replacing the cell by
natural patches drawn from a bank, minus the factual outcome, with the
reference's coarse screening (``n_screen`` draws) and pruning (``tau``).
:func:`component_ate` is the same effect for channels or modules of the
network (an extension: the reference code has no network-component part).

Every forward pass goes through the engine's score evaluator
(:func:`fastattr.engine.scores`). Rows are written by the ``block_patch_batch``
op (the perturbed-batch builder with a patch bank as its replacement source),
scored by the fused ``region_outcome`` op, and the map is folded by the
``causal_ate_map`` op.

Exact draws. The reference (spec §2.3) visits the cells row-major and draws,
per cell, ``randint(K, (n_screen,))`` and then ``randint(K, (n_samples,))``
only if the cell passes screening, from one generator. A cell's screening
draw therefore depends on whether the cells before it passed. fastattr
screens several cells per forward pass anyway, speculatively: it draws the
screening indices of the next cells as if none of them passed (saving the
generator's state before each draw), and when one does pass, it rewinds the
generator to just after that cell's screening draw, draws its full indices,
and screens the following cells again. The draws are the reference's, call
for call; only the rows of the re-screened cells are extra passes. The full
passes (most of the work) are queued and fill each forward pass up to
``batch_size`` rows. With pre-drawn ``indices`` nothing is speculative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _ops as ops
from .. import engine
from ..targets import ResolvedTarget
from ._common import non_finite_error
from .perturbation import _check_generator, _check_images, _check_int

OUTCOMES = ops.OUTCOMES
MODES = ("patches", "zeros")
ACTIVATIONS = (None, "none", "sigmoid", "softmax")


class CausalATE(NamedTuple):
    """``map``: (B, 1, H, W) ATE maps, in the outcome's units (Dice points for
    ``"dice"``); ``factual``: (B,) the outcome of each unperturbed image."""

    map: Tensor
    factual: Tensor


# --------------------------------------------------------------------------- argument checks


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"fastattr: {name} must be an int or a pair of ints, got {value!r}") from None
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"fastattr: {name} must be a positive int or a pair of positive ints, got {value}")
    return value


def _check_block(block, size) -> tuple[int, int]:
    bh, bw = _pair(block, "block")
    h, w = size
    if bh > h or bw > w:
        raise ValueError(f"fastattr: block {bh}x{bw} is larger than the {h}x{w} image; expected a block that "
                         f"divides the image (H % block and W % block must be 0)")
    if h % bh or w % bw:
        raise ValueError(f"fastattr: block {bh}x{bw} does not divide the image grid {h}x{w} "
                         f"(H % block and W % block must be 0)")
    return bh, bw


def _box_mask(box, size, name: str) -> Tensor:
    values = [int(v) for v in box]
    if len(values) == 3:
        values = [values[0], values[1], values[2], values[2]]
    if len(values) != 4:
        raise ValueError(f"fastattr: {name} box must be (row, col, size) or (row, col, height, width), got {tuple(box)}")
    r, c, bh, bw = values
    h, w = size
    if bh < 1 or bw < 1 or r < 0 or c < 0 or r + bh > h or c + bw > w:
        raise ValueError(f"fastattr: {name} box (row, col, height, width) = {(r, c, bh, bw)} lies outside the "
                         f"{h}x{w} image")
    mask = torch.zeros(size, dtype=torch.bool)
    mask[r:r + bh, c:c + bw] = True
    return mask


def roi_masks(roi, n_images: int, size, device) -> Tensor:
    """(B, H, W) bool RoI masks from a box ``(row, col, size)`` or ``(row, col,
    height, width)`` (shared), one box per image, or a bool mask ((H, W),
    (B, H, W) or (B, 1, H, W))."""
    if isinstance(roi, Tensor) and (roi.dtype == torch.bool or roi.dim() >= 2):
        m = roi
        if m.dtype != torch.bool:
            raise TypeError(f"fastattr: roi as a mask must be a bool tensor, got {m.dtype}")
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.dim() == 2:
            m = m[None]
        if m.dim() != 3 or tuple(m.shape[1:]) != tuple(size) or m.shape[0] not in (1, n_images):
            raise ValueError(f"fastattr: roi mask must have shape (H, W), (B, H, W) or (B, 1, H, W) with (H, W) = "
                             f"{tuple(size)} and B = {n_images}, got {tuple(roi.shape)}")
        if not bool(m.flatten(1).any(1).all()):
            raise ValueError("fastattr: roi mask is empty (no pixel set) for some image")
        return m.expand(n_images, *size).to(device)
    boxes = roi.tolist() if isinstance(roi, Tensor) else roi
    if not isinstance(boxes, Sequence) or len(boxes) == 0:
        raise TypeError(f"fastattr: roi must be a box (row, col, size), (row, col, height, width), one box per image "
                        f"or a bool mask, got {roi!r}")
    if all(isinstance(b, (int,)) or (hasattr(b, "__index__") and not isinstance(b, Sequence)) for b in boxes):
        return _box_mask(boxes, size, "roi")[None].expand(n_images, *size).to(device)
    if len(boxes) != n_images:
        raise ValueError(f"fastattr: roi must hold one box per image ({n_images}), got {len(boxes)}")
    return torch.stack([_box_mask(b, size, f"roi[{i}]") for i, b in enumerate(boxes)]).to(device)


def _ground_truth(ground_truth, n_images: int, out_shape, target_class, device) -> Tensor:
    """(B, G, H, W) float64 ground truth against the selected channel(s): G = 1
    for ``target_class`` or a one-channel output, else the output's K."""
    if not isinstance(ground_truth, Tensor):
        raise TypeError(f"fastattr: ground_truth must be a tensor, got {type(ground_truth).__name__}")
    k, size = out_shape[1], tuple(out_shape[2:])
    g = ground_truth
    integer = not g.dtype.is_floating_point and g.dtype != torch.bool
    if g.dim() == 2:
        g = g[None]
    if g.dim() == 3:
        g = g[:, None]
    shapes = "(B, H, W) or (B, 1, H, W)" if k == 1 else f"(B, H, W), (B, 1, H, W) or (B, {k}, H, W)"
    expected = f"{shapes} with B = {n_images} and (H, W) = {size}"
    if g.dim() != 4 or tuple(g.shape[2:]) != size or g.shape[0] not in (1, n_images):
        raise ValueError(f"fastattr: ground_truth must have shape {expected} (the model output's), "
                         f"got {tuple(ground_truth.shape)}")
    if target_class is not None:
        if g.shape[1] == k and k > 1:
            g = g[:, target_class:target_class + 1]
        elif integer:
            g = g == target_class
        elif g.shape[1] != 1:
            raise ValueError(f"fastattr: ground_truth must have shape {expected}, got {tuple(ground_truth.shape)}")
    elif g.shape[1] != k:
        if integer and g.shape[1] == 1 and k > 1:
            g = torch.nn.functional.one_hot(g[:, 0].long(), k).permute(0, 3, 1, 2)
        else:
            raise ValueError(f"fastattr: ground_truth must have {k} channel(s) like the model output (or pass "
                             f"target_class), got shape {tuple(ground_truth.shape)}")
    g = g.to(device=device, dtype=torch.float64)
    return g.expand(n_images, *g.shape[1:])


def _check_target_class(target_class, k: int):
    """None, or an int (a 0-d integer tensor too, e.g. logits.argmax(1)[0]) in [0, k)."""
    if isinstance(target_class, Tensor) and target_class.dim() == 0 and not target_class.dtype.is_floating_point \
            and not target_class.dtype.is_complex and target_class.dtype != torch.bool:
        target_class = int(target_class)
    if target_class is not None and (isinstance(target_class, bool) or not isinstance(target_class, int)
                                     or not 0 <= target_class < k):
        raise ValueError(f"fastattr: target_class must be None or an int in [0, {k}) for a model output with {k} "
                         f"channel(s), got {target_class!r}")
    return target_class


def _check_factual(outputs: list[Tensor]) -> None:
    """The factual outputs (one per image) must be finite: a NaN compares false
    with the threshold, so a Dice outcome would be silently wrong. Only the
    factual pass is scanned (one host sync per call)."""
    for i, out in enumerate(outputs):
        if not bool(torch.isfinite(out).all()):
            bad = ~torch.isfinite(out)
            raise ValueError(f"fastattr: the model output of image {i} contains NaN or infinite values (expected "
                             f"finite scores, got {int(bad.sum())} non-finite of {out.numel()}, e.g. "
                             f"{out[bad][0].item()}); outcomes of such maps are meaningless. Check the model and "
                             f"inputs")


def _check_bank(bank, channels: int, block, dtype, device) -> Tensor:
    if not isinstance(bank, Tensor):
        raise TypeError(f"fastattr: patch_bank must be a tensor (K, C, bh, bw) for mode='patches' (see "
                        f"fastattr.causal.patch_bank), got {type(bank).__name__}")
    if bank.dim() != 4 or bank.shape[0] < 1 or bank.shape[1] != channels or tuple(bank.shape[2:]) != tuple(block):
        raise ValueError(f"fastattr: patch_bank must hold block-sized patches (K, {channels}, {block[0]}, {block[1]}) "
                         f"with K >= 1, got shape {tuple(bank.shape)}")
    if not bank.dtype.is_floating_point:
        raise TypeError(f"fastattr: patch_bank must be floating-point, got {bank.dtype}")
    if not bool(torch.isfinite(bank).all()):
        raise non_finite_error(bank, "patch_bank")
    return bank.detach().to(device=device, dtype=dtype).contiguous()


# --------------------------------------------------------------------------- patch bank


def patch_bank(images: Tensor, block=8, per_image: int = 100, generator: torch.Generator | None = None) -> Tensor:
    """A bank of natural patches (spec §2.4): each image (N, C, H, W), H and W
    multiples of the block, is cut into its grid of ``block x block`` patches
    and ``per_image`` of them are taken at random (without replacement, by
    ``randperm`` of the grid cells per image, in image order). Returns
    (N * per_image, C, bh, bw). Build it from images other than those explained."""
    x = _check_images(images, "images")
    bh, bw = _check_block(block, tuple(x.shape[-2:]))
    per_image = _check_int(per_image, "per_image")
    _check_generator(generator)
    n, c, h, w = x.shape
    cells = (h // bh) * (w // bw)
    if per_image > cells:
        raise ValueError(f"fastattr: per_image={per_image} is more than the {cells} patches of a {h}x{w} image")
    grid = x.reshape(n, c, h // bh, bh, w // bw, bw).permute(0, 2, 4, 1, 3, 5).reshape(n, cells, c, bh, bw)
    device = generator.device if generator is not None else "cpu"
    picks = torch.stack([torch.randperm(cells, generator=generator, device=device)[:per_image] for _ in range(n)])
    return grid[torch.arange(n)[:, None], picks.to(x.device)].reshape(n * per_image, c, bh, bw).contiguous()


# --------------------------------------------------------------------------- the outcome target


class RegionOutcome(ResolvedTarget):
    """The region outcome as an engine target: one ``region_outcome`` per row
    (every row belongs to the one image it was built for)."""

    def __init__(self, roi: Tensor, gt: Tensor, channel: int, outcome: str, activation: str, threshold: float,
                 empty_is_one: bool):
        self.n_samples = 1
        self.roi, self.gt = roi, gt
        self.args = (-1 if channel is None else channel, outcome, activation, threshold, empty_is_one)

    def scores(self, output: Tensor, index: Tensor) -> Tensor:
        if output.dim() != 4:
            raise ValueError(f"fastattr: causal outcomes need a segmentation output (N, K, H, W), got "
                             f"{tuple(output.shape)}")
        return torch.ops.fastattr.region_outcome.default(output, self.roi, self.gt.to(output.dtype), *self.args)

    def subset(self, index: Tensor) -> "RegionOutcome":
        return self


# --------------------------------------------------------------------------- the scheduler


class _Rows:
    """Runs (patch index, block) rows of one image through the engine, at most
    ``batch_size`` rows per forward pass."""

    def __init__(self, model, x: Tensor, bank: Tensor, target: RegionOutcome, batch_size: int):
        self.model, self.x, self.bank, self.target, self.batch_size = model, x, bank, target, batch_size

    def outcomes(self, patch_index: Tensor, blocks: Tensor) -> Tensor:
        n = patch_index.shape[0]
        out = None
        index, where = patch_index.to(self.x.device), blocks.to(self.x.device)

        def build(t):
            return ops.block_patch_batch(self.x, self.bank, index[t.k0:t.k1], where[t.k0:t.k1], check=False)

        for tile, s in engine.scores(self.model, self.target, engine.plan(1, n, self.batch_size), build):
            if out is None:
                out = s.new_empty((n,))
            out[tile.k0:tile.k1] = s
        return out


def _opmath(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _passes(y: Tensor, base: Tensor, tau: float) -> Tensor:
    """Screening, as the reference: not every |y - base| < tau (NaN passes)."""
    d = y.to(_opmath(y.dtype)) - base.to(_opmath(y.dtype))
    return ~((d.abs() < tau).all(-1))


def _ate_given_indices(rows: _Rows, cells: Tensor, screen_idx: Tensor, full_idx: Tensor, base: Tensor, tau: float):
    """Screening outcomes (NB, n0) and full outcomes (NB, n1) with every index known."""
    nb, n0 = screen_idx.shape
    n1 = full_idx.shape[1]
    screen = rows.outcomes(screen_idx.reshape(-1), cells.repeat_interleave(n0, 0)).view(nb, n0)
    full = base.expand(nb, n1).clone()
    passed = _passes(screen, base, tau).nonzero()[:, 0].cpu()  # the one host sync
    if passed.numel():
        y = rows.outcomes(full_idx[passed].reshape(-1), cells[passed].repeat_interleave(n1, 0))
        full[passed.to(full.device)] = y.view(-1, n1)
    return screen, full


def _ate_drawing(rows: _Rows, cells: Tensor, n_patches: int, n0: int, n1: int, base: Tensor, tau: float,
                 generator: torch.Generator, batch_size: int):
    """Screening and full outcomes with the reference's draws (module docstring)."""
    nb = cells.shape[0]
    screen = base.new_empty((nb, n0))
    full = base.expand(nb, n1).clone()
    queue: list[tuple[int, Tensor]] = []  # (cell, (n1,) indices) of full rows not yet run, in order
    queued_rows = 0  # rows of queue[0] already run
    cap = max(1, batch_size // n0)
    chunk, done = min(cap, 4), 0
    gdev = generator.device
    while done < nb or queue:
        m = min(chunk, nb - done)
        states, draws = [], []
        for _ in range(m):
            states.append(generator.get_state())
            draws.append(torch.randint(0, n_patches, (n0,), generator=generator, device=gdev))
        idx = [torch.cat(draws)] if m else []
        blk = [cells[done:done + m].repeat_interleave(n0, 0)] if m else []
        # Fill the pass with queued full rows.
        room = max(0, batch_size - m * n0)
        fills = []  # (cell, first sample, count)
        qi, start = 0, queued_rows
        while room and qi < len(queue):
            cell, full_idx = queue[qi]
            take = min(room, n1 - start)
            idx.append(full_idx[start:start + take])
            blk.append(cells[cell].expand(take, 2))
            fills.append((cell, start, take))
            room -= take
            start += take
            if start == n1:
                qi, start = qi + 1, 0
        y = rows.outcomes(torch.cat(idx).to(torch.int64), torch.cat(blk))
        offset = m * n0
        for cell, s0, take in fills:
            full[cell, s0:s0 + take] = y[offset:offset + take]
            offset += take
        queue, queued_rows = queue[qi:], start
        if not m:
            continue
        ys = y[:m * n0].view(m, n0)
        passed = _passes(ys, base, tau).cpu()  # the host sync of the step
        first = int(passed.nonzero()[0, 0]) if bool(passed.any()) else -1
        committed = m if first < 0 else first + 1
        screen[done:done + committed] = ys[:committed]
        if first >= 0:
            if first + 1 < m:  # rewind to just after the passing cell's screening draw
                generator.set_state(states[first + 1])
            full_idx = torch.randint(0, n_patches, (n1,), generator=generator, device=gdev)
            queue.append((done + first, full_idx))
            chunk = max(1, min(cap, 2 * committed))
        else:
            chunk = min(cap, 2 * chunk)
        done += committed
    return screen, full


# --------------------------------------------------------------------------- causal_ate


def causal_ate(model, inputs: Tensor, ground_truth: Tensor, roi, block=8, patch_bank: Tensor | None = None,
               mode: str = "patches", n_screen: int = 3, n_samples: int = 50, tau: float = 0.02,
               outcome: str = "dice", threshold: float = 0.5, target_class: int | None = None,
               generator: torch.Generator | None = None, indices=None, batch_size: int | None = None,
               activation: str | None = None, empty_is_one: bool = False) -> CausalATE:
    """PdCR's input-region ATE map (spec §2.3) for a segmentation model.

    Args:
        model: returns (N, K, H, W) segmentation scores for (N, C, H, W) images.
        inputs: images (B, C, H, W), H and W multiples of ``block``.
        ground_truth: (B, H, W) / (B, 1, H, W) masks, (B, K, H, W) per
            channel, or integer label maps with ``target_class``; (H, W) for all.
        roi: the region of interest: a box ``(row, col, size)`` as in the
            reference's RoI lists, ``(row, col, height, width)``, one box per
            image, or a bool mask ((H, W), (B, H, W), (B, 1, H, W)).
        block: cell size (int or (bh, bw)); it must divide H and W. Cells
            with any RoI pixel are not intervened on and stay 0.
        patch_bank: (K, C, bh, bw) natural patches (:func:`patch_bank`), for
            ``mode="patches"``.
        mode: ``"patches"`` (PdCR) or ``"zeros"`` (the reference's zero-block
            ablation: one pass per cell, ``d = Y - base`` kept if ``|d| >= tau``).
        n_screen, n_samples, tau: the reference's screening draws, full draws
            and threshold (outcome units).
        outcome: ``"dice"`` (100 x Dice of ``activation(output) > threshold``
            on the RoI, the reference), ``"soft_dice"`` or ``"mean_prob"``
            (100 x the mean probability); all in percentage points.
        threshold: for ``"dice"``; the reference thresholds the raw output.
        target_class: the output channel of a multi-class model (and the
            class of an integer label map); ``None``: every channel.
        generator: the draws' generator; ``None`` uses torch's global one, as
            the reference does (``torch.manual_seed(s)`` then reproduces it).
        indices: pre-drawn indices, ``(screen (NB, n_screen), full (NB,
            n_samples))`` int64 per image (a list of pairs for B > 1); NB is the
            number of cells outside the RoI, row-major; the full rows of cells
            that fail screening are not used.
        batch_size: rows per forward pass (``None``: the engine's forward-only default, and at least
            ``n_screen`` in ``mode="patches"``, so that a cell's screening is one pass).
        activation: ``None`` (raw scores), ``"sigmoid"`` or ``"softmax"``.
        empty_is_one: an empty prediction with an empty ground truth scores
            100 instead of the reference's 0.

    Returns:
        :class:`CausalATE` ``(map (B, 1, H, W), factual (B,))``.
    """
    x = _check_images(inputs)
    b, c, h, w = x.shape
    bh, bw = _check_block(block, (h, w))
    if mode not in MODES:
        raise ValueError(f"fastattr: mode must be one of {MODES}, got {mode!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"fastattr: outcome must be one of {OUTCOMES}, got {outcome!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"fastattr: activation must be one of {ACTIVATIONS}, got {activation!r}")
    n0, n1 = _check_int(n_screen, "n_screen"), _check_int(n_samples, "n_samples")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"fastattr: tau must be a finite number >= 0, got {tau!r}")
    _check_generator(generator)
    rows_given = batch_size is not None
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    if not rows_given and mode == "patches":
        # At least one cell's screening draws per pass, as the reference runs
        # them: a smaller default (2 rows at 3x256x256) would split each
        # screening into two passes.
        batch_size = max(batch_size, n0)
    roi = roi_masks(roi, b, (h, w), x.device)
    if mode == "patches":
        bank = _check_bank(patch_bank, c, (bh, bw), x.dtype, x.device)
    else:
        bank = torch.zeros((1, c, bh, bw), dtype=x.dtype, device=x.device)
    if indices is not None and mode != "patches":
        raise ValueError("fastattr: indices are for mode='patches' (mode='zeros' draws nothing)")
    gh, gw = h // bh, w // bw
    touched = roi.reshape(b, gh, bh, gw, bw).any(4).any(2)  # (B, gh, gw)
    visited = ~touched
    engine.check_model(model, x)
    with torch.no_grad():  # the factual pass of each image (its outcome is the base)
        factual = [engine.model_output(model, x[i:i + 1]) for i in range(b)]
    first = factual[0]
    _check_factual(factual)
    if first.dim() != 4 or tuple(first.shape[2:]) != (h, w):
        raise ValueError(f"fastattr: causal_ate needs a segmentation model whose output (N, K, H, W) matches the "
                         f"input's {h}x{w}; got {tuple(first.shape)}")
    target_class = _check_target_class(target_class, first.shape[1])
    gt = _ground_truth(ground_truth, b, first.shape, target_class, x.device)
    per_image = _indices_per_image(indices, b, visited, n0, n1, bank.shape[0]) if indices is not None else None
    act = "none" if activation is None else activation
    screens, fulls, bases = [], [], []
    for i in range(b):
        target = RegionOutcome(roi[i], gt[i], -1 if target_class is None else target_class, outcome, act,
                               float(threshold), bool(empty_is_one))
        rows = _Rows(model, x[i:i + 1], bank, target, batch_size)
        base = target.scores(factual[i], torch.zeros(1, dtype=torch.int64, device=x.device))  # (1,)
        cells_ij = visited[i].nonzero().cpu()
        cells = torch.stack([cells_ij[:, 0] * bh, cells_ij[:, 1] * bw], 1)
        nb = cells.shape[0]
        screen = base.new_zeros((gh, gw, n0 if mode == "patches" else 1))
        full = base.new_zeros((gh, gw, n1 if mode == "patches" else 1))
        if nb:
            if mode == "zeros":
                y = rows.outcomes(torch.zeros(nb, dtype=torch.int64), cells).view(nb, 1)
                s_cells, f_cells = y, y
            elif per_image is not None:
                s_cells, f_cells = _ate_given_indices(rows, cells, *per_image[i], base, float(tau))
            else:
                gen = generator if generator is not None else torch.default_generator
                s_cells, f_cells = _ate_drawing(rows, cells, bank.shape[0], n0, n1, base, float(tau), gen,
                                                batch_size)
            dev = x.device
            screen[cells_ij[:, 0].to(dev), cells_ij[:, 1].to(dev)] = s_cells
            full[cells_ij[:, 0].to(dev), cells_ij[:, 1].to(dev)] = f_cells
        screens.append(screen)
        fulls.append(full)
        bases.append(base)
    base = torch.cat(bases)
    heat = ops.causal_ate_map(torch.stack(screens), torch.stack(fulls), base, visited, (bh, bw), float(tau))
    return CausalATE(heat[:, None], base)


def _indices_per_image(indices, n_images, visited, n0, n1, n_patches):
    pairs = [indices] if n_images == 1 and len(indices) == 2 and isinstance(indices[0], Tensor) else list(indices)
    if len(pairs) != n_images:
        raise ValueError(f"fastattr: indices must hold one (screen, full) pair per image ({n_images}), got {len(pairs)}")
    out = []
    for i, pair in enumerate(pairs):
        nb = int(visited[i].sum())
        try:
            s, f = (torch.as_tensor(t) for t in pair)
        except (TypeError, ValueError):
            raise TypeError(f"fastattr: indices[{i}] must be a (screen, full) pair of int64 tensors") from None
        if s.dtype.is_floating_point or f.dtype.is_floating_point or tuple(s.shape) != (nb, n0) \
                or tuple(f.shape) != (nb, n1):
            raise ValueError(f"fastattr: indices[{i}] must be integer tensors of shapes ({nb}, {n0}) and ({nb}, {n1}) "
                             f"(cells outside the RoI x n_screen / n_samples), got {tuple(s.shape)} and {tuple(f.shape)}")
        if nb and (int(s.min()) < 0 or int(f.min()) < 0 or int(s.max()) >= n_patches or int(f.max()) >= n_patches):
            raise ValueError(f"fastattr: indices[{i}] must lie in [0, {n_patches}) (the patch bank's size)")
        out.append((s.long(), f.long()))
    return out


# --------------------------------------------------------------------------- network components (extension)


class ComponentATE(NamedTuple):
    """``effects``: per layer name, (B, n_components) ATEs (outcome units);
    ``factual``: (B,) the unperturbed outcome."""

    effects: dict
    factual: Tensor


INTERVENTIONS = ("zero", "mean", "resample")


def component_ate(model, inputs: Tensor, ground_truth: Tensor, roi, layers: Sequence[str], unit: str = "channel",
                  intervention: str = "zero", n_samples: int = 8, reference_inputs: Tensor | None = None,
                  outcome: str = "dice", threshold: float = 0.5, target_class: int | None = None,
                  activation: str | None = None, empty_is_one: bool = False,
                  generator: torch.Generator | None = None, batch_size: int | None = None) -> ComponentATE:
    """Network-component ATE: **an extension beyond the PdCR reference code**
    (which intervenes on input regions only; spec §2.1).

    For a component u (a channel of a layer's output, ``unit="channel"``, or
    the whole output of a named module, ``unit="module"``) the effect on the
    region outcome Y (as in :func:`causal_ate`) is
    ``ATE(u) = E[Y(do(a_u := v))] - Y(x)``, where ``a_u`` is the component's
    activation on the input x and ``v`` is ``0`` (``"zero"``), the
    component's own spatial mean on x (``"mean"``), or its activation on a
    reference input drawn uniformly with replacement from
    ``reference_inputs`` (``"resample"``, ``n_samples`` draws per component;
    the expectation is their mean). ``"zero"`` and ``"mean"`` are one pass per
    component.

    The interventions are temporary forward hooks, removed before returning
    (the model's parameters, buffers and hooks are left exactly as they
    were). Many components are intervened on per forward pass: each row of a
    pass is a copy of the image with its own component replaced.

    Returns :class:`ComponentATE` ``(effects {layer: (B, n_components)}, factual (B,))``.
    """
    x = _check_images(inputs)
    b, c, h, w = x.shape
    if unit not in ("channel", "module"):
        raise ValueError(f"fastattr: unit must be 'channel' or 'module', got {unit!r}")
    if intervention not in INTERVENTIONS:
        raise ValueError(f"fastattr: intervention must be one of {INTERVENTIONS}, got {intervention!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"fastattr: outcome must be one of {OUTCOMES}, got {outcome!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastattr: component_ate needs an nn.Module (it hooks the layers named in layers), got "
                        f"{type(model).__name__}; select a dict or tuple output inside a module, e.g. a module "
                        f"whose forward returns model(x)['out']")
    if isinstance(layers, str) or not layers:
        raise ValueError(f"fastattr: layers must be a non-empty list of module names, got {layers!r}")
    named = dict(model.named_modules())
    missing = [name for name in layers if name not in named]
    if missing:
        raise ValueError(f"fastattr: layers {missing} are not modules of the model (names as model.named_modules())")
    draws = _check_int(n_samples, "n_samples") if intervention == "resample" else 1
    if intervention == "resample":
        if not isinstance(reference_inputs, Tensor) or reference_inputs.dim() != 4 \
                or tuple(reference_inputs.shape[1:]) != (c, h, w):
            raise ValueError(f"fastattr: intervention='resample' needs reference_inputs (N, {c}, {h}, {w}), got "
                             f"{getattr(reference_inputs, 'shape', reference_inputs)}")
    _check_generator(generator)
    batch_size = engine.check_batch_size(batch_size, x, forward_only=True)
    rois = roi_masks(roi, b, (h, w), x.device)
    act = "none" if activation is None else activation
    state = {}  # the hook's view of the pass in flight

    def hook(module, args, out):
        plan = state.get(module)
        if plan is None:
            return None
        if not isinstance(out, Tensor) or out.dim() < 2:
            raise ValueError(f"fastattr: component_ate needs layers that output (N, C, ...) tensors, got "
                             f"{type(out).__name__}")
        comp, value = plan["rows"](out)
        if unit == "module":
            return value
        keep = torch.ones_like(out)
        keep[torch.arange(out.shape[0], device=out.device), comp] = 0
        return out * keep + value * (1 - keep)

    engine.check_model(model, x)
    handles = [named[name].register_forward_hook(hook) for name in layers]
    try:
        with torch.no_grad():
            factual_out = [engine.model_output(model, x[i:i + 1]) for i in range(b)]
            _check_factual(factual_out)
            refs = None
            if intervention == "resample":
                refs = {}
                grab = {}

                def capture(name):
                    def fn(module, args, out):
                        grab[name] = out.detach()
                    return fn

                extra = [named[name].register_forward_hook(capture(name)) for name in layers]
                try:
                    engine.model_output(model, reference_inputs.to(x.device, x.dtype))
                finally:
                    for e in extra:
                        e.remove()
                refs = grab
        if factual_out[0].dim() != 4 or tuple(factual_out[0].shape[2:]) != (h, w):
            raise ValueError(f"fastattr: component_ate needs a segmentation model whose output (N, K, H, W) matches "
                             f"the input's {h}x{w}; got {tuple(factual_out[0].shape)}")
        target_class = _check_target_class(target_class, factual_out[0].shape[1])
        gt = _ground_truth(ground_truth, b, factual_out[0].shape, target_class, x.device)
        effects = {name: [] for name in layers}
        bases = []
        for i in range(b):
            target = RegionOutcome(rois[i], gt[i], -1 if target_class is None else target_class, outcome, act,
                                   float(threshold), bool(empty_is_one))
            base = target.scores(factual_out[i], torch.zeros(1, dtype=torch.int64, device=x.device))
            bases.append(base)
            for name in layers:
                module = named[name]
                with torch.no_grad():
                    seen = {}
                    probe = module.register_forward_hook(lambda m, a, o: seen.setdefault("out", o.detach()))
                    try:
                        engine.model_output(model, x[i:i + 1])
                    finally:
                        probe.remove()
                a0 = seen["out"]
                n_comp = a0.shape[1] if unit == "channel" else 1
                n_rows = n_comp * draws
                if intervention == "resample":
                    gdev = generator.device if generator is not None else "cpu"
                    pick = torch.randint(0, refs[name].shape[0], (n_rows,), generator=generator, device=gdev)
                    pick = pick.to(x.device)
                row_comp = torch.arange(n_comp, device=x.device).repeat_interleave(draws)

                def rows(out, name=name, a0=a0, row_comp=row_comp):
                    k0, k1 = state["slice"]
                    comp = row_comp[k0:k1]
                    if intervention == "zero":
                        value = torch.zeros_like(out)
                    elif intervention == "mean":
                        dims = tuple(range(2, a0.dim()))
                        value = a0.mean(dims, keepdim=True).expand_as(a0) if dims else a0
                        value = value.expand(out.shape[0], *value.shape[1:])
                        if unit == "module":
                            value = value.contiguous()
                    else:
                        value = refs[name][pick[k0:k1]]
                    return comp, value

                def build(tile):
                    state["slice"] = (tile.k0, tile.k1)
                    return x[i:i + 1].expand(tile.n_points, c, h, w)

                state[module] = {"rows": rows}
                y = base.new_empty((n_rows,))
                try:
                    for tile, s in engine.scores(model, target, engine.plan(1, n_rows, batch_size), build):
                        y[tile.k0:tile.k1] = s
                finally:
                    state.pop(module, None)
                d = y.to(_opmath(y.dtype)) - base.to(_opmath(y.dtype))
                effects[name].append(d.view(n_comp, draws).mean(1).to(y.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return ComponentATE({name: torch.stack(v) for name, v in effects.items()}, torch.cat(bases))


# --------------------------------------------------------------------------- the job form (fastattr run)

_BANKS: dict = {}


def _bundled_bank(name: str, block, per_image: int, n_images: int, like: Tensor) -> Tensor:
    """A patch bank from the first ``n_images`` training images of a bundled data
    set (other images than the test split explained), seed 0; cached."""
    from .. import data

    key = (name, tuple(block), per_image, n_images, like.dtype, str(like.device))
    if key not in _BANKS:
        ds = data.load(name, split="train")
        images = torch.stack([torch.as_tensor(ds[i][0]) for i in range(n_images)]).float()
        if tuple(images.shape[-2:]) != tuple(like.shape[-2:]):
            images = torch.nn.functional.interpolate(images, size=tuple(like.shape[-2:]), mode="bilinear",
                                                     align_corners=False)
        bank = patch_bank(images, block, per_image, generator=torch.Generator().manual_seed(0))
        _BANKS.clear()
        _BANKS[key] = bank.to(device=like.device, dtype=like.dtype)
    return _BANKS[key]


def lesion_boxes(mask: Tensor) -> Tensor:
    """(H, W) bool: the union of the bounding boxes of the connected components
    (8-connectivity) of a ground-truth mask (H, W); the whole image if empty."""
    from skimage.measure import label, regionprops

    m = torch.as_tensor(mask).detach().cpu().numpy() > 0.5
    out = torch.zeros(m.shape, dtype=torch.bool)
    for region in regionprops(label(m, connectivity=2)):
        r0, c0, r1, c1 = region.bbox
        out[r0:r1, c0:c1] = True
    return out if bool(out.any()) else torch.ones(m.shape, dtype=torch.bool)


def causal_ate_job(model, inputs: Tensor, target=None, roi="lesions", block=8, patch_bank="bundled:lesions",
                   bank_images: int = 10, per_image: int = 100, mode: str = "patches", n_screen: int = 3,
                   n_samples: int = 50, tau: float = 0.02, outcome: str = "dice", threshold: float = 0.5,
                   activation: str | None = None, target_class: int | None = None, batch_size: int | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """:func:`causal_ate` as ``fastattr run --method causal_ate`` calls it: the
    ground truth is the job's region target (``--target label``: the data set's
    masks; ``auto``: the predicted foreground); ``roi``: a box ``[row, col,
    size]`` / ``[row, col, height, width]`` (``-O roi=[72,88,32]``) or
    ``"lesions"``, one box per connected lesion of that ground truth (their
    union); ``patch_bank``: ``"bundled:NAME"`` (100 patches from each of the
    first ``bank_images`` training images of NAME) or ``"zeros"`` mode. Returns
    the maps (B, 1, H, W)."""
    from ..targets import Region

    x = _check_images(inputs)
    masks = target.masks if isinstance(target, Region) else None
    if masks is None:
        raise ValueError("causal_ate needs a segmentation ground truth: run it with --target label (the data set's "
                         "masks) or --target auto (the predicted foreground)")
    gt = masks.to(x.device)
    if gt.shape[1] > 1:  # per-class one-hot weights (background channel zeroed): the foreground
        gt = gt.sum(1, keepdim=True).clamp_max(1)
    if isinstance(roi, str):
        if roi != "lesions":
            raise ValueError(f"fastattr: roi must be a box [row, col, size] or 'lesions', got {roi!r}")
        roi = torch.stack([lesion_boxes(gt[i, 0]) for i in range(x.shape[0])]).to(x.device)
    bank = None
    if mode == "patches":
        if not isinstance(patch_bank, str) or not patch_bank.startswith("bundled:"):
            raise ValueError(f"fastattr: patch_bank for a job must be 'bundled:NAME', got {patch_bank!r}")
        bh, bw = _pair(block, "block")
        bank = _bundled_bank(patch_bank.split(":", 1)[1], (bh, bw), per_image, bank_images, x)
    return causal_ate(model, x, gt, roi, block=block, patch_bank=bank, mode=mode, n_screen=n_screen,
                      n_samples=n_samples, tau=tau, outcome=outcome, threshold=threshold, target_class=target_class,
                      generator=generator, batch_size=batch_size, activation=activation).map
