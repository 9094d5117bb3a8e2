"""Evaluation plumbing shared by the recipes: one cached :class:`Evaluator` per split, optional subsampling.

Why shared: every method must rank the same users with the same cold/warm split and buckets, and early
stopping on a fixed random subset of validation users (``train.eval_users``) must pick the same users for
every method, so the comparison between methods is like for like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sidrec.config import Config
from sidrec.data.protocol import EvalSet, LeaveOneOut
from sidrec.eval.evaluator import Evaluator
from sidrec.fusion import Fusion, Grounding


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


class GroundedMixin:
    """Evaluation and recommendation through :mod:`sidrec.fusion` (the one content-grounding mechanism).

    A task declares ``scoring`` ("dense": ``model_scores(model, hist)``; "beam": ``decode`` and
    ``candidate_log_probs``); ``grounding`` is attached by the pipeline, ``fusion`` is the run's chosen
    setting (the model alone until one is chosen or read from ``fusion.json``).
    """

    scoring: str = "dense"
    fusion: Fusion = Fusion()

    @property
    def grounding(self) -> Grounding | None:
        """Built on first use (the item vectors are read only when a fusion is chosen or applied), from the
        factory the pipeline attached; None for a task without one."""
        if "_grounding" not in self.__dict__:
            factory = self.__dict__.get("_grounding_factory")
            self.__dict__["_grounding"] = factory() if factory is not None else None
        return self.__dict__["_grounding"]

    @grounding.setter
    def grounding(self, value: Grounding | None) -> None:
        self.__dict__["_grounding"] = value

    def evaluate(self, model: Any, split: str, max_users: int = 0) -> dict[str, dict[str, Any]]:
        from sidrec import fusion

        return fusion.evaluate(self, model, split, [self.fusion], max_users)[0]

    def recommend(self, eval_set: EvalSet, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per user of ``eval_set`` (-1 padded) and their scores, under the run's fusion."""
        from sidrec import fusion

        return fusion.recommend(self, eval_set, k)
