"""Shared test helpers: devices, dtypes and tolerances."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Elementwise rules are exact selections; accumulations follow the dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def cpu_and_cuda():
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous storage (a transposed copy viewed back)."""
    if t.dim() < 2:
        return t.repeat_interleave(2)[::2]
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous() or t.shape[-1] == 1 or t.shape[-2] == 1
    return out


class CaptumNoiseFeed:
    """Replaces Captum's NoiseTunnel._add_noise_to_input so that it adds our unit
    noise ``eps`` (shape (batch*n, ...), sample-major, scaled by its stdev)
    instead of drawing, chunk by chunk in Captum's chunk order."""

    def __init__(self, eps, batch, n):
        self.grid = eps.view((batch, n) + tuple(eps.shape[1:]))
        self.s0 = 0

    def __call__(self, inp, stdev, p):
        chunk = self.grid[:, self.s0:self.s0 + p].reshape((-1,) + tuple(self.grid.shape[2:]))
        self.s0 += p
        return inp.repeat_interleave(p, dim=0) + stdev * chunk


# A model given as ``module:callable`` (fastattr.models.load imports it) for the
# job tests: small, so they are fast. Written to a file by each test module.
TINY_MODELS_SOURCE = '''
import torch
from torch import nn


def classifier(classes=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
'''


def load_op_cases():
    """benchmarks/op_cases.py (one case per op), loaded once per session: the
    op harness and the build tests share it."""
    name = "fastattr_bench_op_cases"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "benchmarks" / "op_cases.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]
