"""The content recommender: no training, the cosine of every item's vector to the user's recent items.

Why a method of its own: on the Amazon benchmarks this zero-training ranker is level with a converged SASRec
and far above every semantic-ID model on cold items, so it is the floor every trained method must clear and
the signal every method's ranking is grounded in (:mod:`sidrec.fusion`). Its vectors are the run's
``features`` (the same cache the SID tokenizers read); the query is the last item, or with
``content.query_items`` > 1 a recency-weighted mean of the last n (``content.decay``). The query items are
never recommended (an item-to-item recommender does not return its own query); exact ties (identical text) go
to the item with more training interactions.

Evaluation ranks the full catalogue exactly (dense scores, like every model); ``recommend`` searches a faiss
inner-product index, exact (``content.index: flat``) or IVF for very large catalogues.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import EvalSet, LeaveOneOut
from sidrec.eval.evaluator import excludes
from sidrec.features import item_features
from sidrec.fusion import ContentIndex
from sidrec.training.task import Task


class ContentTask(Task):
    """A task with nothing to train: the pipeline evaluates it at once and writes a normal run."""

    scoring = "dense"
    trainable = False
    groundable = False  # fusing the content ranker with itself adds nothing

    def __init__(self, cfg: Config, dataset: Dataset, split: LeaveOneOut) -> None:
        self.cfg = cfg
        self.split = split
        vectors = item_features(cfg.features, dataset, progress=cfg.train.progress)
        self.index = ContentIndex(vectors, split.item_freq, cfg.content)
        self.model: nn.Module = nn.Module()  # no weights: a run of this method has no checkpoint
        self.eval_batch_size = cfg.eval.batch_size

    def model_scores(self, model: nn.Module, hist: torch.Tensor) -> torch.Tensor:
        return self.index.scores(hist)

    def recommend(self, eval_set: EvalSet, k: int, exclude_history: bool | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by the faiss index (the history left out when ``exclude_history``; default: the run's
        ``eval.protocol``)."""
        hist = eval_set.padded_histories(pad=-1)
        exclude = excludes(self.cfg) if exclude_history is None else exclude_history
        return self.index.search(hist, k, eval_set.padded_seen(pad=-1) if exclude else None)


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> ContentTask:
    return ContentTask(cfg, dataset, split)
