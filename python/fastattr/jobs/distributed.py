"""Running a job over several processes (``torchrun``), or in one.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the job initialises
the default process group (gloo on CPU, NCCL on CUDA, device ``cuda:LOCAL_RANK``),
unless the caller already did. Shard ``k`` belongs to rank ``k % WORLD_SIZE``;
every rank writes its own shards into the shared output directory (on several
nodes it must be on a shared filesystem) and rank 0 writes the manifest.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


class Context:
    """Rank, world size and the few collectives a job needs; trivial in one process."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, owns_group: bool = False,
                 device: torch.device | None = None):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.owns_group = owns_group
        self.device = device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: int) -> int:
        """Sum of ``value`` over the ranks; also a barrier."""
        if not self.distributed:
            return value
        dev = self.device if self.device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([int(value)], dtype=torch.int64, device=dev)
        dist.all_reduce(t)
        return int(t.item())

    def barrier(self) -> None:
        self.sum(0)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str, timeout_s: float = 86400.0) -> Context:
    """The job's :class:`Context`; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Context(rank, world, local, owns_group=False, device=_device(device, local, world))
    if world <= 1:
        return Context(device=_device(device, 0, 1))
    if not dist.is_available():
        raise RuntimeError("fastattr: WORLD_SIZE > 1 but torch.distributed is not available in this build")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local, world)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return Context(dist.get_rank(), dist.get_world_size(), local, owns_group=True, device=dev)


def _device(device: str, local_rank: int, world: int) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        if world > 1 or local_rank:
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cuda", torch.cuda.current_device())
    return dev
