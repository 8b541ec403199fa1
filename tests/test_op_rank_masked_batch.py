"""Tests of fastattr::rank_masked_batch that are specific to it: the numpy
formula (every step of a curve, shared and per-sample rank maps, channels_last),
exact copies, the deletion/insertion endpoints, gradients against the float64
reference's autograd, ``saliency_ranks`` against a numpy lexsort oracle (ties by
pixel index), the wrapper's default step count and the error messages. Layouts,
dtypes, empty inputs, opcheck, torch.compile and CPU/CUDA parity are in
tests/test_op_harness.py.

rank_masked_batch(input, baseline, ranks, step, start, count) writes the
step-major batch out[k*S + s][c, h, w] = baseline[s][c, h, w] if
ranks[s or 0, h, w] < (start + k) * step else input[s][c, h, w].
"""

import numpy as np
import pytest
import torch

import fastattr
from fastattr import reference
from op_harness import assert_fake_error, assert_same_error
from utils import cpu_and_cuda

ops = fastattr.ops
op = torch.ops.fastattr.rank_masked_batch.default


def numpy_batch(x, b, ranks, step, start, count):
    """The formula in numpy, pixel by pixel of a flattened plane."""
    x, b, r = x.cpu().double().numpy(), b.cpu().double().numpy(), ranks.cpu().numpy()
    s_, c_, h, w = x.shape
    rows = []
    for k in range(count):
        t = start + k
        for s in range(s_):
            img = x[s].reshape(c_, h * w).copy()
            rank = r[s if r.shape[0] > 1 else 0].reshape(h * w)
            for p in range(h * w):
                if rank[p] < t * step:
                    img[:, p] = b[s].reshape(c_, h * w)[:, p]
            rows.append(img.reshape(c_, h, w))
    return torch.from_numpy(np.stack(rows))


def make(shape, per_sample, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    b = (0.5 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)
    lead = shape[0] if per_sample else 1
    h, w = shape[2:]
    ranks = torch.stack([torch.randperm(h * w, generator=g) for _ in range(lead)]).view(lead, h, w)
    return x, b, ranks.to(device)


PER_SAMPLE = pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
GEOMETRIES = {  # (shape, step, start, count)
    "full-curve": ((2, 3, 5, 7), 4, 0, 10),  # 35 pixels, step 4: 9 steps + the start
    "chunk": ((3, 2, 6, 6), 5, 2, 3),
    "one-pixel-steps": ((1, 3, 3, 4), 1, 0, 13),
    "large-plane": ((2, 3, 40, 45), 45, 7, 5),  # a plane spanning several CPU tasks
}


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@PER_SAMPLE
def test_matches_the_numpy_formula_exactly(device, geometry, per_sample):
    shape, step, start, count = GEOMETRIES[geometry]
    x, b, ranks = make(shape, per_sample, device, seed=1)
    out = op(x, b, ranks, step, start, count)
    assert out.shape == (count * shape[0], *shape[1:]) and out.dtype == torch.float64
    assert torch.equal(out.cpu(), numpy_batch(x, b, ranks, step, start, count))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_element_is_an_exact_copy(device, dtype):
    """The mask is binary: each element is bit-identical to the input's or the
    baseline's, in every dtype (no blend arithmetic)."""
    x, b, ranks = make((2, 3, 6, 5), True, device, dtype, seed=2)
    out = op(x, b, ranks, 3, 0, 11).view(11, 2, 3, 6, 5)
    kept = out == x[None]
    replaced = out == b[None]
    assert bool((kept | replaced).all())
    removed = ranks[None, :, None] < (torch.arange(11, device=device) * 3).view(11, 1, 1, 1, 1)
    assert torch.equal(torch.where(removed, b[None], x[None]), out)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_deletion_endpoints_and_count_per_step(device):
    """Step 0 is the input itself, step ceil(HW / step) the baseline itself,
    and step t replaces exactly min(t * step, HW) pixels in every channel."""
    x, b, ranks = make((2, 3, 7, 9), True, device, seed=3)
    step, n_steps = 10, 7  # ceil(63 / 10)
    out = ops.rank_masked_batch(x, b, ranks, step)  # count defaults to the whole curve
    assert out.shape[0] == (n_steps + 1) * 2
    blocks = out.view(n_steps + 1, 2, 3, 7, 9)
    assert torch.equal(blocks[0], x) and torch.equal(blocks[-1], b)
    for t in range(n_steps + 1):
        replaced = (blocks[t] != x).any(1)  # x and b differ everywhere (continuous draws)
        assert replaced.flatten(1).sum(1).tolist() == [min(t * step, 63)] * 2
        assert bool((blocks[t] != x).all(1)[replaced].all())  # all channels of a replaced pixel


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_channels_last_in_and_out(device):
    x, b, ranks = make((2, 3, 6, 7), True, device, seed=4)
    out = op(x.contiguous(memory_format=torch.channels_last), b, ranks.transpose(1, 2).contiguous().transpose(1, 2),
             3, 1, 6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.cpu(), numpy_batch(x, b, ranks, 3, 1, 6))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_arbitrary_rank_values(device):
    """Ranks need not be a permutation: negative and repeated values follow the
    same rule (negative: replaced from step 1 on; beyond H*W: never)."""
    x, b, _ = make((1, 2, 3, 3), False, device, seed=5)
    ranks = torch.tensor([[[-5, 0, 0], [3, 3, 100], [8, 1, 2]]], device=device)
    assert torch.equal(op(x, b, ranks, 2, 0, 6).cpu(), numpy_batch(x, b, ranks, 2, 0, 6))


@PER_SAMPLE
def test_gradients_match_the_reference(per_sample):
    """Input and baseline gradients equal autograd through the float64
    reference (which pins the op's values): each step's cotangent goes to
    whichever operand the element was copied from."""
    x, b, ranks = make((2, 3, 4, 5), per_sample, "cpu", seed=6)
    w = torch.randn(5 * 2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
    got = torch.autograd.grad((op(xg, bg, ranks, 4, 1, 5) * w).sum(), (xg, bg))
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    want = torch.autograd.grad((reference.rank_masked_batch(xr, br, ranks, 4, 1, 5) * w).sum(), (xr, br))
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, c: op(a, c, ranks, 4, 1, 5), (xg, bg))


def lexsort_ranks(sal):
    """numpy oracle: order by (-saliency, flat index), rank = position in it."""
    s = sal.reshape(sal.shape[0], -1).cpu().double().numpy()
    out = np.empty(s.shape, dtype=np.int64)
    for i, row in enumerate(s):
        order = np.lexsort((np.arange(row.size), -row))
        out[i, order] = np.arange(row.size)
    return torch.from_numpy(out).view(sal.shape[0], *sal.shape[-2:])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_saliency_ranks_break_ties_by_pixel_index(device, dtype):
    g = torch.Generator().manual_seed(8)
    sal = torch.randint(0, 4, (3, 1, 9, 11), generator=g).to(device=device, dtype=dtype)  # many ties
    ranks = ops.saliency_ranks(sal)
    assert ranks.shape == (3, 9, 11) and ranks.dtype == torch.int64
    assert torch.equal(ranks.cpu(), lexsort_ranks(sal))
    flat = ranks.flatten(1).sort(1).values.cpu()
    assert torch.equal(flat, torch.arange(99).expand(3, 99))  # a permutation


def test_saliency_ranks_tie_free_is_descending_argsort():
    sal = torch.randn(2, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    order = np.flip(np.argsort(sal.view(2, -1).numpy(), axis=1), axis=1)  # spec §3.4's order
    ranks = ops.saliency_ranks(sal).view(2, -1).numpy()
    for i in range(2):
        assert (ranks[i][order[i]] == np.arange(42)).all()


def test_saliency_ranks_errors():
    with pytest.raises(ValueError, match=r"saliency must have shape \(B, H, W\) or \(B, 1, H, W\), got \(2, 3, 4, 4\)"):
        ops.saliency_ranks(torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match="saliency must be real numbers, got torch.bool"):
        ops.saliency_ranks(torch.zeros(1, 4, 4, dtype=torch.bool))


def _call(x_shape=(2, 3, 4, 5), ranks_shape=(1, 4, 5), dtype=torch.float32, ranks_dtype=torch.int64, step=2,
          start=0, count=3, baseline_shape=None, device="cpu", ranks_device=None):
    def call():
        x = torch.zeros(x_shape, dtype=dtype, device=device)
        b = torch.zeros(baseline_shape or x_shape, dtype=dtype, device=device)
        r = torch.zeros(ranks_shape, dtype=ranks_dtype, device=ranks_device or device)
        return op(x, b, r, step, start, count)
    return call


@pytest.mark.parametrize("kwargs, match", [
    (dict(x_shape=(2, 12)), r"^fastattr.rank_masked_batch: input must be 4-D \(S, C, H, W\), got a 2-D tensor"),
    (dict(dtype=torch.int64), r"^fastattr: input must be a floating-point tensor, got torch.int64"),
    (dict(baseline_shape=(2, 3, 4, 4)), r"^fastattr: input and baseline must have the same shape"),
    (dict(ranks_dtype=torch.int32), r"^fastattr.rank_masked_batch: ranks must be an int64 tensor, got torch.int32"),
    (dict(ranks_shape=(3, 4, 5)), r"^fastattr.rank_masked_batch: ranks must have shape \[1, 4, 5\] or \[2, 4, 5\] "
                                  r"\(one rank map shared by all samples, or one per sample\), got \[3, 4, 5\]"),
    (dict(ranks_shape=(1, 5, 4)), r"ranks must have shape \[1, 4, 5\] or \[2, 4, 5\]"),
    (dict(step=0), r"^fastattr.rank_masked_batch: step must be at least 1, got 0"),
    (dict(start=-1), r"^fastattr.rank_masked_batch: start must be >= 0 and count >= 1, got start=-1 count=3"),
    (dict(count=0), r"start must be >= 0 and count >= 1, got start=0 count=0"),
    (dict(step=2**62, count=3), r"\(start \+ count - 1\) \* step overflows int64"),
])
def test_errors_name_the_argument(kwargs, match):
    assert_same_error(_call(**kwargs), match)


def test_ranks_on_another_device_is_refused_by_the_fake_kernel():
    assert_fake_error(_call(device="cuda", ranks_device="cpu"),
                      r"^fastattr.rank_masked_batch: ranks must be on the device of input \(cuda:0\), got cpu")
