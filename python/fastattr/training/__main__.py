"""``python -m fastattr.training <name> [--out DIR] [--epochs N] [...]``"""

from __future__ import annotations

import argparse
import json
import sys

from . import DEFAULTS, available, train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastattr.training", description=__doc__)
    p.add_argument("name", choices=available())
    p.add_argument("--out", default=None, help="output folder (default ./fastattr-out/train/<name>)")
    opts = sorted({k for d in DEFAULTS.values() for k in d})
    for key in opts:
        kind = float if key in ("lr", "weight_decay", "label_smoothing") else int
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None,
                       help=f"default per model: {', '.join(f'{n}={d[key]}' for n, d in DEFAULTS.items() if key in d)}")
    args = vars(p.parse_args(argv))
    name, out = args.pop("name"), args.pop("out")
    overrides = {k: v for k, v in args.items() if v is not None}
    _, meta, weights = train(name, out, **overrides)
    print(json.dumps({"weights": str(weights), "metrics": meta["metrics"],
                      "seconds": meta["training"]["total_seconds"], "sha256": meta["weights_sha256"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
