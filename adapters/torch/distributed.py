"""torch.distributed integration: rank discovery and start-up ordering."""

from __future__ import annotations

import torch

__all__ = ["rank_and_world_size", "barrier"]


def _initialized() -> bool:
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank/world size, else torch.distributed's when initialised, else (0, 1)."""
    if _initialized():
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    return int(rank or 0), int(world_size or 1)


def barrier() -> None:
    """Wait for every rank (no-op outside an initialised process group)."""
    if _initialized():
        torch.distributed.barrier()
