"""Holistic scoring: rank the whole catalogue from per-subspace code log-probabilities (ACERec's inference).

Why not beam search: a product-quantisation SID has m independent subspaces, so a model that outputs one
log-probability table per subspace, (m, K), defines the log-probability of *every* item as the sum of its m
codes' entries. Scoring is then a gather-and-sum over the precomputed (n_items, m) code matrix: exact over
the full catalogue, parallel, and a SID that belongs to no item is never produced (only real items are
scored). Memory is bounded by scoring the catalogue in chunks of ``chunk`` items; :meth:`HolisticScorer.topk`
keeps a running top-K across chunks so it never holds the (B, n_items) matrix.

Ties (items sharing all m codes) are broken towards the lower item index, like the Evaluator's ranks.
"""

from __future__ import annotations

import torch


class HolisticScorer:
    """Scores items from (B, m, K) per-subspace log-probabilities; ``item_codes`` is (n_items, m)."""

    def __init__(self, item_codes: torch.Tensor, chunk: int = 4096) -> None:
        codes = torch.as_tensor(item_codes, dtype=torch.long)
        if codes.dim() != 2:
            raise ValueError(f"item_codes must be (n_items, m), got shape {tuple(codes.shape)}")
        self.codes_t = codes.t().contiguous()  # (m, n_items): one contiguous index row per subspace
        self.n_items, self.m = codes.shape
        self.chunk = max(1, int(chunk))

    def to(self, device: torch.device) -> HolisticScorer:
        """The code matrix on ``device`` (the scores' device), so no chunk is copied per call."""
        self.codes_t = self.codes_t.to(device)
        return self

    def _chunk_scores(self, logp: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Scores (B, hi - lo) of items lo..hi: sum over subspaces j of logp[:, j, code_j(item)]."""
        if logp.shape[1] != self.m:
            raise ValueError(f"log-probabilities have {logp.shape[1]} subspaces, the items {self.m}")
        idx = self.codes_t[:, lo:hi].to(logp.device)  # a no-op once placed (to)
        out = logp[:, 0].index_select(1, idx[0])
        for j in range(1, self.m):  # (B, C) at a time: memory stays B x chunk, not B x chunk x m
            out += logp[:, j].index_select(1, idx[j])
        return out

    def scores(self, logp: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_items) of every catalogue item (what the Evaluator's ``score_fn`` returns)."""
        logp = logp.float()
        return torch.cat([self._chunk_scores(logp, lo, min(self.n_items, lo + self.chunk))
                          for lo in range(0, self.n_items, self.chunk)], 1)

    def topk(self, logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-``k`` (B, k) item scores and indices over the full catalogue, best first, chunk by chunk."""
        logp = logp.float()
        k = min(k, self.n_items)
        best_v = logp.new_empty(logp.shape[0], 0)
        best_i = torch.empty(logp.shape[0], 0, dtype=torch.long, device=logp.device)
        for lo in range(0, self.n_items, self.chunk):
            hi = min(self.n_items, lo + self.chunk)
            v, i = self._chunk_scores(logp, lo, hi).sort(dim=1, descending=True, stable=True)
            # running best (lower indices) first, so the stable merge keeps lower indices ahead on ties
            v = torch.cat([best_v, v[:, :k]], 1)
            i = torch.cat([best_i, i[:, :k] + lo], 1)
            v, order = v.sort(dim=1, descending=True, stable=True)
            best_v, best_i = v[:, :k], i.gather(1, order[:, :k])
        return best_v, best_i


__all__ = ["HolisticScorer"]
