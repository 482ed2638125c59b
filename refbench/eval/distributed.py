"""torchrun's process group, and exact sharding for evaluation: no padded duplicates,
gathered per sample.

Training and evaluation join the process group through `join_process_group` (and read their
place from `env_ranks`), so both pick the same backend and GPU.

Each rank takes image indices ``rank::world_size``; after every step the ranks' records are
gathered to rank 0, which alone writes the run folder. Ranks with fewer batches send empty
lists for their last steps, so every sample is scored exactly once and the union is identical
to a one-process run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly one-process) evaluation."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this module initialised the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world_size = env_world_size()
    if world_size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def join_process_group(device: str | torch.device) -> bool:
    """Join torchrun's process group unless this process already has; True when it joined.

    On CUDA this rank's GPU (LOCAL_RANK) is selected first and the backend is nccl; on any
    other device it is gloo.
    """
    if dist.is_initialized():
        return False
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def setup(device: str) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=False)
    if env_world_size() <= 1:
        return DistContext()
    join_process_group(device)
    return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if `setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's items: ``items[rank::world_size]`` (every item on exactly one rank)."""
    return list(items[ctx.rank :: ctx.world_size])


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.active:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def max_over_ranks(value: int, ctx: DistContext) -> int:
    """The largest `value` any rank holds."""
    if not ctx.active:
        return value
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, int(value))
    return max(gathered)


def gather_to_main(records: list[dict[str, Any]], ctx: DistContext) -> list[dict[str, Any]]:
    """All ranks' records on rank 0 (in rank order); other ranks get an empty list."""
    if not ctx.active:
        return records
    gathered: list[Any] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(records, gathered, dst=0)
    if not ctx.is_main:
        return []
    return [record for part in gathered for record in part]
