"""The README's quick start runs as written and does what it says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs():
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README quick start", "exec"), scope)
    attr, x = scope["attr"], scope["x"]
    assert attr.shape == x[None].shape
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0
