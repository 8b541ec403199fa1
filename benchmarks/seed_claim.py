"""The seed paper's claim (GNL-IG beats IG on deletion; spec §1.4), checked on
the bundled classifiers and data, and every other method's scores beside it.

For each model (``shapes-vgg``: nn.ReLU + MaxPool2d; ``shapes-resnet``:
functional ReLUs) and method, on the first ``--images`` test images of the
bundled ``shapes`` set (generated on the fly by fastattr.data), it computes

- deletion and insertion AUC with the GNL protocol (spec §1.4): the softmax
  probability of the explained class (the model's top class), one image row
  per step (64 pixels at 64x64: 64 steps, 65 scores), RISE's substrates in the
  model's normalised space (a deleted pixel becomes the normalisation mean;
  the insertion blur is RISE's exact 11x11 kernel, padded with the mean), and
  the heatmap ``|Σ_c attribution|`` (RISE and MFPP maps as they are);
- the same with RISE's batch-evaluation defaults (8 rows per step: 9 scores;
  read off the protocol's curve, whose every 8th image is RISE's);
- the pointing game (tolerance 15 px at 224x224, i.e. 4.3 px here) and the
  energy pointing game against the shapes' ground-truth masks;

and reports means with 95% confidence intervals (t distribution), and a
paired comparison of GNL-IG against IG on the same images (mean difference
with its 95% CI, paired t-test, Wilcoxon signed-rank test, share of images
where GNL-IG is better).

    python benchmarks/seed_claim.py --images 500 --threads 2 --json benchmarks/seed_claim.json \\
        --markdown benchmarks/seed_claim.md

IG and GNL-IG follow the protocol: Gauss-Legendre steps (50 in the paper;
``--ig-steps``), baseline 0 in the normalised space (the mean colour), the top
class's logit explained.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from scipy import stats

import fastattr
from fastattr import data, metrics, models


def method_table(mean: torch.Tensor, args) -> dict:
    """name -> (label, function of (model, x, target, generator) returning attributions)."""
    base = mean.view(1, 3, 1, 1)
    M = fastattr
    return {
        "gnl_integrated_gradients": (f"GNL-IG ({args.ig_steps} steps)", lambda m, x, t, g: M.gnl_integrated_gradients(
            m, x, t, baselines=base.expand_as(x), n_steps=args.ig_steps)),
        "integrated_gradients": (f"IG ({args.ig_steps} steps)", lambda m, x, t, g: M.integrated_gradients(
            m, x, t, baselines=base.expand_as(x), n_steps=args.ig_steps)),
        "guided_backprop": ("guided backprop", lambda m, x, t, g: M.guided_backprop(m, x, t)),
        "smooth_grad": (f"SmoothGrad ({args.smooth_samples} x sigma 0.15)", lambda m, x, t, g: M.smooth_grad(
            m, x, t, n_samples=args.smooth_samples, stdevs=0.15, generator=g)),
        "smooth_taylor": (f"SmoothTaylor ({args.taylor_roots} roots, sigma 0.3)", lambda m, x, t, g: M.smooth_taylor(
            m, x, t, n_roots=args.taylor_roots, noise_scale=0.3, generator=g)),
        "occlusion": (f"occlusion (3x8x8, stride {args.occlusion_stride})", lambda m, x, t, g: M.occlusion(
            m, x, t, sliding_window_shapes=(3, 8, 8), strides=(3, args.occlusion_stride, args.occlusion_stride),
            baselines=base.expand_as(x))),
        "rise": (f"RISE ({args.rise_masks} masks, s=7, p=0.5)", lambda m, x, t, g: M.rise(
            m, x, t, n_masks=args.rise_masks, grid_size=7, p=0.5, generator=g, baselines=base.expand_as(x))),
        "mfpp": (f"MFPP ({args.mfpp_masks} masks)", lambda m, x, t, g: M.mfpp(
            m, x, t, n_masks=args.mfpp_masks, generator=g, baselines=base.expand_as(x))),
    }


def normalisation_mean(model) -> torch.Tensor:
    for module in model.modules():
        if isinstance(module, models.Normalize):
            return module.mean.detach().clone()
    raise SystemExit("the model has no fastattr.models.Normalize: its normalised space is unknown")


def ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% t confidence interval."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def evaluate(model_name: str, args, images: torch.Tensor, masks: torch.Tensor, log) -> dict:
    model = models.load(model_name)
    mean = normalisation_mean(model)
    table = method_table(mean, args)
    names = [m for m in args.methods if m in table]
    h, w = images.shape[-2:]
    protocol_step, rise_step = w, 8 * w
    tolerance = 15.0 * min(h, w) / 224.0
    out = {}
    for name in names:
        label, fn = table[name]
        t0 = time.perf_counter()
        per = {k: [] for k in ("deletion", "insertion", "deletion_rise", "insertion_rise", "pointing", "energy")}
        gen = torch.Generator().manual_seed(args.seed)
        attr_seconds = 0.0
        for s in range(0, images.shape[0], args.batch):
            x = images[s:s + args.batch]
            with torch.no_grad():
                target = model(x).argmax(1)
            ta = time.perf_counter()
            a = fn(model, x, target, gen).detach()
            attr_seconds += time.perf_counter() - ta
            sal = metrics.heatmap(a)
            for key, mfn in (("deletion", metrics.deletion), ("insertion", metrics.insertion)):
                if args.rise_step_only:
                    per[key + "_rise"].append(mfn(model, x, sal, target=target, step=rise_step, center=mean).auc)
                    continue
                curve, area = mfn(model, x, sal, target=target, step=protocol_step, center=mean)
                per[key].append(area)
                # RISE's step is 8 protocol steps: its images are every 8th image of
                # the protocol's curve (same ranks, same substrate), so its curve is
                # that subsequence whenever 8 protocol steps tile the image exactly.
                if (h * w) % rise_step == 0:
                    per[key + "_rise"].append(metrics.auc(curve[:, ::rise_step // protocol_step]))
                else:
                    per[key + "_rise"].append(mfn(model, x, sal, target=target, step=rise_step, center=mean).auc)
            per["pointing"].append(metrics.pointing_game(sal, masks[s:s + args.batch], tolerance).double())
            per["energy"].append(metrics.energy_pointing_game(sal, masks[s:s + args.batch]).double())
            log(f"  {model_name} {name}: {min(s + args.batch, images.shape[0])}/{images.shape[0]} images, "
                f"{time.perf_counter() - t0:.0f} s")
        res = {k: torch.cat(v).double().numpy() for k, v in per.items() if v}
        seconds = time.perf_counter() - t0
        out[name] = {"label": label, "values": res, "seconds": seconds, "attribution_seconds": attr_seconds}
        log(f"{model_name:14s} {name:26s} {seconds:7.1f} s (attributions {attr_seconds:.1f} s): "
            + ", ".join(f"{k} {v.mean():.4f}" for k, v in res.items()))
        if args.json:  # a checkpoint after every method
            save_json(args.json, {model_name: out}, args.images, args.command)
    return out


def save_json(path, results, images, command):
    dump = {m: {n: {"label": r["label"], "seconds": r["seconds"],
                    "values": {k: v.tolist() for k, v in r["values"].items()}} for n, r in res.items()}
            for m, res in results.items()}
    with open(path, "w") as f:
        json.dump({"command": command, "images": images, "results": dump}, f)


def load_json(paths) -> tuple[dict, int, list[str]]:
    results, images, commands = {}, None, []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        commands.append(d["command"])
        images = d["images"] if images is None else min(images, d["images"])
        for m, res in d["results"].items():
            results.setdefault(m, {}).update(
                {n: {"label": r["label"], "seconds": r["seconds"],
                     "values": {k: np.asarray(v) for k, v in r["values"].items()}} for n, r in res.items()})
    return results, images, commands


def paired(a: np.ndarray, b: np.ndarray, lower_is_better: bool) -> dict:
    d = a - b
    mean, half = ci95(d)
    t = stats.ttest_rel(a, b)
    nonzero = d[d != 0]
    wil = stats.wilcoxon(a, b) if nonzero.size else None
    better = (d < 0) if lower_is_better else (d > 0)
    return {"mean_diff": mean, "ci95": half, "t": float(t.statistic), "p_t": float(t.pvalue),
            "p_wilcoxon": float(wil.pvalue) if wil is not None else float("nan"),
            "gnl_better_share": float(better.mean()), "ties": int((d == 0).sum())}


METRIC_COLUMNS = (("deletion", "deletion AUC ↓"), ("insertion", "insertion AUC ↑"),
                  ("deletion_rise", "deletion AUC ↓ (RISE step)"), ("insertion_rise", "insertion AUC ↑ (RISE step)"),
                  ("pointing", "pointing game ↑"), ("energy", "energy pointing ↑"))


def markdown(results: dict, n: int, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"{n} test images of `bundled:shapes` (64x64) per model; mean ± 95% CI half-width (t).", ""]
    for model_name, res in results.items():
        lines += [f"**{model_name}**", "",
                  "| method | " + " | ".join(c for _, c in METRIC_COLUMNS) + " | s |",
                  "|---|" + "---|" * (len(METRIC_COLUMNS) + 1)]
        for name, r in res.items():
            cells = []
            for key, _ in METRIC_COLUMNS:
                if key not in r["values"]:
                    cells.append("-")
                    continue
                m, h = ci95(r["values"][key])
                cells.append(f"{m:.4f} ± {h:.4f}")
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
        if "gnl_integrated_gradients" in res and "integrated_gradients" in res:
            g, i = res["gnl_integrated_gradients"]["values"], res["integrated_gradients"]["values"]
            lines += ["", "Paired, GNL-IG minus IG on the same images:", "",
                      "| metric | mean difference ± 95% CI | paired t p | Wilcoxon p | GNL-IG better on | ties |",
                      "|---|---|---|---|---|---|"]
            for key, col in METRIC_COLUMNS[:4]:
                if key not in g or key not in i:
                    continue
                p = paired(g[key], i[key], lower_is_better=key.startswith("deletion"))
                lines.append(f"| {col} | {p['mean_diff']:+.4f} ± {p['ci95']:.4f} | {p['p_t']:.2g} | "
                             f"{p['p_wilcoxon']:.2g} | {100 * p['gnl_better_share']:.1f}% | {p['ties']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--models", nargs="+", default=["shapes-vgg", "shapes-resnet"])
    p.add_argument("--methods", nargs="+", default=["gnl_integrated_gradients", "integrated_gradients",
                                                    "guided_backprop", "smooth_grad", "smooth_taylor", "occlusion",
                                                    "rise", "mfpp"])
    p.add_argument("--batch", type=int, default=50, help="images per method call")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--smooth-samples", type=int, default=16)
    p.add_argument("--taylor-roots", type=int, default=16)
    p.add_argument("--rise-masks", type=int, default=500)
    p.add_argument("--mfpp-masks", type=int, default=500)
    p.add_argument("--occlusion-stride", type=int, default=4)
    p.add_argument("--rise-step-only", action="store_true",
                   help="only RISE's step (8 rows per step) for deletion and insertion, not the protocol's one row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the per-image values and summaries here")
    p.add_argument("--markdown", default=None, help="write the tables here")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="only build the tables from these --json outputs (e.g. one run per model)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/seed_claim.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.command = command
    if args.from_json:
        results, n, commands = load_json(args.from_json)
        text = markdown(results, n, "; ".join(commands))
        print(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        return 0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    ds = data.load("shapes", split="test", size=max(args.images, 1))
    images, _, masks = ds.batch(range(args.images))
    t0 = time.perf_counter()
    results = {m: evaluate(m, args, images, masks, log) for m in args.models}
    text = markdown(results, args.images, command)
    text += f"\nTotal {time.perf_counter() - t0:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads.\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        save_json(args.json, results, args.images, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
