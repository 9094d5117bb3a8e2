import math

import numpy as np
import pytest
import torch

from sidrec.data.protocol import EvalSet
from sidrec.eval.evaluator import NOT_FOUND, Evaluator, metrics_from_ranks, ranks_from_scores, ranks_from_topk


def test_ranks_with_deterministic_ties():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.9, 0.0]])
    targets = torch.tensor([2, 2, 2])
    # row 0: item 1 ties with target 2 and has the lower index -> rank 2
    # row 1: constant scores -> the target loses every tie with lower indices -> rank 3
    assert ranks_from_scores(scores, targets).tolist() == [2, 3, 1]


def test_hand_computed_metrics():
    ranks = np.array([1, 3, 11, NOT_FOUND])
    m = metrics_from_ranks(ranks, [1, 10])
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 4)


def test_topk_ranks():
    topk = np.array([[3, 1, 2], [0, 1, 2], [-1, -1, -1]])
    assert ranks_from_topk(topk, np.array([2, 5, 0])).tolist() == [3, NOT_FOUND, NOT_FOUND]


def test_subsets_cold_warm_and_buckets():
    es = EvalSet("test", np.arange(4), [np.array([0])] * 4, np.array([0, 1, 2, 3]))
    freq = np.array([0, 5, 6, 30])  # items 0,1 cold (<=5), 2,3 warm
    ev = Evaluator(es, freq, ks=[1], cold_threshold=5)
    m = ev.metrics(np.array([1, 2, 1, 2]))
    assert m["all"]["recall@1"] == pytest.approx(0.5)
    assert m["cold"]["n_users"] == 2 and m["cold"]["recall@1"] == pytest.approx(0.5)
    assert m["warm"]["n_users"] == 2 and m["warm"]["recall@1"] == pytest.approx(0.5)
    assert m["bucket_0-5"]["n_users"] == 2
    assert m["bucket_6-10"]["n_users"] == 1 and m["bucket_6-10"]["recall@1"] == 1.0
    assert m["bucket_>20"]["n_users"] == 1 and m["bucket_>20"]["recall@1"] == 0.0


def test_score_path_matches_topk_path_and_excludes_history():
    rng = np.random.default_rng(0)
    n, items = 50, 30
    scores = torch.from_numpy(rng.standard_normal((n, items)).astype(np.float32))
    targets = rng.integers(0, items, n)
    hists = [rng.choice(items, 3, replace=False) for _ in range(n)]
    es = EvalSet("test", np.arange(n), hists, targets)
    ev = Evaluator(es, np.zeros(items, dtype=np.int64), ks=[5, 10])
    m_scores, ranks = ev.evaluate_scores(lambda rows: scores[rows], batch_size=7)
    topk = torch.sort(scores, dim=1, descending=True, stable=True).indices
    m_topk, _ = ev.evaluate_topk(topk, torch.sort(scores, dim=1, descending=True, stable=True).values)
    assert m_scores["all"] == pytest.approx(m_topk["all"])
    assert m_scores["all"]["tied@10"] == 0.0  # continuous random scores never tie
    m_ex, ranks_ex = ev.evaluate_scores(lambda rows: scores[rows].clone(), batch_size=7, exclude_history=True)
    repeat = np.array([t in h for t, h in zip(targets, hists, strict=True)])
    assert repeat.any() and not repeat.all()
    assert (ranks_ex[~repeat] <= ranks[~repeat]).all()  # masking history can only move a new target up
    assert (ranks_ex[repeat] == NOT_FOUND).all()  # a repeat target is masked too: a miss, never an answer
    assert m_ex["all"]["n_repeat"] == m_scores["all"]["n_repeat"] == repeat.sum()


def test_tied_share_counts_only_tie_broken_slots():
    from sidrec.eval.evaluator import tied_share

    v = torch.tensor([[5.0, 4.0, 3.0, 2.0],      # all distinct
                      [5.0, 5.0, 3.0, 2.0],      # slots 0 and 1 tied with each other
                      [5.0, 4.0, 3.0, 3.0],      # slot 2 ties with the first item outside the top 3
                      [1.0, 1.0, 1.0, 1.0],      # constant scores: everything is a tie-break
                      [5.0, float("-inf"), float("-inf"), float("-inf")]])  # missing slots are not ties
    assert tied_share(v, k=3).tolist() == pytest.approx([0.0, 2 / 3, 1 / 3, 1.0, 0.0])


def test_evaluate_scores_reports_tied_at_10():
    n_items = 30
    es = EvalSet("test", np.arange(6), [np.array([0])] * 6, np.arange(6))
    ev = Evaluator(es, np.ones(n_items), ks=[10])
    distinct, _ = ev.evaluate_scores(lambda rows: torch.arange(n_items, dtype=torch.float32).repeat(len(rows), 1))
    assert distinct["all"]["tied@10"] == 0.0
    # pairs of items share a score (as items behind one semantic ID would): every top-10 slot is a tie
    paired, _ = ev.evaluate_scores(lambda rows: (torch.arange(n_items) // 2).float().repeat(len(rows), 1))
    assert paired["all"]["tied@10"] == 1.0
    m, _ = ev.evaluate_topk(np.tile(np.arange(10), (6, 1)), np.tile(np.array([9., 8, 8, 6, 5, 4, 3, 2, 1, 0]), (6, 1)))
    assert m["all"]["tied@10"] == pytest.approx(0.2)


def test_nan_scores_are_never_a_hit():
    """A diverged model (NaN scores) must score zero, not rank every target first (issue: R@10 = 1.0)."""
    scores = torch.tensor([[float("nan")] * 4, [0.1, float("nan"), 0.3, 0.2], [0.5, 0.1, float("nan"), 0.2]])
    targets = torch.tensor([1, 0, 0])
    # row 0: the target is NaN -> not retrieved; row 1: a NaN item never outranks a finite target (0.1 < 0.3, 0.2)
    assert ranks_from_scores(scores, targets).tolist() == [NOT_FOUND, 3, 1]
    es = EvalSet("valid", np.arange(3), [np.array([0]), np.array([1]), np.array([2])], np.array([1, 2, 3]))
    ev = Evaluator(es, np.ones(5, dtype=np.int64), [1, 10])
    m, _ = ev.evaluate_scores(lambda rows: torch.full((len(rows), 5), float("nan")))
    assert m["all"]["recall@10"] == 0.0 and m["all"]["mrr"] == 0.0
    m, _ = ev.evaluate_topk(np.array([[1, 2], [2, 3], [3, 4]]), np.full((3, 2), np.nan))
    assert m["all"]["recall@10"] == 0.0
