"""``fastattr demo``: a few bundled images explained by several methods, as pictures.

Each (data set, method) pair is an ordinary job (:func:`fastattr.jobs.run_job`)
writing shards and a manifest under ``OUT/<data>/<method>/``; the demo then
draws, per data set and method, a grid of the images and their heatmap overlays
(``OUT/<data>-<method>.png``), one overview grid per data set
(``OUT/<data>-overview.png``: a row per image, a column per method) and a
summary table (``OUT/summary.md`` / ``summary.json``): seconds per image and
model forward passes per image, both measured by the jobs, and the mean
deletion and insertion AUC of each method (``fastattr run --metrics``: the
GNL paper's protocol, one image row per step; see
:mod:`fastattr.jobs.metrics`), plus the pointing-game rate on "shapes". The
seconds include the metrics; the forward passes count the method's only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .. import visualize
from .runner import run_job
from .spec import JobConfig, JobError

# (method, options) in display order; the IG step and noise counts are kept small
# so that the demo runs in well under a minute on a laptop CPU.
DEMO_METHODS = (
    ("integrated_gradients", {"n_steps": 32}),
    ("gnl_integrated_gradients", {"n_steps": 32}),
    ("guided_backprop", {}),
    ("saliency", {}),
    ("smooth_grad", {"n_samples": 16, "stdevs": 0.15}),
    ("rise", {"n_masks": 1000, "grid_size": 7}),
    ("occlusion", {"sliding_window_shapes": [3, 8, 8], "strides": [3, 4, 4]}),
    # PdCR (segmentation only): 16x16 cells and few draws, to stay fast on a CPU.
    ("causal_ate", {"roi": "lesions", "block": 16, "n_screen": 2, "n_samples": 8, "bank_images": 4,
                    "per_image": 16}),
)
# Methods that explain only some data sets, and the --target their jobs use.
DEMO_ONLY = {"causal_ate": ("lesions",)}
DEMO_TARGET = {"causal_ate": "label"}
DEMO_SETS = (("shapes", "shapes-vgg"), ("lesions", "lesions-unet"))
DEMO_METRICS = {"shapes": ("deletion", "insertion", "pointing"), "lesions": ("deletion", "insertion")}


def _methods_available(methods_registry) -> list[tuple[str, dict]]:
    return [(m, dict(o)) for m, o in DEMO_METHODS if m in methods_registry]


def run_demo(out: str = "fastattr-out/demo", n_shapes: int = 8, n_lesions: int = 2, device: str = "cpu",
             quiet: bool = False, n_steps: int | None = None, n_samples: int | None = None,
             threads: int | None = None, file=None) -> dict:
    """Run the demo; returns the summary (also written to ``OUT/summary.json``)."""
    n_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _demo(out, n_shapes, n_lesions, device, quiet, n_steps, n_samples, file)
    finally:
        torch.set_num_threads(n_threads)


def _demo(out, n_shapes, n_lesions, device, quiet, n_steps, n_samples, file) -> dict:
    from .. import data, models
    from ..methods import CAUSAL_METHODS, METHODS
    from .loading import load_model
    from .reader import open_output

    file = file or sys.stdout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = _methods_available(METHODS)
    missing = [m for m, _ in DEMO_METHODS if m not in METHODS]
    if n_steps:
        methods = [(m, {**o, "n_steps": n_steps} if "n_steps" in o else o) for m, o in methods]
    if n_samples:  # hidden test knob: every sample count (noise samples, RISE masks)
        methods = [(m, {**o, **{k: n_samples for k in ("n_samples", "n_masks") if k in o}}) for m, o in methods]
    counts = {"shapes": n_shapes, "lesions": n_lesions}
    summary = {"output": str(out.resolve()), "device": device, "threads": torch.get_num_threads(), "rows": [],
               "grids": [], "not_available": missing,
               "note": "AUCs: RISE deletion (zeros) / insertion (blur) in the model's normalised space, one image row "
                       "per step, probability of the explained target (lesions: the region target's score, the sum "
                       "of the sigmoid probabilities over the region), mean over the images; higher insertion and "
                       "lower deletion are better"}
    t_start = time.perf_counter()
    for dataset, model_name in DEMO_SETS:
        n = counts[dataset]
        if n == 0:
            continue
        if model_name not in models.available():
            raise JobError(f"the demo needs the bundled model {model_name!r}; available: {models.available()}")
        model, desc = load_model(model_name, torch.device(device), torch.float32)
        ds = data.load(dataset, split="test")
        class_names = data.classes(dataset)
        images = [ds[i][0] for i in range(n)]
        labels = [ds[i][1] for i in range(n)]
        scale = 2 if images[0].shape[-1] <= 64 else 1  # small images are shown enlarged
        originals = [visualize.to_pil(im, scale) for im in images]
        columns, entries = {}, None
        for method, options in methods:
            if dataset not in DEMO_ONLY.get(method, (dataset,)):
                continue
            cfg = JobConfig(model=model_name, data=f"bundled:{dataset}", method=method, method_options=options,
                            target=DEMO_TARGET.get(method, "auto"),
                            out=str(out / dataset / method), limit=n, shard_size=max(n, 1), batch_size=8,
                            device=device, overwrite=True, quiet=True, progress=False,
                            metrics=DEMO_METRICS[dataset])
            if not quiet:
                print(f"fastattr demo: {method:<26} on {n} {dataset} images ({model_name}) ...", file=file,
                      flush=True)
            run_job(cfg, model=model, model_desc=desc)
            result = open_output(cfg.out)
            attributions = result.attributions().float()
            stats = result.manifest["stats"]
            means = result.manifest.get("metrics", {})
            summary["rows"].append({
                "data": dataset, "model": model_name, "method": method, "options": options, "images": n,
                "seconds_per_image": stats["seconds_per_image"],
                "forward_passes_per_image": stats["forward_rows_per_image"],
                "deletion_auc": means.get("deletion_auc", {}).get("mean"),
                "insertion_auc": means.get("insertion_auc", {}).get("mean"),
                "pointing_rate": means.get("pointing_hit", {}).get("mean"),
                "output": cfg.out,
            })
            if method in CAUSAL_METHODS:
                tiles = [visualize.causal_overlay(images[i], attributions[i], scale=scale) for i in range(n)]
            else:
                tiles = [visualize.overlay(images[i], attributions[i], scale=scale) for i in range(n)]
            columns[method] = tiles
            if entries is None:
                entries = result.images  # targets (predicted class / foreground) for the overview labels
            path = out / f"{dataset}-{method}.png"
            g = visualize.grid([originals, tiles], row_labels=["image", method],
                               col_labels=[_label(dataset, labels[i], class_names, result.images[i]) for i in range(n)])
            g.save(path)
            summary["grids"].append(str(path))
        if columns:
            rows = [[originals[i]] + [columns[m][i] for m in columns] for i in range(n)]
            path = out / f"{dataset}-overview.png"
            visualize.grid(rows, col_labels=["image"] + list(columns),
                           row_labels=[_label(dataset, labels[i], class_names, entries[i]) for i in range(n)]).save(path)
            summary["grids"].append(str(path))
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    _write_summary(out, summary)
    if not quiet:
        _print_summary(summary, file)
    return summary


def _label(dataset, label, class_names, entry) -> str:
    if dataset == "shapes":
        text = class_names[int(label)] if class_names else str(int(label))
        if entry is not None and isinstance(entry.get("target"), int) and class_names:
            pred = class_names[entry["target"]]
            text = text if pred == text else f"{text}->{pred}"
        return text
    if entry is not None and isinstance(entry.get("target"), dict):
        return f"fg {entry['target']['pixels']} px"
    return "lesions"


def _table(summary) -> list[str]:
    lines = ["| data | model | method | options | images | s / image | forward passes / image | deletion AUC "
             "(lower is better) | insertion AUC (higher is better) | pointing game |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    for r in summary["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        fp = r["forward_passes_per_image"]
        lines.append(f"| {r['data']} | {r['model']} | {r['method']} | {opts} | {r['images']} | "
                     f"{r['seconds_per_image']:.4f} | {fp:.1f} | {num(r.get('deletion_auc'))} | "
                     f"{num(r.get('insertion_auc'))} | {num(r.get('pointing_rate'))} |")
    return lines


def _write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = ["# fastattr demo", "",
            f"Device: {summary['device']} ({summary['threads']} threads); total {summary['total_seconds']} s.", ""]
    text += _table(summary)
    text += ["", "Forward passes count every image row through the model for the method (target selection "
                 "included, the metrics' passes not); each gradient method adds one backward pass per forward row "
                 "of its gradient loop. Seconds include the metrics.",
             f"{summary['note']}. Pointing game: the share of images whose heatmap maximum lies within 15 px "
             "at 224x224 (4.3 px at 64x64) of the shape.", ""]
    if summary["not_available"]:
        text.append(f"Methods not in this build's registry (skipped): {', '.join(summary['not_available'])}.")
    text.append("Heatmap grids: " + ", ".join(Path(g).name for g in summary["grids"]))
    (out / "summary.md").write_text("\n".join(text) + "\n")


def _print_summary(summary: dict, file) -> None:
    print("", file=file)
    for line in _table(summary):
        if not line.startswith("|---"):
            print(line, file=file)
    print(f"\n(deletion AUC: lower is better, insertion AUC: higher is better; total {summary['total_seconds']} s)",
          file=file)
    if summary["not_available"]:
        print(f"skipped (not registered): {', '.join(summary['not_available'])}", file=file)
    print(f"\nheatmap grids and summary in {summary['output']}/", file=file)
    for g in summary["grids"]:
        print(f"  {g}", file=file)
    print(f"  {summary['output']}/summary.md", file=file)
