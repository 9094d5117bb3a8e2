"""The leave-one-out protocol, cold/warm subsets and frequency buckets (README.md, "Evaluation").

For each user with at least 3 items: the last item is the test target, the second-to-last the validation
target, everything before is training data. Validation histories are the training items; test histories
also contain the validation item (the standard TIGER / SASRec protocol). Item frequencies are counted on
the *training portion only*, so a test target that appears only as other users' test targets is cold
(frequency 0), never warm by leakage. Users with fewer than 3 items contribute to training only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sidrec.data.dataset import Dataset


@dataclass
class EvalSet:
    """One evaluation split: per user a (truncated) history and the single target item."""

    split: str
    users: np.ndarray  # user indices
    histories: list[np.ndarray]  # most recent ``max_len`` items, time order: what a model reads
    targets: np.ndarray  # item indices
    # per user, the whole history before the target (not truncated): what ``eval.protocol: exclude`` removes. A
    # user with more than ``max_len`` items has seen more than the model reads (144 Beauty users); None: the same
    # as ``histories``
    seen: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, idx: np.ndarray) -> EvalSet:
        seen = None if self.seen is None else [self.seen[i] for i in idx]
        return EvalSet(self.split, self.users[idx], [self.histories[i] for i in idx], self.targets[idx], seen)

    def length_order(self) -> np.ndarray:
        """Row indices ordered by history length (stable). Batching users in this order pads each batch
        only to its own longest history; Amazon histories are mostly far shorter than ``max_len``."""
        return np.argsort(np.array([len(h) for h in self.histories], dtype=np.int64), kind="stable")

    def padded_positions(self, batch: int) -> int:
        """History positions a batched evaluation computes: users in :meth:`length_order`, each batch of
        ``batch`` padded to its longest history. With the user count it predicts what an evaluation pass costs
        (the trainer's time cap): a random sample evaluated as one batch pads every user to the longest."""
        lengths = np.sort(np.array([max(1, len(h)) for h in self.histories], dtype=np.int64))
        starts = np.arange(0, len(lengths), max(1, batch))
        ends = np.minimum(starts + max(1, batch), len(lengths))
        return int(((ends - starts) * lengths[ends - 1]).sum())

    def padded_seen(self, idx: np.ndarray | None = None, pad: int = -1) -> torch.Tensor:
        """Left-padded (B, S) whole histories (:attr:`seen`): the items the ``exclude`` protocol removes."""
        src = self.histories if self.seen is None else self.seen
        return left_pad(src if idx is None else [src[i] for i in idx], pad)

    def padded_histories(self, idx: np.ndarray | None = None, pad: int = -1) -> torch.Tensor:
        """Left-padded (B, L) tensor of item indices; ``pad`` marks empty slots."""
        hs = self.histories if idx is None else [self.histories[i] for i in idx]
        return left_pad(hs, pad)


def left_pad(seqs: list[np.ndarray], pad: int = -1, length: int | None = None) -> torch.Tensor:
    """Stack variable-length sequences right-aligned (the most recent item in the last column)."""
    n = max((len(s) for s in seqs), default=0) if length is None else length
    out = np.full((len(seqs), max(n, 1)), pad, dtype=np.int64)
    for r, s in enumerate(seqs):  # one memcpy per row; sequences are short
        if len(s):
            s = s[-n:]
            out[r, n - len(s):] = s
    return torch.from_numpy(out)


@dataclass
class LeaveOneOut:
    """Training sequences, validation and test sets, and training item frequencies."""

    n_items: int
    max_len: int
    train: list[np.ndarray]  # per user, full training portion (not truncated; models truncate)
    valid: EvalSet
    test: EvalSet
    item_freq: np.ndarray  # interactions per item in the training portion
    cold_threshold: int = 5
    users_too_short: int = 0

    @classmethod
    def from_dataset(cls, ds: Dataset, max_len: int = 50, cold_threshold: int = 5) -> LeaveOneOut:
        lens = ds.lengths
        seqs = ds.sequences()
        ok = np.flatnonzero(lens >= 3)
        train = [s[:-2] if lens[u] >= 3 else s for u, s in enumerate(seqs)]
        valid = EvalSet("valid", ok, [seqs[u][:-2][-max_len:] for u in ok],
                        np.array([seqs[u][-2] for u in ok], dtype=np.int64), [seqs[u][:-2] for u in ok])
        test = EvalSet("test", ok, [seqs[u][:-1][-max_len:] for u in ok],
                       np.array([seqs[u][-1] for u in ok], dtype=np.int64), [seqs[u][:-1] for u in ok])
        flat_train = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
        freq = np.bincount(flat_train, minlength=ds.n_items).astype(np.int64)
        return cls(ds.n_items, max_len, train, valid, test, freq, cold_threshold, int((lens < 3).sum()))

    def split(self, name: str) -> EvalSet:
        if name not in ("valid", "test"):
            raise ValueError(f"unknown split {name!r}")
        return self.valid if name == "valid" else self.test

    def is_cold(self, items: np.ndarray) -> np.ndarray:
        return self.item_freq[items] <= self.cold_threshold

    def cold_items(self) -> np.ndarray:
        return np.flatnonzero(self.item_freq <= self.cold_threshold)

    def subset_counts(self, split: str = "test") -> dict[str, int]:
        es = self.split(split)
        cold = self.is_cold(es.targets)
        return {"all": len(es), "cold": int(cold.sum()), "warm": int((~cold).sum())}


def bucket_labels(edges: list[int]) -> list[str]:
    """Names of the frequency buckets for upper bounds ``edges`` (e.g. [5,10,15,20] -> 0-5 ... >20)."""
    labels, lo = [], 0
    for e in edges:
        labels.append(f"{lo}-{e}")
        lo = e + 1
    labels.append(f">{edges[-1]}")
    return labels


def bucket_of(freq: np.ndarray, edges: list[int]) -> np.ndarray:
    """Bucket index of each frequency: ``freq <= edges[0]`` -> 0, ..., ``> edges[-1]`` -> len(edges)."""
    return np.searchsorted(np.asarray(edges), freq, side="left")
