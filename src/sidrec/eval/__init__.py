"""Evaluation: ranks -> Recall/NDCG/MRR per subset (all, warm, cold, frequency buckets)."""

from sidrec.eval.evaluator import Evaluator, ranks_from_scores, ranks_from_topk

__all__ = ["Evaluator", "ranks_from_scores", "ranks_from_topk"]
