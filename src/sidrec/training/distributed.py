"""Data-parallel helpers. The same code path runs single-process and under ``torchrun``.

Why not a separate distributed trainer: two code paths drift. ``torchrun`` sets ``WORLD_SIZE``/``RANK``;
we initialise gloo on CPU (NCCL on GPU), wrap the model in DDP, give each rank an equal share of the
epoch's batches, and let rank 0 alone evaluate, checkpoint and log.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sidrec import env


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE``, parsed with a one-line error by :mod:`sidrec.env`)."""
    return env.world_size()


def rank() -> int:
    """This process's rank (``RANK``, parsed by :mod:`sidrec.env`)."""
    return env.rank()


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


def gather_cuda_rng(device: torch.device) -> torch.Tensor | None:
    """(world, n) every rank's CUDA RNG state (row r = rank r), on rank 0; None on the CPU.

    Why every rank's: each GPU draws its own dropout masks; a resume that gave every rank rank 0's state would
    continue differently from the run that never stopped.
    """
    if device.type != "cuda":
        return None
    state = torch.cuda.get_rng_state(device)
    if not dist.is_initialized():
        return state.view(1, -1)
    local = state.to(device)
    rows = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(rows, local)
    return torch.stack(rows).cpu()


def set_cuda_rng(saved: object, device: torch.device) -> None:
    """Give this rank its own saved CUDA RNG state; nothing on a CPU (a GPU run resumed on a CPU) or when the
    state was written by a CPU run or another number of ranks (the run then continues with fresh CUDA draws)."""
    if device.type != "cuda" or not isinstance(saved, torch.Tensor) or saved.dim() != 2:
        return
    if saved.shape[0] != world_size() or saved.dtype != torch.uint8:
        return
    torch.cuda.set_rng_state(saved[rank()].contiguous(), device)
