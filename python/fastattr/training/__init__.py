"""Training of the bundled models: ``python -m fastattr.training <name> [--out DIR]``.

Deterministic on CPU: fixed seeds, ``torch.use_deterministic_algorithms``, a
fixed thread count, no data-loader workers (the data are rendered up front,
identically whatever ``--workers``). The same command on the same kind of
machine gives bit-identical weights; see ``training.environment`` in the json
written next to the weights.

Names: ``shapes-vgg``, ``shapes-resnet``, ``lesions-unet``. Without ``--out``
the files go to ``./fastattr-out/train/<name>/``; ``--out`` pointing at
``python/fastattr/assets`` replaces the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

from . import _common

# Default options per model (any can be overridden on the command line).
DEFAULTS = {
    "shapes-vgg": dict(seed=0, threads=1, workers=1, train_size=16_000, val_size=1_000, test_size=2_000,
                       epochs=4, batch_size=64, lr=3e-3, weight_decay=5e-4, label_smoothing=0.05),
    "shapes-resnet": dict(seed=0, threads=1, workers=1, train_size=16_000, val_size=1_000, test_size=2_000,
                          epochs=4, batch_size=64, lr=3e-3, weight_decay=5e-4, label_smoothing=0.05),
    "lesions-unet": dict(seed=0, threads=1, workers=1, train_size=2_000, val_size=200, test_size=1_000,
                         epochs=5, batch_size=16, crop=64, lr=4e-3, weight_decay=1e-4),
}


def available() -> list[str]:
    return sorted(DEFAULTS)


def config(name: str, **overrides) -> dict:
    if name not in DEFAULTS:
        raise ValueError(f"fastattr.training: unknown model {name!r}; available: {', '.join(available())}")
    cfg = dict(DEFAULTS[name])
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in cfg:
            raise ValueError(f"fastattr.training: {name} has no option {key!r} (options: {', '.join(cfg)})")
        cfg[key] = type(cfg[key])(value)
    return cfg


def train(name: str, out: str | Path | None = None, log=print, **overrides):
    """Train ``name``, write ``<out>/<name>.safetensors`` and ``<out>/<name>.json``;
    returns (model, metadata, weights path)."""
    cfg = config(name, **overrides)
    if name.startswith("shapes-"):
        from .shapes import train as run
    else:
        from .lesions import train as run
    log(f"training {name} with {cfg}")
    model, meta = run(name, cfg, log=log)
    out_dir = Path(out) if out is not None else Path("fastattr-out") / "train" / name
    weights, meta_path, meta = _common.save(model, out_dir, name, meta)
    log(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {meta_path}")
    return model, meta, weights
