"""One case per fastattr op: how to build its arguments (realistic sizes for
benchmarks, small ones for tests, in any memory layout, empty), the registered
op it times, the ``fastattr.reference`` function it is checked against, the
minimal bytes it must move (each input read once, each output written once),
and what the tests need to know about it (its autograd, its layout rule).

Used by ``bench_ops.py`` (pytest-benchmark, op vs reference), ``bandwidth.py``
(achieved GB/s on a GPU), ``tests/test_op_harness.py`` (the shared op tests)
and ``tests/test_build.py`` (every registered op must have a case here). A new
op needs a case in ``CASES``.

Cases call the registered op as autograd calls it,
``torch.ops.fastattr.<op>.default(*args)``: the Python wrappers in
``fastattr.ops`` add conversions and data-dependent checks for direct callers,
which a benchmark must not time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

import fastattr
from fastattr import reference

ops = fastattr.ops

# Ops that compute nothing on tensors (build metadata); they need no case.
UTILITY_OPS = frozenset({"fastattr::_cuda_version"})

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Memory layouts the tests run every op in (benchmarks: contiguous, channels_last).
#   contiguous     NCHW
#   transposed     dense, not contiguous: H and W strides swapped
#   sliced         not dense: every other element of a wider tensor along W
#   channels_last  NHWC
#   mixed          the first layout argument channels_last, the others transposed
LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last", "mixed")


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in ``layout`` (one of LAYOUTS but "mixed")."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        wide = t.new_empty((*t.shape[:-1], 2 * t.shape[-1]))
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    raise ValueError(f"unknown layout {layout!r}")


@dataclass(frozen=True)
class OpCase:
    op: str  # qualified op name, "fastattr::<op>"
    name: str  # what the benchmark inputs stand for
    # (device, dtype, small, variant) -> the op's arguments, contiguous
    build: Callable[[torch.device, torch.dtype, bool, str], tuple]
    # (device, dtype, variant) -> the op's arguments with an empty batch
    build_empty: Callable[[torch.device, torch.dtype, str], tuple]
    bytes_moved: Callable[..., int]  # minimal bytes read + written, from the arguments
    # "differentiable": an autograd formula is registered (register_autograd);
    # "forward_only": none, and no floating result can silently lose a gradient
    # (tests/test_build.py checks both against the registrations).
    autograd: Literal["differentiable", "forward_only"]
    layout_args: tuple[int, ...]  # argument positions that take the layout under test
    # Of those, the ones accepting only contiguous or channels_last (tensors
    # written in place): they stay contiguous in the other layouts.
    format_args: tuple[int, ...] = ()
    variants: tuple[str, ...] = ("default",)  # argument sets; the first is benchmarked
    dtypes: Sequence[torch.dtype] = FLOATING
    layouts: Sequence[str] = LAYOUTS
    # The result takes a dense input's strides (elementwise ops); otherwise it is
    # contiguous in the suggested memory format of the first layout argument.
    keeps_dense_strides: bool = False
    mutates: bool = False  # writes its first argument and returns nothing
    exact_parity: bool = True  # CPU and CUDA results are bit-identical
    # What the benchmarks time the op against (default: the reference).
    baseline: Callable[..., object] | None = None
    tolerances: Mapping[torch.dtype, dict] = field(default_factory=dict)  # input dtype -> override

    @property
    def id(self) -> str:
        return self.op.split("::", 1)[1]

    @property
    def overload(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.fastattr, self.id).default

    @property
    def reference(self) -> Callable[..., object]:
        return getattr(reference, self.id.lstrip("_"))

    def args(self, device, dtype, small=True, layout="contiguous", variant=None) -> tuple:
        """The op's arguments for `variant` (default: the first), with the layout
        arguments in `layout`."""
        variant = self.variants[0] if variant is None else variant
        if variant not in self.variants:
            raise ValueError(f"{self.id} has no variant {variant!r} (has {self.variants})")
        args = list(self.build(torch.device(device), dtype, small, variant))
        for n, pos in enumerate(self.layout_args):
            if layout == "mixed":
                target = "channels_last" if n == 0 else "transposed"
            else:
                target = layout
            if pos in self.format_args and target not in ("contiguous", "channels_last"):
                target = "contiguous"
            args[pos] = relayout(args[pos], target)
        return tuple(args)

    def empty_args(self, device, dtype, variant=None) -> tuple:
        return self.build_empty(torch.device(device), dtype, self.variants[0] if variant is None else variant)

    def run(self, *args):
        """The registered op on args; for a mutating op, the tensor it wrote."""
        out = self.overload(*args)
        return args[0] if self.mutates else out

    def ref(self, *args):
        out = self.reference(*args)
        return args[0] if self.mutates else out

    def timed_baseline(self, *args):
        return (self.baseline or self.ref)(*args)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rand(shape, device, dtype, gen_seed, scale=1.0):
    g = torch.Generator().manual_seed(gen_seed)
    return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)


# --- guided ReLU: a ResNet stage-1 activation (N=32, C=64, 112x112). -------------
# Small: 40 channels, so that the NHWC max-pool backward splits an image into
# several channel blocks; H != W, so that a transposed layout is not symmetric.

def _act_shape(small):
    return (2, 40, 10, 12) if small else (32, 64, 112, 112)


_RELU_UPPER = {"relu": None, "relu6": 6.0}


def _build_guided_relu(device, dtype, small, variant):
    # Values up to about +-12, so that ReLU6's upper edge is crossed.
    return (_rand(_act_shape(small), device, dtype, 0, scale=4.0), "guided", _RELU_UPPER[variant])


def _empty_guided_relu(device, dtype, variant):
    return (torch.empty(0, 8, 6, 6, device=device, dtype=dtype), "guided", _RELU_UPPER[variant])


_RELU_BACKWARD = {"guided": ("guided", None), "guided-relu6": ("guided", 6.0), "deconvnet": ("deconvnet", None)}


def _build_guided_relu_backward(device, dtype, small, variant):
    mode, upper = _RELU_BACKWARD[variant]
    x = _rand(_act_shape(small), device, dtype, 0, scale=4.0)
    result = x.clamp(0, upper) if upper is not None else x.clamp_min(0)
    return (_rand(x.shape, device, dtype, 1), result, mode, upper)


def _empty_guided_relu_backward(device, dtype, variant):
    e = torch.empty(0, 8, 6, 6, device=device, dtype=dtype)
    return (e, e.clone(), *_RELU_BACKWARD[variant])


# --- guided max-pool: ResNet's MaxPool2d(3, 2, 1) on (32, 64, 112, 112); a ------
# non-square, dilated, ceil_mode pool with the window rule for the tests.
POOLS = {
    "resnet-reference": (([3, 3], [2, 2], [1, 1], [1, 1]), False, "reference"),
    "nonsquare-dilated-ceil-window": (([2, 3], [1, 2], [0, 1], [2, 1]), True, "window"),
}


def _build_guided_max_pool2d(device, dtype, small, variant):
    geometry, ceil_mode, mode = POOLS[variant]
    # After a ReLU: many zeros, so many windows hold tied maxima.
    x = torch.relu(_rand(_act_shape(small), device, dtype, 2))
    return (x, *geometry, ceil_mode, mode)


def _empty_guided_max_pool2d(device, dtype, variant):
    geometry, ceil_mode, mode = POOLS[variant]
    return (torch.empty(0, 8, 10, 12, device=device, dtype=dtype), *geometry, ceil_mode, mode)


def _pool_backward_args(x, g, variant):
    geometry, ceil_mode, mode = POOLS[variant]
    _, idx = torch.ops.aten.max_pool2d_with_indices.default(x, *geometry, ceil_mode)
    return (g(idx.shape), idx, list(x.shape), *geometry, mode)


def _build_guided_max_pool2d_backward(device, dtype, small, variant):
    x = _build_guided_max_pool2d(device, dtype, small, variant)[0]
    return _pool_backward_args(x, lambda shape: _rand(shape, device, dtype, 3), variant)


def _empty_guided_max_pool2d_backward(device, dtype, variant):
    x = _empty_guided_max_pool2d(device, dtype, variant)[0]
    return _pool_backward_args(x, lambda shape: torch.empty(shape, device=device, dtype=dtype), variant)


def _pool_backward_bytes(g, idx, input_size, *_):
    n = 1
    for s in input_size:
        n *= s
    return nbytes(g, idx) + n * g.element_size()


def _baseline_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, mode):
    # What the op computes, the ATen way (the reference is a slow float64-grade oracle).
    return torch.ops.aten.max_pool2d_with_indices.default(x, kernel_size, stride, padding, dilation, ceil_mode)


# --- IG: 32 steps x 4 images of 3x224x224 (path batch of 128). --------------------
IG_STEPS = {False: 32, True: 7}  # small -> steps


def _gauss_legendre(n):
    import numpy as np

    xi, omega = np.polynomial.legendre.leggauss(n)
    return 0.5 * (1 + xi), 0.5 * omega


def _ig_shape(small):
    return (2, 3, 8, 8) if small else (4, 3, 224, 224)


def _step_table(nodes, batch, variant, device):
    """The (K,) table shared by the batch, or a (K, B) one whose column b is it
    scaled by a factor of its own in [0.6, 1] (distinct nodes per sample, as an
    adaptive rule makes them)."""
    table = torch.as_tensor(nodes, dtype=torch.float64)
    if variant == "per-sample":
        shrink = torch.linspace(0.6, 1.0, max(batch, 1), dtype=torch.float64)[:batch]
        table = table[:, None] * shrink[None, :]
    return table.to(device)


def _build_ig_path_inputs(device, dtype, small, variant):
    shape = _ig_shape(small)
    alphas, _ = _gauss_legendre(IG_STEPS[small])
    return (_rand(shape, device, dtype, 4), _rand(shape, device, dtype, 5),
            _step_table(alphas, shape[0], variant, device))


def _empty_ig_path_inputs(device, dtype, variant):
    e = torch.empty(0, 3, 8, 8, device=device, dtype=dtype)
    return (e, e.clone(), _step_table(_gauss_legendre(3)[0], 0, variant, device))


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _build_ig_accumulate(device, dtype, small, variant):
    shape = _ig_shape(small)
    steps = IG_STEPS[small]
    total = _rand(shape, device, _acc_dtype(dtype), 7)  # a running sum already holding values
    grads = _rand((steps * shape[0], *shape[1:]), device, dtype, 6)
    return (total, grads, _step_table(_gauss_legendre(steps)[1], shape[0], variant, device))


def _empty_ig_accumulate(device, dtype, variant):
    total = torch.empty(0, 3, 8, 8, device=device, dtype=_acc_dtype(dtype))
    grads = torch.empty(0, 3, 8, 8, device=device, dtype=dtype)
    return (total, grads, _step_table(_gauss_legendre(3)[1], 0, variant, device))


_IG_VARIANTS = ("shared", "per-sample")


# --- perturbation masks (RISE / MFPP, occlusion, feature ablation) ----------------
# RISE (spec §3.1): one 224x224 image and 64 masks from 7x7 grids (cell 32, up
# 256); 16 images of 64x64 with 16 masks from 8x8 grids (cell 8, up 72). Small:
# 10x12 crops out of 14x17 maps, rectangular grids, uniform (not binary) grid
# values so that every interpolation weight shows, masks drawing grids in any order.

def _rise_geometry(small, variant="mirror"):
    """(images, masks, grids, grid cells, crop size, up size, mode)."""
    mode = "clamp" if variant.startswith("clamp") else "mirror"
    if small:
        return (3 if variant.endswith("16-images") else 2), 5, 4, (3, 4), (10, 12), (14, 17), mode
    if variant.endswith("16-images"):
        return 16, 16, 16, (8, 8), (64, 64), (72, 72), mode
    return 1, 64, 64, (7, 7), (224, 224), (256, 256), mode


def _rise_draws(device, grid_dtype, small, variant, masks=None):
    images, n_masks, n_grids, cells, size, up, mode = _rise_geometry(small, variant)
    n_masks = n_masks if masks is None else masks
    g = torch.Generator().manual_seed(8)
    grids = torch.rand((n_grids, *cells), generator=g)
    if not small:
        grids = (grids < 0.5).float()  # RISE's binary grids, p = 1/2
    index = torch.randint(0, n_grids, (n_masks,), generator=g) if small else torch.arange(n_masks) % n_grids
    shifts = torch.stack([torch.randint(0, up[0] - size[0] + 1, (n_masks,), generator=g),
                          torch.randint(0, up[1] - size[1] + 1, (n_masks,), generator=g)], dim=1)
    return grids.to(device=device, dtype=grid_dtype), index.to(device), shifts.to(device), size, up, mode


_RISE_MASK_VARIANTS = ("mirror", "clamp")


def _build_rise_masks(device, dtype, small, variant):
    grids, index, shifts, size, up, mode = _rise_draws(device, dtype, small, variant)
    return (grids, index, shifts, list(size), list(up), mode)


def _empty_rise_masks(device, dtype, variant):
    grids, index, shifts, size, up, mode = _rise_draws(device, dtype, True, variant, masks=0)
    return (grids, index, shifts, list(size), list(up), mode)


_RISE_BATCH_VARIANTS = ("mirror-1-image", "clamp-1-image", "mirror-16-images")


def _build_rise_masked_batch(device, dtype, small, variant):
    images, _, _, _, size, _, _ = _rise_geometry(small, variant)
    # float32 grids for a float16/bfloat16 batch, as the RISE method passes them.
    grids, index, shifts, _, up, mode = _rise_draws(device, _acc_dtype(dtype), small, variant)
    shape = (images, 3, *size)
    return (_rand(shape, device, dtype, 9), _rand(shape, device, dtype, 10, scale=0.5), grids, index, shifts,
            list(up), mode)


def _empty_rise_masked_batch(device, dtype, variant):
    _, _, _, _, size, _, _ = _rise_geometry(True, variant)
    grids, index, shifts, _, up, mode = _rise_draws(device, _acc_dtype(dtype), True, variant)
    e = torch.empty(0, 3, *size, device=device, dtype=dtype)
    return (e, e.clone(), grids, index, shifts, list(up), mode)


def _rise_batch_bytes(x, b, grids, index, shifts, *_):
    return (2 + index.shape[0]) * nbytes(x) + nbytes(grids, index, shifts)


# Feature ablation / LIME / MFPP fragments: 64 keep rows (0/1, p = 1/2) over
# ~200 Voronoi segments of a 224x224 image, shared by its 3 channels. Small: 7
# segments, fractional keep values, a map shared by the batch or one per sample
# (and per channel).
_SEGMENT_VARIANTS = ("shared", "per-sample")


def _voronoi_segments(h, w, n, seed):
    g = torch.Generator().manual_seed(seed)
    seeds = torch.rand(n, 2, generator=g) * torch.tensor([h, w])
    pixels = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).float()
    return torch.cdist(pixels, seeds).argmin(1).reshape(h, w)


def _build_segment_masked_batch(device, dtype, small, variant):
    shape = (2, 3, 10, 12) if small else (1, 3, 224, 224)
    g = torch.Generator().manual_seed(11)
    if small:
        n_segments, n_masks = 7, 5
        lead = shape[0] if variant == "per-sample" else 1
        segments = torch.randint(0, n_segments, (lead, *shape[1:]), generator=g)
        keep = torch.rand(n_masks, n_segments, generator=g)
    else:
        n_segments, n_masks = 200, 64
        segments = _voronoi_segments(*shape[2:], n_segments, 12).expand(shape[0], *shape[1:]).contiguous()
        keep = (torch.rand(n_masks, n_segments, generator=g) < 0.5).float()
    return (_rand(shape, device, dtype, 13), _rand(shape, device, dtype, 14, scale=0.5), segments.to(device),
            keep.to(device=device, dtype=_acc_dtype(dtype)))


def _empty_segment_masked_batch(device, dtype, variant):
    _, _, segments, keep = _build_segment_masked_batch(device, dtype, True, "shared")
    e = torch.empty(0, 3, 10, 12, device=device, dtype=dtype)
    return (e, e.clone(), segments, keep)


# Occlusion: Captum's ResNet-style 3x15x15 windows, stride (3, 8, 8), on one
# 224x224 image: 28 x 28 windows (ceil(209 / 8) + 1 per dim, the last clipped),
# 64 of them from window 100 on. Small: 3-D windows (40 of them, the last of
# each dim clipped; 7 selected) and per-channel windows (all 45).
_WINDOWS = {
    # variant: (small window, strides, start, count), (large ...)
    "3x15x15-stride-8": (([2, 3, 4], [1, 2, 3], 5, 7), ([3, 15, 15], [3, 8, 8], 100, 64)),
    "per-channel": (([1, 4, 5], [1, 3, 2], 0, 45), ([1, 15, 15], [1, 8, 8], 0, 64)),
}


def _build_window_masked_batch(device, dtype, small, variant):
    shape = (2, 3, 10, 12) if small else (1, 3, 224, 224)
    window, strides, start, count = _WINDOWS[variant][0 if small else 1]
    return (_rand(shape, device, dtype, 15), _rand(shape, device, dtype, 16, scale=0.5), list(window), list(strides),
            start, count)


def _empty_window_masked_batch(device, dtype, variant):
    window, strides, start, count = _WINDOWS[variant][0]
    e = torch.empty(0, 3, 10, 12, device=device, dtype=dtype)
    return (e, e.clone(), list(window), list(strides), start, count)


# --- causal ATE (spec §2): the PdCR block intervention, RoI outcome, ATE map ------
# Large: the bundled U-Net's 128x128 images, 48 intervened rows per pass (one
# full-sample set of 50 is about that), patches from a 1000-patch bank of 8x8
# RGB patches (the reference ships 1000); the outcome of 48 one-channel output
# rows over a 32x32 RoI; the ATE map of a 256x256 image (32x32 cells of 8x8,
# n_screen 3, n_samples 50). Small: rectangular 2x3 patches, 2 images, rows
# whose blocks touch the image edges.

def _build_block_patch_batch(device, dtype, small, variant):
    g = torch.Generator().manual_seed(17)
    if small:
        shape, bank_shape, n = (2, 3, 10, 12), (5, 3, 2, 3), 6
    else:
        shape, bank_shape, n = (1, 3, 128, 128), (1000, 3, 8, 8), 48
    bh, bw = bank_shape[2:]
    index = torch.randint(0, bank_shape[0], (n,), generator=g)
    if small:
        blocks = torch.tensor([[0, 0], [8, 9], [3, 5], [0, 9], [8, 0], [4, 4]])
    else:
        cells = torch.randint(0, (shape[2] // bh) * (shape[3] // bw), (n,), generator=g)
        blocks = torch.stack([cells // (shape[3] // bw) * bh, cells % (shape[3] // bw) * bw], 1)
    return (_rand(shape, device, dtype, 18), _rand(bank_shape, device, dtype, 19), index.to(device),
            blocks.to(device))


def _empty_block_patch_batch(device, dtype, variant):
    _, bank, index, blocks = _build_block_patch_batch(device, dtype, True, variant)
    return (torch.empty(0, 3, 10, 12, device=device, dtype=dtype), bank, index, blocks)


# (channel, outcome, activation, threshold, empty_is_one) per variant
_OUTCOME_VARIANTS = {
    "dice-raw": (-1, "dice", "none", 0.5, False),
    "soft_dice-sigmoid-empty_is_one": (-1, "soft_dice", "sigmoid", 0.5, True),
    "dice-softmax-channel": (1, "dice", "softmax", 0.4, False),
    "mean_prob-softmax-channel": (1, "mean_prob", "softmax", 0.5, False),
}


def _build_region_outcome(device, dtype, small, variant):
    channel, outcome, activation, threshold, empty_is_one = _OUTCOME_VARIANTS[variant]
    classes = 1 if channel < 0 else 3
    rows, h, w = (5, 10, 12) if small else (48, 128, 128)
    out = _rand((rows, classes, h, w), device, dtype, 20, scale=1.5)
    roi = torch.zeros(h, w, dtype=torch.bool)
    roi[2:8, 3:11] = True if small else False
    if not small:
        roi[40:72, 48:80] = True
    g = torch.Generator().manual_seed(21)
    gt = (torch.rand((classes if channel < 0 else 1, h, w), generator=g) < 0.4).to(dtype)
    return (out, roi.to(device), gt.to(device), channel, outcome, activation, threshold, empty_is_one)


def _empty_region_outcome(device, dtype, variant):
    out, roi, gt, *rest = _build_region_outcome(device, dtype, True, variant)
    return (out[:0], roi, gt, *rest)


def _build_causal_ate_map(device, dtype, small, variant):
    g = torch.Generator().manual_seed(22)
    b, gh, gw, n0, n1, block = (2, 3, 4, 3, 5, [2, 3]) if small else (1, 32, 32, 3, 50, [8, 8])
    base = torch.tensor([60.0, 20.0])[:b]
    # Effects of a few points (well above tau) on some cells, none on others, so
    # that cells pass and fail screening and are kept and pruned.
    effect = torch.randint(0, 3, (b, gh, gw, 1), generator=g).float() * torch.randn((b, gh, gw, 1), generator=g) * 4
    screen = base[:, None, None, None] + effect + (torch.rand((b, gh, gw, n0), generator=g) - 0.5) * 0.01
    full = base[:, None, None, None] + effect * torch.rand((b, gh, gw, n1), generator=g) * 2
    visited = torch.rand((b, gh, gw), generator=g) < 0.85
    return (screen.to(device=device, dtype=dtype), full.to(device=device, dtype=dtype),
            base.to(device=device, dtype=dtype), visited.to(device), block, 0.5)


def _empty_causal_ate_map(device, dtype, variant):
    screen, full, base, visited, block, tau = _build_causal_ate_map(device, dtype, True, variant)
    return (screen[:0], full[:0], base[:0], visited[:0], block, tau)


# Progressive masking (deletion / insertion, spec §3.4): one 224x224 image, 64
# steps of one row (224 pixels) each from step 80 on. Small: per-sample rank
# maps and the whole curve (step 13 over 120 pixels: 11 steps, the last all
# baseline), or one shared map and a chunk from step 3 on.
_RANK_VARIANTS = {
    # variant: (small step, start, count), (large ...)
    "per-sample-full-curve": ((13, 0, 11), (224, 80, 64)),
    "shared-chunk": ((7, 3, 4), (224, 80, 64)),
}


def _random_ranks(lead, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(h * w, generator=g) for _ in range(lead)]).view(lead, h, w)


def _build_rank_masked_batch(device, dtype, small, variant):
    shape = (2, 3, 10, 12) if small else (1, 3, 224, 224)
    step, start, count = _RANK_VARIANTS[variant][0 if small else 1]
    lead = shape[0] if variant.startswith("per-sample") else 1
    return (_rand(shape, device, dtype, 17), _rand(shape, device, dtype, 18, scale=0.5),
            _random_ranks(lead, *shape[2:], 19).to(device), step, start, count)


def _empty_rank_masked_batch(device, dtype, variant):
    step, start, count = _RANK_VARIANTS[variant][0]
    e = torch.empty(0, 3, 10, 12, device=device, dtype=dtype)
    return (e, e.clone(), _random_ranks(1, 10, 12, 19).to(device), step, start, count)


CASES: dict[str, OpCase] = {
    c.op: c
    for c in (
        OpCase(
            "fastattr::guided_relu", "resnet activation (32,64,112,112)",
            _build_guided_relu, _empty_guided_relu,
            bytes_moved=lambda x, *_: 2 * nbytes(x),
            autograd="differentiable", layout_args=(0,), variants=tuple(_RELU_UPPER),
            keeps_dense_strides=True,
        ),
        OpCase(
            "fastattr::_guided_relu_backward", "resnet activation (32,64,112,112)",
            _build_guided_relu_backward, _empty_guided_relu_backward,
            bytes_moved=lambda g, r, *_: 3 * nbytes(g),
            autograd="differentiable", layout_args=(0, 1), variants=tuple(_RELU_BACKWARD),
            keeps_dense_strides=True,
        ),
        OpCase(
            "fastattr::guided_max_pool2d", "MaxPool2d(3,2,1) on (32,64,112,112)",
            _build_guided_max_pool2d, _empty_guided_max_pool2d,
            # read x; write the output and its int64 indices
            bytes_moved=lambda x, *_: nbytes(x) + (x.numel() // 4) * (x.element_size() + 8),
            autograd="differentiable", layout_args=(0,), variants=tuple(POOLS),
            baseline=_baseline_max_pool2d,
        ),
        OpCase(
            "fastattr::_guided_max_pool2d_backward", "MaxPool2d(3,2,1) on (32,64,112,112)",
            _build_guided_max_pool2d_backward, _empty_guided_max_pool2d_backward,
            bytes_moved=_pool_backward_bytes,
            autograd="differentiable", layout_args=(0, 1), variants=tuple(POOLS),
        ),
        OpCase(
            "fastattr::ig_path_inputs", "32 steps x (4,3,224,224)",
            _build_ig_path_inputs, _empty_ig_path_inputs,
            bytes_moved=lambda x, b, a: (2 + a.shape[0]) * nbytes(x),
            autograd="differentiable", layout_args=(0, 1), variants=_IG_VARIANTS,
        ),
        OpCase(
            "fastattr::ig_accumulate_", "32 steps x (4,3,224,224)",
            _build_ig_accumulate, _empty_ig_accumulate,
            # read grads, read and write total
            bytes_moved=lambda total, grads, w: nbytes(grads) + 2 * nbytes(total),
            autograd="forward_only", layout_args=(0, 1), format_args=(0,), variants=_IG_VARIANTS,
            mutates=True,
            # CUDA may fuse each multiply-add (one rounding instead of two).
            exact_parity=False,
        ),
        OpCase(
            "fastattr::rise_masks", "64 RISE masks 224x224 (7x7 grids, up 256)",
            _build_rise_masks, _empty_rise_masks,
            # read the grids, indices and shifts; write the masks
            bytes_moved=lambda grids, index, shifts, size, *_: (nbytes(grids, index, shifts)
                                                               + index.shape[0] * size[0] * size[1] * grids.element_size()),
            autograd="differentiable", layout_args=(0,), variants=_RISE_MASK_VARIANTS,
            layouts=("contiguous", "transposed", "sliced"),  # grids are 3-D: no channels_last
        ),
        OpCase(
            "fastattr::rise_masked_batch", "64 RISE masks x (1,3,224,224)",
            _build_rise_masked_batch, _empty_rise_masked_batch,
            bytes_moved=_rise_batch_bytes,
            autograd="differentiable", layout_args=(0, 1), variants=_RISE_BATCH_VARIANTS,
        ),
        OpCase(
            "fastattr::segment_masked_batch", "64 keep rows x 200 segments x (1,3,224,224)",
            _build_segment_masked_batch, _empty_segment_masked_batch,
            bytes_moved=lambda x, b, seg, keep: (2 + keep.shape[0]) * nbytes(x) + nbytes(seg, keep),
            autograd="differentiable", layout_args=(0, 1, 2), variants=_SEGMENT_VARIANTS,
        ),
        OpCase(
            "fastattr::window_masked_batch", "64 occlusion windows 3x15x15 stride 8 x (1,3,224,224)",
            _build_window_masked_batch, _empty_window_masked_batch,
            bytes_moved=lambda x, b, window, strides, start, count: (2 + count) * nbytes(x),
            autograd="differentiable", layout_args=(0, 1), variants=tuple(_WINDOWS),
        ),
        OpCase(
            "fastattr::block_patch_batch", "48 block interventions (8x8 patches of a 1000-patch bank) x (1,3,128,128)",
            _build_block_patch_batch, _empty_block_patch_batch,
            # read the input and the used patches; write every row
            bytes_moved=lambda x, bank, index, blocks: ((1 + index.shape[0]) * nbytes(x) + nbytes(index, blocks)
                                                        + index.shape[0] * bank[0].numel() * bank.element_size()),
            autograd="differentiable", layout_args=(0, 1),
        ),
        OpCase(
            "fastattr::region_outcome", "48 output rows (1 or 3,128,128), 32x32 RoI",
            _build_region_outcome, _empty_region_outcome,
            # read the RoI and gt; read the RoI pixels of the output rows (all channels for softmax)
            bytes_moved=lambda out, roi, gt, *_: nbytes(roi, gt) + nbytes(out) * int(roi.sum()) // roi.numel(),
            autograd="differentiable", layout_args=(0,), variants=tuple(_OUTCOME_VARIANTS),
            layouts=("contiguous", "transposed", "sliced"),  # a (R,) result: no channels_last rule
            exact_parity=False,  # CUDA's tree reduction sums soft values in another order
        ),
        OpCase(
            "fastattr::causal_ate_map", "ATE map 256x256 (32x32 cells of 8x8, n_screen 3, n_samples 50)",
            _build_causal_ate_map, _empty_causal_ate_map,
            bytes_moved=lambda screen, full, base, visited, block, tau: (
                nbytes(screen, full, base, visited) + screen.shape[0] * screen.shape[1] * screen.shape[2]
                * block[0] * block[1] * screen.element_size()),
            autograd="differentiable", layout_args=(0, 1),
            layouts=("contiguous", "transposed", "sliced"),  # (B, gh, gw, n) outcome tables and a (B, H, W) map
        ),
        OpCase(
            "fastattr::rank_masked_batch", "64 deletion steps of 224 pixels x (1,3,224,224)",
            _build_rank_masked_batch, _empty_rank_masked_batch,
            bytes_moved=lambda x, b, ranks, step, start, count: (2 + count) * nbytes(x) + nbytes(ranks),
            autograd="differentiable", layout_args=(0, 1), variants=tuple(_RANK_VARIANTS),
        ),
    )
}


def registered_ops() -> list[str]:
    """Every fastattr op registered with the dispatcher, utility ops excluded."""
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastattr::"))
    return [n for n in names if n not in UTILITY_OPS]


def cases_for_registered_ops() -> list[OpCase]:
    """The case of every registered op; raises if an op has none."""
    missing = [op for op in registered_ops() if op not in CASES]
    if missing:
        raise LookupError(f"no benchmark case in benchmarks/op_cases.py for: {', '.join(missing)}")
    return [CASES[op] for op in registered_ops()]


def clone_args(args: tuple) -> tuple:
    return tuple(a.clone(memory_format=torch.preserve_format) if isinstance(a, torch.Tensor) else a for a in args)


def default_tolerance(case: OpCase, dtype: torch.dtype) -> dict:
    if dtype in case.tolerances:
        return case.tolerances[dtype]
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float16: dict(rtol=4e-3, atol=4e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    }[dtype]


def check_case(case: OpCase, args: tuple, dtype: torch.dtype) -> None:
    """Run op and reference once on copies of args (made for `dtype`) and
    assert they agree at that dtype's tolerance."""
    outs = case.run(*clone_args(args))
    refs = case.ref(*clone_args(args))
    outs, refs = (outs, refs) if isinstance(outs, tuple) else ((outs,), (refs,))
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == ref.shape, f"{case.op}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
        if out.is_floating_point():
            torch.testing.assert_close(out, ref.to(out.dtype), **default_tolerance(case, dtype))
        else:
            assert torch.equal(out, ref), f"{case.op}: integer output differs from the reference"
