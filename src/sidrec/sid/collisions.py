"""Items that share a whole semantic ID, and TIGER's fix: an extra code that tells them apart.

Why a fixed, content-based order: the disambiguation code of an item must not depend on where the item
happens to sit in the input file, or re-preparing the same catalogue in another order would silently give
items different SIDs (and invalidate a trained model). Inside a collision group items are ordered by how
well the shared SID reconstructs them (closest first, so code 0 goes to the most typical member), then by a
fingerprint of the embedding's exact bits; only byte-identical embeddings fall back to the input order, and
those items are interchangeable anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidrec.errors import SidrecError


@dataclass
class CollisionStats:
    """How many items share a full SID with another item, and the largest such group."""

    n_items: int
    n_unique: int  # distinct SIDs
    n_colliding_items: int  # items whose SID is shared with at least one other item
    largest_group: int

    @property
    def rate(self) -> float:
        """Fraction of items whose SID is not theirs alone."""
        return self.n_colliding_items / max(1, self.n_items)

    def as_dict(self) -> dict[str, float | int]:
        return {"items": self.n_items, "unique_sids": self.n_unique, "colliding_items": self.n_colliding_items,
                "collision_rate": self.rate, "largest_group": self.largest_group}


def group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group index of each row (rows with equal codes share it) and each group's size."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inv.reshape(-1).astype(np.int64), counts.astype(np.int64)


def collision_stats(codes: np.ndarray) -> CollisionStats:
    inv, counts = group_ids(np.asarray(codes))
    shared = counts[inv] > 1 if len(inv) else np.zeros(0, dtype=bool)
    return CollisionStats(len(codes), len(counts), int(shared.sum()), int(counts.max()) if len(counts) else 0)


def disambiguation_codes(codes: np.ndarray, distance: np.ndarray, fingerprint: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group of equal SIDs, ordered by (distance, fingerprint, input order)."""
    inv, _ = group_ids(np.asarray(codes))
    order = np.lexsort((np.arange(len(inv)), fingerprint, distance, inv))
    g = inv[order]
    first = np.searchsorted(g, g, side="left")
    out = np.empty(len(inv), dtype=np.int64)
    out[order] = np.arange(len(inv)) - first
    return out


def resolve(codes: np.ndarray, distance: np.ndarray, fingerprint: np.ndarray, *, mode: str = "append",
            append: bool = True, codebook: int = 256) -> tuple[np.ndarray, list[int]]:
    """Make every item's SID unique; returns the resolved codes and their per-position codebook sizes.

    ``mode='refuse'`` raises when any SID is shared (for users who need pure content SIDs). Otherwise an
    extra code is appended -- always when ``append`` (TIGER keeps SIDs at a fixed length), else only when
    there is a collision. A group larger than ``codebook`` cannot be told apart and is an error that names
    the setting to change.
    """
    codes = np.asarray(codes, dtype=np.int64)
    st = collision_stats(codes)
    if mode == "refuse":
        if st.n_colliding_items:
            raise SidrecError(f"{st.n_colliding_items} items share a semantic ID with another item (largest group "
                              f"{st.largest_group}) and tokenizer.collisions=refuse; use collisions=append or "
                              "larger codebooks")
        return codes, []
    if mode != "append":
        raise SidrecError(f"tokenizer.collisions must be 'append' or 'refuse', got '{mode}'")
    if not append and st.n_colliding_items == 0:
        return codes, []
    if st.largest_group > codebook:
        raise SidrecError(f"{st.largest_group} items share one semantic ID, more than the disambiguation codebook "
                          f"(tokenizer.collision_codebook={codebook}); raise it or use larger codebooks / more levels")
    extra = disambiguation_codes(codes, distance, fingerprint)
    return np.concatenate([codes, extra[:, None]], 1), [codebook]
