"""fastattr.captum's classes against their Captum 0.9 twins: time and peak memory.

    python benchmarks/captum_classes.py [--rounds 5] [--out table.md] [--device cpu]
    python benchmarks/captum_classes.py --peak-memory CASE SETTING IMPL   # one measurement, fresh process

Each case is one ``Class(model).attribute(...)`` call, made identically through
``captum.attr`` and ``fastattr.captum`` (small random-init models, so that it
runs in a few minutes on a loaded CPU):

- "default": Captum's default settings (no ``internal_batch_size``:
  Captum evaluates all B x n_steps IG path points in one pass;
  ``perturbations_per_eval=1``; ``nt_samples_batch_size=None``), the same
  keywords for both, so fastattr's engine picks its own chunking where the
  keyword is None.
- "equal batch": the batch keyword set to the same value for both (IG:
  ``internal_batch_size`` = fastattr's default rows per pass; occlusion and
  ablation: ``perturbations_per_eval=16``).

Times: per round, both implementations run once each in a shuffled order after
a warm-up call; medians over rounds, and the ratio Captum / fastattr as the
median of per-round ratios (> 1: fastattr is faster). Peak memory: a fresh
process per measurement, the growth of VmHWM over the resident size on a
second call after a warm-up call (VmHWM reset through /proc/self/clear_refs;
glibc's mmap threshold fixed at 128 KiB so that freed tensors leave RSS), or
``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # noqa: E402  (peak_growth_mib)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()


class TwoInputs(nn.Module):
    """An image and a sequence of embeddings, with a per-example scale argument."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = cnn()
        self.tokens = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, image, tokens, scale):
        return (self.image(image) + self.tokens(tokens).mean(1)) * scale


def case(name: str, device: str):
    """(class name, model, inputs, keyword arguments per setting)."""
    g = torch.Generator().manual_seed(1)
    img = lambda b: torch.rand((b, 3, 32, 32), generator=g).to(device)  # noqa: E731
    if name == "IG":
        return "IntegratedGradients", cnn(), img(8), {"default": {}, "equal batch": {"internal_batch_size": "rows"}}
    if name == "IG two inputs":
        x = (img(8), torch.randn((8, 12, 32), generator=g).to(device))
        kw = {"additional_forward_args": (torch.rand((8, 1), generator=g).to(device) + 0.5,)}
        return ("IntegratedGradients", TwoInputs(), x,
                {"default": dict(kw), "equal batch": dict(kw, internal_batch_size="rows")})
    if name in ("Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution"):
        return name, cnn(), img(32), {"default": {}}
    if name == "NoiseTunnel(Saliency)":
        return "NoiseTunnel", cnn(), img(16), {"default": {"nt_samples": 10, "stdevs": 0.1},
                                              "equal batch": {"nt_samples": 10, "stdevs": 0.1,
                                                              "nt_samples_batch_size": 4}}
    if name == "Occlusion":
        kw = {"sliding_window_shapes": (3, 6, 6), "strides": (3, 3, 3)}
        return "Occlusion", cnn(), img(4), {"default": kw, "equal batch": dict(kw, perturbations_per_eval=16)}
    if name == "FeatureAblation":
        cells = (torch.arange(32)[:, None] // 4 * 8 + torch.arange(32)[None] // 4).view(1, 1, 32, 32)
        kw = {"feature_mask": cells.expand(1, 3, 32, 32).to(device)}
        return "FeatureAblation", cnn(), img(4), {"default": kw, "equal batch": dict(kw, perturbations_per_eval=16)}
    raise KeyError(name)


CASES = ["IG", "IG two inputs", "Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution",
         "NoiseTunnel(Saliency)", "Occlusion", "FeatureAblation"]


def runner(name: str, setting: str, impl: str, device: str):
    import captum.attr as captum_attr

    import fastattr
    import fastattr.captum as fc

    cls_name, model, x, settings = case(name, device)
    model = model.to(device)
    kw = dict(settings[setting])
    if kw.get("internal_batch_size") == "rows":
        first = x[0] if isinstance(x, tuple) else x
        per = sum(t[0].numel() for t in x) if isinstance(x, tuple) else first[0].numel()
        kw["internal_batch_size"] = fastattr.engine.default_batch_size(first.new_empty((first.shape[0], per)))
    module = captum_attr if impl == "captum" else fc
    if cls_name == "NoiseTunnel":
        method = module.NoiseTunnel(module.Saliency(model))
    else:
        method = getattr(module, cls_name)(model)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return method.attribute(x, target=3, **kw)

    return run


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_peak_here(name, setting, impl, device) -> float:
    return e2e.peak_growth_mib(runner(name, setting, impl, device), device, warmup=True)


def peak_memory_mb(name, setting, impl, device) -> float:
    cmd = [sys.executable, __file__, "--peak-memory", name, setting, impl, "--device", device]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def timed(name, setting, device, rounds):
    runs = {impl: runner(name, setting, impl, device) for impl in ("captum", "fastattr")}
    times = {impl: [] for impl in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(rounds):
        order = list(runs)
        random.shuffle(order)
        for impl in order:
            _sync(device)
            t0 = time.perf_counter()
            runs[impl]()
            _sync(device)
            times[impl].append(time.perf_counter() - t0)
    ratios = [c / f for c, f in zip(times["captum"], times["fastattr"])]
    return statistics.median(times["captum"]), statistics.median(times["fastattr"]), statistics.median(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--cases", nargs="*", default=CASES)
    p.add_argument("--peak-memory", nargs=3, metavar=("CASE", "SETTING", "IMPL"))
    a = p.parse_args()
    if a.peak_memory:
        print(json.dumps({"peak_mb": measure_peak_here(*a.peak_memory, a.device)}))
        return
    random.seed(0)
    lines = ["| class | setting | Captum (s) | fastattr (s) | Captum / fastattr time | Captum peak (MiB) | "
             "fastattr peak (MiB) | fastattr / Captum peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in a.cases:
        for setting in case(name, "cpu")[3]:
            tc, tf, ratio = timed(name, setting, a.device, a.rounds)
            mc = peak_memory_mb(name, setting, "captum", a.device)
            mf = peak_memory_mb(name, setting, "fastattr", a.device)
            lines.append(f"| {name} | {setting} | {tc:.3f} | {tf:.3f} | {ratio:.2f} | {mc:.1f} | {mf:.1f} | "
                         f"{mf / mc if mc > 0 else float('nan'):.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
