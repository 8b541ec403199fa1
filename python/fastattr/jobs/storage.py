"""Crash-safe output of attribution jobs: atomic files, shards and their records.

Layout of an output directory::

    OUT/manifest.json                 the job (parameters, versions) and, once complete, the index
    OUT/shards/shard-00000.safetensors attributions of images 0..S-1 (or shard-00000.npy)
    OUT/shards/shard-00000.json       the shard's record: its images, targets, size and sha256
    OUT/heatmaps/...                  optional overlay PNGs
    OUT/.lock                         held (flock) by the process that owns the job

Every file is written to a temporary file in the same directory (``.NAME.<random>.tmp``),
flushed and fsync'ed, then renamed over its final name with ``os.replace`` (atomic
on POSIX) and the directory is fsync'ed. A reader therefore sees either no file or
a complete one. A shard counts as done only when its record exists, names the same
job fingerprint and the data file has the recorded size (and, with ``verify``, the
recorded sha256). The record is written after the data file, so a crash between
the two leaves a data file without a record: the shard is redone, and as the work
is deterministic the rewrite has the same bytes. Leftover temporary files are
never read and are removed when a job starts.

A record lists its images by identity (id, and for files the sha256 of their
bytes). A rerun keeps every committed shard and uses each of its rows whose
image is still in the data with the same bytes; committed shards are never
rewritten or deleted (only ``--overwrite`` clears the directory).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import secrets
from pathlib import Path

import numpy as np
import torch

FORMATS = ("safetensors", "npy")
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
HEATMAP_DIR = "heatmaps"
LOCK = ".lock"
TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or no file, or all of ``data``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike):
    with open(path, "rb") as f:
        return json.loads(f.read())


def remove_temp_files(root: str | os.PathLike) -> int:
    """Delete the temporary files that interrupted writers left under ``root``; returns how many."""
    n = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


class DirectoryLock:
    """An exclusive ``flock`` on ``OUT/.lock``, so two jobs never write the same directory.

    The kernel drops the lock when the process dies (also on kill -9).
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self._fd = None

    def acquire(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RuntimeError(f"fastattr: another fastattr job is writing to {self.path.parent} (it holds {self.path})") from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def encode_shard(attributions: torch.Tensor, indices: torch.Tensor, fmt: str,
                 metadata: dict[str, str] | None = None, targets: torch.Tensor | None = None) -> bytes:
    """The bytes of one shard file: deterministic for the same tensors and metadata."""
    attributions = attributions.detach().to("cpu").contiguous()
    if fmt == "safetensors":
        from safetensors.torch import save

        tensors = {"attributions": attributions, "indices": indices.to(torch.int64).contiguous()}
        if targets is not None:
            tensors["targets"] = targets.to(torch.int64).contiguous()
        if metadata and len(metadata) > 1:
            raise ValueError("fastattr: give shard metadata as one key (safetensors does not keep key order)")
        return save(tensors, metadata=metadata or None)
    if fmt == "npy":
        if attributions.dtype == torch.bfloat16:
            attributions = attributions.to(torch.float32)  # numpy has no bfloat16
        buf = io.BytesIO()
        np.save(buf, attributions.numpy(), allow_pickle=False)
        return buf.getvalue()
    raise ValueError(f"fastattr: unknown shard format {fmt!r}; choose from {FORMATS}")


def load_shard(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a shard file (``attributions``, and for safetensors ``indices``/``targets``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npy":
        return {"attributions": torch.from_numpy(np.load(path, allow_pickle=False))}
    raise ValueError(f"fastattr: not a shard file: {path}")


class ShardStore:
    """The shards directory of one job (fingerprint ``fingerprint``, format ``fmt``)."""

    def __init__(self, out: str | os.PathLike, fmt: str, fingerprint: str):
        if fmt not in FORMATS:
            raise ValueError(f"fastattr: unknown shard format {fmt!r}; choose from {FORMATS}")
        self.out = Path(out)
        self.dir = self.out / SHARD_DIR
        self.fmt = fmt
        self.fingerprint = fingerprint

    def data_name(self, shard: int) -> str:
        return f"shard-{shard:05d}.{self.fmt}"

    def data_path(self, shard: int) -> Path:
        return self.dir / self.data_name(shard)

    def record_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.json"

    def write(self, shard: int, data: bytes, record: dict) -> dict:
        """Commit a shard: the data file first, then its record (the commit marker)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        record = dict(record)
        record.update(
            shard=shard,
            file=f"{SHARD_DIR}/{self.data_name(shard)}",
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            fingerprint=self.fingerprint,
        )
        atomic_write_bytes(self.data_path(shard), data)
        atomic_write_json(self.record_path(shard), record)
        return record

    def read_record(self, shard: int, verify: bool = False) -> dict | None:
        """The record of a committed shard, or None if the shard has to be (re)done."""
        try:
            record = read_json(self.record_path(shard))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint or record.get("shard") != shard:
            return None
        path = self.data_path(shard)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if size != record.get("bytes"):
            return None
        if verify:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != record.get("sha256"):
                return None
        return record

    def done(self, shard: int, verify: bool = False) -> bool:
        return self.read_record(shard, verify) is not None

    def committed(self, verify: bool = False) -> dict[int, dict]:
        """Every committed shard of this job in the directory: number -> record."""
        found = {}
        if not self.dir.is_dir():
            return found
        for p in self.dir.glob("shard-*.json"):
            stem = p.stem[len("shard-"):]
            if not stem.isdigit():
                continue
            rec = self.read_record(int(stem), verify)
            if rec is not None:
                found[int(stem)] = rec
        return dict(sorted(found.items()))
