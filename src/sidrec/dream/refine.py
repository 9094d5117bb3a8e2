"""Refining the SIDs of newly added items from their first interactions, with the frozen trained model.

Why: ``sidrec add-items`` gives a new item the content codes of its text, the only evidence there is on day
one. Once a few users have bought it, the trained backbone can say which SID it would actually *generate*
after those users' histories (DREAM's UC3 vote, see :mod:`sidrec.dream.uc3`). Our diagnosis on Beauty and
Toys (``benchmarks/cold_levels.py``) is that cold items lose at the deeper codes: their content path is one
the model has never been trained to produce. So the candidates here are the item's own content SID plus the
code paths of the *warm* catalogue items closest to it in content space (paths the model produces well);
the model votes between them in the item's real contexts, and the item switches only when the support and
margin gates pass. No weights change, so this takes seconds and can run every day.

Contexts: for each interaction with an added item, the user's known history (the run's dataset, then the
user's earlier rows of the interactions file) followed by the item. Users unknown to the run get new user
indices (the hashed user token then lands in some bucket, as for any user).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidrec.dream.newitems import CATALOGUE_TABLE, embeddings_path, read_records
from sidrec.dream.sids import complete_candidates, table_with
from sidrec.dream.uc3 import uc3_vote
from sidrec.errors import SidrecError
from sidrec.io import save_npy
from sidrec.sid.table import SIDTable


@dataclass
class RefineResult:
    """What ``refine_items`` did: the new table, where it went and per-item decisions."""

    table: SIDTable
    path: Path
    added: int  # items added to the run's catalogue (all are candidates for refinement)
    with_contexts: int  # of those, items with at least one interaction in the file
    switched: list[str]  # ids of items whose primary SID changed
    contexts: int  # interactions with added items that were scored


def read_interactions(path: str | Path, known_items: set[str]) -> list[tuple[str, str, float]]:
    """(user_id, item_id, timestamp) rows from CSV (header) or JSON Lines; timestamp optional (file order)."""
    p = Path(path)
    raw = read_records(p, "user_id and item_id")
    rows = []
    for n, r in raw:
        u, i = str(r.get("user_id") or "").strip(), str(r.get("item_id") or "").strip()
        if not u or not i:
            raise SidrecError(f"{p}, line {n}: expected non-empty 'user_id' and 'item_id'")
        if i not in known_items:
            raise SidrecError(f"{p}, line {n}: item '{i}' is not in the catalogue (add it with 'sidrec add-items')")
        ts = r.get("timestamp")
        try:
            t = float(ts) if ts not in (None, "") else float(len(rows))
        except (TypeError, ValueError):
            raise SidrecError(f"{p}, line {n}: timestamp '{ts}' is not a number") from None
        rows.append((u, i, t))
    if not rows:
        raise SidrecError(f"{p}: no interactions")
    return rows


def neighbour_prefixes(query: np.ndarray, pool: np.ndarray, pool_prefix: np.ndarray, own: np.ndarray,
                       n: int, search: int = 32) -> np.ndarray:
    """Up to ``n`` distinct code prefixes (m, n, L-1) of the pool items nearest each query (cosine); -1 = none.

    The item's own prefix is never repeated (it is candidate 0 already). Rows of NaN queries get none.
    """
    import faiss

    m, lq = len(query), pool_prefix.shape[1]
    out = np.full((m, n, lq), -1, dtype=np.int64)
    ok = np.isfinite(query).all(1)
    if not ok.any() or len(pool) == 0 or n == 0:
        return out
    q = np.ascontiguousarray(query[ok], dtype=np.float32)
    x = np.ascontiguousarray(pool, dtype=np.float32)
    faiss.normalize_L2(q)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nb = index.search(q, min(search, len(x)))
    pre = pool_prefix[nb]  # (m', S, L-1)
    sizes = pre.max(axis=(0, 1)) + 1
    radix = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])
    key = (pre * radix).sum(2)  # one integer per prefix
    own_key = (own[ok] * radix).sum(1)
    s = key.shape[1]
    dup = ((key[:, :, None] == key[:, None, :]) & np.tril(np.ones((s, s), bool), -1)[None]).any(2)
    drop = dup | (key == own_key[:, None])
    order = np.argsort(drop, axis=1, kind="stable")[:, :n]
    keep = np.take_along_axis(~drop, order, 1)
    chosen = np.take_along_axis(pre, order[:, :, None], 1)
    res = np.where(keep[:, :, None], chosen, -1)
    out[np.flatnonzero(ok), :res.shape[1]] = res
    return out


def neighbour_candidates(base: np.ndarray, sizes: list[int], items: np.ndarray, emb_items: np.ndarray,
                         pool_emb: np.ndarray, pool: np.ndarray, candidates: int) -> np.ndarray:
    """Complete candidate SIDs (n, C, L): each item's current SID, then its nearest pool items' code paths.

    Every candidate other than the item's own SID gets a free collision code under its prefix (unique
    against all SIDs in ``base`` and against each other); -1 rows where there is none.
    """
    nbr = neighbour_prefixes(emb_items, pool_emb, base[pool, :-1], base[items, :-1], max(candidates - 1, 0))
    prefixes = np.concatenate([base[items, None, :-1], nbr], 1)  # candidate 0 = the item's current SID
    valid = (prefixes >= 0).all(2)
    cands = complete_candidates(base, items, np.where(valid[:, :, None], prefixes, 0), sizes[-1])
    cands[~valid] = -1
    return cands


def refine_items(run_dir: str | Path, interactions: str | Path, table_path: str | Path | None = None,
                 out: str | Path | None = None, weights: str | Path | None = None, candidates: int = 8,
                 overrides: list[str] | None = None, progress: bool = True) -> RefineResult:
    """Let the run's frozen model re-choose the SIDs of added items from their first interactions."""
    from sidrec.config import load_config, only_overrides
    from sidrec.data.batches import prefix_samples
    from sidrec.pipeline import load_run
    from sidrec.sid.stage import run_features

    only_overrides("refine-items", overrides, ("dream.",))
    run = Path(run_dir)
    src = Path(table_path) if table_path else run / CATALOGUE_TABLE
    if not src.exists():
        raise SidrecError(f"{src} not found: add the new items first with 'sidrec add-items {run} ITEMS'")
    cfg, ds, split, task = load_run(run, weights)
    if not task.reads_sids:
        raise SidrecError(f"{run}: refining SIDs needs a SID-based run (this one is '{cfg.method}')")
    dcfg = load_config([run / "config.yaml"], list(overrides or [])).dream
    table = SIDTable.load(src)
    task.use_sids(table, source=str(src))  # checks codebooks and that the run's items are covered
    if table.n_sids != table.n_items:
        raise SidrecError(f"{src}: refining expects one SID per item ({table.n_sids} SIDs for {table.n_items} items)")
    n_run = ds.n_items
    added = np.arange(n_run, table.n_items)
    if len(added) == 0:
        raise SidrecError(f"{src}: no items beyond the run's own {n_run}; add some with 'sidrec add-items'")
    ids = table.item_ids or [str(i) for i in range(table.n_items)]
    index = {x: k for k, x in enumerate(ids)}
    rows = read_interactions(interactions, set(ids))

    # ------------------------------------------------------------ contexts (histories ending in an added item)
    users = sorted({u for u, _, _ in rows})
    known = {u: k for k, u in enumerate(ds.user_ids)}
    order = sorted(range(len(rows)), key=lambda r: (rows[r][0], rows[r][2], r))
    new_seq: dict[str, list[int]] = {u: [] for u in users}
    for r in order:
        new_seq[rows[r][0]].append(index[rows[r][1]])
    seqs, uidx, n_old = [], [], []
    for k, u in enumerate(users):
        old = ds.sequence(known[u]) if u in known else np.zeros(0, dtype=np.int64)
        seqs.append(np.concatenate([old, np.asarray(new_seq[u], dtype=np.int64)]))
        uidx.append(known.get(u, ds.n_users + k))
        n_old.append(len(old))
    samples = prefix_samples(seqs, cfg.data.max_len)
    tgt = samples["flat"][samples["end"]]
    starts = np.cumsum([len(s) for s in seqs]) - np.array([len(s) for s in seqs])
    is_new_row = samples["end"] - starts[samples["user"]] >= np.asarray(n_old)[samples["user"]]
    ctx_rows = np.flatnonzero(is_new_row & (tgt >= n_run))  # a user's very first item has no context: not scored
    ctx_item = tgt[ctx_rows] - n_run

    # ------------------------------------------------------------ candidates: own SID + warm neighbours' paths
    base = table.primary.numpy()
    emb_file = embeddings_path(src)
    stored = np.load(emb_file) if emb_file.exists() else None
    emb_new = stored if stored is not None else np.full((len(added), 1), np.nan, np.float32)
    if len(emb_new) != len(added):
        raise SidrecError(f"{emb_file}: {len(emb_new)} rows for {len(added)} added items")
    run_emb = run_features(cfg, ds).astype(np.float32)
    if emb_new.shape[1] != run_emb.shape[1]:
        emb_new = np.full((len(added), run_emb.shape[1]), np.nan, np.float32)  # no content match possible
    warm = np.flatnonzero(split.item_freq > cfg.data.cold_threshold)
    cands = neighbour_candidates(base, table.sizes, added, emb_new, run_emb[warm], warm, candidates)

    # ------------------------------------------------------------ UC3 vote by the frozen model
    dec = uc3_vote(task, samples, ctx_rows, ctx_item, np.asarray(uidx, dtype=np.int64), cands, dcfg, progress)
    chosen = cands[np.arange(len(added)), dec.chosen]
    new = table_with(base, table.sizes, added, chosen[:, None], item_ids=ids)
    dst = Path(out) if out else src
    new.save(dst)
    if dst != src and stored is not None:  # the refined table keeps its content vectors for later calls
        save_npy(embeddings_path(dst), stored)
    switched = [ids[n_run + k] for k in np.flatnonzero(dec.switch)]
    return RefineResult(new, dst, len(added), int((dec.support > 0).sum()), switched, len(ctx_rows))


__all__ = ["RefineResult", "neighbour_candidates", "neighbour_prefixes", "read_interactions", "refine_items"]
