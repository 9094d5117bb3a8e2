"""The canonical Dataset every reader produces and every model consumes.

Why one canonical form: each public format (S3-Rec, LC-Rec, RecBole, raw Amazon dumps, CSV) has its own
quirks; bugs hide in those quirks (unsorted sequences, 0/1-based ids). Readers do the format-specific
work once and hand over the same thing: dense 0-based item and user indices, each user's items in time
order, and an items table with whatever content fields the source has. The original ids are kept so
results can be mapped back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidrec.errors import SidrecError, input_error
from sidrec.io import atomic_path

PREPARED_MARKER = "sidrec_dataset.json"
FORMAT_VERSION = 1


@dataclass
class FilterReport:
    """What k-core filtering removed (users/items/interactions), reported to the user."""

    kcore: int = 0
    rounds: int = 0
    users_removed: int = 0
    items_removed: int = 0
    interactions_removed: int = 0


@dataclass
class Dataset:
    """Users' time-ordered item sequences plus an items table.

    ``offsets``/``flat`` store the sequences in CSR form (user ``u`` owns ``flat[offsets[u]:offsets[u+1]]``)
    so 300k interactions cost two arrays, not 35k Python lists.
    """

    name: str
    item_ids: list[str]
    user_ids: list[str]
    offsets: np.ndarray
    flat: np.ndarray
    items: dict[str, list[Any]] = field(default_factory=dict)
    filter_report: FilterReport | None = None
    source: str = ""
    # items the interactions name that the dataset's item file (LC-Rec item.json, a tabular items table) has no
    # record of: they have no text. Set by the reader, reported by the command line, never saved.
    unmatched_items: list[str] = field(default_factory=list)
    item_file: str = ""  # the item file unmatched_items refers to

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sequences(
        cls,
        name: str,
        sequences: Sequence[Sequence[int]],
        item_ids: list[str],
        user_ids: list[str],
        items: dict[str, list[Any]] | None = None,
        source: str = "",
    ) -> Dataset:
        """Build from already time-ordered sequences of 0-based item indices."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = (
            np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
            if len(sequences)
            else np.zeros(0, dtype=np.int64)
        )
        ds = cls(name, list(item_ids), list(user_ids), offsets, flat, dict(items or {}), None, source)
        ds.validate()
        return ds

    @classmethod
    def from_interactions(
        cls,
        name: str,
        users: Sequence[Any],
        items: Sequence[Any],
        timestamps: Sequence[float] | None = None,
        item_table: dict[str, dict[str, Any]] | None = None,
        kcore: int = 0,
        source: str = "",
    ) -> Dataset:
        """Build from raw (user, item, timestamp) triples.

        Sequences are ordered by timestamp with a *stable* tie-break on input order, so two reviews with
        the same timestamp keep the order the file gives them and repeated runs agree. ``kcore`` > 0
        removes users and items with fewer than k interactions, repeated until nothing changes.
        """
        u_raw = np.asarray([str(u) for u in users], dtype=object)
        i_raw = np.asarray([str(i) for i in items], dtype=object)
        if len(u_raw) != len(i_raw):
            raise SidrecError(f"{source or name}: users and items have different lengths")
        ts = np.asarray(timestamps, dtype=np.float64) if timestamps is not None else np.zeros(len(u_raw))
        report = FilterReport(kcore=kcore)
        keep = np.ones(len(u_raw), dtype=bool)
        if kcore > 0:
            u_codes, u_inv = np.unique(u_raw, return_inverse=True)
            i_codes, i_inv = np.unique(i_raw, return_inverse=True)
            while True:
                report.rounds += 1
                uc = np.bincount(u_inv[keep], minlength=len(u_codes))
                ic = np.bincount(i_inv[keep], minlength=len(i_codes))
                bad = keep & ((uc[u_inv] < kcore) | (ic[i_inv] < kcore))
                if not bad.any():
                    break
                keep &= ~bad
            report.users_removed = int(len(u_codes) - len(np.unique(u_inv[keep])))
            report.items_removed = int(len(i_codes) - len(np.unique(i_inv[keep])))
            report.interactions_removed = int((~keep).sum())
            if not keep.any():
                raise SidrecError(
                    f"{source or name}: no interactions left after {kcore}-core filtering "
                    f"({report.users_removed} users and {report.items_removed} items removed)"
                )
        u_raw, i_raw, ts = u_raw[keep], i_raw[keep], ts[keep]
        if len(u_raw) == 0:
            raise SidrecError(f"{source or name}: the dataset has no interactions")
        user_list = sorted(set(u_raw.tolist()), key=_natural_key)
        item_list = sorted(set(i_raw.tolist()), key=_natural_key)
        u_index = {u: k for k, u in enumerate(user_list)}
        i_index = {i: k for k, i in enumerate(item_list)}
        uidx = np.fromiter((u_index[u] for u in u_raw), dtype=np.int64, count=len(u_raw))
        iidx = np.fromiter((i_index[i] for i in i_raw), dtype=np.int64, count=len(i_raw))
        order = np.lexsort((np.arange(len(uidx)), ts, uidx))  # user, then time, then input order
        uidx, iidx = uidx[order], iidx[order]
        counts = np.bincount(uidx, minlength=len(user_list))
        offsets = np.zeros(len(user_list) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        table = _items_from_mapping(item_list, item_table or {})
        ds = cls(name, item_list, user_list, offsets, iidx, table, report if kcore > 0 else None, source)
        ds.validate()
        return ds

    # ------------------------------------------------------------------ views
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return int(self.flat.shape[0])

    def sequence(self, u: int) -> np.ndarray:
        """Items of user ``u`` in time order (a view, do not modify)."""
        return self.flat[self.offsets[u] : self.offsets[u + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequences(self) -> list[np.ndarray]:
        return [self.sequence(u) for u in range(self.n_users)]

    def text_fields(self) -> list[str]:
        return [k for k in self.items if k not in {"item_id"}]

    def field_coverage(self) -> dict[str, float]:
        """Share of items with a non-empty value, per item field (``sidrec data stats`` shows it, so a reader
        that found no text, or a field that is mostly empty, is visible before anything is embedded)."""
        n = max(1, self.n_items)
        return {f: sum(has_value(v) for v in vals) / n for f, vals in self.items.items()}

    def validate(self) -> None:
        """Invariants every consumer relies on; a reader that breaks them is a bug, not user error."""
        assert self.offsets[0] == 0 and self.offsets[-1] == len(self.flat)
        assert len(self.offsets) == len(self.user_ids) + 1
        if len(self.flat):
            assert self.flat.min() >= 0 and self.flat.max() < len(self.item_ids)
        for k, v in self.items.items():
            assert len(v) == len(self.item_ids), f"items column {k} has {len(v)} rows"

    def stats(self) -> dict[str, Any]:
        lens = self.lengths
        out: dict[str, Any] = {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "seq_len_min": int(lens.min()) if len(lens) else 0,
            "seq_len_mean": float(lens.mean()) if len(lens) else 0.0,
            "seq_len_max": int(lens.max()) if len(lens) else 0,
            "item_fields": self.text_fields(),
            "field_coverage": self.field_coverage(),
        }
        if self.filter_report is not None:
            out["filter"] = self.filter_report.__dict__
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the prepared dataset directory atomically (Parquet tables + a JSON marker)."""
        path = Path(path)
        with atomic_path(path, is_dir=True) as tmp:
            cols: dict[str, Any] = {"item_id": pa.array(self.item_ids, pa.string())}
            for k, v in self.items.items():
                cols[k] = pa.array(v)
            pq.write_table(pa.table(cols), tmp / "items.parquet")
            seqs = pa.ListArray.from_arrays(pa.array(self.offsets, pa.int64()), pa.array(self.flat, pa.int64()))
            pq.write_table(pa.table({"user_id": pa.array(self.user_ids, pa.string()), "items": seqs}),
                           tmp / "users.parquet")
            meta = {"format_version": FORMAT_VERSION, "source": self.source, **self.stats()}
            (tmp / PREPARED_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a directory written by :meth:`save`; a damaged file is a one-line error naming it."""
        path = Path(path)
        marker = path / PREPARED_MARKER
        if not marker.exists():
            raise SidrecError(f"{path}: not a prepared sidrec dataset (no {PREPARED_MARKER})")
        try:
            meta = json.loads(marker.read_text())
        except json.JSONDecodeError as exc:
            raise input_error(marker, f"invalid JSON at column {exc.colno} ({exc.msg}); expected the object "
                              "'sidrec data prepare' writes", exc.lineno) from None
        except UnicodeDecodeError:
            raise input_error(marker, "not a text file; expected the JSON object 'sidrec data prepare' writes") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise input_error(marker, "expected a JSON object with a string 'name' (as 'sidrec data prepare' writes)")
        it = _read_parquet(path / "items.parquet", ("item_id",)).to_pydict()
        us = _read_parquet(path / "users.parquet", ("user_id", "items"))
        try:
            col = us.column("items").combine_chunks()
            offsets = np.asarray(col.offsets, dtype=np.int64)
            flat = np.asarray(col.values, dtype=np.int64)
        except (AttributeError, TypeError, ValueError, pa.ArrowException):
            raise input_error(path / "users.parquet", "column 'items' must be lists of item indices") from None
        offsets = offsets - offsets[0]
        item_ids = [str(i) for i in it.pop("item_id")]
        user_ids = [str(u) for u in us.column("user_id").to_pylist()]
        if len(flat) and (flat.min() < 0 or flat.max() >= len(item_ids)):
            raise input_error(path / "users.parquet", f"item index out of range (items.parquet has {len(item_ids)} "
                              f"items, users.parquet refers to {int(flat.min())}..{int(flat.max())})")
        try:
            report = FilterReport(**meta["filter"]) if "filter" in meta else None
        except TypeError:
            raise input_error(marker, "'filter' must be the k-core report 'sidrec data prepare' writes") from None
        ds = cls(meta["name"], item_ids, user_ids, offsets, flat, it, report, str(meta.get("source", str(path))))
        ds.validate()
        return ds


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pa.Table:
    """A prepared dataset's table with its required ``columns``; a truncated or foreign file is a one-line error."""
    if not path.exists():
        raise input_error(path, "missing from the prepared dataset (re-run 'sidrec data prepare')")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise input_error(path, f"unreadable Parquet, truncated or not Parquet ({str(exc).splitlines()[0][:120]}); "
                          "re-run 'sidrec data prepare'") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise input_error(path, f"expected columns {', '.join(columns)}; missing {', '.join(missing)}")
    return table


def has_value(v: Any) -> bool:
    """A field value that carries text: not None, not blank, not the 'Unknown' placeholder some dumps use
    (coverage counts it, and item texts drop the clause of a field without one)."""
    if isinstance(v, list | tuple):
        return any(has_value(x) for x in v)
    return v is not None and bool(str(v).strip()) and str(v).strip() != "Unknown"


def check_prepared_destination(path: str | Path) -> None:
    """Refuse an output folder that cannot be written, or that holds something other than a prepared dataset.

    Saving replaces the folder as a whole (atomically), so ``--out`` pointing at a folder of other files would
    delete them; only an earlier prepared dataset may be replaced.
    """
    from sidrec.io import check_writable

    p = Path(path)
    check_writable(p, "prepared dataset folder")
    if p.is_dir() and any(p.iterdir()) and not (p / PREPARED_MARKER).exists():
        raise SidrecError(f"{p} exists and is not a prepared sidrec dataset (no {PREPARED_MARKER}); saving would "
                          "replace its files: choose another --out")


def _natural_key(s: str) -> tuple[int, int | str]:
    """Numeric ids sort numerically (1, 2, 10), others lexicographically: stable, human-expected order.

    Only ASCII digits count as a number: ``str.isdigit`` also accepts characters ``int`` refuses (a superscript
    '²'), and such an id in a user's file must sort as the string it is, not crash the reader.
    """
    return (0, int(s)) if s.isascii() and s.isdigit() else (1, s)


def _items_from_mapping(item_list: list[str], table: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Turn {item_id: {field: value}} into column lists aligned with ``item_list`` (missing -> None)."""
    fields: list[str] = []
    for rec in table.values():
        for k in rec:
            if k not in fields and k != "item_id":
                fields.append(k)
    cols: dict[str, list[Any]] = {f: [] for f in fields}
    for iid in item_list:
        rec = table.get(iid, {})
        for f in fields:
            cols[f].append(_clean_value(rec.get(f)))
    for f, vals in cols.items():  # one type per column: if any value is a list, all are lists
        if any(isinstance(v, list) for v in vals):
            cols[f] = [v if isinstance(v, list) or v is None else [v] for v in vals]
    return cols


def _clean_value(v: Any) -> Any:
    """Normalise field values so Parquet gets one type per column (lists of strings or strings)."""
    if v is None:
        return None
    if isinstance(v, list | tuple):
        flat: list[str] = []
        for x in v:
            if isinstance(x, list | tuple):
                flat.extend(str(y) for y in x)
            else:
                flat.append(str(x))
        return flat
    return str(v)
