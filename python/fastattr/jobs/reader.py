"""Reading a job's output back: the manifest and the attributions of its shards.

::

    from fastattr.jobs import Results

    results = Results("out/ig")            # a completed --out directory
    r = results["cats/0001.jpg"]           # by image id (path relative to --data)
    r.attribution                          # torch.Tensor (C, H, W) (or (1, H, W))
    r.record                               # its manifest entry: target, shard, row, crop_box, metrics, ...
    for r in results: ...                  # every image, in listing order
    results.skipped                        # images that could not be read (--on-error skip), with the reason

Only the rows asked for are read (safetensors and .npy shards are read lazily),
so reading one image of a large job is cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .spec import JobError
from .storage import MANIFEST, load_shard, read_json


def _read_row(path: Path, row: int) -> torch.Tensor:
    """Row ``row`` of a shard's attributions, without reading the others."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("attributions")[row]
    if path.suffix == ".npy":
        return torch.from_numpy(np.array(np.load(path, mmap_mode="r", allow_pickle=False)[row]))
    raise ValueError(f"fastattr: not a shard file: {path}")


class JobOutput:
    """A completed output directory of ``fastattr run``."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        try:
            self.manifest = read_json(self.out / MANIFEST)
        except FileNotFoundError:
            raise JobError(f"{self.out} has no {MANIFEST}; is it the --out of a fastattr run?") from None
        if self.manifest.get("status") != "complete":
            raise JobError(f"the job in {self.out} is not complete; rerun its command to finish it")
        self._by_id = None

    def __len__(self) -> int:
        return self.manifest["num_images"]

    @property
    def images(self) -> list[dict]:
        """Per image: index, id, path, sha256, shard file, row, target (and label, heatmap, crop box when present)."""
        return self.manifest["images"]

    @property
    def skipped(self) -> list[dict]:
        """Images that could not be read (``--on-error skip``): index, id, path, reason."""
        return self.manifest.get("skipped", [])

    def shard(self, k: int) -> dict[str, torch.Tensor]:
        """The tensors of the manifest's ``k``-th shard (its rows may include images no longer in the data)."""
        return load_shard(self.out / self.manifest["shards"][k]["file"])

    def attributions(self) -> torch.Tensor:
        """All attributions, (N, C, H, W), in image order."""
        if not self.images:
            raise JobError(f"the job in {self.out} has no images")
        cache: dict[str, torch.Tensor] = {}
        rows = []
        for entry in self.images:
            if entry["shard"] not in cache:
                cache[entry["shard"]] = load_shard(self.out / entry["shard"])["attributions"]
            rows.append(cache[entry["shard"]][entry["row"]])
        return torch.stack(rows)

    def record(self, image_id: str) -> dict:
        """The manifest entry of one image, by id."""
        if self._by_id is None:
            self._by_id = {e["id"]: e for e in self.images}
        try:
            return self._by_id[image_id]
        except KeyError:
            reason = next((s["reason"] for s in self.skipped if s["id"] == image_id), None)
            if reason is not None:
                raise KeyError(f"{image_id!r} was skipped by the job: {reason}") from None
            raise KeyError(f"no image {image_id!r} in {self.out} (ids are paths relative to --data, "
                           f"e.g. {self.images[0]['id']!r})" if self.images else image_id) from None

    def attribution(self, image_id: str) -> torch.Tensor:
        """The attribution of one image, by its id (file path relative to the data folder, or bundled id)."""
        entry = self.record(image_id)
        return _read_row(self.out / entry["shard"], entry["row"])


@dataclass(frozen=True)
class Result:
    """One image's result: its id, attribution and manifest entry."""

    id: str
    attribution: torch.Tensor
    record: dict


class Results(JobOutput):
    """A completed job's results as a read-only mapping: image id -> :class:`Result`."""

    def __getitem__(self, image_id: str) -> Result:
        entry = self.record(image_id)
        return Result(image_id, _read_row(self.out / entry["shard"], entry["row"]), entry)

    def __contains__(self, image_id) -> bool:
        try:
            self.record(image_id)
        except KeyError:
            return False
        return True

    def __iter__(self):
        for entry in self.images:
            yield self[entry["id"]]

    def ids(self) -> list[str]:
        return [e["id"] for e in self.images]


def open_output(out: str | os.PathLike) -> Results:
    return Results(out)
