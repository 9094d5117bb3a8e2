"""A reference decoder written the way most public TIGER code decodes: for comparison only.

One user at a time; a Python dict trie queried per hypothesis (the ``prefix_allowed_tokens_fn`` pattern);
at each step the whole decoder re-runs on the full prefix of every beam (no key/value cache, memory copied
per beam); candidates are collected and sorted in Python. It uses the same model weights and the same
scoring rule as :func:`sidrec.decoding.beam.beam_search` (sum of per-level log-softmax, masked after
normalisation, float32 sums, ties broken by (beam, code) order), so both must return the same items; the
benchmark ``benchmarks/tiger_decode.py`` measures how much faster the batched search is, and
``tests/test_decoding.py`` checks that they agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def dict_trie(codes: Any) -> dict[tuple[int, ...], list[int]]:
    """prefix tuple -> sorted list of codes that may follow it (built with a Python loop over SIDs)."""
    allowed: dict[tuple[int, ...], set[int]] = {}
    for sid in np.asarray(codes).tolist():
        for t in range(len(sid)):
            allowed.setdefault(tuple(sid[:t]), set()).add(sid[t])
    return {p: sorted(s) for p, s in allowed.items()}


def sid_to_item(codes: Any, sid_item: Any) -> dict[tuple[int, ...], int]:
    return {tuple(c): int(i) for c, i in zip(np.asarray(codes).tolist(), np.asarray(sid_item).tolist(), strict=True)}


@torch.no_grad()
def reference_decode_one(model: Any, history: torch.Tensor, user: torch.Tensor | None,
                         allowed: dict[tuple[int, ...], list[int]], owner: dict[tuple[int, ...], int],
                         depth: int, beam: int = 20, k: int = 10) -> tuple[list[int], list[float]]:
    """Top-k distinct items for ONE user: history SIDs (1, T, L), user (1,) or None."""
    memory, valid = model.encode(history, user)
    beams: list[tuple[tuple[int, ...], np.float32]] = [((), np.float32(0.0))]
    for t in range(depth):
        prefixes = torch.tensor([p for p, _ in beams], dtype=torch.long).view(len(beams), t)
        h = model.decode(memory.expand(len(beams), -1, -1), valid.expand(len(beams), -1), prefixes)
        lp = model.level_logits(h[:, -1], t).float().log_softmax(-1).numpy()
        cands = []
        for b, (p, s) in enumerate(beams):
            for c in allowed.get(p, []):
                cands.append((np.float32(s + lp[b, c]), b, c))
        cands.sort(key=lambda x: (-x[0], x[1], x[2]))
        beams = [(beams[b][0] + (c,), s) for s, b, c in cands[:beam]]
    items: list[int] = []
    scores: list[float] = []
    for p, s in beams:
        item = owner[p]
        if item not in items:
            items.append(item)
            scores.append(float(s))
    return items[:k], scores[:k]
