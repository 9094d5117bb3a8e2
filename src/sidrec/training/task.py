"""What the trainer, the evaluator and the fusion need from a method: the :class:`Task` base class.

A method's ``task.py`` subclasses :class:`Task` and fills in its model, batches and loss, and how it scores
(``scoring = "dense"``: :meth:`Task.model_scores`; ``"beam"``: ``decode`` and ``candidate_log_probs``). The
optional abilities have defaults here (nothing to train, grounded, log-probabilities, one optimiser group),
so callers never probe a task with ``hasattr``.

Evaluation is shared: every method must rank the same users with the same cold/warm split and buckets, and
early stopping on a fixed random subset of validation users (``train.eval_users``) must pick the same users
for every method, so the comparison between methods is like for like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec import fusion
from sidrec.config import Config
from sidrec.data.protocol import EvalSet, LeaveOneOut
from sidrec.eval.evaluator import Evaluator
from sidrec.fusion import Fusion, Grounding


class Task:
    """One method's training and inference, as the trainer, evaluator and fusion see it.

    Subclasses set ``cfg``, ``split`` and ``model`` and implement :meth:`train_batches` and :meth:`loss`
    (unless ``trainable`` is False) and their scoring path.
    """

    cfg: Config
    split: LeaveOneOut
    model: nn.Module
    eval_batch_size: int = 256  # users scored together (dense scoring)
    eval_batch_users: int = 256  # users decoded together (beam search)
    # "dense": model_scores() gives every catalogue item a score; "beam": decode() + candidate_log_probs()
    scoring: str = "dense"
    trainable: bool = True  # False: nothing to fit (the content ranker); the run is evaluated at once
    groundable: bool = True  # False: content fusion would add nothing (the content ranker itself)
    logits_unnormalised: bool = False  # True: model_scores are logits, log-softmax-normalised before fusion
    fusion: Fusion = Fusion()  # the run's chosen fusion setting (the model alone until one is chosen)
    reads_sids: bool = False  # True: use_sids() swaps the SID table it decodes over (TIGER, DIGER)
    device: torch.device = torch.device("cpu")  # where the model and the task's tables live (Task.to)

    # ------------------------------------------------------------------ placement
    def to(self, device: torch.device | str) -> Task:
        """Put the model and every tensor the task reads in its hot paths on ``device`` (the one placement point:
        the pipeline calls it once with the resolved ``train.device``); returns the task."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.place(self.device)
        g = self.__dict__.get("_grounding")
        if g is not None:
            g.to(self.device)
        return self

    def place(self, device: torch.device) -> None:
        """Move the task's own tensors (SID tables, tries, item codes) to ``device``; a task without any keeps this."""

    def autocast(self) -> Any:
        """bf16 autocast for the task's device when ``train.bf16`` resolves to it there (sidrec.precision)."""
        from sidrec import precision

        return precision.autocast(self.cfg.train.bf16, self.device)

    # ------------------------------------------------------------------ training
    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        """All batches of one epoch, deterministic given the epoch number."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to train")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of one batch; must go through ``model(...)`` (which may be a DDP wrapper)."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to train")

    def param_groups(self, weight_decay: float, lr: float) -> list[dict[str, Any]] | None:
        """Optimiser groups for parts that learn at different rates (DIGER); None = the trainer's default."""
        return None

    # ------------------------------------------------------------------ scoring
    def model_scores(self, model: nn.Module, hist: torch.Tensor) -> torch.Tensor:
        """(B, n_items) every item's score after left-padded histories (B, T) (``scoring = "dense"``)."""
        raise NotImplementedError(f"{type(self).__name__} scores by beam search")

    def item_codes(self) -> torch.Tensor | None:
        """(n_items, L) the semantic ID each item is read as; None for a method without SIDs."""
        return None

    def use_sids(self, table: Any, source: str = "SID table") -> None:
        """Decode over another SID table of the same codebooks (SID-based tasks; ``reads_sids``)."""
        from sidrec.errors import SidrecError

        raise SidrecError(f"method '{self.cfg.method}' does not decode over a SID table")

    # ------------------------------------------------------------------ evaluation
    def evaluator(self, split: str) -> Evaluator:
        """The split's evaluator (built once per task)."""
        cache: dict[str, Evaluator] = self.__dict__.setdefault("_evaluators", {})
        if split not in cache:
            c = self.cfg
            cache[split] = Evaluator(self.split.split(split), self.split.item_freq, c.eval.ks, c.data.cold_threshold,
                                     c.eval.buckets)
        return cache[split]

    def eval_subset(self, split: str, max_users: int = 0, shortest: bool = False) -> Evaluator:
        """The split's evaluator, or one over a fixed (seeded) random subset of ``max_users`` users; with
        ``shortest``, the ``max_users`` users with the shortest histories (the time cap's second probe: the
        same number of users with the least padding separates the per-user from the per-position cost)."""
        ev = self.evaluator(split)
        if max_users and max_users < len(ev.eval_set):
            if shortest:
                rows = np.sort(ev.eval_set.length_order()[:max_users])
            else:
                rows = np.sort(np.random.default_rng(self.cfg.seed).choice(len(ev.eval_set), max_users,
                                                                           replace=False))
            ev = Evaluator(ev.eval_set.subset(rows), self.split.item_freq, self.cfg.eval.ks,
                           self.cfg.data.cold_threshold, self.cfg.eval.buckets)
        return ev

    # ------------------------------------------------------------------ content grounding
    @property
    def grounding(self) -> Grounding | None:
        """The content grounding (:mod:`sidrec.fusion`, the one mechanism for every method), built on first use
        (the item vectors are read only when a fusion is chosen or applied) from the factory the pipeline
        attached; None for a task without one."""
        if "_grounding" not in self.__dict__:
            factory = self.__dict__.get("_grounding_factory")
            g = factory() if factory is not None else None
            self.__dict__["_grounding"] = g.to(self.device) if g is not None else None
        return self.__dict__["_grounding"]

    @grounding.setter
    def grounding(self, value: Grounding | None) -> None:
        self.__dict__["_grounding"] = value

    def evaluate(self, model: Any, split: str, max_users: int = 0, shortest: bool = False
                 ) -> dict[str, dict[str, Any]]:
        """Metrics per subset on ``split`` ('valid' or 'test') with the real inference procedure and the run's
        fusion (on :meth:`eval_subset`'s users when ``max_users``)."""
        return fusion.evaluate(self, model, split, [self.fusion], max_users, shortest)[0]

    @property
    def eval_batch(self) -> int:
        """Users evaluated together (beam search: ``eval_batch_users``; dense scoring: ``eval_batch_size``)."""
        return int(self.eval_batch_users if self.scoring == "beam" else self.eval_batch_size)

    def recommend(self, eval_set: EvalSet, k: int, exclude_history: bool | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per user of ``eval_set`` (-1 padded) and their scores, under the run's fusion; the history
        is left out when ``exclude_history`` (default: the run's ``eval.protocol``)."""
        return fusion.recommend(self, eval_set, k, exclude_history)
