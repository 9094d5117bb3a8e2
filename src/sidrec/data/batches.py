"""Training batches shared by the methods: users' recent windows (SASRec, ACERec) and every history prefix
(TIGER, DIGER, DREAM's stages), grouped by length so a batch is padded only to its own longest row."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sidrec.data.protocol import left_pad


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

    Users of similar history length are grouped (:func:`bucketed_batches`: little padding, ~5x less work on
    Amazon data than uniform batches; uniform batches in length bands were measured no better, docs/RESULTS.md).
    Every batch also carries ``scale`` = its number of targets / the epoch's mean number of targets per batch: a recipe that
    multiplies its per-batch *mean* loss by it weights every training position equally. Without it, the
    per-batch mean of a length-grouped epoch gives a position in a batch of 2-item histories up to 25x the
    weight of one in a batch of 50-item histories.
    """

    def __init__(self, train: list[np.ndarray], max_len: int, batch_size: int, seed: int,
                 all_windows: bool = False) -> None:
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

    def __call__(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        groups = bucketed_batches(self.lens, self.batch_size, rng)
        n_targets = np.array([int((self.lens[idx] - 1).sum()) for idx in groups], dtype=np.float64)
        mean_targets = max(1.0, float(n_targets.mean())) if len(groups) else 1.0
        out = []
        for idx, nt in zip(groups, n_targets, strict=True):
            batch: dict[str, Any] = self._rows(idx)
            batch["scale"] = torch.tensor(nt / mean_targets)
            out.append(batch)
        return out

    def _rows(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        t = int(self.lens[idx].max())
        sub = self.mat[torch.from_numpy(idx), -t:]
        inp, tgt = sub[:, :-1], sub[:, 1:]
        return {"seq": inp, "target": torch.where(inp >= 0, tgt, torch.full_like(tgt, -1)), "window": sub,
                "user": self.users[torch.from_numpy(idx)]}


def prefix_samples(train: list[np.ndarray], max_len: int) -> dict[str, np.ndarray]:
    """Every prefix of every training sequence as a (history, next item) sample, as flat index arrays.

    Returns ``flat`` (all training items concatenated), and per sample ``user``, ``end`` (index in ``flat``
    of the target; the history is ``flat[end - hist_len:end]``) and ``hist_len`` (<= max_len).
    """
    lens = np.array([len(s) for s in train], dtype=np.int64)
    flat = np.concatenate(train).astype(np.int64) if len(train) else np.zeros(0, dtype=np.int64)
    starts = np.cumsum(lens) - lens
    per = np.maximum(lens - 1, 0)  # samples per user
    user = np.repeat(np.arange(len(train)), per)
    first = np.cumsum(per) - per  # index of each user's first sample
    t = np.arange(int(per.sum())) - np.repeat(first, per) + 1  # position of the target in its sequence, >= 1
    return {"flat": flat, "user": user, "end": starts[user] + t, "hist_len": np.minimum(t, max_len)}


def sample_histories(samples: dict[str, np.ndarray], rows: np.ndarray, width: int | None = None) -> np.ndarray:
    """Left-padded (-1) histories (len(rows), width) of prefix samples ``rows``; width defaults to the longest."""
    hl = samples["hist_len"][rows]
    t = int(hl.max()) if width is None else width
    end = samples["end"][rows]
    pos = end[:, None] - t + np.arange(t)[None, :]
    return np.where(pos >= (end - hl)[:, None], samples["flat"][np.maximum(pos, 0)], -1)

