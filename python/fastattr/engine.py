"""The one chunked evaluation engine behind every method.

A method asks for the model at ``n_points`` points per sample (IG: the path
steps; SmoothGrad: the noisy copies; RISE: the masks; saliency: the input
itself), ``B x n_points`` rows in all. The **planner** (:func:`plan`) cuts that
grid into tiles of at most ``batch_size`` rows; the method's ``build(tile)``
writes a tile's rows (through fastattr's ops); and one of two **evaluators**
runs them:

- :func:`gradients`: forward and backward per tile, yielding the gradient of
  the target score with respect to the rows, and the scores themselves;
- :func:`scores`: forward only (no graph), yielding the target scores.

The method folds each tile's result into its own accumulator before the next
tile is built, so memory is bounded by ``batch_size`` rows, never by
``n_points``. Scores, weights and accumulators stay on the device: the engine
makes no host sync per tile (a class target is range-checked once, on the
first tile).

Row order inside a tile. ``inner="samples"`` (path methods): rows are
point-major, ``row = (k - k0) * S + (s - s0)``, every sample of the tile at
one point, then the next point. ``inner="points"`` (noise tunnels,
perturbations of one image): sample-major, ``row = (s - s0) * P + (k - k0)``.
Targets get each row's sample index, so they never depend on this layout.

Several inputs and forward arguments (:func:`several_inputs`, :class:`Bound`):
a model of several input tensors sees them packed side by side as one
``(B, D1 + D2 + ...)`` tensor, so every method's tiles and ops are unchanged;
forward arguments with a batch dimension give each row its sample's row,
picked by the tile the evaluators are running.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .targets import ResolvedTarget

# Default rows per forward pass, from input elements (a proxy for a pass's
# activation memory in convolutional nets), so that peak memory is bounded
# whatever the number of points and the batch are.
# CPU, measured (n_steps=32, 2 shared cores, interleaved rounds): a pass pays a
# fixed per-layer cost, and loses cache locality once its activations outgrow
# the caches. Small samples: the bundled 3x64x64 CNN ran IG at 32 rows/pass in
# 1.05 s and at 80 rows in 1.37 s (10 rounds), so 2**19 input elements (42 rows
# of 3x64x64). Large samples, whose single-row activations exceed the caches
# anyway: torchvision resnet18 at 3x224x224 ran IG at 8 rows/pass 7% faster
# than at 4 and GNL-IG 10% faster (6 rounds), 16 rows no faster, so at least 8
# rows as long as they hold at most 2**21 elements (~200 MB of resnet18
# activations). And a batch of at most 2**21 elements is never split into
# uneven passes (B=4 at 224x224: 4 rows, not 3 + 1).
# Forward-only passes (perturbation, causal, metrics) keep no activations for
# a backward, and the raise to 8 rows only costs cache (no-grad forward,
# ms/row, 3 interleaved rounds, 2 cores): resnet18 at 3x224x224 22.5 at 3 rows
# vs 23.8 at 8; a U-Net at 3x256x256 18.5 at 2 rows vs 26.2 at 8 (the causal
# ATE benchmark); the 3x128x128 U-Net and 3x64x64 CNN were flat around their
# 2**19-element row counts. So forward-only passes stop at 2**19 elements.
# CUDA: IG on torchvision resnet50 (B=32, 3x224x224, n_steps=32) ran 1.47x
# its model limit on an H100 at the old 2**23 elements (55 rows/pass). On an
# H200 (benchmarks/RESULTS.md) it ran at 1.15x / 1.07x / 1.04x / 1.01x the
# best bare-model time with 64 / 128 / 256 / 512 rows per pass, peaking at
# 5.4 / 10.7 / 21.4 / 42.7 GB. So 2**25 elements (222 rows at 3x224x224,
# ~1.05x, ~17 GB for resnet50), and never more than a quarter of the device's
# memory at _CUDA_BYTES_PER_ELEMENT bytes of activations per input element
# (resnet50's forward+backward took ~550), so that a smaller card gets fewer
# rows instead of running out of memory. Total, not free, memory: the default
# must not change from one call to the next.
_CPU_ELEMENTS, _CPU_MIN_ROWS, _CPU_MAX_ELEMENTS = 1 << 19, 8, 1 << 21
_CUDA_ELEMENTS, _CUDA_BYTES_PER_ELEMENT, _CUDA_MEMORY_SHARE = 1 << 25, 512, 0.25
_MAX_ROWS = 512


def cuda_rows(per_sample: int, total_memory: int) -> int:
    """Rows per pass on a CUDA device of ``total_memory`` bytes for samples of
    ``per_sample`` elements (before the 1..512 clamp)."""
    by_memory = int(total_memory * _CUDA_MEMORY_SHARE) // (per_sample * _CUDA_BYTES_PER_ELEMENT)
    return min(_CUDA_ELEMENTS // per_sample, by_memory)


# A memory budget (bytes) for the automatic rows per pass: --max-memory / max_memory=.
_MEMORY_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("fastattr_memory_budget", default=None)


@contextlib.contextmanager
def memory_budget(max_memory: int | None):
    """Within the block, :func:`default_batch_size` (every method's
    ``batch_size=None``) keeps a pass's estimated activation memory,
    ``rows x input elements x 512`` bytes (see ``_CUDA_BYTES_PER_ELEMENT``),
    within ``max_memory`` bytes. ``None`` leaves the default rule alone."""
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 1):
        raise ValueError(f"fastattr: max_memory must be a positive number of bytes or None, got {max_memory!r}")
    token = _MEMORY_BUDGET.set(max_memory)
    try:
        yield
    finally:
        _MEMORY_BUDGET.reset(token)


def default_batch_size(inputs: Tensor, max_memory: int | None = None, forward_only: bool = False) -> int:
    """Rows per forward pass when ``batch_size=None``: the one batch-size rule.

    Bounded by input elements per pass (on CUDA ``2**25`` and a quarter of the
    device's memory at 512 bytes per input element; ``2**19`` on the CPU), so
    peak memory does not grow with the number of points or samples.
    On the CPU it is raised to 8 rows, and to the batch size B, as long as those
    rows hold at most ``2**21`` elements (a batch that fits is not split into
    uneven passes); not for ``forward_only`` passes (no backward), which stay at
    ``2**19`` elements (or B rows, if B rows hold at most ``2**21``). A memory budget (``max_memory`` bytes, else the one set by
    :func:`memory_budget`) caps the rows at ``max_memory // (512 x elements)``.
    Always between 1 and 512."""
    per_sample = max(1, math.prod(inputs.shape[1:]))
    budget = max_memory if max_memory is not None else _MEMORY_BUDGET.get()
    if inputs.device.type == "cuda":
        rows = cuda_rows(per_sample, torch.cuda.get_device_properties(inputs.device).total_memory)
    elif inputs.device.type != "cpu":
        rows = _CUDA_ELEMENTS // per_sample
    else:
        rows = _CPU_ELEMENTS // per_sample
        fits = _CPU_MAX_ELEMENTS // per_sample
        if not forward_only:
            rows = max(rows, min(_CPU_MIN_ROWS, fits))
        if inputs.shape[0] <= fits:
            rows = max(rows, inputs.shape[0])
    if budget is not None:
        rows = min(rows, budget // (per_sample * _CUDA_BYTES_PER_ELEMENT))
    return max(1, min(_MAX_ROWS, rows))


def check_batch_size(batch_size, inputs: Tensor, name: str = "batch_size", forward_only: bool = False) -> int:
    """``batch_size`` validated, or :func:`default_batch_size` for ``None``."""
    if batch_size is None:
        return default_batch_size(inputs, forward_only=forward_only)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"fastattr: {name} must be None or an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"fastattr: {name} must be at least 1, got {batch_size}")
    return batch_size


# --------------------------------------------------------------------------- the planner


@dataclass(frozen=True)
class Tile:
    """Samples ``s0..s1-1`` x points ``k0..k1-1``; ``inner`` is the index that
    runs fastest over the tile's rows (see the module docstring)."""

    s0: int
    s1: int
    k0: int
    k1: int
    inner: str = "samples"

    @property
    def n_samples(self) -> int:
        return self.s1 - self.s0

    @property
    def n_points(self) -> int:
        return self.k1 - self.k0

    @property
    def rows(self) -> int:
        return self.n_samples * self.n_points

    def sample_index(self, device) -> Tensor:
        """The sample of each row, (rows,) int64 on ``device``."""
        s = torch.arange(self.s0, self.s1, device=device)
        return s.repeat(self.n_points) if self.inner == "samples" else s.repeat_interleave(self.n_points)

    def point_index(self, device) -> Tensor:
        """The point of each row, (rows,) int64 on ``device``."""
        k = torch.arange(self.k0, self.k1, device=device)
        return k.repeat_interleave(self.n_samples) if self.inner == "samples" else k.repeat(self.n_samples)


def plan(n_samples: int, n_points: int, batch_size: int, inner: str = "samples") -> list[Tile]:
    """Tiles covering the ``n_samples x n_points`` grid, each of at most
    ``batch_size`` rows (at least one row).

    ``inner="samples"`` keeps the samples of a tile together: ``min(B,
    batch_size)`` samples, ``max(1, batch_size // that)`` points (Captum's
    ``internal_batch_size`` rule when B fits). ``inner="points"`` keeps a
    sample's points together: ``min(n_points, batch_size)`` points of
    ``max(1, batch_size // that)`` samples. When the samples do not fit in
    one tile they are split into balanced groups. Tiles come in order:
    samples outer, points inner."""
    if inner not in ("samples", "points"):
        raise ValueError(f"fastattr: inner must be 'samples' or 'points', got {inner!r}")
    if n_samples < 1 or n_points < 1:
        return []
    if inner == "samples":
        per_s = min(n_samples, batch_size)
        per_k = max(1, batch_size // per_s)
    else:
        per_k = min(n_points, batch_size)
        per_s = max(1, batch_size // per_k)
    # Samples split into balanced groups (sizes differ by at most one): 5 samples
    # at 4 rows per pass run as 3 + 2, not 4 + 1.
    groups = -(-n_samples // per_s)
    bounds = [-(-i * n_samples // groups) for i in range(groups + 1)]
    return [Tile(s0, s1, k0, min(k0 + per_k, n_points), inner)
            for s0, s1 in zip(bounds, bounds[1:]) for k0 in range(0, n_points, per_k)]


# --------------------------------------------------------------------------- the evaluators


def _module(model) -> torch.nn.Module | None:
    """The nn.Module behind ``model``: itself, or what a wrapper names as
    ``__wrapped__`` (functools.wraps; fastattr's own activation wrappers)."""
    for _ in range(8):
        if isinstance(model, torch.nn.Module):
            return model
        model = getattr(model, "__wrapped__", None)
        if model is None:
            return None
    return None


def _first_tensor(module: torch.nn.Module) -> Tensor | None:
    """The module's first floating-point parameter (or buffer), no sync."""
    for t in module.parameters():
        if t.dtype.is_floating_point:
            return t
    for t in module.buffers():
        if t.dtype.is_floating_point:
            return t
    return None


# Modules whose training mode changes the forward pass.
_TRAINING_SENSITIVE = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)


def check_model(model, inputs: Tensor) -> None:
    """Once per method call, before any forward pass: ``model`` must be
    callable, and a model left in training mode with dropout or batch norm
    gets a RuntimeWarning (its attributions would be stochastic, and batch
    norm would update its running statistics). No host sync."""
    if not callable(model):
        raise TypeError(f"fastattr: model must be callable (an nn.Module or a function of a batch), "
                        f"got {type(model).__name__}")
    module = _module(model)
    if module is None:
        return
    p = _first_tensor(module)
    if p is not None and p.device.type == "meta" and inputs.device.type != "meta":
        # Some ATen kernels accept meta weights with real inputs and return
        # uninitialised memory: refuse before any forward pass.
        raise ValueError(
            f"fastattr: model and inputs are on different devices: the model's parameters are on meta (never "
            f"materialised: load its weights, e.g. model.to_empty(device='{inputs.device}') then load_state_dict), "
            f"inputs on {inputs.device}")
    if not module.training:
        return
    for name, m in module.named_modules():
        if m.training and isinstance(m, _TRAINING_SENSITIVE):
            warnings.warn(
                f"fastattr: model is in training mode (its {type(m).__name__} {name or '(root)'!r} is training): "
                "dropout and batch norm make attributions stochastic, and batch norm updates its running "
                "statistics; call model.eval() first",
                RuntimeWarning, stacklevel=4)
            return


def _explain_failure(model, batch: Tensor, error: Exception) -> Exception | None:
    """A clearer error for a model that raised on ``batch`` (the rows of one
    tile, each shaped like a sample of ``inputs``), or None when no cause is
    known. Only runs after the model failed: no cost on the hot path."""
    module = _module(model)
    if module is None:
        return None
    p = _first_tensor(module)
    if p is not None and p.dtype != batch.dtype:
        return TypeError(
            f"fastattr: model and inputs have different dtypes: the model's parameters are {p.dtype}, inputs "
            f"are {batch.dtype}; convert one of them (inputs.to({p.dtype}) or model.to({batch.dtype})). "
            f"The model raised: {error}")
    if p is not None and p.device != batch.device:
        return ValueError(
            f"fastattr: model and inputs are on different devices: the model's parameters are on {p.device}, "
            f"inputs on {batch.device}; move one of them (inputs.to('{p.device}') or model.to('{batch.device}')). "
            f"The model raised: {error}")
    conv = next((m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
    if conv is not None:
        rank = len(conv.kernel_size) + 2
        if batch.dim() == rank - 1:
            return ValueError(_missing_batch(conv, rank, batch, error))
    return None


def _missing_batch(conv, rank: int, batch: Tensor, error) -> str:
    dims = ", ".join(["batch", "channels"] + {3: ["L"], 4: ["H", "W"], 5: ["D", "H", "W"]}.get(rank, ["..."]))
    return (f"fastattr: inputs must have a batch dimension: the model's first convolution "
            f"({type(conv).__name__}) expects {rank}-D input ({dims}), but each sample of inputs has shape "
            f"{tuple(batch.shape[1:])}, i.e. inputs are {rank - 1}-D. For a single sample pass inputs.unsqueeze(0). "
            f"The model {'raised: ' + str(error) if isinstance(error, Exception) else error}")


def model_output(model, batch: Tensor) -> Tensor:
    """``model(batch)``, checked to be a tensor with one row per input row.

    A model that raises is explained when the cause is known (a dtype or
    device mismatch between its parameters and the inputs, a missing batch
    dimension); the original error is chained."""
    try:
        out = model(batch)
    except (RuntimeError, ValueError) as e:  # batch norm raises ValueError on a missing batch dimension
        better = _explain_failure(model, batch, e)
        if better is None:
            raise
        raise better from e
    if not isinstance(out, Tensor):
        if isinstance(out, dict):
            keys = list(out)[:8]
            got = f"a dict with keys {keys}"
            how = f"lambda x: model(x)[{keys[0]!r}]" if keys else "lambda x: model(x)[KEY]"
        elif isinstance(out, (tuple, list)):
            got = f"a {type(out).__name__} of {len(out)} items"
            how = "lambda x: model(x)[0]"
        else:
            got = type(out).__name__
            how = "lambda x: model(x).logits"
        raise TypeError(
            f"fastattr: model must return one tensor of scores, got {got}; select the output to explain by "
            f"wrapping the model, e.g. {how}"
        )
    if out.device != batch.device:
        raise ValueError(
            f"fastattr: model and inputs are on different devices: the model returned its output on {out.device} "
            f"for inputs on {batch.device}; move the model (model.to('{batch.device}')) or the inputs, or wrap a model "
            f"that moves its output, e.g. lambda x: model(x).to(x.device)")
    if out.dim() == 0 or out.shape[0] != batch.shape[0]:
        msg = (f"fastattr: the model returned shape {tuple(out.shape)} for {batch.shape[0]} input rows of shape "
               f"{tuple(batch.shape[1:])}; the first dimension of its output must be the batch")
        module = _module(model)
        conv = next((m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None) \
            if module is not None else None
        if conv is not None and batch.dim() == len(conv.kernel_size) + 1:
            msg = _missing_batch(conv, batch.dim() + 1, batch, f"returned shape {tuple(out.shape)}")
        raise ValueError(msg)
    return out


Build = Callable[[Tile], Tensor]


def gradients(model, target: ResolvedTarget, tiles: list[Tile], build: Build,
              context: contextlib.AbstractContextManager | None = None) -> Iterator[tuple[Tile, Tensor, Tensor]]:
    """The gradient evaluator: yield ``(tile, grad, scores)`` tile by tile.

    ``grad`` is the gradient of each row's target score with respect to the
    row (shape and dtype of ``build(tile)``), ``scores`` the (detached) scores
    of the rows, which the forward pass computed anyway. ``context`` (e.g. a
    :class:`fastattr.GuidedMode`) is entered around each forward and backward
    pass. Gradients are taken with respect to the rows only: the model's
    parameters, flags and hooks are untouched and no parameter gradient is
    accumulated.
    """
    for tile in tiles:
        with torch.enable_grad():
            points = build(tile).detach().requires_grad_(True)
            # Only the model runs under the context: a guided mode is for the
            # model's ReLUs, not for the target's own arithmetic.
            with context if context is not None else contextlib.nullcontext(), _rows_of(tile):
                out = model_output(model, points)
            s = target.scores(out, tile.sample_index(points.device))
            (grad,) = torch.autograd.grad(s.sum(), points)
        yield tile, grad, s.detach()
        del points, out, s, grad


def scores(model, target: ResolvedTarget, tiles: list[Tile], build: Build) -> Iterator[tuple[Tile, Tensor]]:
    """The forward-only score evaluator: yield ``(tile, scores)``, the target
    score of each row of ``build(tile)``, computed without autograd."""
    for tile in tiles:
        # Grad mode is thread-global: never hold no_grad across a yield, or the
        # caller's code would run under it.
        with torch.no_grad():
            points = build(tile)
            with _rows_of(tile):
                out = model_output(model, points)
            s = target.scores(out, tile.sample_index(points.device))
        del points
        yield tile, s


def forward_scores(model, inputs: Tensor, target: ResolvedTarget, batch_size: int | None = None) -> Tensor:
    """The target score of every sample of ``inputs`` itself (no gradient), (B,)."""
    batch_size = check_batch_size(batch_size, inputs, forward_only=True)
    out = None
    for tile, s in scores(model, target, plan(inputs.shape[0], 1, batch_size), lambda t: inputs[t.s0:t.s1]):
        if out is None:
            out = s.new_empty((inputs.shape[0],))
        out[tile.s0:tile.s1] = s
    return out


# --------------------------------------------------------------------------- several inputs, forward arguments

# The tile whose rows the model is running on (set by the evaluators around
# each model call), so that a Bound model can give each row its sample's
# per-example forward arguments.
_TILE: contextvars.ContextVar = contextvars.ContextVar("fastattr_tile", default=None)


@contextlib.contextmanager
def _rows_of(tile: Tile):
    token = _TILE.set(tile)
    try:
        yield
    finally:
        _TILE.reset(token)


def _per_example(value, n_samples: int) -> bool:
    return isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == n_samples


class Bound:
    """A model of several input tensors and extra forward arguments, seen by
    the engine as a model of one tensor.

    The methods attribute one ``(N, ...)`` tensor. Several inputs are packed
    side by side, each sample flattened (:func:`pack`), and ``Bound(z)`` splits
    a batch of packed rows back and calls ``model(*args[:place], *inputs,
    *args[place:])``. Forward arguments that are tensors whose first dimension
    is the batch size are per-example: each row (path point, perturbed or
    noisy copy) sees its own sample's row, picked by the engine's tile (what
    Captum's expansion of ``additional_forward_args`` amounts to); other
    arguments are passed unchanged."""

    def __init__(self, model, shapes: tuple | None, args: tuple, n_samples: int, place: int = 0,
                 per_example: tuple | None = None):
        self.__wrapped__ = model  # engine._module: training-mode warning, error explanations
        self.model = model
        self.shapes = shapes
        self.sizes = None if shapes is None else [math.prod(s) for s in shapes]
        self.args = tuple(args)
        self.n_samples = n_samples
        self.place = place
        self.per_example = per_example if per_example is not None else tuple(
            _per_example(a, n_samples) for a in self.args)

    def split(self, z: Tensor) -> tuple:
        if self.shapes is None:
            return (z,)
        parts = torch.split(z, self.sizes, dim=1)
        return tuple(p.reshape((z.shape[0],) + tuple(s)) for p, s in zip(parts, self.shapes))

    def _index(self, rows: int, device) -> Tensor:
        tile = _TILE.get()
        if tile is not None and tile.rows == rows and tile.s1 <= self.n_samples:
            return tile.sample_index(device)
        if rows == self.n_samples:
            return torch.arange(rows, device=device)
        raise ValueError(
            f"fastattr: a model with per-example forward arguments (for {self.n_samples} samples) was called on "
            f"{rows} rows outside the engine's evaluators, so the rows' samples are unknown")

    def __call__(self, z: Tensor):
        args = self.args
        if any(self.per_example):
            index = None
            picked = []
            for a, each in zip(args, self.per_example):
                if each:
                    if index is None:
                        index = self._index(z.shape[0], a.device)
                    a = a.index_select(0, index.to(a.device))
                picked.append(a)
            args = tuple(picked)
        return self.model(*args[:self.place], *self.split(z), *args[self.place:])

    def subset(self, index: Tensor) -> "Bound":
        """The model of a new batch whose sample ``j`` is sample ``index[j]`` of this one."""
        args = tuple(a.index_select(0, index.to(a.device)) if each else a
                     for a, each in zip(self.args, self.per_example))
        return Bound(self.model, self.shapes, args, index.shape[0], self.place, self.per_example)


def subset_model(model, index: Tensor):
    """``model`` for a new batch whose sample ``j`` is sample ``index[j]`` of the
    current one (a noise tunnel's chunk of noisy copies): a :class:`Bound`
    model's per-example arguments follow; any other model is unchanged."""
    return model.subset(index) if isinstance(model, Bound) else model


def forward_args(additional_forward_args) -> tuple:
    """Captum's ``additional_forward_args``: ``None``, a value, or a tuple of values."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def check_input_tuple(inputs, name: str = "inputs") -> tuple:
    """A non-empty tuple of floating tensors with one batch size, dtype and device."""
    if not isinstance(inputs, tuple) or len(inputs) == 0:
        raise TypeError(f"fastattr: {name} must be a torch.Tensor or a non-empty tuple of tensors, "
                        f"got {type(inputs).__name__ if not isinstance(inputs, tuple) else 'an empty tuple'}")
    first = inputs[0]
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"fastattr: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"fastattr: {name}[{i}] must be a floating-point tensor, got {t.dtype}")
        if t.dim() < 1 or t.shape[0] == 0:
            raise ValueError(f"fastattr: {name}[{i}] must have a non-empty batch dimension, got shape "
                             f"{tuple(t.shape)}")
        if not isinstance(first, Tensor) or t.shape[0] != first.shape[0]:
            raise ValueError(f"fastattr: every tensor of {name} needs the same batch size: {name}[0] has "
                             f"{first.shape[0]}, {name}[{i}] has {t.shape[0]}")
        if t.dtype != first.dtype:
            raise TypeError(f"fastattr: every tensor of {name} needs the same dtype: {name}[0] is {first.dtype}, "
                            f"{name}[{i}] is {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"fastattr: every tensor of {name} must be on one device: {name}[0] is on "
                             f"{first.device}, {name}[{i}] on {t.device}")
    return inputs


def pack(inputs: tuple) -> tuple[Tensor, tuple]:
    """Several inputs as one ``(B, D1 + D2 + ...)`` tensor (each sample
    flattened), and their per-sample shapes for :func:`unpack`."""
    inputs = check_input_tuple(inputs)
    b = inputs[0].shape[0]
    shapes = tuple(tuple(t.shape[1:]) for t in inputs)
    return torch.cat([t.detach().reshape(b, -1) for t in inputs], dim=1), shapes


def unpack(flat: Tensor, shapes: tuple) -> tuple:
    """Inverse of :func:`pack`: one tensor per input."""
    sizes = [math.prod(s) for s in shapes]
    return tuple(p.reshape((flat.shape[0],) + s) for p, s in zip(torch.split(flat, sizes, dim=1), shapes))


def pack_per_input(value, inputs: tuple, name: str, convert: Callable) -> Tensor:
    """A per-input argument given as a tuple (one entry per input) packed like
    the inputs: ``convert(value[i], inputs[i], name)`` gives each a tensor of
    shape ``(1 or B, *inputs[i].shape[1:])``."""
    if not isinstance(value, tuple) or len(value) != len(inputs):
        got = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise ValueError(f"fastattr: with {len(inputs)} input tensors, {name} must be a tuple of {len(inputs)} "
                         f"(one per input), got {got}")
    parts = [convert(v, x, f"{name}[{i}]") for i, (v, x) in enumerate(zip(value, inputs))]
    lead = max(p.shape[0] for p in parts)
    return torch.cat([p.expand((lead,) + tuple(p.shape[1:])).reshape(lead, -1) for p in parts], dim=1)


def several_inputs(**per_input: Callable):
    """Decorator: a method of one input tensor also takes a tuple of input
    tensors (returning a tuple of attributions, one per input) and
    ``additional_forward_args`` (passed to the model after the inputs, see
    :class:`Bound`), running on the one engine through :func:`pack`.

    ``per_input`` names the method's per-input arguments and how to convert
    each entry of their tuples (``convert(value, input, name)``); a non-tuple
    value is passed on as it is (a number applies to every input)."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def method(model, inputs, *args, additional_forward_args=None, **kwargs):
            if isinstance(inputs, Tensor) and additional_forward_args is None:
                return fn(model, inputs, *args, **kwargs)
            bound = signature.bind(model, inputs, *args, **kwargs)
            call = dict(bound.arguments)
            if isinstance(inputs, Tensor):
                flat, shapes = inputs, None
            else:
                flat, shapes = pack(inputs)
                for name, convert in per_input.items():
                    value = call.get(name)
                    if isinstance(value, tuple):
                        call[name] = pack_per_input(value, inputs, name, convert)
                    elif isinstance(value, Tensor):
                        raise TypeError(f"fastattr: with {len(inputs)} input tensors, {name} must be a number or a "
                                        f"tuple of {len(inputs)} (one per input), got a tensor")
            call["model"] = Bound(model, shapes, forward_args(additional_forward_args), flat.shape[0])
            call["inputs"] = flat
            out = fn(**call)
            if shapes is None:
                return out
            if isinstance(out, tuple):
                return (unpack(out[0], shapes),) + tuple(out[1:])
            return unpack(out, shapes)
        return method
    return wrap
