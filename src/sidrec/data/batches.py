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


class PrefixBatches:
    """Every prefix of every user's most recent ``max_len + 1`` training items as its own sample, only its last
    position a target, shuffled uniformly into batches of ``batch_size`` samples (``sasrec.train_rows: prefixes``).

    Why: the SASRec-line peers (TV-Rec, BSARec, FMLP-Rec: one code base) cut training sequences this way (their
    ``RecDataset``: ``seq[-(max_len + 3):-2]``, one sample per prefix, cross-entropy at the last position only,
    ``RandomSampler``). The targets are exactly :class:`NextItemBatches`' (the window's items after its first), so the
    two differ only in how the targets are grouped: one row per user with every position trained, users of similar
    length together, against independent samples in random batches, each with its own dropout mask. The cost: a
    random batch is padded to its longest history, usually near ``max_len`` (their rows are always ``max_len``
    wide), so a Beauty epoch computes 6.0M positions against 131k in 2.9x the steps (501 batches of 256 against
    175 of 128 users) for the same 128,031 targets. A prefix's history is the window's items before its target,
    never older ones, as theirs.

    Batches have the keys of :class:`NextItemBatches`' (``seq`` (B, t) left-padded with -1 to the batch's longest
    history, ``target`` (B, t) -1 but in the last column, ``user``, ``scale``).
    """

    def __init__(self, train: list[np.ndarray], max_len: int, batch_size: int, seed: int) -> None:
        rows = [s[-(max_len + 1):] for s in train]
        self.mat = left_pad(rows, pad=-1, length=max_len + 1)  # (n_users, L+1), most recent on the right
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        per = np.maximum(lens - 1, 0)  # samples per user: histories of 1 .. len - 1 items
        self.user = np.repeat(np.arange(len(rows)), per)
        first = np.cumsum(per) - per
        self.hist_len = np.arange(int(per.sum())) - np.repeat(first, per) + 1
        self.start = (max_len + 1 - lens)[self.user]  # column of the window's first item in the padded row
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        """The number of samples (= training targets) per epoch."""
        return len(self.user)

    def __call__(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.user))
        groups = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        mean_targets = max(1.0, len(order) / max(1, len(groups)))
        return [self._rows(idx, len(idx) / mean_targets) for idx in groups]

    def _rows(self, idx: np.ndarray, scale: float) -> dict[str, torch.Tensor]:
        h, start = self.hist_len[idx], self.start[idx]
        t = int(h.max())
        pos = (start + h)[:, None] - t + np.arange(t)[None, :]  # columns of the history, left-padded
        rows = torch.from_numpy(self.user[idx])
        seq = torch.where(torch.from_numpy(pos >= start[:, None]),
                          self.mat[rows[:, None], torch.from_numpy(np.maximum(pos, 0))], -1)
        target = torch.full_like(seq, -1)
        target[:, -1] = self.mat[rows, torch.from_numpy(start + h)]
        return {"seq": seq, "target": target, "user": rows, "scale": torch.tensor(scale)}


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

