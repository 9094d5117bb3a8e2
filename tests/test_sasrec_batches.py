"""Next-item batches (SASRec, ACERec): every user once per epoch, grouped by length, seeded."""

from __future__ import annotations

import numpy as np
import torch

from sidrec.data.batches import NextItemBatches


def _train(seed: int, n: int = 200, max_items: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 40, rng.integers(2, max_items)) for _ in range(n)]


def test_every_user_once_per_epoch_with_little_padding():
    train = _train(0)
    batches = NextItemBatches(train, 30, 16, seed=1)(0)
    users = torch.cat([b["user"] for b in batches]).sort().values
    assert users.tolist() == list(range(200))
    for b in batches:
        lens = (b["window"] >= 0).sum(1)
        assert b["seq"].shape[1] == int(lens.max()) - 1  # padded to the batch's own longest window
        # the target after each input position is the next item of the window
        assert torch.equal(b["target"][b["seq"] >= 0], b["window"][:, 1:][b["seq"] >= 0])
    # length grouping: batches are far narrower than the longest history on average
    assert np.mean([b["seq"].shape[1] for b in batches]) < 0.8 * max(min(len(s), 31) for s in train)


def test_batches_differ_by_epoch_and_repeat_by_seed():
    nb = NextItemBatches(_train(1), 30, 32, seed=3)
    first = [b["user"].tolist() for b in nb(0)]
    assert first == [b["user"].tolist() for b in NextItemBatches(_train(1), 30, 32, 3)(0)]
    assert first != [b["user"].tolist() for b in nb(1)]
