"""``run_job``: attributions for a stream of images, in resumable shards.

Images are identified by id (a folder's relative path) and the sha256 of the
file's bytes. A run first reads the committed shards in ``--out`` (see
:mod:`fastattr.jobs.storage`): every image whose identity a committed shard
holds is done, whatever its position in the folder now. The remaining images
(``N = min(len(data), limit)`` in all), in listing order, are cut into new
shards of ``shard_size``, numbered with the smallest numbers no committed shard
uses. On a fresh directory that is shard ``k`` = images ``k*S .. (k+1)*S - 1``;
after an interruption the remaining images are exactly the unfinished shards,
under the same numbers, so a resumed job writes the bytes the uninterrupted one
would have. Adding files computes only the new ones; removing files drops them
from the manifest while their shards stay; a changed file is computed again.
Committed shards are never rewritten.

Batches never cross a shard boundary, and each shard seeds torch's RNG and the
method's generator from ``(seed, k)`` alone, so a shard's bytes do not depend on
which shards ran before it, in which process, or after how many restarts. The
model is built under ``torch.manual_seed(seed)``, so random-weight models
(``torchvision:NAME?weights=none``) get the same weights on every run and their
jobs resume. Bytes are equal for the same software and thread count
(``--threads``; CPU kernels may round differently with more or fewer threads;
torchrun starts workers with one thread unless OMP_NUM_THREADS says otherwise),
which every shard record notes. On CUDA the job turns cuDNN autotuning off and
its deterministic mode on while it runs, so that a recomputed shard has the
same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
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
from .loading import CountingModel, SelectOutput, infer_task, input_size, load_model, model_info, weights_digest
from .metrics import image_metrics, metric_means, metric_protocol
from .sources import IMAGE_EXTENSIONS, BUNDLED_PREFIX, BundledSource, ImageFolderSource, collate, open_source
from .spec import (JobConfig, JobError, fingerprint, job_spec, resolve_method, resolve_options, shard_seed,
                   spec_differences, takes_generator, versions)
from .storage import (HEATMAP_DIR, MANIFEST, SHARD_DIR, DirectoryLock, ShardStore, atomic_write_json,
                      encode_shard, read_json, remove_temp_files)
from .targets import MASK_SUFFIX, TargetPolicy

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
    images_skipped: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images_computed / self.seconds if self.seconds > 0 else float("nan")


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _log(cfg: JobConfig, ctx, msg: str) -> None:
    if not cfg.quiet and ctx.is_main:
        print(f"fastattr: {msg}", file=sys.stderr, flush=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._")[:120] or "image"


def heatmap_relpath(image_id: str, shard: int, taken: set | None = None) -> str:
    """``heatmaps/shard-K/NAME.png``, NAME the id without its image extension
    (``a/b.png`` -> ``a_b.png``, not ``a_b.png.png``); a name already ``taken``
    in the shard (``b.png`` and ``b.jpg``) gets the extension appended."""
    stem, ext = os.path.splitext(image_id)
    if ext.lower() not in IMAGE_EXTENSIONS:
        stem, ext = image_id, ""
    name = _safe_name(stem)
    if taken is not None:
        if name in taken:
            name = _safe_name(f"{stem}-{ext.lstrip('.')}") if ext else name
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
        taken.add(name)
    return f"{HEATMAP_DIR}/shard-{shard:05d}/{name}.png"


class _ShardBatches(torch.utils.data.Sampler):
    """Batches of indices, shard by shard, never crossing a shard boundary."""

    def __init__(self, plan: list[tuple[int, list[int]]], batch_size: int):
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
    target, _ = policy.resolve(model, x, batch["label"], batch["mask"])
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


def _key(identity: dict) -> tuple:
    return (identity["id"], identity.get("sha256"))


def _cover(committed: dict[int, dict]) -> dict:
    """Image identity -> (shard, its record of the image), over committed shards
    in shard order (the first shard holding an identity answers for it)."""
    cover = {}
    for k, rec in committed.items():
        for img in rec.get("images", []):
            cover.setdefault(_key(img), (k, img))
    return cover


def plan_shards(committed: dict[int, dict], identities: list[dict], shard_size: int) -> list[tuple[int, list[int]]]:
    """New shards for the images no committed shard holds: consecutive runs of
    ``shard_size`` (in listing order), numbered with the smallest free numbers.
    A fresh job gets shard k = images k*S..(k+1)*S-1; an interrupted one gets back
    exactly its unfinished shards, under their numbers (every shard but the last
    is full, so the runs line up)."""
    cover = _cover(committed)
    todo = [i for i, ident in enumerate(identities) if _key(ident) not in cover]
    free = (k for k in itertools.count() if k not in committed)
    return [(next(free), todo[j:j + shard_size]) for j in range(0, len(todo), shard_size)]


def _merge_manifest(out: Path, header: dict, store: ShardStore, identities: list[dict], world_size: int) -> dict:
    committed = store.committed()
    cover = _cover(committed)
    images, skipped, missing = [], [], []
    for i, ident in enumerate(identities):
        hit = cover.get(_key(ident))
        if hit is None:
            missing.append(ident["id"])
            continue
        k, img = hit
        rec = committed[k]
        entry = {"index": i, "id": ident["id"], "path": ident["path"]}
        if ident.get("sha256"):
            entry["sha256"] = ident["sha256"]
        if img.get("skipped"):
            entry["shard"] = rec["file"]
            entry["reason"] = img["skipped"]
            skipped.append(entry)
            continue
        entry.update(shard=rec["file"], row=img["row"], target=img["target"])
        for extra in ("label", "heatmap", "metrics", "crop_box", "original_size"):
            if img.get(extra) is not None:
                entry[extra] = img[extra]
        images.append(entry)
    if missing:
        raise JobError(f"{len(missing)} images have no result after the run (e.g. {missing[0]!r}); "
                       "rerun the command to compute them")
    used = sorted({cover[_key(ident)][0] for ident in identities})
    shards = [{"shard": k, "file": committed[k]["file"], "rows": committed[k]["rows"],
               "first_index": committed[k]["first_index"], "bytes": committed[k]["bytes"],
               "sha256": committed[k]["sha256"]} for k in used]
    seconds = sum(committed[k].get("seconds", 0.0) for k in used)
    rows = sum(committed[k].get("forward_rows", 0) for k in used)
    n = len(images)
    manifest = dict(header)
    manifest.update(
        status="complete",
        completed=_now(),
        world_size=world_size,
        num_images=n,
        num_skipped=len(skipped),
        num_shards=len(shards),
        stats={"compute_seconds": round(seconds, 4),
               "seconds_per_image": round(seconds / n, 6) if n else None,
               "forward_rows": int(rows),
               "forward_rows_per_image": rows / n if n else None},
        shards=shards,
        images=images,
        skipped=skipped,
    )
    summary = metric_means(images)
    if summary:
        manifest["metrics"] = summary
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


class _Progress:
    """A tqdm bar on a terminal (or with --progress); otherwise, unless --quiet or
    --no-progress, one plain line every ``interval`` seconds, which reads well in
    a log file. Counts the whole job: a resumed job starts at what is done."""

    def __init__(self, cfg: JobConfig, ctx, total: int, initial: int, desc: str):
        self.total, self.count, self.initial = total, initial, initial
        self.desc, self.interval = desc, cfg.progress_interval
        self.bar = None
        self.plain = False
        if cfg.quiet or not ctx.is_main or cfg.progress is False:
            return
        if cfg.progress or sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc, file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)
        else:
            self.plain = True
            self.t0 = self.last = time.monotonic()

    def update(self, k: int) -> None:
        self.count += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.plain:
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                self._line(now)

    def _line(self, now: float) -> None:
        done = self.count - self.initial
        rate = done / (now - self.t0) if now > self.t0 else 0.0
        left = self.total - self.count
        eta = f", about {_duration(left / rate)} left" if rate > 0 and left > 0 else ""
        pct = 100.0 * self.count / self.total if self.total else 100.0
        print(f"fastattr: {self.desc}: {self.count}/{self.total} images ({pct:.1f}%), {rate:.2f} img/s{eta}",
              file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _write_error(e: OSError, out: Path) -> JobError:
    """A clear message for a failed write under --out (full disk, permissions, ...)."""
    name = getattr(e, "filename", None)
    inside = name is None or os.path.abspath(name).startswith(os.path.abspath(out))
    if not inside and e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return JobError(f"{e.strerror or e}: {name}")
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return JobError(f"no space left on the device of --out {out}{where}: {e.strerror or e}. The shards finished "
                        "so far are kept; free some space and rerun the same command to resume")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return JobError(f"--out {out} is not writable{where}: {e.strerror or e}")
    return JobError(f"cannot write to --out {out}{where}: {e.strerror or e}. The shards finished so far are kept; "
                    "rerun the same command to resume")


def _unreadable(cfg: JobConfig, item: dict) -> JobError:
    return JobError(f"cannot read image {item.get('path') or item['id']}: {item['error']}. Fix or remove the file "
                    "(finished shards are kept and reused), or pass --on-error skip to record it in the manifest "
                    "as skipped and go on")


def _first_sample(cfg: JobConfig, source, n: int) -> dict | None:
    """The first image that can be read (for the option check and the task);
    with --on-error fail, an unreadable first image stops the job here."""
    for i in range(n):
        item = source[i]
        if item.get("image") is not None:
            return item
        if cfg.on_error == "fail":
            raise _unreadable(cfg, item)
    if n:
        raise JobError(f"none of the {n} images of {cfg.data} could be read")
    return None


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
        from .. import engine

        budget = engine.memory_budget(cfg.max_memory)
        budget.__enter__()
        restore.append(lambda: budget.__exit__(None, None, None))
        device, dtype = ctx.device, cfg.torch_dtype
        info = model_info(cfg.model) if model is None or task is None else {}
        if dataset is None and not cfg.data.startswith(BUNDLED_PREFIX) and not os.path.isdir(cfg.data):
            raise JobError(f"data directory {cfg.data!r} does not exist or is not a directory "
                           f"(give a folder of PNG/JPEG images or {BUNDLED_PREFIX}NAME)")
        if model is None:
            model, model_desc = load_model(cfg.model, device, dtype, seed=cfg.seed)
        else:
            model = model.to(device=device, dtype=dtype).eval()
            model_desc = dict(model_desc or {"spec": cfg.model})
        if cfg.output_key is not None:
            model = SelectOutput(model, cfg.output_key)
            model_desc["output_key"] = cfg.output_key
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
                source = open_source(cfg.data, split=cfg.split, size=size, resize=cfg.resize, exclude=cfg.out,
                                     mask_suffix=MASK_SUFFIX if cfg.target == "mask" else None)
            except (FileNotFoundError, ValueError) as e:
                raise JobError(str(e).removeprefix("fastattr: ")) from None
            if isinstance(source, ImageFolderSource) and source.size is None:
                raise JobError(f"the input size of model {cfg.model!r} is unknown; pass --input-size H W")
        n = len(source) if cfg.limit is None else min(cfg.limit, len(source))
        sample = _first_sample(cfg, source, n)
        if task is None:
            task = info.get("task") or (infer_task(model, sample["image"][None].to(device, dtype)) if n else "classification")
        if classes is None:
            c = info.get("classes")
            classes = list(c) if isinstance(c, (list, tuple)) else None
        policy = TargetPolicy(cfg.target, task, classes)
        protocol = None
        if cfg.metrics:
            if "pointing" in cfg.metrics and n and sample.get("mask") is None:
                raise JobError("--metrics pointing needs a ground-truth mask per image (a bundled data set such as "
                               f"bundled:shapes, or a folder with --target mask and NAME{MASK_SUFFIX} files); "
                               "these images have none")
            protocol = metric_protocol(model, sample["image"].shape if n else None, cfg.metrics)
        if n:
            _probe_options(cfg, fn, call_options, gen_ok, model, policy, sample, device, dtype)
        spec = job_spec(cfg, recorded_options, model_desc, source.describe())
        spec["task"] = task
        if protocol is not None:
            spec["metrics_protocol"] = protocol["record"]
        fp = fingerprint(spec)
        # Files whose size and mtime match a committed shard's record are not hashed again (--verify: all are).
        known = {} if cfg.verify else {img["id"]: img for rec in ShardStore(cfg.out, cfg.format, fp).committed().values()
                                       for img in rec.get("images", [])}
        identities = [source.identity(i, known) for i in range(n)]
        listing = hashlib.sha256(json.dumps([_key(d) for d in identities]).encode()).hexdigest()
        out = Path(cfg.out)

        # Rank 0 checks and prepares the directory and plans the shards; every rank learns the outcome.
        header, error, plan, kept = None, None, None, []
        if ctx.is_main:
            try:
                try:
                    out.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise _write_error(e, out) from None
                lock = DirectoryLock(out)
                lock.acquire()
                header = _prepare_output(cfg, out, spec, fp, task)
                header["data"] = dict(source.listing(n), images_sha256=listing)
                store = ShardStore(out, cfg.format, fp)
                committed = store.committed(verify=cfg.verify)
                plan = plan_shards(committed, identities, cfg.shard_size)
                cover = _cover(committed)
                kept = sorted({cover[_key(d)][0] for d in identities if _key(d) in cover})
                if plan:
                    atomic_write_json(out / MANIFEST, dict(header, status="incomplete"))
            except OSError as e:
                error = str(_write_error(e, out))
            except (JobError, RuntimeError) as e:
                error = str(e).removeprefix("fastattr: ")
        error, fp0, listing0, plan, kept = ctx.broadcast((error, fp, listing, plan, kept))
        if error:
            raise JobError(error)
        if fp0 != fp:
            raise JobError(f"rank {ctx.rank} sees different job parameters than rank 0 (is the data the same on every node?)")
        if listing0 != listing:
            raise JobError(f"rank {ctx.rank} sees other images than rank 0 (is the data the same on every node?)")

        store = ShardStore(out, cfg.format, fp)
        mine = [(k, idx) for k, idx in plan if ctx.owns(k)]
        todo = sum(len(idx) for _, idx in mine)
        done_before = n - sum(len(idx) for _, idx in plan)
        if ctx.is_main:
            what = f"{_images(n)}, shards of {cfg.shard_size}"
            if kept:
                what += (f"; resuming: {_images(done_before)} already done (computed, or skipped as unreadable) "
                         f"in {len(kept)} shards")
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
        done_images = skipped_images = 0
        rows_total = 0
        try:
            if mine:
                sampler = _ShardBatches(mine, cfg.batch_size)
                loader = torch.utils.data.DataLoader(source, batch_sampler=sampler, collate_fn=collate,
                                                     num_workers=cfg.num_workers,
                                                     persistent_workers=False, pin_memory=False)
                batches = iter(loader)
                # Under torchrun the bar shows rank 0's own shards.
                total, initial = (todo, 0) if ctx.distributed else (n, done_before)
                with _Progress(cfg, ctx, total, initial, cfg.method) as bar:
                    for k, indices in mine:
                        n_batches = math.ceil(len(indices) / cfg.batch_size)
                        rows, skipped = _run_shard(cfg, k, indices, n_batches, batches, counting, fn, call_options,
                                                   gen_ok, policy, store, device, dtype, ctx.rank, bar, protocol,
                                                   identities)
                        rows_total += rows
                        skipped_images += skipped
                        done_images += len(indices) - skipped
            seconds = time.perf_counter() - t0

            total_done = ctx.sum(done_images)  # also waits for every rank's shards
            manifest_path = out / MANIFEST
            if ctx.is_main:
                manifest = _merge_manifest(out, header, store, identities, ctx.world_size)
                rate = f" ({total_done / seconds:.1f} img/s)" if total_done and seconds > 0 else ""
                skipped_note = (f"; {manifest['num_skipped']} unreadable "
                                f"{'image' if manifest['num_skipped'] == 1 else 'images'} skipped (listed in the manifest)"
                                if manifest["num_skipped"] else "")
                _log(cfg, ctx, f"{_images(total_done)} computed in {seconds:.1f} s{rate}; "
                               f"{_images(manifest['num_images'])} in {manifest_path}{skipped_note}")
                if manifest.get("metrics"):
                    means = ", ".join(f"{k} {v['mean']:.4f}" for k, v in manifest["metrics"].items())
                    _log(cfg, ctx, f"metrics over {manifest['num_images']} images (means): {means}")
        except OSError as e:
            raise _write_error(e, out) from None
        ctx.barrier()
        return JobResult(out=out, manifest=manifest_path, num_images=n, num_shards=len(kept) + len(plan),
                         shards_computed=len(mine), shards_skipped=len([k for k in kept if ctx.owns(k)]),
                         images_computed=done_images, seconds=seconds, forward_rows=rows_total,
                         rank=ctx.rank, world_size=ctx.world_size, images_skipped=skipped_images)
    finally:
        for undo in reversed(restore):
            undo()
        if lock is not None:
            lock.release()
        ctx.close()


def _run_shard(cfg, k, indices, n_batches, batches, model, fn, call_options, gen_ok, policy, store, device, dtype,
               rank, bar, protocol, identities) -> tuple[int, int]:
    """Computes and commits shard ``k``; returns (forward rows, images skipped)."""
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
            for item in batch["failed"]:
                if cfg.on_error == "fail":
                    raise _unreadable(cfg, item)
                records.append({"index": int(item["index"]), "id": item["id"], "path": item["path"],
                                "sha256": identities[item["index"]]["sha256"], "skipped": item["error"]})
                if identities[item["index"]].get("stat"):
                    records[-1]["stat"] = identities[item["index"]]["stat"]
            if batch["image"] is None:
                bar.update(len(batch["failed"]))
                continue
            x = batch["image"].to(device=device, dtype=dtype)
            target, target_records = policy.resolve(model, x, batch["label"], batch["mask"])
            empty = [batch["id"][j] for j, r in enumerate(target_records)
                     if isinstance(r, dict) and r.get("pixels") == 0]
            if empty and not cfg.quiet:
                # An empty region scores 0 whatever the input: its map is all zero.
                print(f"fastattr: warning: the target region ({target_records[0].get('kind')}) has no pixel in "
                      f"{len(empty)} image(s), e.g. {empty[0]}; their maps are all zero (recorded as pixels: 0)",
                      file=sys.stderr, flush=True)
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
                       "sha256": identities[idx]["sha256"], "target": target_records[j]}
                if identities[idx].get("stat"):
                    rec["stat"] = identities[idx]["stat"]
                if isinstance(label, int) or (isinstance(label, torch.Tensor) and label.dim() == 0):
                    rec["label"] = int(label)
                if scores is not None:
                    rec["metrics"] = scores[j]
                for extra in ("crop_box", "original_size"):
                    if batch.get(extra) and batch[extra][j] is not None:
                        rec[extra] = batch[extra][j]
                records.append(rec)
            if cfg.heatmaps:
                images_for_heatmaps.append(batch["image"])
            bar.update(x.shape[0] + len(batch["failed"]))
    records.sort(key=lambda r: r["index"])
    if [r["index"] for r in records] != list(indices):
        raise RuntimeError(f"fastattr: internal error: shard {k} got images {[r['index'] for r in records][:5]}... "
                           f"instead of {list(indices)[:5]}...")
    good = [r for r in records if "skipped" not in r]
    for row, rec in enumerate(good):
        rec["row"] = row
    # A shard whose every image was skipped holds an empty tensor.
    attributions = torch.cat(attrs) if attrs else torch.empty(0)
    idx = torch.tensor([r["index"] for r in good], dtype=torch.int64)
    if cfg.heatmaps and good:
        from ..visualize import save_heatmap

        images = torch.cat(images_for_heatmaps)
        taken: set = set()
        for rec in good:
            rel = heatmap_relpath(rec["id"], k, taken)
            save_heatmap(store.out / rel, images[rec["row"]], attributions[rec["row"]].float(),
                         style=heatmap_style(cfg.method))
            rec["heatmap"] = rel
    # One metadata key: safetensors writes several keys in an arbitrary order.
    metadata = {"fastattr": json.dumps({"fingerprint": store.fingerprint, "shard": k,
                                        "ids": [r["id"] for r in good]}, sort_keys=True)}
    data = encode_shard(attributions, idx, cfg.format, metadata,
                        torch.cat(class_targets) if class_targets else None)
    rows = model.rows - rows0
    store.write(k, data, {"rows": len(good), "first_index": int(indices[0]), "images": records,
                          "dtype": str(attributions.dtype).replace("torch.", ""), "rank": rank,
                          "threads": torch.get_num_threads(),
                          "seconds": round(time.perf_counter() - t0, 4), "forward_rows": rows})
    return rows, len(records) - len(good)
