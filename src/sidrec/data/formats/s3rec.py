"""S3-Rec / P5 sequence files: one line per user, ``user_id item_id item_id ...`` in time order.

A directory may also hold ``datamaps.json`` (P5: ids -> ASINs), ``*_item2attributes.json`` (S3-Rec:
item -> attribute ids) and ``items.jsonl`` (one object per item with ``item_id`` and text fields). Only
the top-level directory is searched, so ``amazon14_toys/s3rec_numbering/`` is a dataset of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidrec.data.dataset import Dataset, _natural_key
from sidrec.errors import SidrecError, input_error, read_utf8

SEQ_NAMES = ("sequential_data.txt", "sequential.txt")


def _sequence_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".txt" else None
    for n in SEQ_NAMES:
        if (path / n).exists():
            return path / n
    txts = sorted(p for p in path.glob("*.txt") if p.is_file())
    for t in txts:
        if _looks_like_sequences(t):
            return t
    return None


def _integer_id(tok: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts a superscript '²', which ``int`` refuses."""
    return tok.isascii() and tok.isdigit()


def _looks_like_sequences(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().split()
    except (OSError, UnicodeDecodeError):
        return False
    return len(first) >= 2 and all(_integer_id(tok) for tok in first)


def detect(path: Path) -> bool:
    f = _sequence_file(path)
    return f is not None and _looks_like_sequences(f)


def read(path: Path, name: str, kcore: int = 0) -> Dataset:
    seq_file = _sequence_file(path)
    if seq_file is None:
        raise SidrecError(f"{path}: no S3-Rec/P5 sequence file (*.txt with 'user item item ...' lines)")
    folder = seq_file.parent
    users: list[str] = []
    raw_seqs: list[list[str]] = []
    seen: set[str] = set()
    with open(seq_file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            toks = line.split()
            if not toks:
                continue
            if not line.endswith("\n"):  # the last line of a file that was cut off while being written or copied
                raise input_error(seq_file, "the file ends in the middle of a line (no newline at the end), so its "
                                  "last user may be cut off; if the file is complete, add a newline at its end", lineno)
            if len(toks) < 2:
                raise input_error(seq_file, f"expected 'user_id item_id [item_id ...]', got {line.strip()!r}",
                                  lineno)
            bad = next((t for t in toks if not _integer_id(t)), None)
            if bad is not None:
                raise input_error(seq_file, f"expected integer ids 'user_id item_id ...', got {bad!r}", lineno)
            if toks[0] in seen:
                raise input_error(seq_file, f"user {toks[0]} appears on more than one line", lineno)
            seen.add(toks[0])
            users.append(toks[0])
            raw_seqs.append(toks[1:])
    if not users:
        raise input_error(seq_file, "the file has no users")
    item_list = sorted({i for s in raw_seqs for i in s}, key=_natural_key)
    index = {iid: k for k, iid in enumerate(item_list)}
    sequences = [[index[i] for i in s] for s in raw_seqs]
    table: dict[str, dict[str, Any]] = {}
    _read_items_jsonl(folder / "items.jsonl", table)
    _read_datamaps(folder / "datamaps.json", table)
    for attr_file in sorted(folder.glob("*_item2attributes.json")):
        _read_item2attributes(attr_file, table)
    from sidrec.data.dataset import _items_from_mapping

    items = _items_from_mapping(item_list, table)
    if kcore > 0:
        u_all = [u for u, s in zip(users, sequences, strict=True) for _ in s]
        i_all = [item_list[i] for s in sequences for i in s]
        pos = [float(k) for s in sequences for k in range(len(s))]
        return Dataset.from_interactions(name, u_all, i_all, pos, table, kcore=kcore, source=str(seq_file))
    return Dataset.from_sequences(name, sequences, item_list, users, items, source=str(seq_file))


def _load_json(path: Path) -> Any:
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise input_error(path, f"invalid JSON ({exc.msg})", exc.lineno) from None


def _read_items_jsonl(path: Path, table: dict[str, dict[str, Any]]) -> None:
    if not path.exists():
        return
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise input_error(path, f"expected one JSON object per line ({exc.msg})", lineno) from None
        if not isinstance(rec, dict) or "item_id" not in rec:
            raise input_error(path, "expected a JSON object with an 'item_id' field", lineno)
        iid = str(rec.pop("item_id"))
        table.setdefault(iid, {}).update(rec)


def _read_datamaps(path: Path, table: dict[str, dict[str, Any]]) -> None:
    if not path.exists():
        return
    data = _load_json(path)
    if not isinstance(data, dict):
        raise input_error(path, f'expected a JSON object with an "id2item" mapping, got a {type(data).__name__}')
    id2item = data.get("id2item") or {}
    if not isinstance(id2item, dict):
        raise input_error(path, f'"id2item" must map item ids to ASINs, got a {type(id2item).__name__}')
    for iid, asin in id2item.items():
        table.setdefault(str(iid), {}).setdefault("asin", asin)


def _read_item2attributes(path: Path, table: dict[str, dict[str, Any]]) -> None:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise input_error(path, "expected a JSON object {item_id: [attribute_id, ...]}")
    for iid, attrs in data.items():
        if not isinstance(attrs, list):
            raise input_error(path, f"item {iid}: expected a list of attribute ids, got {attrs!r}")
        table.setdefault(str(iid), {})["attribute_ids"] = [str(a) for a in attrs]
