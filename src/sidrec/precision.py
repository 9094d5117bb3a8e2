"""Numeric precision chosen by the hardware, not by the config.

Why: bf16 autocast is a large win only where the device computes bf16 natively (CUDA with bf16 support, a
CPU with AVX512-BF16 or AMX). On an AVX2-only CPU PyTorch emulates bf16 matmuls and they run ~4-90x
*slower* than fp32 (measured on a 2-core AMD EPYC: 0.2 vs 18.5 GFLOP/s on a 1024^3 matmul under load), so a
config that forced bf16 turned a 90-second quickstart into 15 minutes. ``train.bf16`` therefore takes
``auto`` (the default everywhere), ``true`` or ``false``:

* ``auto``: bf16 only when the device reports native support **and** a one-off matmul timing confirms that
  bf16 is faster than fp32 on this machine. The timing is cached per machine (CPU model, capability, torch
  version, threads) in ``precision.json`` in sidrec's cache folder (``$SIDREC_CACHE``, default
  ``~/.cache/sidrec``), so it costs a fraction of a second once.
* ``true``: bf16 whatever the hardware; on a CPU without native bf16 one warning gives the measured ratio.
* ``false``: fp32.

Training, evaluation and decoding all go through :func:`autocast`, so they follow the same rule.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS = ("auto", "true", "false")
_resolved: dict[tuple[str, str], bool] = {}
_warned: set[str] = set()


def cpu_capability() -> str:
    """PyTorch's vector ISA for this CPU (e.g. ``AVX2``, ``AVX512``), plus ``+BF16`` / ``+AMX`` when present."""
    cap = str(torch.backends.cpu.get_cpu_capability())
    flags = native_cpu_bf16_flags()
    extra = [name for name, on in (("AVX512_BF16", flags["avx512_bf16"]), ("AMX", flags["amx"])) if on and name not in cap]
    return "+".join([cap, *extra])


def native_cpu_bf16_flags() -> dict[str, bool]:
    """Whether the CPU has AVX512-BF16 and AMX-BF16 (``/proc/cpuinfo`` flags, or PyTorch's ISA name)."""
    flags = _proc_flags()
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    return {"avx512_bf16": "avx512_bf16" in flags or "BF16" in cap, "amx": "amx_bf16" in flags or "AMX" in cap}


def _proc_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), or the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype: torch.dtype, n: int = 512, device: str = "cpu", min_s: float = 0.15) -> float:
    """Achieved GFLOP/s of an ``n^3`` matmul in ``dtype`` (best of repeated runs lasting ``min_s``)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up (lazy kernels, caches)
    best = float("inf")
    spent = 0.0
    reps = 0
    while spent < min_s or reps < 2:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
        if reps >= 50 or spent > 5 * min_s:
            break
    return 2 * n**3 / best / 1e9


def _cache_path() -> Path:
    from sidrec.io import cache_root

    return cache_root() / "precision.json"


def machine_key(device: str = "cpu") -> str:
    """What a cached timing is valid for: CPU model and ISA, torch version and thread count."""
    if device == "cuda":
        return f"cuda|{torch.cuda.get_device_name()}|{torch.__version__}"
    return f"cpu|{cpu_model()}|{cpu_capability()}|{torch.__version__}|{torch.get_num_threads()}t"


def measured_bf16_ratio(device: str = "cpu") -> float:
    """bf16 / fp32 matmul throughput on this machine (> 1: bf16 faster), measured once and cached on disk."""
    key = machine_key(device)
    path = _cache_path()
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text())
    if isinstance(cache.get(key), dict) and "ratio" in cache[key]:
        return float(cache[key]["ratio"])
    fp32 = matmul_gflops(torch.float32, device=device)
    bf16 = matmul_gflops(torch.bfloat16, device=device)
    ratio = bf16 / fp32
    cache[key] = {"fp32_gflops": fp32, "bf16_gflops": bf16, "ratio": ratio, "date": time.strftime("%Y-%m-%d")}
    with contextlib.suppress(OSError):  # a read-only home only costs a re-measurement next time
        from sidrec.io import write_json

        write_json(path, cache)
    return ratio


def native_bf16(device: str = "cpu") -> bool:
    """Whether the device computes bf16 natively (before any timing)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = native_cpu_bf16_flags()
    return flags["avx512_bf16"] or flags["amx"]


def normalise(setting: str | bool) -> str:
    """``True``/``False``/``"auto"``/... -> one of :data:`SETTINGS`."""
    if isinstance(setting, bool):
        return "true" if setting else "false"
    s = str(setting).strip().lower()
    aliases = {"yes": "true", "1": "true", "on": "true", "no": "false", "0": "false", "off": "false"}
    s = aliases.get(s, s)
    if s not in SETTINGS:
        raise ValueError(f"precision setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    return s


def use_bf16(setting: str | bool, device: str | torch.device = "cpu") -> bool:
    """Resolve a ``train.bf16`` setting to bf16 on/off for ``device`` (cached for the process)."""
    dev = torch.device(device).type
    s = normalise(setting)
    if s == "false" or dev not in ("cpu", "cuda"):
        return False
    key = (s, dev)
    if key in _resolved:
        return _resolved[key]
    if s == "auto":
        on = native_bf16(dev) and measured_bf16_ratio(dev) > 1.0
    else:
        on = True
        if dev == "cpu" and not native_bf16(dev) and "true" not in _warned:
            _warned.add("true")
            ratio = measured_bf16_ratio(dev)
            print(f"warning: train.bf16=true on a CPU without native bf16 ({cpu_capability()}): bf16 matmuls run at "
                  f"{ratio:.2f}x the fp32 speed here; train.bf16=auto would use fp32", file=sys.stderr)
    _resolved[key] = on
    return on


def autocast(setting: str | bool, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when :func:`use_bf16` says so, else a no-op context."""
    dev = torch.device(device).type
    if use_bf16(setting, dev):
        return torch.autocast(dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fp32(device: str | torch.device = "cpu") -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off on ``device`` (code that must run in fp32 inside a bf16 region); a no-op on a
    device without autocast (``meta``)."""
    dev = torch.device(device).type
    return torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()


def describe(device: str = "cpu") -> dict[str, Any]:
    """Machine facts for benchmark records: CPU model, capability, threads, and the resolved ``auto``."""
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "native_bf16": native_bf16(device), "auto_bf16": use_bf16("auto", device)}


def _reset_for_tests() -> None:
    _resolved.clear()
    _warned.clear()
