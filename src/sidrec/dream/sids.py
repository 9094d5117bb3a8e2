"""Turning candidate code prefixes into complete, unique SIDs, and building the stage tables.

Why a placement step: CART proposes the *content* codes of a SID (the quantisation levels); a complete SID
also carries the collision code that tells items with equal content codes apart. A new SID must not collide
with any SID already in use, or decoding it would name two items. :func:`place_sids` gives every new
prefix the lowest collision code that is still free under that prefix, for all prefixes at once.
"""

from __future__ import annotations

import numpy as np

from sidrec.sid.table import SIDTable


def place_sids(fixed: np.ndarray, prefixes: np.ndarray, last_size: int, chunk: int = 8192) -> np.ndarray:
    """Collision code (m,) for each new prefix (m, L-1), avoiding the ``fixed`` SIDs (n, L); -1 = no free code.

    New prefixes that are equal to each other get distinct codes (in input order), so the returned SIDs are
    unique among themselves and against ``fixed``.
    """
    fixed = np.asarray(fixed, dtype=np.int64)
    prefixes = np.asarray(prefixes, dtype=np.int64).reshape(len(prefixes), -1)
    m = len(prefixes)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    allp = np.concatenate([fixed[:, :-1], prefixes]) if len(fixed) else prefixes
    _, inv = np.unique(allp, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    inv_f, inv_n = inv[:len(fixed)], inv[len(fixed):]
    keys, kn = np.unique(inv_n, return_inverse=True)
    slot = np.full(inv.max() + 1, -1, dtype=np.int64)
    slot[keys] = np.arange(len(keys))
    occ = np.zeros((len(keys), last_size), dtype=bool)
    f = slot[inv_f] >= 0
    occ[slot[inv_f[f]], fixed[f, -1]] = True
    order = np.argsort(kn, kind="stable")
    first = np.searchsorted(kn[order], kn[order], side="left")
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m) - first
    free_cum = np.cumsum(~occ, axis=1)  # (keys, K): free codes at or below each code
    out = np.full(m, -1, dtype=np.int64)
    for s in range(0, m, chunk):
        k, r = kn[s:s + chunk], rank[s:s + chunk] + 1
        fc = free_cum[k]
        code = (fc < r[:, None]).sum(1)  # first code whose free count reaches r
        out[s:s + chunk] = np.where(r <= fc[:, -1], code, -1)
    return out


def complete_candidates(base: np.ndarray, items: np.ndarray, prefixes: np.ndarray, last_size: int) -> np.ndarray:
    """Complete SIDs (n, C, L) for candidate prefixes (n, C, L-1) of ``items``; -1 rows where none is free.

    A candidate equal to the item's own base prefix keeps the item's base SID; all others are placed
    around every base SID (:func:`place_sids`), so no candidate ever collides with another item's SID.
    """
    base = np.asarray(base, dtype=np.int64)
    n, c, lq = prefixes.shape
    flat = prefixes.reshape(n * c, lq)
    owner = np.repeat(items, c)
    own = (flat == base[owner, :-1]).all(1)
    # order the placement by candidate rank so better candidates get the lower codes
    order = np.argsort(np.tile(np.arange(c), n), kind="stable")
    sel = order[~own[order]]
    last = np.full(n * c, -1, dtype=np.int64)
    last[sel] = place_sids(base, flat[sel], last_size)
    last[own] = base[owner[own], -1]
    full = np.concatenate([flat, last[:, None]], 1)
    full[last < 0] = -1
    return full.reshape(n, c, lq + 1)


def table_with(base: np.ndarray, sizes: list[int], items: np.ndarray, sids: np.ndarray,
               weights: np.ndarray | None = None, item_ids: list[str] | None = None) -> SIDTable:
    """A SID table: every item keeps its base SID except ``items``, whose SIDs become ``sids`` (n, B, L).

    The first valid hypothesis of an item is its primary SID; the others are registered too (Beam-Aware
    decoding), each with its weight. Items whose hypotheses are all invalid keep their base SID.
    """
    base = np.asarray(base, dtype=np.int64)
    sids = np.asarray(sids, dtype=np.int64).reshape(len(items), -1, base.shape[1])
    b = sids.shape[1]
    w = np.ones((len(items), b), dtype=np.float32) if weights is None else np.asarray(weights, np.float32)
    valid = (sids >= 0).all(2)
    has = valid.any(1)
    first = valid.argmax(1)
    primary = base.copy()
    primary[items[has]] = sids[has, first[has]]
    table = SIDTable.from_codes(primary, sizes, item_ids)
    table.weights[items[has]] = w[has, first[has]]
    extra = valid.copy()
    extra[np.arange(len(items)), first] = False
    if extra.any():
        r, h = np.nonzero(extra)
        table = table.with_sids(items[r], sids[r, h], w[r, h])
    return table


__all__ = ["complete_candidates", "place_sids", "table_with"]
