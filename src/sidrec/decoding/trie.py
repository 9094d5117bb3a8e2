"""The trie of valid semantic IDs, stored as dense transition tables that a batched beam search can gather.

Why dense tables: constrained decoding asks, at every step and for every live hypothesis, "which codes may
follow this prefix?". With one ``(n_nodes_l, K_l)`` table per level holding the child node of every
(prefix node, code) pair or -1, the answer for all users x beams at once is a single ``table[node]`` gather,
and the validity mask is ``child >= 0``: no Python per beam, no dictionary look-ups. Level ``l``'s table has
one row per distinct valid prefix of length ``l``, so its size is at most ``n_sids x K_l`` (TIGER on Beauty:
about 12k x 256 int32 = 12 MB for the last level, much less for the others).

Construction is vectorised: the node id of a prefix of length ``l+1`` is the rank of the key
``node_l * K_l + code_l`` among the distinct keys (``torch.unique``), so each level costs one sort over
the SIDs. Nodes are numbered in lexicographic order of their prefixes, which makes the build deterministic.

SIDs map *many-to-one* onto items (an item may own several SIDs; DREAM registers several hypotheses per
cold item). Each leaf (a complete SID) carries the index of its item; a SID listed twice for the same
item is merged, a SID listed for two different items is an error (decoding it would be ambiguous).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sidrec.errors import SidrecError


def _as_long(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise SidrecError(f"{name}: expected integer codes, got {t.dtype}")
    return t.long().contiguous()


@dataclass
class SIDCodes:
    """What decoding and training need from a SID table, independent of how the tokenizer stores it.

    ``primary`` (n_items, L): the SID each item is *read* as in histories and trained on as a target.
    ``codes`` (n_sids, L) with ``sid_item`` (n_sids,): every valid SID and the item it decodes to.
    ``sizes``: codebook size per position.
    """

    primary: torch.Tensor
    codes: torch.Tensor
    sid_item: torch.Tensor
    sizes: list[int]

    @classmethod
    def from_primary(cls, primary: Any, sizes: list[int] | None = None) -> SIDCodes:
        """One SID per item (the plain TIGER case)."""
        p = _as_long(primary, "primary SIDs")
        s = list(sizes) if sizes is not None else [int(v) + 1 for v in p.max(0).values]
        return cls(p, p.clone(), torch.arange(len(p)), s)

    @classmethod
    def from_table(cls, table: Any) -> SIDCodes:
        """Adapt a :class:`sidrec.sid.SIDTable` (duck-typed, so decoding does not import the tokenizers).

        Reads the item -> primary-SID matrix, all (SID, item) pairs and the per-level codebook sizes under
        the names the table offers; fails with a clear message if none of them is found.
        """

        def first(*names: str) -> Any:
            for n in names:
                if hasattr(table, n):
                    v = getattr(table, n)
                    return v() if callable(v) else v
            raise SidrecError(f"{type(table).__name__}: cannot find any of {names} on the SID table")

        primary = _as_long(first("primary", "item_codes", "codes"), "primary SIDs")
        try:
            all_codes = _as_long(first("all_codes", "sid_codes", "valid_codes"), "valid SIDs")
            sid_item = _as_long(first("sid_items", "sid_item", "sid_to_item", "owners"), "SID items")
        except SidrecError:
            all_codes, sid_item = primary.clone(), torch.arange(len(primary))
        sizes = [int(s) for s in first("codebook_sizes", "sizes", "level_sizes")]
        return cls(primary, all_codes, sid_item, sizes)

    @property
    def length(self) -> int:
        return int(self.primary.shape[1])

    def to(self, device: torch.device) -> SIDCodes:
        """The same codes on ``device`` (a new object: a table may be shared by several tasks)."""
        return SIDCodes(self.primary.to(device), self.codes.to(device), self.sid_item.to(device), list(self.sizes))


class SIDTrie:
    """Dense per-level transition tables over the valid SIDs (see module docstring).

    ``tables[l][node, code]`` is the node reached from prefix node ``node`` (length ``l``) by ``code``, or -1.
    The root is node 0 of level 0; nodes after the last level are leaves (complete SIDs), and
    ``leaf_item[leaf]`` / ``leaf_codes[leaf]`` give the item and the codes of each.
    """

    def __init__(self, codes: Any, sid_item: Any, sizes: list[int] | None = None) -> None:
        codes = _as_long(codes, "SID codes")
        sid_item = _as_long(sid_item, "SID items").view(-1)
        if codes.dim() != 2 or codes.shape[0] == 0:
            raise SidrecError(f"SID codes: expected a non-empty (n_sids, L) matrix, got shape {tuple(codes.shape)}")
        if len(sid_item) != len(codes):
            raise SidrecError(f"{len(codes)} SIDs but {len(sid_item)} SID->item entries")
        n, depth = codes.shape
        sizes = list(sizes) if sizes is not None else [int(v) + 1 for v in codes.max(0).values]
        if len(sizes) != depth:
            raise SidrecError(f"SIDs have {depth} codes but {len(sizes)} codebook sizes were given")
        if (codes < 0).any() or (codes >= torch.tensor(sizes)).any():
            raise SidrecError(f"SID codes outside their codebooks (sizes {sizes})")
        self.sizes = [int(s) for s in sizes]
        self.tables: list[torch.Tensor] = []
        node = torch.zeros(n, dtype=torch.long)
        n_nodes = 1
        for level, k in enumerate(self.sizes):
            keys, child = torch.unique(node * k + codes[:, level], return_inverse=True)
            table = torch.full((n_nodes * k,), -1, dtype=torch.int32)
            table[keys] = torch.arange(len(keys), dtype=torch.int32)
            self.tables.append(table.view(n_nodes, k))
            node, n_nodes = child, len(keys)
        leaf_item = torch.full((n_nodes,), -1, dtype=torch.long)
        leaf_item[node] = sid_item
        if (leaf_item[node] != sid_item).any():
            bad = int(torch.nonzero(leaf_item[node] != sid_item)[0, 0])
            raise SidrecError(f"SID {codes[bad].tolist()} is listed for two different items; a SID must "
                              "decode to one item")
        self.leaf_item = leaf_item
        # item indices run 0..n_items-1 (the beam search's membership table of banned items is this wide)
        self.n_items = int(sid_item.max()) + 1 if len(sid_item) else 0
        self.leaf_codes = torch.zeros(n_nodes, depth, dtype=torch.long)
        self.leaf_codes[node] = codes

    @classmethod
    def from_codes(cls, sids: SIDCodes) -> SIDTrie:
        return cls(sids.codes.cpu(), sids.sid_item.cpu(), sids.sizes)

    def to(self, device: torch.device) -> SIDTrie:
        """The transition tables and leaves on ``device`` (in place), where the beam search gathers them."""
        self.tables = [t.to(device) for t in self.tables]
        self.leaf_item, self.leaf_codes = self.leaf_item.to(device), self.leaf_codes.to(device)
        return self

    @property
    def depth(self) -> int:
        return len(self.tables)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_item)

    def children(self, level: int, node: torch.Tensor) -> torch.Tensor:
        """Child nodes (..., K_level) of prefix nodes ``node`` (...) at ``level``; -1 = invalid (or dead node)."""
        table = self.tables[level]
        child = table[node.clamp(min=0)].long()
        return child.masked_fill((node < 0).unsqueeze(-1), -1)

    def walk(self, codes: torch.Tensor) -> torch.Tensor:
        """Leaf id of each complete SID in ``codes`` (..., L), or -1 if it is not in the trie."""
        codes = _as_long(codes, "SID codes").to(self.leaf_item.device)
        node = torch.zeros(codes.shape[:-1], dtype=torch.long, device=codes.device)
        for level in range(self.depth):
            c = codes[..., level]
            ok = (c >= 0) & (c < self.sizes[level]) & (node >= 0)
            child = self.tables[level][node.clamp(min=0), c.clamp(0, self.sizes[level] - 1)].long()
            node = torch.where(ok, child, torch.full_like(child, -1))
        return node

    def contains(self, codes: torch.Tensor) -> torch.Tensor:
        """Whether each SID (..., L) is valid."""
        return self.walk(codes) >= 0

    def items_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Item of each SID (..., L); -1 for SIDs not in the trie."""
        leaf = self.walk(codes)
        return torch.where(leaf >= 0, self.leaf_item[leaf.clamp(min=0)], torch.full_like(leaf, -1))
