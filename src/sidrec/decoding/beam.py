"""Trie-constrained beam search over semantic IDs, batched over users x beams.

The search is model-agnostic: a model plugs in through :class:`StepDecoder` (encode once, then return the
next code's log-probabilities for every live hypothesis). TIGER implements it with a key/value cache.

Per step ``t`` (one SID position):

1. the model gives ``log p(c_t | prefix)`` for all (user, beam) pairs: (B, W, K_t);
2. the trie's dense table gives each beam's child node for every code; ``child < 0`` marks a code that
   leads to no valid SID, and its candidate score becomes -inf (so an invalid SID can never be produced);
3. candidates (B, W*K_t) are ranked with one ``topk`` per user; parents, codes and trie nodes of the W
   survivors are gathered in tensor form.

Scores are the sum of the per-level log-softmax (over the level's whole codebook, masking *after* the
normalisation, like Hugging Face's ``prefix_allowed_tokens_fn``), i.e. the model's log-probability of the
SID. If fewer than W valid continuations exist, the surplus beams carry -inf and are dropped at the end.

``banned`` (B, T) items per user (the history under ``eval.protocol: exclude``; -1 = none) are removed *inside*
the search: at the last level a code whose leaf is a banned item gets -inf before the top-W, so the W surviving
hypotheses are all allowed items and the list is not shortened by the removal (filtering a finished list would
return fewer than W items to a user with a long history).

Complete SIDs are mapped to items through the trie's leaves. Because an item may own several SIDs, two
beams can name the same item: :func:`distinct_items` keeps each item's best-scoring beam (the first one,
beams being sorted) with a (B, W, W) comparison, so the returned list has up to W *distinct* items.
A width-W search can therefore return at most W items: metrics at K > W (e.g. Recall@50 with beam 20) are
reported as not available; use a beam of at least K when those numbers matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from sidrec.decoding.trie import SIDTrie


class StepDecoder(Protocol):
    """What the beam search needs from a model."""

    def start_decoding(self, *inputs: Any) -> Any:
        """Run the encoder once for a batch of B users; return an opaque decoding state."""
        ...

    def next_log_probs(self, state: Any, prefix: torch.Tensor | None,
                       parent: torch.Tensor | None) -> tuple[Any, torch.Tensor]:
        """Log-probabilities (B, W, K_t) of code ``t`` after ``prefix`` (B, W, t).

        ``prefix=None`` means the empty prefix with one hypothesis per user (step 0, W = 1). ``parent``
        (B, W) gives, for each current hypothesis, the index of the hypothesis of the previous step it
        extends (``None`` at step 0), so cached states can be reordered.
        """
        ...


@dataclass
class BeamResult:
    """Top distinct items per user plus the raw beams (for checks and diagnostics)."""

    items: torch.Tensor  # (B, K) item indices, -1 = no item (fewer distinct valid SIDs than K)
    scores: torch.Tensor  # (B, K) log-probability of the item's best SID, -inf where items == -1
    sids: torch.Tensor  # (B, W, L) decoded SID of each beam, beams sorted by score
    sid_scores: torch.Tensor  # (B, W) beam scores, -inf for dead beams
    sid_items: torch.Tensor  # (B, W) item of each beam, -1 for dead beams


def compact(items: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of each row to the front (order preserved) and cut / pad rows to width ``k``."""
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    items = torch.where(keep, items, torch.full_like(items, -1)).gather(1, order)
    scores = torch.where(keep, scores, torch.full_like(scores, float("-inf"))).gather(1, order)
    w = items.shape[1]
    if k <= w:
        return items[:, :k], scores[:, :k]
    pad = k - w
    return (torch.cat([items, items.new_full((len(items), pad), -1)], 1),
            torch.cat([scores, scores.new_full((len(scores), pad), float("-inf"))], 1))


def repeated(items: torch.Tensor) -> torch.Tensor:
    """(B, W) True where the row's item already occurred at an earlier position."""
    w = items.shape[1]
    same = items.unsqueeze(2) == items.unsqueeze(1)  # (B, W, W): [b, j, i] = items j and i equal
    earlier = torch.ones(w, w, dtype=torch.bool, device=items.device).tril(-1)  # i < j
    return (same & earlier).any(2)


def distinct_items(items: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first occurrence of every item (rows are sorted by score), -1 entries dropped; width k."""
    return compact(items, scores, (items >= 0) & ~repeated(items), k)


def banned_leaves(trie: SIDTrie, child: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """(B, W, K) True where the last-level ``child`` node (B, W, K; -1 none) is the leaf of an item in the row's
    ``banned`` (B, T; -1 pad). One (B, n_items) membership table per batch, then a gather: no (B, W, K, T) product."""
    b = len(banned)
    n_items = trie.n_items  # computed once with the trie, not per batch (a device sync on a GPU)
    table = torch.zeros(b, n_items + 1, dtype=torch.bool, device=child.device)
    rows = torch.arange(b, device=child.device).view(-1, 1).expand_as(banned)
    valid = (banned >= 0) & (banned < n_items)
    table[rows[valid], banned[valid]] = True
    leaf = trie.leaf_item.to(child.device)[child.clamp(min=0)]
    leaf = torch.where((child >= 0) & (leaf >= 0), leaf, torch.full_like(leaf, n_items))  # the last column: never
    return table.gather(1, leaf.view(b, -1)).view_as(child)


@torch.no_grad()
def beam_search(model: StepDecoder, inputs: tuple[Any, ...], trie: SIDTrie, beam: int = 20,
                k: int | None = None, banned: torch.Tensor | None = None) -> BeamResult:
    """Constrained beam search for a batch of users; returns up to ``k`` (default ``beam``) distinct items, none
    of them in the row's ``banned`` items (see the module docstring)."""
    state = model.start_decoding(*inputs)
    prefix: torch.Tensor | None = None
    parent: torch.Tensor | None = None
    score: torch.Tensor | None = None
    node: torch.Tensor | None = None
    for t in range(trie.depth):
        if prefix is None:  # step 0: one hypothesis per user (the empty prefix at the root)
            state, lp = model.next_log_probs(state, None, None)
            b = lp.shape[0]
            prefix = torch.zeros(b, 1, 0, dtype=torch.long, device=lp.device)
            score = torch.zeros(b, 1, device=lp.device)
            node = torch.zeros(b, 1, dtype=torch.long, device=lp.device)
        else:
            state, lp = model.next_log_probs(state, prefix, parent)
        assert score is not None and node is not None
        b, w, kt = lp.shape
        child = trie.children(t, node)  # (B, w, K_t)
        allowed = child >= 0
        if banned is not None and t == trie.depth - 1:
            allowed = allowed & ~banned_leaves(trie, child, banned)
        cand = torch.where(allowed, score.unsqueeze(2) + lp.float(), torch.full_like(lp, float("-inf"),
                                                                                     dtype=torch.float32))
        width = min(beam, w * kt)
        score, flat = cand.view(b, w * kt).topk(width, dim=1)
        parent = torch.div(flat, kt, rounding_mode="floor")
        code = flat - parent * kt
        node = child.view(b, w * kt).gather(1, flat)
        node = torch.where(torch.isfinite(score), node, torch.full_like(node, -1))
        prefix = torch.cat([prefix.gather(1, parent.unsqueeze(2).expand(-1, -1, t)), code.unsqueeze(2)], 2)
    assert prefix is not None and score is not None and node is not None
    sid_items = torch.where(node >= 0, trie.leaf_item.to(node.device)[node.clamp(min=0)], torch.full_like(node, -1))
    items, item_scores = distinct_items(sid_items, score, k or beam)
    return BeamResult(items, item_scores, prefix, score, sid_items)


@torch.no_grad()
def sequence_log_probs(model: StepDecoder, inputs: tuple[Any, ...], codes: torch.Tensor) -> torch.Tensor:
    """Log-probability (B, C) of C given SIDs per user, ``codes`` (B, C, L); a row with a -1 code gives -inf.

    Teacher forcing through the same :class:`StepDecoder` steps the beam search takes (the C SIDs are C
    hypotheses that all extend the root at step 1 and themselves afterwards), so a SID's score here is the
    score the beam search gives it when it finds it. Used to score items the beam did not return (content
    grounding's candidates).
    """
    b, c, length = codes.shape
    valid = (codes >= 0).all(2)
    cc = codes.clamp(min=0)
    state = model.start_decoding(*inputs)
    state, lp = model.next_log_probs(state, None, None)  # (B, 1, K_0)
    total = lp[:, 0].float().gather(1, cc[:, :, 0])
    parent = torch.zeros(b, c, dtype=torch.long, device=codes.device)
    for t in range(1, length):
        state, lp = model.next_log_probs(state, cc[:, :, :t], parent)
        total = total + lp.float().gather(2, cc[:, :, t:t + 1]).squeeze(2)
        parent = torch.arange(c, device=codes.device).expand(b, c)
    return total.masked_fill(~valid, float("-inf"))
