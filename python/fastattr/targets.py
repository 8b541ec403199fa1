"""What a method explains: the ``target=`` of every fastattr method.

``target`` may be

- ``None``: each sample's top class on the unperturbed input (the model must
  output ``(batch, classes)``);
- an int, or a 0-d integer tensor: the same class for every sample;
- a sequence or 1-D integer tensor of length B: one class per sample;
- :func:`region` / :func:`box`: for segmentation models, each image's output
  summed over its own pixel set (pytorch-grad-cam's
  ``SemanticSegmentationTarget``, batched);
- a callable. The engine calls it on the model output of each chunk of rows
  (path points, noisy or masked copies of the samples), in an order it does not
  see, so it must either

  * score each row on its own, ``f(output) -> Tensor[rows]`` (e.g.
    ``lambda out: out[:, 3]``; this is checked once, on the first chunk, by
    scoring the rows in reverse order), or
  * declare a parameter named ``index``, ``f(output, index) -> Tensor[rows]``:
    ``index[i]`` is the sample (row of ``inputs``) that output row ``i``
    belongs to, so per-image data can be picked, e.g.
    ``lambda out, index: (out * masks[index]).flatten(1).sum(1)``.

Methods turn ``target`` into a resolved target (:func:`resolve`) once per call;
the engine asks it for the scores of each chunk with the rows' sample indices,
and checks class indices against the model output once, on the first chunk.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Union

import torch
from torch import Tensor

__all__ = ["Region", "box", "region", "resolve", "Target"]

Target = Union[None, int, Sequence[int], Tensor, Callable[..., Tensor], "Region"]


# --------------------------------------------------------------------------- region targets


class Region:
    """Score of a segmentation output over a region per image: see :func:`region`."""

    def __init__(self, masks: Tensor | None, channel: int | None = None,
                 boxes: Tensor | None = None):
        if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 0):
            raise ValueError(f"fastattr.targets: channel must be None or a non-negative int, got {channel!r}")
        self.channel = channel
        self.boxes = boxes
        self._masks = masks
        self._cache: dict = {}
        if masks is not None:
            if not isinstance(masks, Tensor):
                raise TypeError(f"fastattr.targets.region: masks must be a tensor, got {type(masks).__name__}")
            if masks.dim() not in (3, 4) or masks.shape[0] == 0:
                raise ValueError("fastattr.targets.region: masks must be (B, H, W), (B, 1, H, W) or per-channel "
                                 f"weights (B, C, H, W), got shape {tuple(masks.shape)}")
            if masks.dim() == 4 and masks.shape[1] > 1 and channel is not None:
                raise ValueError(f"fastattr.targets.region: masks with {masks.shape[1]} channels are per-channel "
                                 f"weights; channel={channel} cannot be combined with them")
            if masks.dtype.is_complex:
                raise TypeError(f"fastattr.targets.region: masks must be bool, integer or floating, got {masks.dtype}")
            if masks.dtype.is_floating_point and not bool(torch.isfinite(masks).all()):
                raise ValueError("fastattr.targets.region: masks contain NaN or infinite values")
            self._masks = masks if masks.dim() == 4 else masks.unsqueeze(1)

    @property
    def masks(self) -> Tensor | None:
        """The region weights (B, 1 or C, H, W) (None for boxes)."""
        return self._masks

    @property
    def n_images(self) -> int:
        return (self._masks if self._masks is not None else self.boxes).shape[0]

    def weights(self, output: Tensor) -> Tensor:
        """The pixel weights (B, C or 1, H, W) in the output's dtype and device."""
        spatial = tuple(output.shape[2:])
        key = (spatial, output.dtype, output.device)
        w = self._cache.get(key)
        if w is None:
            w = self._masks if self._masks is not None else self._rasterise(spatial)
            if tuple(w.shape[2:]) != spatial:
                raise ValueError(f"fastattr.targets.region: masks of spatial size {tuple(w.shape[2:])} do not match "
                                 f"the model output's {spatial}")
            w = w.to(device=output.device, dtype=output.dtype)
            self._cache = {key: w}
        return w

    def _rasterise(self, spatial: tuple) -> Tensor:
        if len(spatial) != 2:
            raise ValueError(f"fastattr.targets.box: boxes need a 2-D output (N, C, H, W), got spatial size {spatial}")
        h, w = spatial
        b = self.boxes
        bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] < 1) | (b[:, 3] < 1) | (b[:, 0] + b[:, 2] > h) | (b[:, 1] + b[:, 3] > w)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"fastattr.targets.box: box {i} (row, col, height, width) = {tuple(b[i].tolist())} "
                             f"does not lie inside the {h}x{w} output")
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        r0, c0 = b[:, 0].view(-1, 1, 1), b[:, 1].view(-1, 1, 1)
        inside = (rows >= r0) & (rows < r0 + b[:, 2].view(-1, 1, 1)) & (cols >= c0) & (cols < c0 + b[:, 3].view(-1, 1, 1))
        return inside.unsqueeze(1)

    def __call__(self, output: Tensor, index: Tensor | None = None) -> Tensor:
        """Scores ``(rows,)``: ``sum_{c,h,w} output[i, c, h, w] * weight[index[i], c, h, w]``.

        Without ``index`` the rows are taken to be the images themselves (or
        every row uses the one mask when there is one)."""
        if not isinstance(output, Tensor) or output.dim() < 3:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError("fastattr.targets.region: the model output must be a segmentation map (N, C, H, W), "
                             f"got {shape} per batch")
        if self.channel is not None:
            if self.channel >= output.shape[1]:
                raise ValueError(f"fastattr.targets.region: channel {self.channel} is out of range for a model "
                                 f"output with {output.shape[1]} channels")
            output = output[:, self.channel:self.channel + 1]
        w = self.weights(output)
        if w.shape[1] not in (1, output.shape[1]):
            raise ValueError(f"fastattr.targets.region: masks with {w.shape[1]} channels do not match a model output "
                             f"with {output.shape[1]} channels")
        if w.shape[0] == 1:
            rows = w.expand(output.shape[0], *w.shape[1:])
        elif index is not None:
            rows = w.index_select(0, index)
        elif w.shape[0] == output.shape[0]:
            rows = w
        else:
            raise ValueError(f"fastattr.targets.region: {w.shape[0]} masks cannot score {output.shape[0]} rows "
                             "without the rows' image indices")
        return (output * rows).flatten(1).sum(1)

    def __repr__(self) -> str:
        form = "boxes" if self.boxes is not None else "masks"
        return f"fastattr.targets.region({self.n_images} {form}, channel={self.channel})"


def region(masks: Tensor, channel: int | None = None) -> Region:
    """A segmentation target: each image's output summed over its own region.

    Args:
        masks: (B, H, W) or (B, 1, H, W), bool or weights, one region per image
            (B = 1: the same region for every image); or (B, C, H, W)
            per-channel weights (e.g. a one-hot ground truth) for a C-channel
            output.
        channel: sum this output channel only (a class of a multi-class
            segmentation model); ``None`` sums every channel.

    Passed as ``target=`` to any method it gives, batched, what each image
    gives on its own: the engine hands it the image index of every row.
    """
    return Region(masks, channel)


def box(boxes, channel: int | None = None) -> Region:
    """:func:`region` with one box per image, ``(row, col, height, width)``
    (a sequence of 4 ints for one box shared by all images, or (B, 4))."""
    b = torch.as_tensor(boxes)
    if b.dtype.is_floating_point or b.dtype == torch.bool:
        raise TypeError(f"fastattr.targets.box: boxes must be integers (row, col, height, width), got {b.dtype}")
    if b.dim() == 1:
        b = b.unsqueeze(0)
    if b.dim() != 2 or b.shape[1] != 4 or b.shape[0] == 0:
        raise ValueError(f"fastattr.targets.box: boxes must be (row, col, height, width) or (B, 4), got shape "
                         f"{tuple(b.shape)}")
    return Region(None, channel, boxes=b.long().cpu())


# --------------------------------------------------------------------------- resolved targets


def _per_sample_shape(output: Tensor) -> tuple:
    return tuple(output.shape[1:])


class ResolvedTarget:
    """A target bound to a batch of ``n_samples`` samples; ``scores(output,
    index)`` gives one scalar per output row, ``index`` being each row's
    sample."""

    n_samples: int

    def scores(self, output: Tensor, index: Tensor) -> Tensor:
        raise NotImplementedError

    def subset(self, index: Tensor) -> "ResolvedTarget":
        """The target of a new batch whose sample ``j`` is sample ``index[j]`` of this one."""
        raise NotImplementedError


class _Checks:
    """Which once-per-call checks are done; shared by a target and its subsets,
    so a noise tunnel's chunks do not repeat them (each costs a host sync)."""

    def __init__(self, done: bool = False):
        self.done = done


def check_finite_scores(scores: Tensor, checks: _Checks) -> None:
    """The target scores of a call's first chunk must be finite (one host sync
    per method call, shared by a target's subsets like the class range check)."""
    if checks.done:
        return
    finite = torch.isfinite(scores.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        value = float(scores.detach()[~finite][0])
        raise ValueError(
            f"fastattr: the model output gave non-finite target scores ({bad} of {scores.shape[0]} rows of the "
            f"first chunk, e.g. {value}); attributions of NaN or Inf scores are meaningless. Check the model and "
            "inputs (an overflow in float16, a log of 0, NaN weights)")
    checks.done = True


class ClassTarget(ResolvedTarget):
    """One class per sample, ``classes`` (B,) int64 on the inputs' device."""

    def __init__(self, classes: Tensor, checked: bool | _Checks = False, finite: _Checks | None = None):
        self.classes = classes
        self.n_samples = classes.shape[0]
        self._range = checked if isinstance(checked, _Checks) else _Checks(checked)
        self._finite = finite if finite is not None else _Checks()

    def check_output(self, output: Tensor) -> None:
        if output.dim() != 2:
            raise ValueError(
                f"fastattr: class targets need a model output of shape (batch, classes); the model returned "
                f"{_per_sample_shape(output)} per sample. For a segmentation model pass "
                "target=fastattr.targets.region(masks) (or box(...)), or a callable (see fastattr.targets)"
            )
        if not self._range.done:
            # One host sync per method call, on its first chunk.
            top = int(self.classes.max())
            if top >= output.shape[1]:
                raise ValueError(f"fastattr: target {top} is out of range for a model with {output.shape[1]} outputs "
                                 f"(classes 0..{output.shape[1] - 1})")
            self._range.done = True

    def scores(self, output: Tensor, index: Tensor) -> Tensor:
        self.check_output(output)
        s = output.gather(1, self.classes.index_select(0, index).unsqueeze(1)).squeeze(1)
        check_finite_scores(s, self._finite)
        return s

    def subset(self, index: Tensor) -> "ClassTarget":
        return ClassTarget(self.classes.index_select(0, index.to(self.classes.device)), self._range, self._finite)


def _takes_index(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("index")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


class CallableTarget(ResolvedTarget):
    """A callable target (see the module docstring). ``mapping`` translates this
    batch's sample indices to the indices the callable knows (set by ``subset``)."""

    def __init__(self, fn, n_samples: int, mapping: Tensor | None = None, rowwise: _Checks | None = None,
                 finite: _Checks | None = None):
        self.fn = fn
        self.n_samples = n_samples
        self.mapping = mapping
        self.takes_index = isinstance(fn, Region) or _takes_index(fn)
        self._rowwise = rowwise if rowwise is not None else _Checks(self.takes_index)
        self._finite = finite if finite is not None else _Checks()

    def _call(self, output: Tensor, index: Tensor) -> Tensor:
        if self.takes_index:
            if self.mapping is not None:
                index = self.mapping.index_select(0, index)
            return self.fn(output, index=index)
        return self.fn(output)

    def scores(self, output: Tensor, index: Tensor) -> Tensor:
        rows = output.shape[0]
        try:
            s = self._call(output, index)
        except RuntimeError as e:
            if self.takes_index:
                raise
            raise ValueError(
                f"fastattr: the target callable failed on a model output of shape {tuple(output.shape)} ({e}). It "
                f"is called on chunks of rows (path points, noisy or masked copies of the samples), not on your "
                f"batch of {self.n_samples}, so it must score each row on its own; to use per-image data declare "
                "an `index` parameter, f(output, index), or use fastattr.targets.region (see fastattr.targets)"
            ) from e
        if not isinstance(s, Tensor) or s.shape != (rows,):
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"fastattr: the target callable must return one score per row of the model output it is given, "
                f"shape ({rows},), got {shape}. It is called on chunks of rows (path points, noisy or masked "
                "copies of the samples), not on your batch of "
                f"{self.n_samples}; to use per-image data declare an `index` parameter (see fastattr.targets)"
            )
        check_finite_scores(s, self._finite)
        if not self._rowwise.done and rows > 1:
            self._check_rowwise(output, s)
        return s

    def _check_rowwise(self, output: Tensor, s: Tensor) -> None:
        # A callable that mixes rows, or pairs row i with image i, gives other
        # scores when the rows come in another order: refuse it rather than
        # return attributions for the wrong image.
        with torch.no_grad():
            flipped = self.fn(output.detach().flip(0))
        s = s.detach()
        if not isinstance(flipped, Tensor) or flipped.shape != s.shape or not torch.allclose(
                flipped.flip(0), s, rtol=1e-5, atol=1e-6 * float(s.abs().max().clamp_min(1e-30)), equal_nan=True):
            raise ValueError(
                "fastattr: the target callable does not score each row on its own (its scores change when the "
                "rows come in another order). The engine calls it on chunks of path points / perturbed copies in "
                "an order it does not see, so a callable that pairs row i with image i gives wrong attributions. "
                "Declare an `index` parameter, f(output, index), and pick per-image data with it "
                "(e.g. masks[index]), or use fastattr.targets.region(masks)"
            )
        self._rowwise.done = True

    def subset(self, index: Tensor) -> "CallableTarget":
        mapping = index if self.mapping is None else self.mapping.index_select(0, index.to(self.mapping.device))
        return CallableTarget(self.fn, index.shape[0], mapping, self._rowwise, self._finite)


def _class_indices(target, batch: int, device) -> Tensor:
    if isinstance(target, bool):
        raise TypeError("fastattr: target must be None, an int, a sequence of ints, a tensor or a callable, got bool")
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"fastattr: target must be a non-negative class index, got {target}")
        return torch.full((batch,), target, dtype=torch.long, device=device)
    try:
        idx = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"fastattr: target must be None, an int, a sequence of ints, a tensor or a callable, "
                        f"got {type(target).__name__}") from None
    if idx.dim() == 0 and not idx.dtype.is_floating_point and idx.dtype != torch.bool:
        idx = idx.expand(batch)
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool or idx.dim() != 1 \
            or idx.shape[0] != batch:
        raise ValueError(
            f"fastattr: target must be an int or {batch} integer class indices (one per sample), "
            f"got {tuple(idx.shape)} of {idx.dtype}"
        )
    idx = idx.long()
    if bool((idx < 0).any()):
        raise ValueError(f"fastattr: target contains negative class indices: {idx.tolist()}")
    return idx


def resolve(model, inputs: Tensor, target, batch_size: int | None = None) -> ResolvedTarget:
    """Bind ``target`` to the batch ``inputs``; ``None`` runs the model on the
    unperturbed inputs (forward only, in chunks of ``batch_size``) for the argmax."""
    batch = inputs.shape[0]
    if isinstance(target, ResolvedTarget):
        if target.n_samples != batch:
            raise ValueError(f"fastattr: a resolved target for {target.n_samples} samples cannot serve {batch}")
        return target
    from .engine import check_model

    check_model(model, inputs)  # once per method call (a noise tunnel's chunks come with a resolved target)
    if isinstance(target, Region):
        if target.n_images not in (1, batch):
            raise ValueError(f"fastattr.targets.region: {target.n_images} regions for {batch} images "
                             "(give one per image, or one for all)")
        return CallableTarget(target, batch)
    if callable(target) and not isinstance(target, Tensor):
        return CallableTarget(target, batch)
    if target is None:
        from .engine import forward_scores

        return ClassTarget(forward_scores(model, inputs, _Argmax(batch), batch_size), checked=True)
    return ClassTarget(_class_indices(target, batch, inputs.device))


class _Argmax(ResolvedTarget):
    """The 'target' that scores each row by its top class (used to resolve ``None``)."""

    def __init__(self, n_samples: int):
        self.n_samples = n_samples

    def scores(self, output: Tensor, index: Tensor) -> Tensor:
        if output.dim() != 2:
            raise ValueError(
                "fastattr: target=None explains each sample's top class, which needs a model output of shape "
                f"(batch, classes); the model returned {_per_sample_shape(output)} per sample. For a segmentation "
                "model pass target=fastattr.targets.region(masks) (or box(...)), or a callable (see fastattr.targets)"
            )
        return output.argmax(1)
