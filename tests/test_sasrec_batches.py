"""SASRec's training batches: random batches computed in length bands give the padded matrix's loss."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.config import SASRecConfig
from sidrec.models.sasrec import SASRec
from sidrec.recipes.sasrec import NextItemBatches, length_bands


def _train(seed: int, n: int = 200, max_items: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 40, rng.integers(2, max_items)) for _ in range(n)]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=64))
def test_bands_partition_the_batch_and_pad_less_than_2x(n_targets):
    n = np.array(n_targets)
    idx = np.arange(len(n)) + 100
    bands = length_bands(idx, n)
    assert sorted(np.concatenate(bands).tolist()) == idx.tolist()
    for b in bands:
        t = n[b - 100]
        assert t.max() <= max(8, 2 * t.min() - 1) or t.max() <= 8


def test_banded_random_batch_equals_one_padded_matrix():
    torch.manual_seed(0)
    model = SASRec(40, 30, SASRecConfig(d_model=16, ffn_dim=32, dropout=0.0, emb_dropout=0.0)).eval()
    batches = NextItemBatches(_train(0), 30, 64, seed=1, batching="random")(0)
    assert all(isinstance(b["seq"], list) for b in batches) and any(len(b["seq"]) > 1 for b in batches)
    for b in batches:
        w = b["window"]
        width = max(x.shape[1] for x in w)
        full = torch.cat([torch.nn.functional.pad(x, (width - x.shape[1], 0), value=-1) for x in w])
        inp, tgt = full[:, :-1], full[:, 1:]
        one = model(inp, torch.where(inp >= 0, tgt, torch.full_like(tgt, -1)))
        torch.testing.assert_close(model(b["seq"], b["target"]), one)
    # every user with >= 2 items appears exactly once per epoch
    users = torch.cat([u for b in batches for u in b["user"]]).sort().values
    assert users.tolist() == list(range(200))


def test_random_batches_differ_by_epoch_and_repeat_by_seed():
    nb = NextItemBatches(_train(1), 30, 32, seed=3, batching="random")
    first = [torch.cat(b["user"]).tolist() for b in nb(0)]
    assert first == [torch.cat(b["user"]).tolist() for b in NextItemBatches(_train(1), 30, 32, 3, "random")(0)]
    assert first != [torch.cat(b["user"]).tolist() for b in nb(1)]
