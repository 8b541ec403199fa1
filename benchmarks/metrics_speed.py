"""Deletion metric speed: fastattr.metrics.deletion against the two ways it is
usually written, and against the bare model forward time.

Case (the issue's): torchvision resnet18 (random init, eval), 224x224, B
images, step 224 (one row per step: 224 steps, 225 model calls per image).

- "fastattr": ``fastattr.metrics.deletion`` (rank_masked_batch op writing each
  tile's images from the pixel ranks, the engine's forward-only evaluator, at
  the engine's default batch size), target given;
- "where+trapezoid": plain PyTorch, batched the same way: per tile a
  ``torch.where(rank < t * step, substrate, image)``, forward, softmax,
  ``torch.trapezoid``;
- "per-step loop": RISE's ``CausalMetric.single_run`` way, one image at a time
  and one forward call per step (timed on ``--loop-images`` images and
  reported per image and scaled to B);
- "bare forward": the same B x 225 rows through the model alone, in batches of
  the same size (what any implementation must spend).

Every implementation's AUCs (from its warm-up call) are checked against
fastattr's. Times: ``--rounds`` rounds in a shuffled order after the warm-up
(medians). Peak memory (CPU): the largest growth of VmHWM over the resident
size during a timed call (VmHWM reset through /proc/self/clear_refs before
each; glibc's mmap threshold fixed so that freed tensors leave RSS; the script
re-executes itself to set it).

    python benchmarks/metrics_speed.py --batch 8 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import torch


def _kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--step", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loop-images", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], env)
    if args.threads:
        torch.set_num_threads(args.threads)

    import torchvision

    import fastattr
    from fastattr import engine, metrics

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    sal = torch.rand(args.batch, args.size, args.size, generator=g)
    with torch.no_grad():
        target = model(x).argmax(1)
    hw = args.size * args.size
    n_points = -(-hw // args.step) + 1
    rows = engine.default_batch_size(x)
    sub = torch.zeros_like(x)

    def run_fastattr():
        return metrics.deletion(model, x, sal, target=target, step=args.step).auc

    def run_where():
        ranks = fastattr.ops.saliency_ranks(sal)
        scores = torch.empty(args.batch, n_points)
        grid = [(b, k) for b in range(args.batch) for k in range(n_points)]
        for i in range(0, len(grid), rows):
            chunk = torch.tensor(grid[i:i + rows])
            b, k = chunk[:, 0], chunk[:, 1]
            removed = ranks[b] < (k * args.step).view(-1, 1, 1)
            imgs = torch.where(removed[:, None], sub[b], x[b])
            with torch.no_grad():
                p = torch.softmax(model(imgs), 1).gather(1, target[b][:, None])[:, 0]
            scores[b, k] = p
        return torch.trapezoid(scores, dx=1 / (n_points - 1), dim=1)

    def run_loop(images=args.loop_images):
        out = []
        for i in range(images):
            start, finish = x[i:i + 1].clone(), sub[i:i + 1]
            order = torch.argsort(sal[i].reshape(hw), descending=True, stable=True)
            s = torch.empty(n_points)
            for t in range(n_points):
                with torch.no_grad():
                    s[t] = torch.softmax(model(start), 1)[0, target[i]]
                if t < n_points - 1:
                    idx = order[args.step * t: args.step * (t + 1)]
                    start.view(1, 3, hw)[:, :, idx] = finish.view(1, 3, hw)[:, :, idx]
            out.append((s.sum() - s[0] / 2 - s[-1] / 2) / (n_points - 1))
        return torch.stack(out)

    def run_bare():
        total = args.batch * n_points
        with torch.no_grad():
            for i in range(0, total, rows):
                model(x[:1].expand(min(rows, total - i), -1, -1, -1).contiguous())

    runners = {"fastattr": run_fastattr, "where+trapezoid": run_where, "per-step loop": run_loop, "bare forward": run_bare}
    warm = {name: fn() for name, fn in runners.items()}  # warm-up, and the AUCs agree
    torch.testing.assert_close(warm["where+trapezoid"], warm["fastattr"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(warm["per-step loop"], warm["fastattr"][:args.loop_images], rtol=1e-4, atol=1e-5)
    times = {k: [] for k in runners}
    mem = {}
    order = list(runners)
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for name in order:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _kb("VmRSS")
            t0 = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t0)
            mem[name] = max(mem.get(name, 0.0), (_kb("VmHWM") - base) / 1024)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the loop ran on loop_images images: scale to the batch
    loop_b = med["per-step loop"] * args.batch / args.loop_images
    ratio_bare = statistics.median(a / b for a, b in zip(times["fastattr"], times["bare forward"]))
    print(f"deletion, resnet18 (random init) {args.size}x{args.size}, B={args.batch}, step {args.step} "
          f"({n_points} model calls per image), {rows} rows per forward pass, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds (medians)\n")
    print("| implementation | time (s) | per image (s) | vs fastattr | peak memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name in runners:
        t = loop_b if name == "per-step loop" else med[name]
        note = f" (measured on {args.loop_images} image(s), scaled to {args.batch})" if name == "per-step loop" else ""
        print(f"| {name}{note} | {t:.2f} | {t / args.batch:.3f} | {t / med['fastattr']:.2f}x | {mem[name]:.0f} |")
    print(f"\nfastattr / bare forward (median of per-round ratios): {ratio_bare:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
