"""New items for a trained run: content SIDs from the run's own tokenizer, made unique, with no retraining.

Why: a shop adds products every day and cannot retrain the tokenizer and the recommender for each one. The
run's tokenizer already maps content to codes; a new item gets the codes of its text (so it lands next to
similar items the model knows) and the lowest collision code that is free under that prefix, so its SID is
valid, unique and decodable at once. The extended table is written next to the run's own table (which is
never modified) and extended again by later calls; ``sidrec recommend RUN --sid-table FILE`` decodes over
it. The new items' content vectors are kept beside the table (``<table>.embeddings.npy``) so that
``sidrec refine-items`` can later re-choose their SIDs from their first interactions
(:mod:`sidrec.dream.refine`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from sidrec.config import load_config
from sidrec.dream.sids import place_sids
from sidrec.errors import SidrecError, read_utf8
from sidrec.sid.table import SIDTable

CATALOGUE_TABLE = "sid_table.catalogue.parquet"


def embeddings_path(table_path: str | Path) -> Path:
    """Where the content vectors of a catalogue table's added items are kept (rows in the order added)."""
    p = Path(table_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".embeddings.npy")


def read_records(path: str | Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a CSV (header row) or JSON Lines file, so errors can name the line.

    ``what`` names the expected fields in the error for a JSON line that is not an object. The file must be UTF-8
    (a byte that is not is named with its offset and line); a CSV field longer than the csv module's limit and a row
    with more fields than the header are named with their line.
    """
    p = Path(path)
    if not p.exists():
        raise SidrecError(f"{p}: file not found")
    if not p.is_file():
        raise SidrecError(f"{p}: not a file (expected a CSV or JSON Lines file)")
    text = read_utf8(p)
    if p.suffix.lower() == ".csv":
        return _csv_records(p, text)
    out: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: a JSON string may hold U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SidrecError(f"{p}, line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise SidrecError(f"{p}, line {n}: expected a JSON object with {what}")
        out.append((n, obj))
    return out


def _csv_records(p: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a CSV with a header, keyed by the header's names; the line a row starts on comes with it."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        header = next(reader, [])
        start = reader.line_num + 1
        for row in reader:
            if row:
                if len(row) > len(header):
                    raise SidrecError(f"{p}, line {start}: {len(row)} fields, but the header names {len(header)} "
                                      f"({', '.join(header)}); quote fields that hold commas")
                rows.append((start, dict(zip(header, row + [""] * (len(header) - len(row)), strict=True))))
            start = reader.line_num + 1
    except csv.Error as exc:
        limit = csv.field_size_limit()
        if "field limit" in str(exc):
            raise SidrecError(f"{p}, line {reader.line_num}: a field longer than the CSV reader's limit of {limit:,} "
                              "characters; shorten it (item text that long is not read by the encoder anyway)") from None
        raise SidrecError(f"{p}, line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def read_new_items(path: str | Path) -> list[dict[str, Any]]:
    """Items from JSON Lines (one object per line) or CSV (a header row); each needs a non-empty ``item_id``."""
    p = Path(path)
    rows: list[dict[str, Any]] = []
    for n, row in read_records(p, 'a non-empty "item_id"'):
        if not str(row.get("item_id") or "").strip():
            raise SidrecError(f"{p}, line {n}: expected a non-empty 'item_id'")
        rows.append(row)
    if not rows:
        raise SidrecError(f"{p}: no items")
    ids = [str(r["item_id"]) for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SidrecError(f"{p}: item id '{dup}' appears more than once")
    return rows


def new_item_embeddings(cfg: Any, rows: list[dict[str, Any]], embeddings: str | Path | None = None) -> np.ndarray:
    """Content vectors for new items, the way the run embedded its catalogue (text), or from a .npy file."""
    from sidrec.features.core import encode_texts, item_texts

    if embeddings:
        from sidrec.features.core import load_npy

        emb = load_npy(embeddings, "--embeddings")
        if emb.ndim != 2 or len(emb) != len(rows):
            raise SidrecError(f"{embeddings}: expected ({len(rows)}, d) embeddings, got {emb.shape}")
        return emb
    kind = cfg.features.kind
    if kind not in ("text", "auto") or (kind == "auto" and not any("title" in r for r in rows)):
        raise SidrecError(f"the run's features are '{kind}', which cannot embed new items on their own; "
                          "pass --embeddings FILE.npy with one row per new item")
    fields = sorted({k for r in rows for k in r if k != "item_id"})
    items = {f: [r.get(f) for r in rows] for f in fields}
    fake = SimpleNamespace(items=items, n_items=len(rows), item_ids=[str(r["item_id"]) for r in rows])
    return encode_texts(item_texts(fake, cfg.features.template), cfg.features.model, progress=False)  # type: ignore[arg-type]


def add_items(run_dir: str | Path, items_path: str | Path, out: str | Path | None = None,
              embeddings: str | Path | None = None, allow_empty_text: bool = False) -> tuple[SIDTable, Path]:
    """Extend the run's SID table with new items; returns the table and where it was written.

    Only runs that decode over a SID table (TIGER, DIGER) can recommend the added items (``recommend
    --sid-table``); an item without any text gets the SID of an empty string unless ``allow_empty_text``, so it is
    refused by default (its SID would say nothing about it)."""
    from sidrec.sid.base import load_tokenizer

    run = Path(run_dir)
    if not (run / "config.yaml").exists() or not (run / "sid_table.parquet").exists():
        raise SidrecError(f"{run}: not a run directory with a SID table (config.yaml, sid_table.parquet)")
    cfg = load_config([run / "config.yaml"])
    if cfg.method not in ("tiger", "diger"):
        raise SidrecError(f"{run}: method '{cfg.method}' ranks a fixed catalogue; new items can join only a run that "
                          "decodes over a SID table (tiger, diger)")
    src = Path(out) if out else run / CATALOGUE_TABLE
    run_table = SIDTable.load(run / "sid_table.parquet")
    base = SIDTable.load(src) if src.exists() else run_table  # an existing catalogue table is extended
    if base.sizes != run_table.sizes or base.n_items < run_table.n_items:
        raise SidrecError(f"{src} is not an extension of {run / 'sid_table.parquet'} (codebooks {base.sizes} vs "
                          f"{run_table.sizes}, {base.n_items} vs {run_table.n_items} items)")
    rows = read_new_items(items_path)
    known = set(base.item_ids or [])
    clash = [str(r["item_id"]) for r in rows if str(r["item_id"]) in known]
    if clash:
        raise SidrecError(f"{items_path}: item '{clash[0]}' is already in the catalogue ({len(clash)} known ids)")
    if not embeddings and not allow_empty_text:
        empty = [str(r["item_id"]) for r in rows
                 if not any(str(v).strip() for k, v in r.items() if k != "item_id" and v is not None)]
        if empty:
            raise SidrecError(f"{items_path}: item '{empty[0]}' has no text ({len(empty)} such items); its SID would "
                              "come from an empty string: add text, pass --embeddings, or --allow-empty-text")
    tok = load_tokenizer(run / "tokenizer")
    emb = new_item_embeddings(cfg, rows, embeddings)
    codes = tok.encode(emb)
    lq = codes.shape[1]
    if lq == base.length:  # no collision code in this run: a repeated SID cannot be told apart
        full = codes
        if (codes[:, None, :] == base.codes[None, :, :]).all(2).any():
            raise SidrecError("a new item's SID equals an existing item's and the run has no collision code")
    else:
        last = place_sids(base.codes, codes, base.sizes[-1])
        if (last < 0).any():
            i = int(np.flatnonzero(last < 0)[0])
            raise SidrecError(f"no free collision code for new item '{rows[i]['item_id']}' under SID prefix "
                              f"{codes[i].tolist()} (all {base.sizes[-1]} in use)")
        full = np.concatenate([codes, last[:, None]], 1)
    n0 = base.n_items
    ids = (base.item_ids or [str(i) for i in range(n0)]) + [str(r["item_id"]) for r in rows]
    new = SIDTable(np.concatenate([base.items, np.arange(n0, n0 + len(rows))]), np.concatenate([base.codes, full]),
                   base.sizes, n0 + len(rows), np.concatenate([base.weights, np.ones(len(rows), np.float32)]),
                   np.concatenate([base.is_primary, np.ones(len(rows), bool)]), ids)
    # content vectors of all added items (NaN rows for items added before they were kept), for refine-items
    ef = embeddings_path(src)
    n_added_before = n0 - run_table.n_items
    prev = np.load(ef) if ef.exists() else np.zeros((0, emb.shape[1]), np.float32)
    if len(prev) != n_added_before or prev.shape[1] != emb.shape[1]:
        prev = np.full((n_added_before, emb.shape[1]), np.nan, np.float32)
    from sidrec.io import save_npy

    save_npy(ef, np.concatenate([prev, emb.astype(np.float32)]))
    new.save(src)
    return new, src


__all__ = ["CATALOGUE_TABLE", "add_items", "embeddings_path", "new_item_embeddings", "read_new_items", "read_records"]
