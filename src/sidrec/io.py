"""Atomic file output.

A crash or Ctrl-C in the middle of writing must never leave a half-written metrics file, checkpoint or
dataset behind: a later run would read it as if it were complete. Everything sidrec writes goes through
:func:`atomic_path`, which writes to a temporary sibling and renames it into place (rename is atomic on
POSIX filesystems).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def cache_root() -> Path:
    """sidrec's one cache folder: ``$SIDREC_CACHE``, else ``$XDG_CACHE_HOME/sidrec``, else ``~/.cache/sidrec``.

    Why one place: item vectors (``features/``) and the machine's precision timing (``precision.json``) are reused
    by every run of every project, so they belong to the user, not to whatever folder a command ran in.
    """
    from sidrec.env import cache_setting

    setting = cache_setting()  # '~' expanded: SIDREC_CACHE=~/x must not create a folder named '~' here
    return setting[1] if setting is not None else Path(os.path.expanduser("~")) / ".cache" / "sidrec"


def features_cache(cache_dir: str = "") -> Path:
    """The item-vector cache: ``features.cache_dir`` when set, else ``<cache_root>/features``."""
    return Path(cache_dir) if cache_dir else cache_root() / "features"


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    prefix = f".{path.name}.{os.getpid()}."  # the writer's process id: a later writer can tell a dead one's leftovers
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _umask_mode(tmp, is_dir)
        if is_dir and path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        reason = _storage_failure(exc)
        if reason:
            from sidrec.errors import SidrecError

            raise SidrecError(f"{path}: cannot be written ({reason}); the earlier file, if any, is unchanged") from None
        raise


def _umask_mode(tmp: Path, is_dir: bool) -> None:
    """Give a finished temporary the mode a plain ``open()`` / ``mkdir`` would have (0666 / 0777 less the umask).

    Why: ``mkstemp`` / ``mkdtemp`` create 0600 / 0700 so no one reads a half-written file; once complete, a
    run's files must be as readable to colleagues as anything else the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    if tmp.exists() and not tmp.is_symlink():
        tmp.chmod((0o777 if is_dir else 0o666) & ~mask)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.*.tmp`` siblings of ``path`` left by a writer that was killed (its process is gone):
    a ``kill -9`` during ``data prepare`` or a checkpoint leaves its half-written temporary behind."""
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = p.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _storage_failure(exc: BaseException) -> str:
    """'' unless ``exc`` says the disk (or a file-size or quota limit) is full: then a short reason.

    Why: a full disk during a checkpoint or a SID table is an expected operational failure, not a bug; it must
    be one line naming the file, not a SafetensorError / OSError traceback. safetensors reports it inside its
    own exception's text, hence the string test.
    """
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO):
        return os.strerror(exc.errno or 0)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        for needle, reason in (("StorageFull", "no space left on device"), ("os error 28", "no space left on device"),
                               ("FileTooLarge", "file too large"), ("os error 27", "file too large")):
            if needle in text:
                return reason
    return ""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (numpy scalars and arrays are converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save a numpy array atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def check_writable(path: str | Path, what: str = "output", folder: bool = True) -> None:
    """Fail now, with one line, if ``path`` (a file or folder to be created) cannot be written.

    Why before any work: an embedding or training run that discovers a read-only output folder at the end has
    wasted its time, and ``mkdir`` failing deep inside a job is a traceback, not a message. The nearest existing
    ancestor must be a writable folder; that is probed by creating (and removing) a temporary file in it, which
    also catches read-only filesystems where permission bits say nothing (e.g. when running as root).
    """
    from sidrec.errors import SidrecError

    p = Path(path)
    if p.exists() and p.is_dir() != folder:
        raise SidrecError(f"cannot write {what} {p}: it is a {'file' if folder else 'folder'}")
    probe = p if p.is_dir() else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SidrecError(f"cannot create {what} {p}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".sidrec-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise SidrecError(f"cannot write {what} {p}: {probe} is not writable ({exc.strerror})") from None


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log in a run directory, never through a symlink.

    Why: a run folder may come from someone else; a ``log.jsonl`` planted as a symlink would otherwise let a
    training run append to (or, on a fresh start, truncate) any file the user can write.
    """
    from sidrec.errors import SidrecError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if Path(path).is_symlink():
            raise SidrecError(f"{path}: is a symbolic link; sidrec writes run files only as regular files") from None
        raise SidrecError(f"{path}: cannot write ({exc.strerror})") from None
    with os.fdopen(fd, "a") as fh:
        fh.write(line)
