"""Reading a job's output back: the manifest and the attributions of its shards."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .spec import JobError
from .storage import MANIFEST, load_shard, read_json


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

    def __len__(self) -> int:
        return self.manifest["num_images"]

    @property
    def images(self) -> list[dict]:
        """Per image: index, id, path, shard file, row, target (and label, heatmap when present)."""
        return self.manifest["images"]

    def shard(self, k: int) -> dict[str, torch.Tensor]:
        return load_shard(self.out / self.manifest["shards"][k]["file"])

    def attributions(self) -> torch.Tensor:
        """All attributions, (N, C, H, W), in image order."""
        parts = [self.shard(k)["attributions"] for k in range(len(self.manifest["shards"]))]
        if not parts:
            raise JobError(f"the job in {self.out} has no images")
        return torch.cat(parts)

    def attribution(self, image_id: str) -> torch.Tensor:
        """The attribution of one image, by its id (file path relative to the data folder, or bundled id)."""
        for entry in self.images:
            if entry["id"] == image_id:
                return load_shard(self.out / entry["shard"])["attributions"][entry["row"]]
        raise KeyError(image_id)


def open_output(out: str | os.PathLike) -> JobOutput:
    return JobOutput(out)
