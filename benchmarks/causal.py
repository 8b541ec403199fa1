"""Causal ATE (PdCR, spec §2.3) end to end: fastattr.causal_ate against the
reference-style loop and the bare model-forward time.

    python benchmarks/causal.py [--size 128] [--model bundled|random] [--n-samples 50] [--rounds 3]

- "fastattr": ``fastattr.causal_ate`` (patches mode, n_screen 3, tau 0.02,
  block 8, 32x32 RoI on the image's largest lesion) at its default batch size,
  with a seeded generator.
- "reference loop": spec §2.3 as the reference code runs it, in plain
  PyTorch: one cell at a time, row-major, ``x.repeat(n)`` with the cell
  overwritten by ``bank[randint]``, forward passes of ``n_screen`` and then
  ``n_samples`` rows, RoI Dice per row; the same seed (so the same draws and,
  checked, the same map).
- "model limit": bare forward passes (no grad) of as many rows as fastattr
  ran, at fastattr's batch size: what any implementation must spend.
Data: the bundled lesions test image 0 and its mask (bilinearly / nearest
up-sampled for --size 256), a bank of 100 patches from each of 10 training
images. Model: the bundled lesions U-Net, or the same architecture randomly
initialised (``--model random``; with --size 256). Peak memory: growth of the
process's VmHWM during the call over the resident size before it (VmHWM reset
through /proc/self/clear_refs), after a warm-up call; CUDA: max_memory_allocated.
Times: medians over rounds, implementations interleaved per round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastattr
from fastattr import data, models
from fastattr.methods.causal import causal_ate, patch_bank


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def peak_growth_mb(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _vm("VmRSS")
    fn()
    return (_vm("VmHWM") - before) / 2**20


def problem(size: int, which: str, device):
    ds = data.load("lesions", split="test")
    image, _, mask = ds[0]
    x = image[None].float()
    gt = torch.as_tensor(mask).float().reshape(1, 1, *x.shape[-2:])
    train = data.load("lesions", split="train")
    images = torch.stack([train[i][0] for i in range(10)]).float()
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        gt = F.interpolate(gt, size=(size, size), mode="nearest")
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if which == "bundled":
        model = models.load("lesions-unet")
    else:
        from fastattr.models import _arch

        torch.manual_seed(0)
        model = _arch.build("lesions-unet").eval()
    # RoI: 32x32 on the grid, centred on the lesion pixels' centroid.
    ys, xs = np.nonzero(gt[0, 0].numpy())
    r = int(np.clip(round(ys.mean() / 8) * 8 - 16, 0, size - 32))
    c = int(np.clip(round(xs.mean() / 8) * 8 - 16, 0, size - 32))
    bank = patch_bank(images, 8, 100, generator=torch.Generator().manual_seed(0))
    return model.to(device), x.to(device), gt.to(device), (r, c, 32), bank.to(device)


def reference_loop(model, x, gt, box, bank, n0, n1, tau, seed):
    """Spec §2.3, one cell at a time (written from the spec, plain PyTorch)."""
    torch.manual_seed(seed)
    r0, c0, p = box
    g = gt[:, :, r0:r0 + p, c0:c0 + p]

    def y(batch):
        with torch.no_grad():
            pred = (model(batch) > 0.5).float()[:, :, r0:r0 + p, c0:c0 + p]
        return 100 * 2 * (pred * g).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + g.sum((1, 2, 3)) + 1e-10)

    h, w = x.shape[-2:]
    base = y(x)
    heat = torch.zeros(h, w, device=x.device)
    roi = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    roi[r0:r0 + p, c0:c0 + p] = True
    k = bank.shape[0]
    for i in range(0, h - 7, 8):
        for j in range(0, w - 7, 8):
            if roi[i:i + 8, j:j + 8].any():
                continue
            idx0 = torch.randint(0, k, (n0,))
            x0 = x.repeat(n0, 1, 1, 1)
            x0[:, :, i:i + 8, j:j + 8] = bank[idx0]
            d0 = y(x0) - base
            if (d0.abs() < tau).all():
                continue
            idx1 = torch.randint(0, k, (n1,))
            x1 = x.repeat(n1, 1, 1, 1)
            x1[:, :, i:i + 8, j:j + 8] = bank[idx1]
            ate = (y(x1) - base).mean()
            if ate.abs() < tau:
                continue
            heat[i:i + 8, j:j + 8] = ate
    heat[roi] = 0
    return heat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", choices=("bundled", "random"), default="bundled")
    ap.add_argument("--n-samples", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model, x, gt, box, bank = problem(args.size, args.model, device)
    n0, n1, tau, seed = 3, args.n_samples, 0.02, 42
    counting = Counting(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch_size = fastattr.engine.default_batch_size(x)

    def ours():
        torch.manual_seed(seed)
        return causal_ate(counting, x, gt, box, patch_bank=bank, n_screen=n0, n_samples=n1, tau=tau).map[0, 0]

    def ref():
        return reference_loop(counting, x, gt, box, bank, n0, n1, tau, seed)

    counting.rows = 0
    a = ours()
    rows_ours = counting.rows
    counting.rows = 0
    b = ref()
    rows_ref = counting.rows
    diff = float((a - b).abs().max())
    noise = torch.rand((batch_size, *x.shape[1:]), generator=torch.Generator().manual_seed(1)).to(device)

    def limit():
        with torch.no_grad():
            left = rows_ours
            while left:
                n = min(batch_size, left)
                model(noise[:n])
                left -= n

    impls = {"fastattr": ours, "reference loop": ref, "model limit": limit}
    times = {k: [] for k in impls}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    peaks = {name: peak_growth_mb(fn, device) for name, fn in impls.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    nonzero = int((a != 0).sum()) // 64
    print(f"causal_ate, {args.model} lesions U-Net {args.size}x{args.size}, RoI {box}, bank {bank.shape[0]}, "
          f"n_screen {n0}, n_samples {n1}, tau {tau}, {torch.get_num_threads()} threads, {device}; "
          f"fastattr batch {batch_size}; max |map - reference map| = {diff:.3g}; {nonzero} nonzero cells")
    print("| impl | forward rows | time (s) | time / model limit | peak mem (MiB) |")
    print("|---|---:|---:|---:|---:|")
    rows = {"fastattr": rows_ours, "reference loop": rows_ref, "model limit": rows_ours}
    for name in impls:
        print(f"| {name} | {rows[name]} | {med[name]:.2f} | {med[name] / med['model limit']:.2f} | "
              f"{peaks[name]:.0f} |")


if __name__ == "__main__":
    main()
