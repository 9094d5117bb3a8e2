"""The environment variables sidrec reads, parsed in one place with one-line errors.

Why: ``int(os.environ["WORLD_SIZE"])`` deep inside the trainer turns a typo in a launch script into a traceback (or,
for ``RANK=3`` without ``torchrun``, into a run that silently writes nothing because it thinks it is a worker). The
command line checks every variable here before any work (:func:`check_environment`), so a bad one is one line naming
the variable and what it must be, and the readers below give the same message wherever they are called first.
"""

from __future__ import annotations

import os
from pathlib import Path

from sidrec.errors import SidrecError


def _bad(name: str, raw: str, expected: str) -> SidrecError:
    return SidrecError(f"environment variable {name}={raw!r}: expected {expected} (fix or unset it)")


def env_int(name: str, default: int, minimum: int = 0, expected: str = "") -> int:
    """``$name`` as a whole number >= ``minimum`` (``default`` when unset or empty)."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    text = raw.strip()
    value = int(text) if text.isascii() and text.lstrip("-+").isdigit() else None
    if value is None or value < minimum:
        raise _bad(name, raw, expected or f"a whole number >= {minimum}")
    return value


def world_size() -> int:
    """Processes of a ``torchrun`` launch (``WORLD_SIZE``; 1 without one)."""
    return env_int("WORLD_SIZE", 1, 1, "the number of processes, a whole number >= 1 (torchrun sets it)")


def rank() -> int:
    """This process's rank in a ``torchrun`` launch (``RANK``; 0 without one), below ``WORLD_SIZE``."""
    size = world_size()
    r = env_int("RANK", 0, 0, "this process's rank, a whole number >= 0 (torchrun sets it)")
    if r >= size:
        raise SidrecError(f"environment variable RANK={r} is not below WORLD_SIZE={size}: a process that is not rank "
                          "0 writes nothing; launch distributed runs with torchrun, or unset RANK")
    return r


def local_rank() -> int:
    """This process's GPU index on its machine (``LOCAL_RANK``; 0 without ``torchrun``)."""
    return env_int("LOCAL_RANK", 0, 0, "this process's GPU index on the machine, a whole number >= 0")


def omp_threads() -> int | None:
    """The thread count ``OMP_NUM_THREADS`` asks for (its first level), or None when unset.

    OpenMP also accepts a comma-separated list (one count per nesting level); anything else it ignores with a
    warning, and a run would take the library's default without the user noticing.
    """
    raw = os.environ.get("OMP_NUM_THREADS", "")
    if not raw.strip():
        return None
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise _bad("OMP_NUM_THREADS", raw, "a whole number of threads >= 1 (or a comma-separated list of them)")
    return int(parts[0])


def cache_setting() -> tuple[str, Path] | None:
    """The variable that places sidrec's cache and the folder it names (``SIDREC_CACHE``, else
    ``XDG_CACHE_HOME``/sidrec), or None for the default ``~/.cache/sidrec``; ``~`` is expanded."""
    for name, tail in (("SIDREC_CACHE", ""), ("XDG_CACHE_HOME", "sidrec")):
        raw = os.environ.get(name, "")
        if raw:
            root = Path(raw).expanduser()
            return name, root / tail if tail else root
    return None


def check_environment() -> None:
    """Parse every variable sidrec reads; the first bad one is a :class:`SidrecError` naming it."""
    size = world_size()
    rank()
    local_rank()
    omp_threads()
    if size > 1:
        if not os.environ.get("RANK", "").strip():
            raise SidrecError(f"environment variable WORLD_SIZE={size} asks for a distributed run, but RANK is not set; "
                              "launch distributed runs with torchrun, or unset WORLD_SIZE")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name, "").strip():
                raise SidrecError(f"environment variable WORLD_SIZE={size} asks for a distributed run, but {name} is "
                                  "not set; launch distributed runs with torchrun, or unset WORLD_SIZE")
        env_int("MASTER_PORT", 0, 1, "a TCP port number, 1..65535")
        if env_int("MASTER_PORT", 0, 1) > 65535:
            raise _bad("MASTER_PORT", os.environ["MASTER_PORT"], "a TCP port number, 1..65535")
    cache = cache_setting()
    if cache is not None:
        name, root = cache
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise SidrecError(f"environment variable {name}={os.environ[name]!r}: sidrec's cache folder would be {root}, "
                              f"but {probe} is a file, not a folder")


__all__ = ["cache_setting", "check_environment", "env_int", "local_rank", "omp_threads", "rank", "world_size"]
