"""Format readers. Each module exposes ``detect(path) -> bool`` and ``read(path, name, kcore) -> Dataset``.

``load_dataset`` is the one entry point: it accepts a prepared directory, a raw dataset path with an
explicit or detected format, or ``synthetic`` for the embedded default.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sidrec.data.dataset import PREPARED_MARKER, Dataset
from sidrec.errors import SidrecError, check_utf8

# Order matters for detection: the most specific formats first.
FORMATS = ["prepared", "recbole", "lcrec", "amazon", "s3rec", "tabular"]


def _module(fmt: str) -> Any:
    return importlib.import_module(f"sidrec.data.formats.{fmt}")


def detect_format(path: Path) -> str:
    """Guess the format of ``path``; an error lists what was looked for when nothing fits."""
    if (path / PREPARED_MARKER).exists():
        return "prepared"
    for fmt in FORMATS[1:]:
        try:
            if _module(fmt).detect(path):
                return fmt
        except ModuleNotFoundError:  # pragma: no cover - a reader not installed
            continue
    raise SidrecError(
        f"{path}: unknown dataset format (looked for a prepared sidrec dataset, RecBole .inter files, "
        "LC-Rec .inter.json/.item.json, Amazon reviews_*.json(.gz), S3-Rec/P5 'user item item ...' .txt, "
        "or a CSV/Parquet with user,item[,timestamp] columns); pass --format explicitly"
    )


def load_dataset(path: str | Path, fmt: str = "auto", name: str = "", kcore: int = 0, strict_items: bool = False,
                 **kwargs: Any) -> Dataset:
    """Read any supported dataset into the canonical :class:`Dataset`.

    ``strict_items``: refuse interactions that name items the dataset's item file has no record of (LC-Rec
    ``item.json``, a tabular ``items`` table); by default they are kept and counted in ``Dataset.unmatched_items``.
    """
    if str(path) == "synthetic":
        from sidrec.data.synthetic import generate

        return generate(**kwargs)
    p = Path(path)
    if not p.exists():
        raise SidrecError(f"{p}: dataset path not found")
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "prepared":
        return Dataset.load(p)
    if fmt not in FORMATS:
        raise SidrecError(f"unknown dataset format '{fmt}' (known: {', '.join(FORMATS)})")
    try:
        ds = _module(fmt).read(p, name=name or _default_name(p), kcore=kcore)
    except UnicodeDecodeError as exc:
        _name_the_file(p)  # which file, at which byte and line
        raise SidrecError(f"{p}: not UTF-8 text at byte {exc.start} ({exc.reason}); is --format {fmt} right?") from None
    if ds.n_interactions == 0:
        raise SidrecError(f"{p}: the dataset is empty")
    if strict_items and ds.unmatched_items:
        raise SidrecError(unmatched_message(ds) + "; --strict-items refuses them: add them to the item file or "
                          "remove their interactions")
    return ds


def unmatched_message(ds: Dataset) -> str:
    """'N of M items ... have no record in FILE (e.g. ...)' for a dataset whose interactions name unknown items."""
    n, first = len(ds.unmatched_items), ", ".join(repr(i) for i in ds.unmatched_items[:3])
    return (f"{ds.item_file}: {n:,} of the {ds.n_items:,} items the interactions name have no record there (e.g. "
            f"{first}), so they have no text")


_BINARY_SUFFIXES = (".parquet", ".pq", ".npy", ".npz", ".zip", ".safetensors", ".pt", ".png")


def _name_the_file(path: Path) -> None:
    """Raise the not-UTF-8 error of the first text file of ``path`` (itself, or a file in the folder) that has one.

    Why: a reader's ``UnicodeDecodeError`` says at which byte of *some* file decoding failed, not which file."""
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
    for f in files:
        if not f.name.lower().endswith(_BINARY_SUFFIXES):
            try:
                check_utf8(f)
            except (OSError, EOFError):  # not gzip after all, unreadable: not the file this error is about
                continue


def _default_name(p: Path) -> str:
    return (p.stem if p.is_file() else p.name).replace(".inter", "")
