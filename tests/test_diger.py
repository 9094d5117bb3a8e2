"""DIGER: the recommendation loss reaches the codebooks, no noise at inference, FrqUD gating, SDUD's learned
sigma, and a tiny joint run whose re-derived SIDs are reproduced from the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sidrec.config import load_config
from sidrec.errors import SidrecError
from sidrec.methods.diger.model import DIGER, DIGERConfig
from sidrec.methods.diger.task import DIGER_LOG_FILE, DIGER_TABLE_FILE, DIGER_USAGE_FILE
from sidrec.methods.tiger.model import TIGER, TIGERConfig
from sidrec.pipeline import evaluate, train
from sidrec.sid.rqvae import RQVAE, ResidualQuantizer, sinkhorn_codes
from sidrec.sid.table import SIDTable

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS, SIZES = 60, [8, 8, 8]


def tiny(cfg: DIGERConfig, seed: int = 0, arch: str = "encdec") -> DIGER:
    torch.manual_seed(seed)
    feats = torch.randn(N_ITEMS, 12)
    rqvae = RQVAE(12, [16], 8, SIZES)
    rqvae.quantizer.kmeans_init(rqvae.encoder(feats).detach(), seed=seed)
    tcfg = TIGERConfig(d_model=16, encoder_layers=1, decoder_layers=1, n_heads=2, head_dim=8, ffn_dim=32,
                       dropout=0.0, user_buckets=0, arch=arch)
    tiger = TIGER(SIZES + [4], max_len=5, cfg=tcfg)
    return DIGER(tiger, rqvae, feats, torch.randint(0, 4, (N_ITEMS,)), cfg)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, N_ITEMS, (16, 5), generator=g)
    hist[:4, :2] = -1  # some left padding
    return hist, torch.randint(0, N_ITEMS, (16,), generator=g)


@pytest.mark.parametrize("noise,arch", [("gumbel", "encdec"), ("none", "encdec"), ("gaussian", "encdec"),
                                        ("gumbel", "decoder")])
def test_recommendation_loss_reaches_the_codebooks(noise, arch):
    m = tiny(DIGERConfig(noise=noise, decay="none", vq_weight=0.0, recon_weight=0.0), arch=arch)
    m.train()
    hist, tgt = batch()
    loss = m(hist, None, tgt, torch.Generator().manual_seed(1))
    loss.backward()
    for book in m.rqvae.quantizer.codebooks:
        assert book.grad is not None and torch.isfinite(book.grad).all()
        assert book.grad.abs().sum() > 0  # L_gen alone (vq / recon weights are 0) moved the codewords
    assert all(p.grad is None for p in m.rqvae.encoder.parameters())  # frozen by default


def test_no_noise_at_inference_but_noise_in_training():
    m = tiny(DIGERConfig(noise="gumbel", decay="none", noise_scale=50.0))
    items = torch.arange(N_ITEMS)
    m.eval()
    a = m.assign(items, torch.Generator().manual_seed(0))["codes"]
    b = m.assign(items, torch.Generator().manual_seed(1))["codes"]
    nearest, _ = m.rqvae.quantizer.assign(m.rqvae.encoder(m.features))
    assert torch.equal(a, b) and torch.equal(a, nearest)
    m.train()
    a = m.assign(items, torch.Generator().manual_seed(0))
    assert (a["noisy_codes"] != nearest).any()  # the same call in training mode does explore...
    assert torch.equal(a["codes"], m.table[items])  # ...but the recommender still reads the cached table


def test_frqud_gates_noise_to_hot_codes_only():
    m = tiny(DIGERConfig(noise="gumbel", decay="frqud", hot_ratio=1.5))
    q = m.rqvae.quantizer
    z = m.rqvae.encoder(m.features).detach()
    near0 = q.assign(z)[0][:, 0]
    hot_code = int(torch.bincount(near0, minlength=SIZES[0]).argmax())
    usage0 = torch.zeros(SIZES[0])
    usage0[hot_code] = 1.0
    m.usage_0.copy_(usage0)
    m.usage_1.zero_()
    m.usage_2.zero_()
    hot = m.hot_codes()
    assert hot is not None and hot[0].sum() == 1 and bool(hot[0][hot_code]) and not hot[1].any()
    q.train()
    near = q.assign(z)[0]
    gate = torch.stack([h[near[:, lv]] for lv, h in enumerate(hot)], 1)  # FrqUD decided per level
    out = q(z, estimator="gumbel", noise_scale=1e3, generator=torch.Generator().manual_seed(0), gate=gate)
    cold_rows = out.nearest[:, 0] != hot_code
    assert torch.equal(out.codes[cold_rows, 0], out.nearest[cold_rows, 0])  # cold: never perturbed
    assert (out.codes[~cold_rows, 0] != hot_code).any()  # hot: noise moved some away
    assert torch.equal(out.codes[:, 1:], out.nearest[:, 1:])  # no hot code at levels 2-3


def test_frqud_usage_is_an_ema_of_nearest_codes():
    m = tiny(DIGERConfig(decay="frqud", usage_momentum=0.5))
    m.train()
    items = torch.arange(N_ITEMS)
    before = m.usage_0.clone()
    out = m.assign(items)
    share = torch.bincount(m.rqvae.quantizer.assign(m.rqvae.encoder(m.features))[0][:, 0],
                           minlength=SIZES[0]).float() / N_ITEMS
    assert torch.allclose(m.usage_0, 0.5 * before + 0.5 * share)
    assert out["codes"].shape == (N_ITEMS, 3)


def test_sdud_sigma_is_learned():
    m = tiny(DIGERConfig(noise="gumbel", decay="sdud", noise_scale=1.0))
    assert m.sigma is not None
    opt = torch.optim.Adam([{"params": [p for p in m.tiger.parameters()], "lr": 1e-3},
                            {"params": [m.sigma], "lr": 1e-2}])
    start = float(m.sigma.detach())
    m.train()
    for step in range(5):
        hist, tgt = batch(step)
        loss = m(hist, None, tgt)
        opt.zero_grad()
        loss.backward()
        assert m.sigma.grad is not None and m.sigma.grad.abs() > 0
        opt.step()
    assert abs(float(m.sigma.detach()) - start) > 1e-3
    assert m.noise_scale() == pytest.approx(abs(float(m.sigma.detach())))


def test_bad_settings_are_refused():
    with pytest.raises(SidrecError, match="diger.decay"):
        DIGERConfig(decay="sometimes").check()
    with pytest.raises(SidrecError, match="diger.noise"):
        DIGERConfig(noise="uniform").check()


TINY = ["size=none", "method=diger", "data.path=synthetic", "data.synthetic_users=400", "data.synthetic_items=120",
        "data.max_len=10", "features.kind=attributes",
        "tokenizer.kind=rqvae", "tokenizer.levels=2", "tokenizer.codebook_sizes=[8]", "tokenizer.hidden_dims=[32]",
        "tokenizer.latent_dim=8", "tokenizer.epochs=20", "tokenizer.batch_size=64", "tokenizer.progress=false",
        "tokenizer.collision_codebook=64",
        "tiger.d_model=32", "tiger.encoder_layers=1", "tiger.decoder_layers=1", "tiger.n_heads=2",
        "tiger.head_dim=16", "tiger.ffn_dim=64", "tiger.user_buckets=0", "tiger.beam=10",
        "diger.tokenizer_lr=0.01", "diger.noise_scale=2.0",
        "eval.ks=[5,10]", "train.batch_size=64", "train.lr=5e-3", "train.warmup_steps=5", "train.epochs=3",
        "train.eval_every=3", "train.progress=false", "train.threads=1"]


def test_tiny_joint_run_moves_sids_and_reproduces_them(tmp_path):
    run = tmp_path / "run"
    res = train(load_config(None, TINY + [f"run_dir={run}"]))
    log = [json.loads(x) for x in (run / DIGER_LOG_FILE).read_text().splitlines()]
    assert log[0]["sid_drift"] == 0.0  # the first table is the two-stage one
    assert max(r["sid_drift"] for r in log) > 0  # joint training changed some items' SIDs
    table = SIDTable.load(run / DIGER_TABLE_FILE)
    assert len(np.unique(table.primary.numpy(), axis=0)) == table.n_items  # unique after resolution
    assert (run / DIGER_USAGE_FILE).stat().st_size > 1000  # usage heat maps, start vs end
    assert f"]({DIGER_USAGE_FILE})" in (run / "report.md").read_text()  # linked from the run report
    again = evaluate(run, splits=("test",))  # SIDs re-derived from the checkpoint: same numbers
    assert again["test"]["all"]["ndcg@10"] == pytest.approx(res["test"]["all"]["ndcg@10"])


def test_cached_forward_feeds_the_table_to_the_recommender_whatever_the_noise():
    """With noise on, the recommender's inputs and targets are the cached table's codes (values), not samples."""
    m = tiny(DIGERConfig(noise="gumbel", decay="none", noise_scale=50.0))
    m.table.copy_(torch.randint(0, 8, m.table.shape, generator=torch.Generator().manual_seed(3)))
    seen = {}

    def spy(hist_codes, users, tgt_codes, hist_emb, tgt_emb, tw):
        seen.update(h=hist_codes, t=tgt_codes, he=hist_emb, tw=tw)
        return hist_emb.sum() * 0 + tgt_emb.sum() * 0 + sum(w.sum() for w in tw if w is not None) * 0

    m.tiger.forward = spy
    m.train()
    hist, tgt = batch()
    m(hist, None, tgt, torch.Generator().manual_seed(1))
    ok = hist >= 0
    assert torch.equal(seen["h"][ok][:, :3], m.table[hist[ok]])
    assert torch.equal(seen["t"][:, :3], m.table[tgt])
    emb = m.tiger.code_emb.weight
    want = emb[seen["h"][ok][:, :3] + m.tiger.offsets[:3]]
    assert torch.allclose(seen["he"][ok][:, :3], want, atol=1e-6)  # input embeddings = the cached codes' rows
    for lv in range(3):
        assert torch.equal(seen["tw"][lv].argmax(1), m.table[tgt, lv])
        assert torch.allclose(seen["tw"][lv].sum(1), torch.ones(len(tgt)))


def test_the_authors_detached_labels_give_the_tokenizer_no_recommendation_gradient():
    m = tiny(DIGERConfig(decay="none", vq_weight=0.0, recon_weight=0.0, rec_to_tokenizer=False))
    m.train()
    hist, tgt = batch()
    m(hist, None, tgt).backward()
    assert all(b.grad is None or b.grad.abs().sum() == 0 for b in m.rqvae.quantizer.codebooks)
    assert m.tiger.code_emb.weight.grad.abs().sum() > 0


def test_frqud_marks_an_item_hot_at_all_levels_or_none():
    m = tiny(DIGERConfig(decay="frqud", frequd_level="first"))
    m.usage_0.zero_()
    m.usage_0[:4] = 0.25  # codes 0-3 of level 1 hot
    m.usage_1.fill_(1.0)  # every level-2 code "hot": a per-level decision would differ from the first level's
    near = torch.stack([torch.arange(8).repeat(3)[:20], torch.arange(20) % 8, torch.arange(20) % 8], 1)
    gate = m.noise_gate(near)
    assert gate is not None and gate.shape == (20, 3)
    assert bool((gate.all(1) | ~gate.any(1)).all())  # all levels or none
    assert torch.equal(gate[:, 0], near[:, 0] < 4)
    each = DIGERConfig(decay="frqud", frequd_level="each")
    m.cfg = each
    mixed = m.noise_gate(near)
    assert not bool((mixed.all(1) | ~mixed.any(1)).all())  # the per-level ablation does mix


def test_sinkhorn_derivation_spreads_items_that_argmin_piles_onto_one_code():
    torch.manual_seed(0)
    q = ResidualQuantizer([8], 4)
    with torch.no_grad():
        q.codebooks[0].copy_(torch.randn(8, 4) * 3)
        z = q.codebooks[0][0] + 0.8 * torch.randn(400, 4)  # most items nearest to code 0
    argmin = q.assign(z)[0][:, 0]
    balanced = sinkhorn_codes(q, z, epsilon=0.003, iters=50)[:, 0]
    assert torch.bincount(balanced, minlength=8).max() < torch.bincount(argmin, minlength=8).max()
    assert torch.unique(balanced).numel() >= torch.unique(argmin).numel()
    assert torch.equal(balanced, sinkhorn_codes(q, z, epsilon=0.003, iters=50)[:, 0])  # deterministic
    with pytest.raises(SidrecError, match="Sinkhorn"):
        sinkhorn_codes(q, z, epsilon=0.0)


def test_tied_code_logits_read_the_code_embeddings():
    cfg = TIGERConfig(d_model=16, encoder_layers=1, decoder_layers=1, n_heads=2, head_dim=8, ffn_dim=32,
                      dropout=0.0, user_buckets=0, tie_head=True)
    t = TIGER([8, 8, 4], max_len=5, cfg=cfg)
    assert t.head is None
    h = torch.randn(3, 16)
    assert torch.allclose(t.level_logits(h, 1), h @ t.code_emb.weight[8:16].t())


def test_diagnose_reports_gaps_and_flip_rates_that_follow_the_noise():
    quiet = tiny(DIGERConfig(noise="none", decay="none"))
    d = quiet.diagnose(torch.Generator().manual_seed(0))
    assert all(g > 0 for g in d["logit_gap"]) and d["flip_rate"] == [0.0, 0.0, 0.0]
    rates = []
    for scale in (0.01, 100.0):
        m = tiny(DIGERConfig(noise="gumbel", decay="none", noise_scale=scale, noise_unit="gap"))
        rates.append(sum(m.diagnose(torch.Generator().manual_seed(0))["flip_rate"]))
        assert torch.allclose(m.gap, torch.tensor(d["logit_gap"]))  # same tokenizer, same gaps
    assert rates[0] < rates[1]


def test_decoder_windows_train_every_item_through_the_straight_through_path():
    """arch=decoder: a window's loss is TIGER's window loss over the cached codes (the ST weights' values are
    one-hot), and the recommendation loss still reaches the codebooks through every window item."""
    m = tiny(DIGERConfig(noise="none", decay="none", vq_weight=0.0, recon_weight=0.0), arch="decoder")
    m.table.copy_(torch.randint(0, 8, m.table.shape, generator=torch.Generator().manual_seed(3)))
    m.train()
    window, _ = batch()
    loss = m(window, None, None)
    codes = torch.cat([m.table[window.clamp(min=0)], m.collision[window.clamp(min=0)].unsqueeze(-1)], -1)
    codes = codes.masked_fill((window < 0).unsqueeze(-1), -1)
    assert float(loss.detach()) == pytest.approx(float(m.tiger.forward_sequence(codes, None).detach()), rel=1e-5)
    loss.backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in m.rqvae.quantizer.codebooks)


def test_decoder_diger_run_trains_on_windows(tmp_path):
    run = tmp_path / "run"
    res = train(load_config(None, TINY + [f"run_dir={run}", "tiger.arch=decoder"]))
    assert np.isfinite(res["test"]["all"]["ndcg@10"])
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert len(losses) == 3 and np.isfinite(losses).all() and losses[-1] < losses[0]
