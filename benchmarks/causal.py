"""Causal ATE (PdCR, spec §2.3) end to end: fastattr.causal_ate against the
reference-style loop and the bare model-forward time.

    python benchmarks/causal.py [--size 128] [--model bundled|random] [--n-samples 50] [--rounds 3] [--paired]

- "fastattr": ``fastattr.causal_ate`` (patches mode, n_screen 3, tau 0.02,
  block 8, 32x32 RoI on the image's largest lesion) at its default batch size,
  with a seeded generator.
- "reference loop": spec §2.3 as the reference code runs it, in plain
  PyTorch: one cell at a time, row-major, ``x.repeat(n)`` with the cell
  overwritten by ``bank[randint]``, forward passes of ``n_screen`` and then
  ``n_samples`` rows, RoI Dice per row; the same seed (so the same draws and,
  checked, the same map).
- "model limit": bare forward passes (no grad) of the image itself, the same
  passes (row counts, in order) as fastattr's: what any implementation of
  them must spend.
- "time in the model's forward": the share of each call spent inside the
  model's forward passes (timed around each pass); the rest is the
  implementation's own overhead.
- ``--paired``: fastattr and the reference loop, every pass each makes paired
  with a bare pass of the same row count on the image (alternating which runs
  first): each call's own time (the call less the bare passes) over the bare
  passes' time, measured pass by pass under the same machine conditions, which
  a drifting load cannot bias; and fastattr's own time over the loop's.
Data: the bundled lesions test image 0 and its mask (bilinearly / nearest
up-sampled for --size 256), a bank of 100 patches from each of 10 training
images. Model: the bundled lesions U-Net, or the same architecture randomly
initialised (``--model random``; with --size 256). Peak memory: growth of the
process's VmHWM during the call over the resident size before it (VmHWM reset
through /proc/self/clear_refs), in the timed call itself; CUDA: max_memory_allocated.
Times: medians over rounds, implementations interleaved per round; the first
round's maps are compared (no separate correctness or warm-up calls).
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
    """Counts the rows and times the model's own forward passes, so that each
    implementation's time outside the model (its overhead) is measured in the
    same call, free of the machine's drift between calls."""

    def __init__(self, model, sync):
        super().__init__()
        self.model, self.rows, self.seconds, self.sync, self.passes = model, 0, 0.0, sync, []

    def forward(self, x):
        self.rows += x.shape[0]
        self.passes.append(x.shape[0])
        self.sync()
        t0 = time.perf_counter()
        out = self.model(x)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


class Paired(torch.nn.Module):
    """Runs, next to each of the model's passes, a bare pass of the same row count
    on the image itself (rows of one pre-made tensor), alternating which goes
    first, each timed by its own :class:`Counting`: the bare model's time for the
    same passes measured under the same machine conditions, pass by pass (robust
    to load drifting between calls)."""

    def __init__(self, model, sync, image):
        super().__init__()
        self.inside, self.bare = Counting(model, sync), Counting(model, sync)
        self.image = image
        self.rows_of_x = image[:0]

    def forward(self, x):
        n = x.shape[0]
        if self.rows_of_x.shape[0] < n:
            self.rows_of_x = self.image.expand(n, *self.image.shape[1:]).contiguous()
        bare_first = len(self.inside.passes) % 2
        with torch.no_grad():
            if bare_first:
                self.bare(self.rows_of_x[:n])
            out = self.inside(x)
            if not bare_first:
                self.bare(self.rows_of_x[:n])
        return out


def paired(model, x, gt, box, bank, n0, n1, tau, seed, sync, rounds):
    """fastattr and the reference loop, each call's own time (the call less the
    bare passes run inside it) over the bare passes' time, interleaved per round."""
    impls = {
        "fastattr": lambda m: causal_ate(m, x, gt, box, patch_bank=bank, n_screen=n0, n_samples=n1, tau=tau).map[0, 0],
        "reference loop": lambda m: reference_loop(m, x, gt, box, bank, n0, n1, tau, seed),
    }
    print("| round | impl | passes | own time (s) | bare model, same passes (s) | own / bare | its passes in the "
          "model (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    own, ratios, maps = {k: [] for k in impls}, {k: [] for k in impls}, {}
    for r in range(rounds):
        for name, fn in impls.items():
            wrapper = Paired(model, sync, x)
            torch.manual_seed(seed)
            sync()
            t0 = time.perf_counter()
            maps[name] = fn(wrapper)
            sync()
            bare = wrapper.bare.seconds
            own[name].append(time.perf_counter() - t0 - bare)
            ratios[name].append(own[name][-1] / bare)
            print(f"| {r} | {name} | {len(wrapper.inside.passes)} | {own[name][-1]:.2f} | {bare:.2f} | "
                  f"{ratios[name][-1]:.3f} | {wrapper.inside.seconds:.2f} |", flush=True)
    diff = float((maps["fastattr"] - maps["reference loop"]).abs().max())
    speed = [a / b for a, b in zip(own["fastattr"], own["reference loop"])]
    print(f"\nmedians over {rounds} rounds: fastattr own / bare {statistics.median(ratios['fastattr']):.3f}, "
          f"reference loop own / bare {statistics.median(ratios['reference loop']):.3f}, fastattr / reference loop "
          f"{statistics.median(speed):.3f}; max |map difference| {diff:.3g}")


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def timed_peak(fn, device, sync) -> tuple[float, float, object]:
    """Wall time of ``fn()``, its peak memory growth (MiB) and its result.
    CPU: growth of the process's VmHWM over the resident size before the call
    (VmHWM reset through /proc/self/clear_refs); CUDA: max_memory_allocated."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _vm("VmRSS")
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    t = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _vm("VmHWM") - before
    return t, peak / 2**20, out


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
    ap.add_argument("--paired", action="store_true",
                    help="each pass paired with a bare pass of the same size (see Paired)")
    args = ap.parse_args()
    device = torch.device(args.device)
    model, x, gt, box, bank = problem(args.size, args.model, device)
    n0, n1, tau, seed = 3, args.n_samples, 0.02, 42
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.paired:
        return paired(model, x, gt, box, bank, n0, n1, tau, seed, sync, args.rounds)
    counting = Counting(model, sync)
    batch_size = fastattr.engine.default_batch_size(x, forward_only=True)

    def ours():
        torch.manual_seed(seed)
        return causal_ate(counting, x, gt, box, patch_bank=bank, n_screen=n0, n_samples=n1, tau=tau).map[0, 0]

    def ref():
        return reference_loop(counting, x, gt, box, bank, n0, n1, tau, seed)

    rows, passes = {}, {}

    def limit():
        # The passes fastattr made (their row counts, in order), on the bare model.
        with torch.no_grad():
            for n in passes["fastattr"]:
                counting(rows_of_x[:n])

    # Each call is timed and its peak memory taken in the same call (the
    # first round's maps are the correctness check): at 256x256 a call is
    # thousands of forward passes, so no separate warm-up or memory calls.
    impls = {"fastattr": ours, "reference loop": ref, "model limit": limit}
    times = {k: [] for k in impls}
    peaks, maps = {}, {}
    inside = {k: [] for k in impls}  # share of the call's time spent in the model's forward
    for r in range(args.rounds):
        for name, fn in impls.items():
            counting.rows, counting.seconds, counting.passes = 0, 0.0, []
            t, peak, out = timed_peak(fn, device, sync)
            times[name].append(t)
            inside[name].append(counting.seconds / t)
            peaks[name] = max(peaks.get(name, 0.0), peak)
            if r == 0:
                maps[name] = out
                rows.setdefault(name, counting.rows)
                passes.setdefault(name, counting.passes)
                if name == "fastattr":
                    # The image itself, repeated: the same data as the other two feed the model.
                    rows_of_x = x.expand(max(passes[name]), *x.shape[1:]).contiguous()
            print(f"round {r}: {name} {t:.1f} s, {counting.rows} counted rows, {counting.seconds / t:.1%} in the "
                  f"model, peak {peak:.0f} MiB", flush=True)
    rows["model limit"] = rows["fastattr"]
    a, b = maps["fastattr"], maps["reference loop"]
    diff = float((a - b).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    nonzero = int((a != 0).sum()) // 64
    sizes = passes["fastattr"]
    print(f"fastattr passes: {len(sizes)}, rows per pass {min(sizes)}-{max(sizes)} (mean {sum(sizes) / len(sizes):.1f}); "
          f"reference loop passes: {len(passes['reference loop'])}")
    print(f"causal_ate, {args.model} lesions U-Net {args.size}x{args.size}, RoI {box}, bank {bank.shape[0]}, "
          f"n_screen {n0}, n_samples {n1}, tau {tau}, {torch.get_num_threads()} threads, {device}; "
          f"fastattr batch {batch_size}; max |map - reference map| = {diff:.3g}; {nonzero} nonzero cells")
    print("| impl | forward rows | time (s) | time / model limit | time in the model's forward | peak mem (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in impls:
        print(f"| {name} | {rows[name]} | {med[name]:.2f} | {med[name] / med['model limit']:.2f} | "
              f"{statistics.median(inside[name]):.1%} | {peaks[name]:.0f} |")


if __name__ == "__main__":
    main()
