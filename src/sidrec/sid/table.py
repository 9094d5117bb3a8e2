"""SIDTable: which semantic IDs each item owns.

Why many-to-one: TIGER gives every item exactly one SID, but DREAM later registers several weighted SID
hypotheses for one cold item, and decoding any of them must count as that item. So the table is a list of
(item, SID, weight, primary) rows; every item has exactly one *primary* SID (the one a history is read as
and a model is trained to produce), and no SID may belong to two items (decoding it would be ambiguous).

Training and decoding want tensors, not rows: :attr:`primary` is the (n_items, L) matrix of primary SIDs,
:attr:`all_codes` / :attr:`sid_items` list every valid SID and its item, in the names
:meth:`sidrec.decoding.trie.SIDCodes.from_table` reads. The table is stored as Parquet (one row per SID,
codes as a fixed-width list column) with the codebook sizes in the schema metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sidrec.errors import SidrecError
from sidrec.io import atomic_path

TABLE_VERSION = 1


class SIDTable:
    """Rows (item, codes, weight, primary) with validated invariants and tensor views."""

    def __init__(self, items: Any, codes: Any, sizes: list[int], n_items: int, weights: Any = None,
                 primary: Any = None, item_ids: list[str] | None = None) -> None:
        self.items = np.asarray(items, dtype=np.int64).reshape(-1)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.sizes = [int(s) for s in sizes]
        self.n_items = int(n_items)
        n = len(self.items)
        self.weights = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        self.is_primary = np.ones(n, dtype=bool) if primary is None else np.asarray(primary, dtype=bool)
        self.item_ids = list(item_ids) if item_ids is not None else None
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(cls, codes: Any, sizes: list[int], item_ids: list[str] | None = None) -> SIDTable:
        """One SID per item (row ``i`` of ``codes`` is item ``i``'s SID)."""
        codes = np.asarray(codes, dtype=np.int64)
        return cls(np.arange(len(codes)), codes, sizes, len(codes), item_ids=item_ids)

    def with_sids(self, items: Any, codes: Any, weights: Any = None, make_primary: bool = False) -> SIDTable:
        """A new table with extra SIDs for ``items`` (e.g. DREAM's hypotheses for cold items).

        A SID the item already owns is not duplicated (its weight is updated). With ``make_primary`` the
        first new SID given for each item becomes its primary SID.
        """
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        codes = np.asarray(codes, dtype=np.int64).reshape(len(items), -1)
        w = np.ones(len(items), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        all_items = np.concatenate([self.items, items])
        all_codes = np.concatenate([self.codes, codes])
        all_w = np.concatenate([self.weights, w])
        prim = np.concatenate([self.is_primary, np.zeros(len(items), dtype=bool)])
        if make_primary:
            _, first = np.unique(items, return_index=True)
            new_rows = len(self.items) + first
            prim[np.isin(all_items, items[first]) & (np.arange(len(all_items)) < len(self.items))] = False
            prim[new_rows] = True
        # drop duplicate (item, SID) rows, keeping the newest weight and any primary flag
        key = np.concatenate([all_items[:, None], all_codes], 1)
        _, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        last = np.full(inv.max() + 1, -1, dtype=np.int64)
        np.maximum.at(last, inv, np.arange(len(inv)))
        any_prim = np.zeros(inv.max() + 1, dtype=bool)
        np.logical_or.at(any_prim, inv, prim)
        keep = np.sort(last)
        return SIDTable(all_items[keep], all_codes[keep], self.sizes, self.n_items, all_w[keep],
                        any_prim[inv[keep]], self.item_ids)

    # ------------------------------------------------------------------ invariants
    def validate(self) -> None:
        """Every item has one primary SID; codes fit their codebooks; no SID belongs to two items."""
        n, L = len(self.items), len(self.sizes)
        if self.codes.ndim != 2 or self.codes.shape != (n, L):
            raise SidrecError(f"SID table: codes must be ({n}, {L}), got {self.codes.shape}")
        if len(self.weights) != n or len(self.is_primary) != n:
            raise SidrecError("SID table: weights / primary flags do not match the number of SIDs")
        if n and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise SidrecError(f"SID table: item index outside [0, {self.n_items})")
        bad = (self.codes < 0) | (self.codes >= np.asarray(self.sizes))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise SidrecError(f"SID table: code {self.codes[r, c]} of item {self.items[r]} at position {c + 1} "
                              f"is outside [0, {self.sizes[c]})")
        n_prim = np.bincount(self.items[self.is_primary], minlength=self.n_items)
        if (n_prim != 1).any():
            i = int(np.flatnonzero(n_prim != 1)[0])
            raise SidrecError(f"SID table: item {i} has {n_prim[i]} primary SIDs (exactly one expected)")
        if n:
            uniq, inv = np.unique(self.codes, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            owner = np.full(len(uniq), -1, dtype=np.int64)
            owner[inv] = self.items
            clash = owner[inv] != self.items
            if clash.any():
                r = int(np.flatnonzero(clash)[0])
                raise SidrecError(f"SID table: SID {self.codes[r].tolist()} belongs to items {owner[inv[r]]} and "
                                  f"{self.items[r]}; resolve collisions first")
        if self.item_ids is not None and len(self.item_ids) != self.n_items:
            raise SidrecError(f"SID table: {len(self.item_ids)} item ids for {self.n_items} items")

    # ------------------------------------------------------------------ tensor views
    @property
    def length(self) -> int:
        return len(self.sizes)

    @property
    def n_sids(self) -> int:
        return len(self.items)

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.sizes)

    @property
    def primary(self) -> torch.Tensor:
        """(n_items, L) primary SID of every item."""
        out = np.empty((self.n_items, self.length), dtype=np.int64)
        out[self.items[self.is_primary]] = self.codes[self.is_primary]
        return torch.from_numpy(out)

    @property
    def all_codes(self) -> torch.Tensor:
        """(n_sids, L) every valid SID."""
        return torch.from_numpy(self.codes.copy())

    @property
    def sid_items(self) -> torch.Tensor:
        """(n_sids,) the item each SID decodes to."""
        return torch.from_numpy(self.items.copy())

    def sids_of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """All SIDs of one item and their weights (primary first)."""
        rows = np.flatnonzero(self.items == item)
        rows = rows[np.argsort(~self.is_primary[rows], kind="stable")]
        return self.codes[rows], self.weights[rows]

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> None:
        """Write the table as Parquet (atomically)."""
        L = self.length
        flat = pa.array(self.codes.reshape(-1), type=pa.int32())
        cols = {
            "item": pa.array(self.items, type=pa.int64()),
            "sid": pa.FixedSizeListArray.from_arrays(flat, L),
            "weight": pa.array(self.weights, type=pa.float32()),
            "primary": pa.array(self.is_primary, type=pa.bool_()),
        }
        meta = {"sidrec_sid_table": json.dumps({"version": TABLE_VERSION, "codebook_sizes": self.sizes,
                                                "n_items": self.n_items})}
        table = pa.table(cols).replace_schema_metadata(meta)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        if self.item_ids is not None:
            ids = pa.table({"item": pa.array(np.arange(self.n_items)), "item_id": pa.array(self.item_ids)})
            with atomic_path(Path(path).with_suffix(".items.parquet")) as tmp:
                pq.write_table(ids, tmp)

    @classmethod
    def load(cls, path: str | Path) -> SIDTable:
        """Read a table written by :meth:`save`; a foreign or damaged file is a SidrecError."""
        p = Path(path)
        if not p.exists():
            raise SidrecError(f"{p}: SID table not found")
        try:
            table = pq.read_table(p)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SidrecError(f"{p}: not a readable Parquet file ({exc})") from None
        raw = (table.schema.metadata or {}).get(b"sidrec_sid_table")
        if raw is None:
            raise SidrecError(f"{p}: not a sidrec SID table (no sidrec_sid_table metadata)")
        meta = json.loads(raw)
        if meta.get("version") != TABLE_VERSION:
            raise SidrecError(f"{p}: unsupported SID table version {meta.get('version')!r}")
        sizes = meta["codebook_sizes"]
        sid = table.column("sid").combine_chunks()
        codes = np.asarray(sid.flatten().to_numpy(), dtype=np.int64).reshape(len(sid), len(sizes))
        ids_path = p.with_suffix(".items.parquet")
        item_ids = pq.read_table(ids_path).column("item_id").to_pylist() if ids_path.exists() else None
        return cls(table.column("item").to_numpy(), codes, sizes, meta["n_items"],
                   table.column("weight").to_numpy(), table.column("primary").to_numpy(), item_ids)
