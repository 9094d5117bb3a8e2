"""Format readers. Each module exposes ``detect(path) -> bool`` and ``read(path, name, kcore) -> Dataset``.

``load_dataset`` is the one entry point: it accepts a prepared directory, a raw dataset path with an
explicit or detected format, or ``synthetic`` for the embedded default.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sidrec.data.dataset import PREPARED_MARKER, Dataset
from sidrec.errors import SidrecError

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


def load_dataset(path: str | Path, fmt: str = "auto", name: str = "", kcore: int = 0, **kwargs: Any) -> Dataset:
    """Read any supported dataset into the canonical :class:`Dataset`."""
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
        raise SidrecError(f"{p}: not UTF-8 text at byte {exc.start} ({exc.reason}); is --format {fmt} right?") from None
    if ds.n_interactions == 0:
        raise SidrecError(f"{p}: the dataset is empty")
    return ds


def _default_name(p: Path) -> str:
    return (p.stem if p.is_file() else p.name).replace(".inter", "")
