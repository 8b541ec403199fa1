"""Shared test helpers: devices, dtypes and tolerances."""

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
