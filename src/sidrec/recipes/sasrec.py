"""SASRec recipe: length-bucketed batches of users, every position predicts its next item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import LeaveOneOut, left_pad
from sidrec.models.sasrec import SASRec
from sidrec.recipes._eval import EvaluatorsMixin


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Groups of row indices of similar length, in random order.

    Amazon histories are short (median ~6) with a long tail; padding every batch to the longest history
    would multiply the work. Sorting by length with a random jitter keeps batches homogeneous yet
    different every epoch.
    """
    order = np.lexsort((rng.random(len(lengths)), lengths))
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    perm = rng.permutation(len(groups))
    return [groups[i] for i in perm]


class NextItemBatches:
    """Every user's most recent ``max_len + 1`` training items as next-item batches (SASRec, ACERec).

    Each batch is ``seq`` (B, t) left-padded with -1 and ``target`` (B, t): the item after each position
    (-1 where the input is padding), t = the batch's own longest sequence, so one forward pass trains every
    position of every user.
    """

    def __init__(self, train: list[np.ndarray], max_len: int, batch_size: int, seed: int) -> None:
        rows = [s[-(max_len + 1):] for s in train if len(s) >= 2]
        self.mat = left_pad(rows, pad=-1, length=max_len + 1)  # (n_train_users, L+1), most recent on the right
        self.lens = np.array([len(r) for r in rows])
        self.batch_size = batch_size
        self.seed = seed

    def __call__(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for idx in bucketed_batches(self.lens, self.batch_size, rng):
            t = int(self.lens[idx].max())
            sub = self.mat[torch.from_numpy(idx), -t:]
            inp, tgt = sub[:, :-1], sub[:, 1:]
            out.append({"seq": inp, "target": torch.where(inp >= 0, tgt, torch.full_like(tgt, -1))})
        return out


class SASRecTask(EvaluatorsMixin):
    def __init__(self, cfg: Config, split: LeaveOneOut) -> None:
        self.cfg = cfg
        self.split = split
        self.model: nn.Module = SASRec(split.n_items, cfg.data.max_len, cfg.sasrec)
        self.batches = NextItemBatches(split.train, cfg.data.max_len, cfg.train.batch_size, cfg.seed)

    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        return self.batches(epoch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["seq"], batch["target"])

    def evaluate(self, model: nn.Module, split: str, max_users: int = 0) -> dict[str, dict[str, Any]]:
        ev = self.eval_subset(split, max_users)
        es = ev.eval_set
        core = model.module if hasattr(model, "module") else model
        core.eval()

        def score(rows: np.ndarray) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.train.bf16):
                return core.score(es.padded_histories(rows, pad=-1))

        m, _ = ev.evaluate_scores(score, self.cfg.eval.batch_size, self.cfg.eval.exclude_history)
        return m


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> SASRecTask:
    return SASRecTask(cfg, split)
