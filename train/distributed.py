"""Process-group setup for torchrun; a single process is the world of size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device_type: str) -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE...); else a world of one."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    backend = "nccl" if device_type == "cuda" else "gloo"
    # Long timeout: the other ranks wait at a barrier while rank 0 tokenizes the dataset.
    dist.init_process_group(backend=backend, timeout=timedelta(hours=6))
    world = World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """Average a tensor over ranks (in place for >1 ranks)."""
    if world.size > 1:
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value /= world.size
    return value


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if `flag` is true on any rank (so all ranks stop at the same step)."""
    if world.size == 1:
        return flag
    value = torch.tensor(float(flag))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
