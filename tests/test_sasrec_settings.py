"""The SASRec-line peers' training choices as settings of sidrec's SASRec (issue 57): each does what it says, and the
defaults leave the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sidrec.config import Config, SASRecConfig, TrainConfig, validate_config
from sidrec.data.batches import NextItemBatches, PrefixBatches
from sidrec.errors import SidrecError
from sidrec.methods.sasrec.model import NORMAL_INIT_STD, SASRec
from sidrec.models.layers import Block
from sidrec.training.trainer import Trainer, lr_lambda


def _cfg(**kw) -> SASRecConfig:
    return SASRecConfig(**{"d_model": 16, "n_layers": 2, "n_heads": 2, "ffn_dim": 32, **kw})


def _train(seed: int = 0, n: int = 40, max_items: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 25, rng.integers(2, max_items)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ train_rows
def test_prefix_rows_are_every_prefix_of_the_recent_window_with_the_last_position_the_target():
    train = _train()
    max_len = 8
    pb = PrefixBatches(train, max_len, 16, seed=0)
    samples = set()
    for b in pb(0):
        assert b["seq"].shape == b["target"].shape
        assert (b["target"][:, :-1] == -1).all() and (b["target"][:, -1] >= 0).all()  # one target, the last column
        assert b["seq"].shape[1] == int((b["seq"] >= 0).sum(1).max())  # padded to the batch's longest history
        for u, s, t in zip(b["user"].tolist(), b["seq"].tolist(), b["target"][:, -1].tolist(), strict=True):
            samples.add((u, tuple(x for x in s if x >= 0), t))
    expected = set()
    for u, s in enumerate(train):
        w = s[-(max_len + 1):].tolist()  # the peers' seq[-(max_len + 3):-2] of the full sequence
        for j in range(1, len(w)):
            expected.add((u, tuple(w[:j]), w[j]))  # the history never reaches before the window
    assert samples == expected
    assert len(pb) == sum(min(len(s), max_len + 1) - 1 for s in train)


def test_prefix_rows_train_the_same_targets_as_user_rows_in_uniform_random_batches():
    train = _train(1, n=60)
    pb, nb = PrefixBatches(train, 8, 16, seed=3), NextItemBatches(train, 8, 16, seed=3)

    def targets(batches):
        return sorted((u, t) for b in batches for u, row in zip(b["user"].tolist(), b["target"].tolist(), strict=True)
                      for t in row if t >= 0)

    assert targets(pb(0)) == targets(nb(0))
    sizes = [len(b["user"]) for b in pb(0)]
    assert sizes[:-1] == [16] * (len(sizes) - 1)  # batches of train.batch_size samples, not of users
    first = [b["user"].tolist() for b in pb(0)]
    assert first == [b["user"].tolist() for b in PrefixBatches(train, 8, 16, seed=3)(0)]  # seeded
    assert first != [b["user"].tolist() for b in pb(1)]  # reshuffled every epoch
    # uniform shuffle: batches mix lengths (length grouping would give near-constant lengths per batch)
    spread = [int((b["seq"] >= 0).sum(1).max() - (b["seq"] >= 0).sum(1).min()) for b in pb(0)]
    assert np.mean(spread) > 2


def test_prefix_rows_loss_is_the_last_position_cross_entropy():
    torch.manual_seed(0)
    m = SASRec(25, 8, _cfg()).eval()
    b = PrefixBatches(_train(), 8, 16, seed=0)(0)[0]
    h = m.encode(b["seq"])[:, -1]
    want = nn.functional.cross_entropy(m.logits(h), b["target"][:, -1])
    assert torch.allclose(m(b["seq"], b["target"]), want, atol=1e-5)


# ------------------------------------------------------------------------------------------------ init
def test_normal_init_is_bert_style_and_scaled_init_is_the_default():
    torch.manual_seed(0)
    m = SASRec(2000, 50, _cfg(d_model=64, ffn_dim=256, init="normal"))
    for name, p in m.named_parameters():
        if name.endswith("bias") and "ln" not in name:
            assert (p == 0).all(), name
        elif p.dim() == 2 and "ln" not in name:
            rows = (p[1:] if name == "item_emb.weight" else p).detach()
            assert abs(float(rows.std()) - NORMAL_INIT_STD) < 0.003, name
    assert (m.item_emb.weight[0] == 0).all()  # the padding row stays zero
    d = SASRec(2000, 50, _cfg(d_model=64, ffn_dim=256))
    assert abs(float(d.item_emb.weight[1:].detach().std()) - 64**-0.5) < 0.01
    lin = d.blocks[0].ffn.net[0]
    assert float(lin.weight.detach().abs().max()) <= 64**-0.5 + 1e-6  # torch's default: uniform within 1/sqrt(fan_in)


def test_normal_init_scales_the_content_pca_to_its_std():
    content = torch.randn(300, 40)
    m = SASRec(300, 10, _cfg(init="normal", item_content="init"), content)
    assert abs(float(m.item_emb.weight[1:].detach().std()) - NORMAL_INIT_STD) < 0.002


# ------------------------------------------------------------------------------------------------ norm
def test_post_norm_block_layer_norms_after_each_residual_sum():
    torch.manual_seed(0)
    blk = Block(16, 2, 32, 0.0, post_norm=True).eval()
    x = torch.randn(3, 5, 16)
    a = blk.ln1(x + blk.attn(x, is_causal=True))
    assert torch.allclose(blk(x, is_causal=True), blk.ln2(a + blk.ffn(a)), atol=1e-6)
    pre = Block(16, 2, 32, 0.0).eval()
    pre.load_state_dict(blk.state_dict())
    a = x + pre.attn(pre.ln1(x), is_causal=True)
    assert torch.allclose(pre(x, is_causal=True), a + pre.ffn(pre.ln2(a)), atol=1e-6)


def test_post_norm_sasrec_normalises_the_embeddings_and_has_no_final_norm():
    torch.manual_seed(0)
    m = SASRec(25, 8, _cfg(norm="post")).eval()
    assert isinstance(m.ln, nn.Identity) and isinstance(m.emb_ln, nn.LayerNorm)
    assert all(b.post_norm for b in m.blocks)
    seq = torch.tensor([[-1, 3, 4, 5]])
    x = m.emb_ln(m.item_emb(seq + 1) + m.pos_emb(torch.arange(3, -1, -1))) * (seq >= 0).unsqueeze(-1)
    out = x
    from sidrec.models.layers import causal_padding_mask

    for b in m.blocks:
        out = b(out, mask=causal_padding_mask(seq >= 0))
    assert torch.allclose(m.encode(seq), out, atol=1e-6)
    pre = SASRec(25, 8, _cfg())
    assert isinstance(pre.ln, nn.LayerNorm) and isinstance(pre.emb_ln, nn.Identity)


def test_post_norm_block_refuses_incremental_decoding():
    with pytest.raises(ValueError, match="pre-LN"):
        Block(16, 2, 32, 0.0, post_norm=True).step(torch.randn(1, 1, 2, 16))


# ------------------------------------------------------------------------------------------------ dropout
def test_inner_dropout_off_keeps_dropout_on_the_residual_branches_only():
    m = SASRec(25, 8, _cfg(dropout=0.5, inner_dropout=False))
    for b in m.blocks:
        assert b.attn.dropout == 0.0  # attention weights
        assert [x.p for x in b.ffn.net if isinstance(x, nn.Dropout)] == [0.0]  # after the GELU
        assert b.drop.p == 0.5  # residual branches
    assert m.emb_drop.p == SASRecConfig().emb_dropout
    d = SASRec(25, 8, _cfg(dropout=0.5))
    assert d.blocks[0].attn.dropout == 0.5 and [x.p for x in d.blocks[0].ffn.net if isinstance(x, nn.Dropout)] == [0.5]


# ------------------------------------------------------------------------------------------------ positions
def test_no_positions_makes_the_encoding_depend_on_order_only_through_causality():
    torch.manual_seed(0)
    m = SASRec(25, 8, _cfg(positions="none")).eval()
    assert m.pos_emb is None and not any("pos_emb" in k for k in m.state_dict())
    # no position embedding, yet the order still counts: in the second layer each item reads the first layer's
    # states, which depend on what came before it (causal attention)
    a, b = m.encode(torch.tensor([[1, 2, 3, 4]]))[:, -1], m.encode(torch.tensor([[3, 1, 2, 4]]))[:, -1]
    assert not torch.allclose(a, b)  # the earlier positions' states differ (causal), so some order remains
    one = m.encode(torch.tensor([[-1, -1, 7]]))[:, -1]
    assert torch.allclose(one, m.encode(torch.tensor([[7]]))[:, -1], atol=1e-6)  # no position: padding is inert
    w = SASRec(25, 8, _cfg()).eval()
    assert w.pos_emb is not None


# ------------------------------------------------------------------------------------------------ trainer
def test_constant_schedule_keeps_the_peak_rate_and_never_cuts(tmp_path):
    f = lr_lambda(0, 100, 0.05, cosine=False)
    assert [f(s) for s in (0, 50, 99, 500)] == [1.0] * 4
    torch.manual_seed(0)

    class T:
        device = torch.device("cpu")
        model = nn.Linear(2, 2)

        def param_groups(self, wd, lr):
            return None

        def train_batches(self, epoch):
            return [0] * 10

    tr = Trainer(T(), TrainConfig(schedule="constant", warmup_steps=0, epochs=5, lr=0.01), tmp_path)  # type: ignore[arg-type]
    for _ in range(30):
        tr.opt.step()
        tr.sched.step()
    assert tr.sched.get_last_lr() == [0.01, 0.01]
    tr.best, tr.bad_epochs = 1.0, 2  # one more bad validation: a plateau schedule would cut here (plateau_patience 3)
    tr._save_best = lambda *a, **k: None  # type: ignore[method-assign]
    tr.task.evaluate = lambda *a, **k: {"all": {"ndcg@10": 0.0}}  # type: ignore[attr-defined]
    record: dict = {}
    tr._validate(record)
    assert tr.bad_epochs == 3 and "lr_cut_to" not in record and tr.opt.param_groups[0]["lr"] == 0.01


def test_select_metric_is_checked_and_drives_the_best_epoch(tmp_path):
    cfg = Config()
    cfg.train.select_metric = "ndcg@20"
    validate_config(cfg)
    for bad in ("ndcg@7", "ndcg", "hit@10", "mrr@10"):
        cfg.train.select_metric = bad
        with pytest.raises(SidrecError, match="train.select_metric"):
            validate_config(cfg)
    cfg.train.select_metric = "mrr"
    validate_config(cfg)

    class T:
        device = torch.device("cpu")
        model = nn.Linear(2, 2)

        def param_groups(self, wd, lr):
            return None

        def train_batches(self, epoch):
            return [0]

    tr = Trainer(T(), TrainConfig(), tmp_path, select_metric="ndcg@20")  # type: ignore[arg-type]
    tr._save_best = lambda *a, **k: None  # type: ignore[method-assign]
    scores = iter([{"ndcg@10": 0.5, "ndcg@20": 0.1}, {"ndcg@10": 0.1, "ndcg@20": 0.2}])
    tr.task.evaluate = lambda *a, **k: {"all": next(scores)}  # type: ignore[attr-defined]
    for epoch in (1, 2):
        tr.epoch = epoch
        tr._validate({})
    assert tr.best_epoch == 2 and tr.best == 0.2  # ndcg@20 improved at epoch 2 while ndcg@10 fell
