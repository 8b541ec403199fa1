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


def test_segmentation_target_example_runs():
    """The region-target example explains each image's own lesions: the
    attribution inside the masks outweighs the attribution outside them."""
    text = README.read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "targets.region" in b)
    import fastattr

    scope: dict = {"fastattr": fastattr}
    exec(compile(code, "README segmentation example", "exec"), scope)
    attr, imgs, masks = scope["attr"], scope["imgs"], scope["masks"]
    assert attr.shape == imgs.shape and torch.isfinite(attr).all()
    heat = attr.abs().sum(1)
    inside = (heat * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp_min(1)
    outside = (heat * ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1)
    assert bool((inside > outside)[masks.flatten(1).any(1)].all())
