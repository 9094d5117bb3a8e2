"""Data-parallel helpers. The same code path runs single-process and under ``torchrun``.

Why not a separate distributed trainer: two code paths drift. ``torchrun`` sets ``WORLD_SIZE``/``RANK``;
we initialise gloo on CPU (NCCL on GPU), wrap the model in DDP, give each rank an equal share of the
epoch's batches, and let rank 0 alone evaluate, checkpoint and log.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> bool:
    """Initialise the process group when launched by torchrun; returns whether we are distributed."""
    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def broadcast_flags(*flags: float) -> list[float]:
    """Rank 0's values of small control flags (early stop, improvement) for every rank."""
    t = torch.tensor(flags, dtype=torch.float64)
    if dist.is_initialized():
        dist.broadcast(t, src=0)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
