"""``run_job``: attributions for a stream of images, in resumable shards.

The images (``N = min(len(data), limit)``) are cut into shards of ``shard_size``
consecutive indices; shard ``k`` holds images ``k*S .. min((k+1)*S, N) - 1``.
Batches never cross a shard boundary, and each shard seeds torch's RNG and the
method's generator from ``(seed, k)`` alone, so a shard's bytes do not depend on
which shards ran before it, in which process, or after how many restarts. A run
skips the shards already committed (see :mod:`fastattr.jobs.storage`), so
rerunning an interrupted command continues where it stopped. Bytes are equal
for the same software and thread count (``--threads``; CPU kernels may round
differently with more or fewer threads; torchrun starts workers with one thread
unless OMP_NUM_THREADS says otherwise), which every shard record notes. On CUDA the job
turns cuDNN autotuning off and its deterministic mode on while it runs, so
that a recomputed shard has the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..guidance import check_guidable
from ..methods import heatmap_style, uses_guided_rules
from . import distributed
from .loading import CountingModel, infer_task, input_size, load_model, model_info, weights_digest
from .metrics import image_metrics, metric_means, metric_protocol
from .sources import BUNDLED_PREFIX, BundledSource, ImageFolderSource, collate, open_source
from .spec import (JobConfig, JobError, fingerprint, job_spec, resolve_method, resolve_options, shard_seed,
                   spec_differences, takes_generator, versions)
from .storage import (HEATMAP_DIR, MANIFEST, SHARD_DIR, DirectoryLock, ShardStore, atomic_write_json,
                      encode_shard, read_json, remove_temp_files)
from .targets import TargetPolicy

MANIFEST_VERSION = 1


@dataclass
class JobResult:
    out: Path
    manifest: Path
    num_images: int
    num_shards: int
    shards_computed: int
    shards_skipped: int
    images_computed: int
    seconds: float
    forward_rows: int
    rank: int = 0
    world_size: int = 1

    @property
    def images_per_second(self) -> float:
        return self.images_computed / self.seconds if self.seconds > 0 else float("nan")


def _log(cfg: JobConfig, ctx, msg: str) -> None:
    if not cfg.quiet and ctx.is_main:
        print(f"fastattr: {msg}", file=sys.stderr, flush=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._")[:120] or "image"


def heatmap_relpath(index: int, image_id: str, shard: int) -> str:
    return f"{HEATMAP_DIR}/shard-{shard:05d}/{index:06d}-{_safe_name(image_id)}.png"


class _ShardBatches(torch.utils.data.Sampler):
    """Batches of indices, shard by shard, never crossing a shard boundary."""

    def __init__(self, plan: list[tuple[int, range]], batch_size: int):
        self.batches = [(shard, list(r[i:i + batch_size])) for shard, r in plan for i in range(0, len(r), batch_size)]

    def __iter__(self):
        return iter([b for _, b in self.batches])

    def __len__(self):
        return len(self.batches)


def _prepare_output(cfg: JobConfig, out: Path, spec: dict, fp: str, task: str) -> dict:
    """Rank 0: check (or create) the output directory; returns the manifest header."""
    manifest_path = out / MANIFEST
    ours = [manifest_path, out / SHARD_DIR, out / HEATMAP_DIR]
    old = None
    if manifest_path.exists():
        try:
            old = read_json(manifest_path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if old is None or old.get("fastattr_manifest") != MANIFEST_VERSION:
            if not cfg.overwrite:
                raise JobError(f"{manifest_path} is not a fastattr manifest; pass --overwrite to replace the output in {out}")
            old = None
        elif old.get("fingerprint") != fp:
            if not cfg.overwrite:
                diffs = spec_differences(old.get("job", {}), spec)
                detail = "".join(f"\n  {d}" for d in diffs[:20]) or "\n  (same keys; different fingerprint)"
                raise JobError(
                    f"{out} holds a job with different parameters; refusing to resume into it:{detail}\n"
                    "Use the same parameters to resume, another --out, or --overwrite to discard it."
                )
            old = None
    else:
        foreign = [p.name for p in out.iterdir() if p.name not in (".lock",)] if out.exists() else []
        if foreign and not cfg.overwrite:
            shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
            raise JobError(f"{out} is not empty and has no {MANIFEST} ({shown}); choose another --out or pass --overwrite")
    if old is None and cfg.overwrite:
        import shutil

        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    header = {
        "fastattr_manifest": MANIFEST_VERSION,
        "status": "incomplete",
        "fingerprint": fp,
        "job": spec,
        "task": task,
        "versions": versions(),
        "created": old.get("created", _now()) if old else _now(),
    }
    if old is None or old.get("status") != "complete":
        atomic_write_json(manifest_path, header)
    return header


def _check_out(path: str) -> None:
    """``--out`` must be a directory (or not exist yet) under a writable parent."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {path} exists and is not a directory; give a directory (new or of this job)")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise JobError(f"--out {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JobError(f"--out {path} is not writable ({existing} does not permit writing)")


class _OptionsChecked(Exception):
    """Raised by the probe model at the method's first forward pass."""


class _Probe(torch.nn.Module):
    """The job's model, stopping the method at its first forward pass: every
    argument check a method makes before running the model has then run."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        raise _OptionsChecked


def _probe_options(cfg: JobConfig, fn, call_options: dict, gen_ok: bool, model, policy, sample: dict,
                   device, dtype) -> None:
    """Check the method's options on the first image before anything is written
    to --out: a refused option must not leave an output folder behind. The
    method is stopped at its first forward pass, so this costs its argument
    checks (and the target's one forward pass) only."""
    batch = collate([sample])
    x = batch["image"].to(device=device, dtype=dtype)
    target, _ = policy.resolve(model, x, batch["label"])
    options = dict(call_options)
    if gen_ok:
        options["generator"] = torch.Generator(device=device).manual_seed(0)
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        try:
            fn(_Probe(model), x, target=target, **options)
        except _OptionsChecked:
            pass
        except (ValueError, TypeError) as e:
            raise JobError(f"method {cfg.method!r} refused its options: {str(e).removeprefix('fastattr: ')}") from e


def _merge_manifest(out: Path, header: dict, store: ShardStore, n_shards: int, world_size: int) -> dict:
    shards, images = [], []
    seconds = rows = 0.0
    missing = []
    for k in range(n_shards):
        rec = store.read_record(k)
        if rec is None:
            missing.append(k)
            continue
        shards.append({"shard": k, "file": rec["file"], "rows": rec["rows"], "first_index": rec["first_index"],
                       "bytes": rec["bytes"], "sha256": rec["sha256"]})
        for row, img in enumerate(rec["images"]):
            entry = {"index": img["index"], "id": img["id"], "path": img["path"], "shard": rec["file"], "row": row,
                     "target": img["target"]}
            if img.get("label") is not None:
                entry["label"] = img["label"]
            if img.get("heatmap"):
                entry["heatmap"] = img["heatmap"]
            if img.get("metrics"):
                entry["metrics"] = img["metrics"]
            images.append(entry)
        seconds += rec.get("seconds", 0.0)
        rows += rec.get("forward_rows", 0)
    if missing:
        raise JobError(f"shards {missing[:10]} are missing after the run; rerun the command to compute them")
    n = len(images)
    manifest = dict(header)
    manifest.update(
        status="complete",
        completed=_now(),
        world_size=world_size,
        num_images=n,
        num_shards=n_shards,
        stats={"compute_seconds": round(seconds, 4),
               "seconds_per_image": round(seconds / n, 6) if n else None,
               "forward_rows": int(rows),
               "forward_rows_per_image": rows / n if n else None},
        shards=shards,
        images=images,
    )
    summary = metric_means(images)
    if summary:
        manifest["metrics"] = summary
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _progress(cfg: JobConfig, ctx, total: int, desc: str):
    from tqdm.auto import tqdm

    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                disable=cfg.quiet or not show or not ctx.is_main)


def run_job(cfg: JobConfig, *, model: torch.nn.Module | None = None, model_desc: dict | None = None,
            task: str | None = None, classes: list[str] | None = None, dataset=None,
            methods: dict | None = None) -> JobResult:
    """Run (or resume) the job ``cfg``.

    ``model``/``dataset``/``methods`` replace :func:`fastattr.models.load`,
    :func:`fastattr.data.load` and :data:`fastattr.methods.METHODS` (for tests
    and for callers that already hold them); ``dataset`` yields
    ``(image, label, mask)`` like the bundled data sets.
    """
    cfg.check()
    _check_out(cfg.out)
    if methods is None:
        from ..methods import METHODS as methods
    fn = resolve_method(cfg.method, methods)
    call_options, recorded_options = resolve_options(cfg.method, fn, dict(cfg.method_options))
    gen_ok = takes_generator(fn)
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise JobError("--device cuda was given but CUDA is not available")

    ctx = distributed.setup(cfg.device, cfg.dist_timeout)
    lock = None
    restore = []
    try:
        device, dtype = ctx.device, cfg.torch_dtype
        info = model_info(cfg.model) if model is None or task is None else {}
        if dataset is None and not cfg.data.startswith(BUNDLED_PREFIX) and not os.path.isdir(cfg.data):
            raise JobError(f"data directory {cfg.data!r} does not exist or is not a directory "
                           f"(give a folder of PNG/JPEG images or {BUNDLED_PREFIX}NAME)")
        if model is None:
            model, model_desc = load_model(cfg.model, device, dtype)
        else:
            model = model.to(device=device, dtype=dtype).eval()
            model_desc = dict(model_desc or {"spec": cfg.model})
        if uses_guided_rules(cfg.method, call_options):
            try:
                check_guidable(model, f"method {cfg.method!r}")
            except TypeError as e:
                raise JobError(str(e)) from None
        model_desc["weights_sha256"] = weights_digest(model)
        size = tuple(cfg.input_size) if cfg.input_size else (input_size(info) or model_desc.get("input_size"))
        if dataset is not None:
            source = BundledSource(cfg.data, split=cfg.split, size=size, dataset=dataset)
        else:
            try:
                source = open_source(cfg.data, split=cfg.split, size=size, resize=cfg.resize, exclude=cfg.out)
            except (FileNotFoundError, ValueError) as e:
                raise JobError(str(e).removeprefix("fastattr: ")) from None
            if isinstance(source, ImageFolderSource) and source.size is None:
                raise JobError(f"the input size of model {cfg.model!r} is unknown; pass --input-size H W")
        n = len(source) if cfg.limit is None else min(cfg.limit, len(source))
        if task is None:
            task = info.get("task") or (infer_task(model, source[0]["image"][None].to(device, dtype)) if n else "classification")
        if classes is None:
            c = info.get("classes")
            classes = list(c) if isinstance(c, (list, tuple)) else None
        policy = TargetPolicy(cfg.target, task, classes)
        protocol = None
        if cfg.metrics:
            if "pointing" in cfg.metrics and n and source[0].get("mask") is None:
                raise JobError("--metrics pointing needs a ground-truth mask per image (a bundled data set such as "
                               "bundled:shapes); the images of a folder have none")
            protocol = metric_protocol(model, source[0]["image"].shape if n else None, cfg.metrics)
        if n:
            _probe_options(cfg, fn, call_options, gen_ok, model, policy, source[0], device, dtype)
        spec = job_spec(cfg, recorded_options, model_desc, source.describe(), n)
        spec["task"] = task
        if protocol is not None:
            spec["metrics_protocol"] = protocol["record"]
        fp = fingerprint(spec)
        out = Path(cfg.out)
        n_shards = spec["num_shards"]

        # Rank 0 checks and prepares the directory; every rank learns the outcome.
        header, error = None, None
        if ctx.is_main:
            try:
                out.mkdir(parents=True, exist_ok=True)
                lock = DirectoryLock(out)
                lock.acquire()
                header = _prepare_output(cfg, out, spec, fp, task)
            except (JobError, RuntimeError, OSError) as e:
                error = str(e).removeprefix("fastattr: ")
        error, fp0 = ctx.broadcast((error, fp))
        if error:
            raise JobError(error)
        if fp0 != fp:
            raise JobError(f"rank {ctx.rank} sees different job parameters than rank 0 (is the data the same on every node?)")

        store = ShardStore(out, cfg.format, fp)
        owned = [k for k in range(n_shards) if ctx.owns(k)]
        pending = [k for k in owned if not store.done(k, verify=cfg.verify)]
        plan = [(k, range(k * cfg.shard_size, min((k + 1) * cfg.shard_size, n))) for k in pending]
        todo = sum(len(r) for _, r in plan)
        if ctx.is_main:
            what = f"{n} images, {n_shards} shards of {cfg.shard_size}"
            if len(pending) < len(owned):
                what += f"; resuming: {len(owned) - len(pending)} of this rank's {len(owned)} shards already done"
            _log(cfg, ctx, f"{cfg.method} on {cfg.model} ({task}): {what} -> {out}")

        counting = CountingModel(model)
        if cfg.threads is not None:
            n_threads = torch.get_num_threads()
            torch.set_num_threads(cfg.threads)
            restore.append(lambda: torch.set_num_threads(n_threads))
        if device.type == "cuda":
            # Same bytes whatever ran before: no autotuned (run-dependent) cuDNN algorithms.
            flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            restore.append(lambda: setattr(torch.backends.cudnn, "deterministic", flags[0]) or
                           setattr(torch.backends.cudnn, "benchmark", flags[1]))
        t0 = time.perf_counter()
        done_images = 0
        rows_total = 0
        if plan:
            sampler = _ShardBatches(plan, cfg.batch_size)
            loader = torch.utils.data.DataLoader(source, batch_sampler=sampler, collate_fn=collate,
                                                 num_workers=cfg.num_workers,
                                                 persistent_workers=False, pin_memory=False)
            batches = iter(loader)
            with _progress(cfg, ctx, todo, cfg.method) as bar:
                for k, indices in plan:
                    n_batches = math.ceil(len(indices) / cfg.batch_size)
                    rows_total += _run_shard(cfg, k, indices, n_batches, batches, counting, fn, call_options, gen_ok,
                                             policy, store, device, dtype, ctx.rank, bar, protocol)
                    done_images += len(indices)
        seconds = time.perf_counter() - t0

        total_done = ctx.sum(done_images)  # also waits for every rank's shards
        manifest_path = out / MANIFEST
        if ctx.is_main:
            manifest = _merge_manifest(out, header, store, n_shards, ctx.world_size)
            rate = f" ({total_done / seconds:.1f} img/s)" if total_done and seconds > 0 else ""
            _log(cfg, ctx, f"{total_done} images computed in {seconds:.1f} s{rate}; "
                           f"{n} images in {manifest_path}")
            if manifest.get("metrics"):
                means = ", ".join(f"{k} {v['mean']:.4f}" for k, v in manifest["metrics"].items())
                _log(cfg, ctx, f"metrics over {n} images (means): {means}")
        ctx.barrier()
        return JobResult(out=out, manifest=manifest_path, num_images=n, num_shards=n_shards,
                         shards_computed=len(pending), shards_skipped=len(owned) - len(pending),
                         images_computed=done_images, seconds=seconds, forward_rows=rows_total,
                         rank=ctx.rank, world_size=ctx.world_size)
    finally:
        for undo in restore:
            undo()
        if lock is not None:
            lock.release()
        ctx.close()


def _run_shard(cfg, k, indices, n_batches, batches, model, fn, call_options, gen_ok, policy, store, device, dtype,
               rank, bar, protocol=None) -> int:
    t0 = time.perf_counter()
    rows0 = model.rows
    seed = shard_seed(cfg.seed, k)
    attrs, records, class_targets = [], [], []
    images_for_heatmaps = []
    fork_devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        options = dict(call_options)
        if gen_ok:
            options["generator"] = torch.Generator(device=device).manual_seed(seed)
        for _ in range(n_batches):
            batch = next(batches)
            x = batch["image"].to(device=device, dtype=dtype)
            target, target_records = policy.resolve(model, x, batch["label"])
            try:
                a = fn(model, x, target=target, **options)
            except (ValueError, TypeError) as e:
                raise JobError(f"method {cfg.method!r} failed: {str(e).removeprefix('fastattr: ')}") from e
            if isinstance(a, tuple):
                raise JobError(f"method {cfg.method!r} returned a tuple; options such as return_delta are not "
                               "supported by jobs, which store attributions only")
            if not isinstance(a, torch.Tensor) or (a.shape != x.shape and a.shape != (x.shape[0], 1, *x.shape[2:])):
                raise JobError(f"method {cfg.method!r} returned {getattr(a, 'shape', type(a).__name__)} "
                               f"for inputs of shape {tuple(x.shape)}")
            scores = (image_metrics(model.model, x, a.detach(), target, batch["mask"], protocol)
                      if protocol is not None else None)
            attrs.append(a.detach().to("cpu"))
            if isinstance(target, torch.Tensor):
                class_targets.append(target.detach().to("cpu"))
            for j, idx in enumerate(batch["index"]):
                label = batch["label"][j]
                rec = {"index": int(idx), "id": batch["id"][j], "path": batch["path"][j],
                       "target": target_records[j]}
                if isinstance(label, int) or (isinstance(label, torch.Tensor) and label.dim() == 0):
                    rec["label"] = int(label)
                if scores is not None:
                    rec["metrics"] = scores[j]
                records.append(rec)
            if cfg.heatmaps:
                images_for_heatmaps.append(batch["image"])
            bar.update(x.shape[0])
    attributions = torch.cat(attrs)
    idx = torch.tensor([r["index"] for r in records], dtype=torch.int64)
    if list(idx) != list(indices):
        raise RuntimeError(f"fastattr: internal error: shard {k} got images {idx.tolist()[:5]}... instead of {list(indices)[:5]}...")
    if cfg.heatmaps:
        from ..visualize import save_heatmap

        images = torch.cat(images_for_heatmaps)
        for row, rec in enumerate(records):
            rel = heatmap_relpath(rec["index"], rec["id"], k)
            save_heatmap(store.out / rel, images[row], attributions[row].float(), style=heatmap_style(cfg.method))
            rec["heatmap"] = rel
    # One metadata key: safetensors writes several keys in an arbitrary order.
    metadata = {"fastattr": json.dumps({"fingerprint": store.fingerprint, "shard": k,
                                        "ids": [r["id"] for r in records]}, sort_keys=True)}
    data = encode_shard(attributions, idx, cfg.format, metadata,
                        torch.cat(class_targets) if class_targets else None)
    rows = model.rows - rows0
    store.write(k, data, {"rows": len(records), "first_index": int(indices[0]), "images": records,
                          "dtype": str(attributions.dtype).replace("torch.", ""), "rank": rank,
                          "threads": torch.get_num_threads(),
                          "seconds": round(time.perf_counter() - t0, 4), "forward_rows": rows})
    return rows
