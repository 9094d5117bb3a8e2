"""Full-catalogue evaluation with one relevant item per user.

Everything reduces to the 1-based *rank* of each user's target item:
Recall@K = [rank <= K], NDCG@K = 1/log2(rank+1) if rank <= K, MRR = 1/rank (0 when the target was not
retrieved at all, e.g. not in a beam's top-K list). Ranks from a score matrix are exact over the whole
catalogue with a deterministic tie-break: among equal scores the lower item index ranks first. This
matters: a model that outputs constant scores must not look good because the target happened to win a
tie. Sampled-candidate metrics are deliberately not offered.

Because a tie-break by index is arbitrary, every evaluation also reports ``tied@10``: the share of top-10
slots whose score equals a neighbour's, i.e. whose place was decided by the tie-break rather than by the
model. A SID model that gives many items the same codes (and so the same score) shows it here; the
benchmarks refuse rows above 1% (``benchmarks/_common.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from sidrec.data.protocol import EvalSet, bucket_labels, bucket_of

NOT_FOUND = np.iinfo(np.int64).max


def finite_scores(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` in fp32 with NaN replaced by ``-inf``.

    Why: a diverged model outputs NaN, and every comparison with NaN is false, so a NaN target would have no
    item "above" it and rank first: a broken model would score R@10 = 1. NaN means "no score", the bottom.
    """
    scores = scores if scores.dtype == torch.float64 else scores.float()  # float64 (a tie key) stays exact
    return scores.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # one pass, infinities kept


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target in its row of ``scores`` (B, N), ties broken by lower item index.

    A target without a finite score (NaN from a diverged model, ``-inf`` from a mask) is not retrieved:
    ``NOT_FOUND``, whatever the other items score.
    """
    scores = finite_scores(scores)
    t = scores.gather(1, targets.view(-1, 1))
    higher = (scores > t).sum(1)
    idx = torch.arange(scores.shape[1], device=scores.device).view(1, -1)
    tied_before = ((scores == t) & (idx < targets.view(-1, 1))).sum(1)
    ranks = (higher + tied_before + 1).long()
    return torch.where(torch.isfinite(t.view(-1)), ranks, torch.full_like(ranks, NOT_FOUND))


def ranks_from_topk(topk: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rank of each target inside its top-K list (B, K); ``NOT_FOUND`` when absent. -1 entries are padding."""
    topk = np.asarray(topk)
    targets = np.asarray(targets).reshape(-1, 1)
    hit = (topk == targets) & (topk >= 0)
    found = hit.any(1)
    pos = hit.argmax(1) + 1
    return np.where(found, pos, NOT_FOUND).astype(np.int64)


def mask_history(scores: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
    """Set each row's history items (left-padded ``hist`` (B, T), -1 = pad) to ``-inf`` in ``scores`` (B, N),
    in place; the one rule for "seen items excluded" (``eval.protocol: exclude``) in evaluation, fusion and
    ``sidrec recommend``. Every history item goes, the target included when the user bought it before: a target
    left unmasked would be the one history item still in the list, an answer read from the mask."""
    valid = hist >= 0
    rows = torch.arange(len(hist), device=hist.device).view(-1, 1).expand_as(hist)
    scores[rows[valid], hist[valid]] = float("-inf")
    return scores


TIE_K = 10


def tied_share(sorted_scores: torch.Tensor, k: int = TIE_K) -> torch.Tensor:
    """Per row, the share of the first ``k`` slots whose score equals a neighbour's.

    ``sorted_scores`` (B, >= k+1 columns where the catalogue allows) is sorted descending, so any item that
    shares a top-k item's score sits right next to it: comparing neighbours finds every tie, including one
    with the first item outside the top k. ``-inf`` slots (excluded or missing items) never count.
    """
    v = finite_scores(sorted_scores)
    k = min(k, v.shape[1])
    same = v[:, 1:] == v[:, :-1]
    finite = torch.isfinite(v)
    left = torch.zeros_like(finite)
    left[:, 1:] = same
    right = torch.zeros_like(finite)
    right[:, :-1] = same
    tied = (left | right) & finite
    return tied[:, :k].float().mean(1)


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean Recall@K, NDCG@K and MRR over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    n = len(ranks)
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean()) if n else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()) if n else 0.0
    found = ranks < NOT_FOUND
    out["mrr"] = float(np.where(found, 1.0 / np.where(found, ranks, 1.0), 0.0).mean()) if n else 0.0
    return out


class Evaluator:
    """Turns ranks (or scores, or top-K lists) of one :class:`EvalSet` into metrics per subset."""

    def __init__(
        self,
        eval_set: EvalSet,
        item_freq: np.ndarray,
        ks: list[int] | None = None,
        cold_threshold: int = 5,
        bucket_edges: list[int] | None = None,
    ) -> None:
        self.eval_set = eval_set
        self.ks = list(ks or [5, 10, 20, 50])
        self.freq = item_freq[eval_set.targets]
        self.cold = self.freq <= cold_threshold
        self.bucket_edges = list(bucket_edges or [5, 10, 15, 20])
        self.buckets = bucket_of(self.freq, self.bucket_edges)
        # users whose target is already in their history (a repeat purchase): under `exclude` they are misses,
        # counted in every subset's `n_repeat` so a reader sees how many (0 on 5-core Amazon data)
        self.repeat = repeat_targets(eval_set)

    def metrics(self, ranks: np.ndarray, tied: np.ndarray | None = None,
                extra: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
        """Metrics for all / warm / cold / each bucket, each with its number of users.

        ``tied`` (per user, the share of their top-10 decided by a tie-break) adds ``tied@10`` per subset;
        ``extra`` (name -> a value per user) adds each value's mean per subset (e.g. fusion's ``content@10``).
        """
        ranks = np.asarray(ranks)
        subsets: dict[str, np.ndarray] = {
            "all": np.ones(len(ranks), dtype=bool),
            "warm": ~self.cold,
            "cold": self.cold,
        }
        for b, label in enumerate(bucket_labels(self.bucket_edges)):
            subsets[f"bucket_{label}"] = self.buckets == b
        out: dict[str, dict[str, Any]] = {}
        for name, mask in subsets.items():
            m: dict[str, Any] = metrics_from_ranks(ranks[mask], self.ks)
            if tied is not None:
                m[f"tied@{TIE_K}"] = float(tied[mask].mean()) if mask.any() else 0.0
            for key, values in (extra or {}).items():
                m[key] = float(values[mask].mean()) if mask.any() else 0.0
            m["n_users"] = int(mask.sum())
            m["n_repeat"] = int(self.repeat[mask].sum())
            out[name] = m
        return out

    def evaluate_scores(
        self,
        score_fn: Callable[[np.ndarray], torch.Tensor],
        batch_size: int = 1024,
        exclude_history: bool = False,
        progress: Callable[[Any], Any] | None = None,
    ) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
        """Rank the full catalogue with ``score_fn(rows) -> (B, n_items)`` scores, batch by batch.

        Batches hold users of similar history length (:meth:`EvalSet.length_order`), so a model that pads
        to the batch's longest history wastes little; the metrics do not depend on the order.
        """
        return self.evaluate_scores_many(score_fn, [lambda s: s], batch_size, exclude_history, progress)[0]

    def evaluate_scores_many(
        self,
        parts_fn: Callable[[np.ndarray], Any],
        variants: list[Callable[[Any], torch.Tensor]],
        batch_size: int = 1024,
        exclude_history: bool = False,
        progress: Callable[[Any], Any] | None = None,
    ) -> list[tuple[dict[str, dict[str, Any]], np.ndarray]]:
        """Several rankings of the full catalogue from one pass: per batch ``parts_fn(rows)`` is computed once
        and each ``variant(parts) -> (B, n_items)`` scores is ranked (e.g. one model under several fusion
        weights, without running the model once per weight). Returns (metrics, ranks) per variant.
        """
        n = len(self.eval_set)
        ranks = [np.empty(n, dtype=np.int64) for _ in variants]
        tied = [np.empty(n, dtype=np.float64) for _ in variants]
        order = self.eval_set.length_order()
        starts = range(0, n, batch_size)
        for s in progress(starts) if progress else starts:
            rows = order[s:s + batch_size]
            targets = torch.from_numpy(self.eval_set.targets[rows])
            hist = None
            if exclude_history:  # the whole history, not only the max_len items the model reads
                hist = self.eval_set.padded_seen(rows, pad=-1)
            with torch.no_grad():
                parts = parts_fn(rows)
                for j, variant in enumerate(variants):
                    scores = finite_scores(variant(parts))  # on the model's device; ranked there
                    if hist is not None:
                        mask_history(scores, hist.to(scores.device))
                    ranks[j][rows] = ranks_from_scores(scores, targets.to(scores.device)).cpu().numpy()
                    top = scores.topk(min(TIE_K + 1, scores.shape[1]), dim=1).values
                    tied[j][rows] = tied_share(top).cpu().numpy()
        return [(self.metrics(r, t), r) for r, t in zip(ranks, tied, strict=True)]

    def evaluate_topk(self, topk: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor | None = None,
                      extra: dict[str, np.ndarray] | None = None) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
        """Metrics from per-user top-K lists of item indices (K >= max(ks) for exact Recall@max).

        With the lists' ``scores`` (sorted descending, as a beam search returns them) ``tied@10`` is reported
        too: items of one list that share a score (e.g. several items behind one SID) are ordered by the
        list, not by the model.
        """
        topk = np.asarray(topk)
        if scores is not None:  # an entry without a finite score (NaN from a diverged model) was not retrieved
            scores = np.asarray(scores)
            topk = np.where(np.isfinite(scores), topk, -1)
        ranks = ranks_from_topk(topk, self.eval_set.targets)
        tied = None if scores is None else tied_share(torch.as_tensor(scores)).numpy()
        return self.metrics(ranks, tied, extra), ranks


def repeat_targets(es: EvalSet) -> np.ndarray:
    """(n,) bool: the user's target item occurs in their (evaluated) history."""
    if len(es) == 0:
        return np.zeros(0, dtype=bool)
    hist = es.padded_seen(pad=-1)
    return (hist == torch.from_numpy(es.targets).view(-1, 1)).any(1).numpy()


def excludes(cfg: Any) -> bool:
    """Whether a config's protocol removes the user's history from the ranking (``eval.protocol: exclude``)."""
    return cfg.eval.protocol == "exclude"


@contextlib.contextmanager
def protocol_of(cfg: Any, protocol: str) -> Iterator[None]:
    """Evaluate under ``protocol`` for the duration of the block (``eval.also_protocol``): every ranking reads the
    protocol from the config (:func:`excludes`), so switching it here switches the evaluator, the fusion's choice
    and the beam search's mask together, and nothing else changes."""
    saved = cfg.eval.protocol
    cfg.eval.protocol = protocol
    try:
        yield
    finally:
        cfg.eval.protocol = saved


def popularity_scores(item_freq: np.ndarray) -> Callable[[np.ndarray], torch.Tensor]:
    """The popularity ranker: every user gets the training-frequency order (the floor any model must beat)."""
    base = torch.from_numpy(item_freq.astype(np.float32))

    def score(rows: np.ndarray) -> torch.Tensor:
        return base.view(1, -1).expand(len(rows), -1)

    return score
