"""LC-Rec / LETTER JSON files: ``NAME.inter.json`` and an optional ``NAME.item.json``.

``NAME.inter.json`` is one JSON object ``{"user_idx": [item_idx, ...]}`` whose lists are already in time
order (0-based ids, as LC-Rec, LETTER and their descendants ship them). ``NAME.item.json`` maps
``item_idx`` to ``{"title", "description", "brand", "categories", ...}``. ``NAME.index.json`` (the
semantic ids those papers learned) is ignored on purpose: sidrec learns its own.

The file order *is* the time order, so sequences are kept exactly as given; sorting them by id would
silently scramble the next-item targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidrec.data.dataset import Dataset, _items_from_mapping, _natural_key
from sidrec.errors import SidrecError, input_error, read_utf8

INTER_SUFFIX = ".inter.json"
ITEM_SUFFIX = ".item.json"


def _inter_file(path: Path) -> Path | None:
    """The ``*.inter.json`` file ``path`` names or holds; ``None`` when there is none."""
    if path.is_file():
        return path if path.name.endswith(INTER_SUFFIX) else None
    if not path.is_dir():
        return None
    found = sorted(p for p in path.glob(f"*{INTER_SUFFIX}") if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SidrecError(f"{path}: several LC-Rec interaction files ({names}); pass one of them as the path")
    return found[0] if found else None


def detect(path: Path) -> bool:
    """Name-based: an LC-Rec dataset is recognised by its ``*.inter.json`` file alone."""
    try:
        return _inter_file(path) is not None
    except SidrecError:  # several candidates: still LC-Rec, ``read`` explains the ambiguity
        return True


def _load_json(path: Path) -> Any:
    text = read_utf8(path)  # a byte that is not UTF-8 is named with its offset and line
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise input_error(path, f"invalid JSON ({exc.msg}, column {exc.colno})", exc.lineno) from None


def read(path: Path, name: str, kcore: int = 0) -> Dataset:
    """Read ``NAME.inter.json`` (+ ``NAME.item.json``) keeping each user's list order as the time order."""
    inter = _inter_file(path)
    if inter is None:
        raise SidrecError(f"{path}: no LC-Rec interaction file (*{INTER_SUFFIX})")
    data = _load_json(inter)
    if not isinstance(data, dict):
        raise input_error(inter, 'expected a JSON object {"user_idx": [item_idx, ...]}')
    users: list[str] = []
    raw_seqs: list[list[str]] = []
    for user, seq in data.items():
        if not isinstance(seq, list) or not all(isinstance(i, int | str) and str(i) != "" for i in seq):
            raise input_error(inter, f"user {user}: expected a list of item ids, got {str(seq)[:80]}")
        if not seq:
            continue  # a user with no items carries no information; dropping keeps the CSR arrays honest
        users.append(str(user))
        raw_seqs.append([str(i) for i in seq])
    if not users:
        raise input_error(inter, "the file has no user with any item")

    table: dict[str, dict[str, Any]] = {}
    item_file = inter.with_name(inter.name[: -len(INTER_SUFFIX)] + ITEM_SUFFIX)
    if item_file.exists():
        table = _read_items(item_file)

    if kcore > 0:  # from_interactions does the filtering; positions stand in for timestamps (stable order)
        u_all = [u for u, s in zip(users, raw_seqs, strict=True) for _ in s]
        i_all = [i for s in raw_seqs for i in s]
        pos = [float(k) for s in raw_seqs for k in range(len(s))]
        ds = Dataset.from_interactions(name, u_all, i_all, pos, table, kcore=kcore, source=str(inter))
    else:
        item_list = sorted({i for s in raw_seqs for i in s}, key=_natural_key)
        index = {iid: k for k, iid in enumerate(item_list)}
        sequences = [[index[i] for i in s] for s in raw_seqs]
        items = _items_from_mapping(item_list, table)
        ds = Dataset.from_sequences(name, sequences, item_list, users, items, source=str(inter))
    if item_file.exists():
        # items the interactions name and item.json lacks have no text: counted (the command line reports them,
        # 'data prepare --strict-items' refuses them) instead of accepted without a word
        ds.unmatched_items = [i for i in ds.item_ids if i not in table]
        ds.item_file = str(item_file)
    return ds


def _read_items(path: Path) -> dict[str, dict[str, Any]]:
    """``{item_idx: {field: value}}``; empty strings are treated as missing so they are not embedded."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise input_error(path, 'expected a JSON object {"item_idx": {"title": ..., ...}}')
    table: dict[str, dict[str, Any]] = {}
    for iid, rec in data.items():
        if not isinstance(rec, dict):
            raise input_error(path, f"item {iid}: expected an object of text fields, got {str(rec)[:80]}")
        table[str(iid)] = {k: v for k, v in rec.items() if k != "item_id" and v not in (None, "", [])}
    return table
