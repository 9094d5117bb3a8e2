"""Where a run computes: ``train.device`` resolved once, and the one function that moves data there.

Why one place: a model on the GPU with a batch, a trie table or an item-code matrix left on the CPU fails (or,
worse, silently copies every step). The pipeline resolves ``train.device`` once and hands the device to
:meth:`sidrec.training.task.Task.to`, which moves the model and everything the task reads in its hot paths
(SID tables, tries, item codes, content vectors); the trainer moves each batch with :func:`to_device`. Code
that creates tensors inside a hot path takes the device of its inputs, so it never needs to be told.

``auto`` is CUDA when a GPU is visible, else the CPU; under ``torchrun`` a bare ``cuda`` (or ``auto``) means the
process's own GPU, ``cuda:$LOCAL_RANK``. Nothing here imports a model, so the config loader can check a setting
without torch's CUDA state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from sidrec import env
from sidrec.config import DEVICE_SETTING
from sidrec.errors import SidrecError


def check_setting(value: str, name: str = "train.device") -> None:
    """One line for a setting that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE_SETTING.match(str(value)):
        raise SidrecError(f"{name}: expected auto, cpu, cuda or cuda:N, got '{value}'")


def resolve(setting: str = "auto", name: str = "train.device") -> torch.device:
    """The torch device a ``train.device`` setting names on this machine.

    A CUDA setting on a machine without a usable GPU is an error (one line), not a silent fall-back to the CPU:
    a run that asked for a GPU and trained for hours on a CPU is worse than one that stops at once.
    """
    check_setting(setting, name)
    local = env.local_rank()
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise SidrecError(f"{name} is '{setting}' but CUDA is not available on this machine (torch "
                          f"{torch.__version__}); use {name}=auto or cpu")
    index = int(setting.split(":", 1)[1]) if ":" in setting else local
    if index >= torch.cuda.device_count():
        raise SidrecError(f"{name} is '{setting}' but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def for_rebuild(setting: str = "auto") -> torch.device:
    """The device to rebuild a finished run on (evaluate, recommend, fuse, DREAM): its ``train.device``, except
    that a CUDA setting on a machine without a GPU gives the CPU (weights trained on a GPU are read anywhere)."""
    check_setting(setting)
    if setting.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        return resolve(setting)
    except SidrecError:  # cuda:N on a machine with fewer GPUs: the first one
        return torch.device("cuda", 0)


def prepare(device: torch.device) -> None:
    """Per-process device set-up: the current CUDA device (so kernels and NCCL use the run's GPU)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, or a dict / list / tuple of them) on ``device``.

    On CUDA the host tensor is pinned first, so the copy is asynchronous (``non_blocking``) and overlaps the
    previous step's kernels; on the CPU nothing is copied.
    """
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        if device.type == "cuda" and batch.device.type == "cpu":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@contextlib.contextmanager
def tf32(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on an Ampere-or-newer GPU while training (about 2x fp32 throughput, 10-bit mantissa).

    Only around the training steps: evaluation and ranking keep full fp32 products, so scores that differ in the
    last bits are not made equal (the rule that ranking compares fp32 scores).
    """
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def describe(device: torch.device) -> dict[str, Any]:
    """Facts about the device for benchmark records and reports."""
    if device.type != "cuda":
        return {"device": "cpu"}
    p = torch.cuda.get_device_properties(device)
    return {"device": str(device), "gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "bf16": bool(torch.cuda.is_bf16_supported()),
            "cuda": torch.version.cuda}


def faiss_gpu(device: torch.device) -> bool:
    """Whether faiss can use a GPU for k-means here (a faiss-gpu build and a CUDA run); else its CPU code."""
    if device.type != "cuda":
        return False
    try:
        import faiss
    except ImportError:
        return False
    return bool(getattr(faiss, "get_num_gpus", lambda: 0)() > 0)


__all__ = ["check_setting", "describe", "faiss_gpu", "for_rebuild", "prepare", "resolve", "tf32", "to_device"]
