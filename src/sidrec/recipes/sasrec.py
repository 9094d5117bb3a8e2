"""SASRec recipe: length-bucketed batches of users, every position predicts its next item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec import precision
from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import LeaveOneOut, left_pad
from sidrec.models.sasrec import SASRec
from sidrec.recipes._eval import EvaluatorsMixin, GroundedMixin


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

    ``batching="length"`` groups users of similar history length (little padding, ~5x less work on Amazon
    data); ``"random"`` draws users uniformly. A random batch is delivered as a few *length bands* (lists
    under ``seq`` / ``target`` / ``window`` / ``user``: histories of <= 8, <= 16, <= 32, ... targets), each
    padded only to its own longest, and the model computes one loss over all of them: the same mean over the
    random batch's positions as one padded matrix, at a fraction of the work (Amazon histories are mostly
    short, so one 50-item history would otherwise pad 255 others to 50). Every batch also carries
    ``scale`` = its number of targets / the epoch's mean number of targets per batch: a recipe that
    multiplies its per-batch *mean* loss by it weights every training position equally. Without it, the
    per-batch mean of a length-grouped epoch gives a position in a batch of 2-item histories up to 25x the
    weight of one in a batch of 50-item histories.
    """

    def __init__(self, train: list[np.ndarray], max_len: int, batch_size: int, seed: int,
                 batching: str = "length", all_windows: bool = False) -> None:
        if batching not in ("length", "random"):
            raise ValueError(f"batching must be 'length' or 'random', got {batching!r}")
        rows, users = [], []
        for u, s in enumerate(train):
            # the most recent max_len + 1 items; with all_windows also earlier windows that overlap by one
            # item, so every item of a long history is a target exactly once (TIGER's prefix samples cover them all)
            ends = range(len(s), 1, -max_len) if all_windows else ([len(s)] if len(s) >= 2 else [])
            for e in ends:
                rows.append(s[max(0, e - max_len - 1):e])
                users.append(u)
        self.mat = left_pad(rows, pad=-1, length=max_len + 1)  # (n_rows, L+1), most recent on the right
        self.users = torch.tensor(users, dtype=torch.long)
        self.lens = np.array([len(r) for r in rows])
        self.batch_size = batch_size
        self.seed = seed
        self.batching = batching

    def __call__(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.batching == "length":
            groups = bucketed_batches(self.lens, self.batch_size, rng)
        else:
            perm = rng.permutation(len(self.lens))
            groups = [perm[i:i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        n_targets = np.array([int((self.lens[idx] - 1).sum()) for idx in groups], dtype=np.float64)
        mean_targets = max(1.0, float(n_targets.mean())) if len(groups) else 1.0
        out = []
        for idx, nt in zip(groups, n_targets, strict=True):
            if self.batching == "length":
                batch: dict[str, Any] = self._rows(idx)
            else:
                bands = [self._rows(b) for b in length_bands(idx, self.lens[idx] - 1)]
                batch = {k: [b[k] for b in bands] for k in ("seq", "target", "window", "user")}
            batch["scale"] = torch.tensor(nt / mean_targets)
            out.append(batch)
        return out

    def _rows(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        t = int(self.lens[idx].max())
        sub = self.mat[torch.from_numpy(idx), -t:]
        inp, tgt = sub[:, :-1], sub[:, 1:]
        return {"seq": inp, "target": torch.where(inp >= 0, tgt, torch.full_like(tgt, -1)), "window": sub,
                "user": self.users[torch.from_numpy(idx)]}


def length_bands(idx: np.ndarray, n_targets: np.ndarray, first: int = 8) -> list[np.ndarray]:
    """Split one batch's rows into bands of <= first, <= 2*first, <= 4*first, ... targets (each pads < 2x)."""
    band = np.ceil(np.log2(np.maximum(n_targets, 1) / first)).clip(min=0).astype(np.int64)
    return [idx[band == b] for b in np.unique(band)]


class SASRecTask(GroundedMixin, EvaluatorsMixin):
    scoring = "dense"
    logits_unnormalised = True  # fusion adds lambda x similarity to log-softmax(logits)

    def __init__(self, cfg: Config, split: LeaveOneOut, content: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.split = split
        self.model: nn.Module = SASRec(split.n_items, cfg.data.max_len, cfg.sasrec, content)
        self.batches = NextItemBatches(split.train, cfg.data.max_len, cfg.train.batch_size, cfg.seed,
                                       cfg.sasrec.batching)
        self.eval_batch_size = cfg.eval.batch_size

    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        return self.batches(epoch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = model(batch["seq"], batch["target"])
        return loss * batch["scale"] if self.cfg.sasrec.position_weight == "equal" else loss

    def model_scores(self, model: nn.Module, hist: torch.Tensor) -> torch.Tensor:
        """(B, n_items) logits after left-padded histories, read out in fp32.

        Why fp32: under bf16 autocast the logits themselves are bf16 (8 bits of mantissa), and SASRec's
        top-10 had 23% of its slots tied; the Transformer may run in bf16, the ranking never does.
        """
        core = model.module if hasattr(model, "module") else model
        core.eval()
        with torch.no_grad():
            with precision.autocast(self.cfg.train.bf16):
                h = core.encode(hist)[:, -1]
            return core.logits(h.float())  # outside autocast: an fp32 product with the fp32 item table


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> SASRecTask:
    content = None
    if cfg.sasrec.item_content != "none":  # the same vectors (and cache) as the SID tokenizers and the fusion
        from sidrec.features import item_features

        content = torch.from_numpy(item_features(cfg.features, dataset, progress=cfg.train.progress))
    return SASRecTask(cfg, split, content)
