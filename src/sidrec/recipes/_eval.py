"""Evaluation plumbing shared by the recipes: one cached :class:`Evaluator` per split, optional subsampling.

Why shared: every method must rank the same users with the same cold/warm split and buckets, and early
stopping on a fixed random subset of validation users (``train.eval_users``) must pick the same users for
every method, so the comparison between methods is like for like.
"""

from __future__ import annotations

import numpy as np

from sidrec.config import Config
from sidrec.data.protocol import LeaveOneOut
from sidrec.eval.evaluator import Evaluator


class EvaluatorsMixin:
    """Gives a task ``evaluator(split)`` and ``eval_subset(split, max_users)``; needs ``cfg`` and ``split``."""

    cfg: Config
    split: LeaveOneOut

    def evaluator(self, split: str) -> Evaluator:
        cache: dict[str, Evaluator] = self.__dict__.setdefault("_evaluators", {})
        if split not in cache:
            c = self.cfg
            cache[split] = Evaluator(self.split.split(split), self.split.item_freq, c.eval.ks, c.data.cold_threshold,
                                     c.eval.buckets)
        return cache[split]

    def eval_subset(self, split: str, max_users: int = 0) -> Evaluator:
        """The split's evaluator, or one over a fixed (seeded) random subset of ``max_users`` users."""
        ev = self.evaluator(split)
        if max_users and max_users < len(ev.eval_set):
            rows = np.sort(np.random.default_rng(self.cfg.seed).choice(len(ev.eval_set), max_users, replace=False))
            ev = Evaluator(ev.eval_set.subset(rows), self.split.item_freq, self.cfg.eval.ks,
                           self.cfg.data.cold_threshold, self.cfg.eval.buckets)
        return ev
