"""Shared pieces of the training scripts: determinism, data in memory,
augmentation, saving weights + metadata."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .. import data as fdata


def make_deterministic(seed: int, threads: int) -> None:
    """Same seed + same thread count + same machine type ⇒ bit-identical weights."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def _render_range(args):
    name, split, start, stop = args
    ds = fdata.load(name, split, size=stop)
    return ds.uint8_arrays(start, stop)


def dataset_arrays(name: str, split: str, n: int, workers: int = 1, log=print):
    """Items 0..n-1 of a split as uint8 / bool numpy arrays (rendered in ``workers``
    processes; the result does not depend on ``workers``)."""
    t0 = time.time()
    if workers <= 1 or n < 2000:
        out = _render_range((name, split, 0, n))
    else:
        import multiprocessing as mp

        bounds = np.linspace(0, n, 4 * workers + 1).astype(int)
        chunks = [(name, split, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_range, chunks)
        out = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    log(f"  rendered {n} {name}/{split} items in {time.time() - t0:.1f}s")
    return out


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


def to_float_cl(images_u8: torch.Tensor) -> torch.Tensor:
    """As :func:`to_float`, in channels-last memory layout (same values)."""
    return to_float(images_u8).contiguous(memory_format=torch.channels_last)


def channel_stats(images_u8: np.ndarray) -> tuple[list[float], list[float]]:
    x = images_u8.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 4) for v in x.mean(0)], [round(float(v), 4) for v in x.std(0)]


def dihedral(x: torch.Tensor, g: torch.Generator, *extra: torch.Tensor):
    """A random one of the 8 flips / 90° rotations per sample (same one for the
    matching ``extra`` tensors, e.g. segmentation targets)."""
    n = x.shape[0]
    ops = torch.randint(0, 8, (n,), generator=g)
    tensors = (x, *extra)
    outs = [t.clone() for t in tensors]
    for k in range(1, 8):
        sel = (ops == k).nonzero().flatten()
        if sel.numel() == 0:
            continue
        for t, o in zip(tensors, outs):
            v = t[sel]
            if k & 1:
                v = v.flip(-1)
            v = torch.rot90(v, k >> 1, dims=(-2, -1))
            o[sel] = v
    return outs[0] if not extra else tuple(outs)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(state: dict) -> str:
    """A digest of the tensors alone (names, dtypes, shapes, bytes; sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(model: torch.nn.Module, out_dir: Path, name: str, meta: dict) -> tuple[Path, Path, dict]:
    """``<out>/<name>.safetensors`` (float32 state dict) and ``<out>/<name>.json``; returns both paths and the full metadata."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # One metadata entry only: safetensors writes several in a random order, which
    # would make the bytes (and the sha256) differ between identical runs.
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)
    meta = dict(meta)
    meta["weights_file"] = weights.name
    meta["weights_sha256"] = sha256(weights)
    meta["tensors_sha256"] = tensors_sha256(state)
    meta["parameters"] = int(sum(p.numel() for p in model.parameters()))
    meta["weights_bytes"] = weights.stat().st_size
    meta_path = out_dir / f"{name}.json"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return weights, meta_path, meta


def environment(threads: int) -> dict:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
    }
