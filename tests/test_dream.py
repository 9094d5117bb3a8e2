"""DREAM: SID placement, CART candidates and negatives, UC3 gates, LoRA isolation, multi-SID hits, new items,
and a tiny end-to-end run of the three stages."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.decoding.beam import beam_search
from sidrec.decoding.trie import SIDCodes, SIDTrie
from sidrec.dream.cart import CART, CARTConfig, candidate_sids, family_negatives
from sidrec.dream.config import DREAMConfig
from sidrec.dream.cpde import add_lora, update_weights
from sidrec.dream.newitems import add_items, read_new_items, read_records
from sidrec.dream.sids import complete_candidates, place_sids, table_with
from sidrec.dream.uc3 import sid_nll, uc3_decide
from sidrec.errors import SidrecError
from sidrec.eval.evaluator import ranks_from_topk
from sidrec.methods.tiger.model import TIGER, TIGERConfig
from sidrec.sid.table import SIDTable

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ placement
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_placed_sids_are_unique_and_avoid_fixed(seed):
    rng = np.random.default_rng(seed)
    k = 4
    fixed = np.unique(rng.integers(0, 3, (12, 3)), axis=0)
    new = rng.integers(0, 3, (20, 2))
    last = place_sids(fixed, new, k)
    ok = last >= 0
    full = np.concatenate([new, last[:, None]], 1)[ok]
    assert len(np.unique(full, axis=0)) == len(full)  # unique among themselves
    assert not (full[:, None, :] == fixed[None, :, :]).all(2).any()  # and against every fixed SID
    # -1 only when the prefix really has no free code left for this row
    for i in np.flatnonzero(~ok):
        used = {int(f[-1]) for f in fixed if (f[:-1] == new[i]).all()}
        used |= {int(last[j]) for j in range(len(new)) if ok[j] and (new[j] == new[i]).all()}
        assert len(used) == k


def test_candidate_equal_to_own_base_prefix_keeps_its_sid():
    base = np.array([[0, 0, 0], [0, 0, 1], [1, 1, 0]])
    cands = np.array([[[0, 0], [1, 1]]])  # item 1: its own prefix, then item 2's prefix
    full = complete_candidates(base, np.array([1]), cands, 4)
    assert full[0, 0].tolist() == [0, 0, 1]
    assert full[0, 1].tolist() == [1, 1, 1]  # code 0 is item 2's


# ------------------------------------------------------------------------------------------ multi-SID hits
class FixedDecoder:
    """A StepDecoder whose next-code probabilities depend only on the prefix (the same for every user)."""

    def __init__(self, probs: dict[tuple[int, ...], list[float]]) -> None:
        self.probs = probs

    def start_decoding(self, users: torch.Tensor) -> int:
        return len(users)

    def next_log_probs(self, b: int, prefix: torch.Tensor | None, parent: torch.Tensor | None):
        rows = [[()]] * b if prefix is None else [[tuple(p) for p in r] for r in prefix.tolist()]
        return b, torch.tensor([[self.probs[p] for p in r] for r in rows]).log()


def test_cold_item_with_several_sids_is_returned_once_and_any_sid_is_a_hit():
    base = np.array([[0, 0], [1, 1], [1, 0]])  # items 0, 1, 2
    # item 2 is cold: primary (0, 1), second hypothesis (1, 0) (its base SID)
    table = table_with(base, [2, 2], np.array([2]), np.array([[[0, 1], [1, 0]]]), np.array([[0.6, 0.4]]))
    assert table.primary[2].tolist() == [0, 1] and table.n_sids == 4
    trie = SIDTrie.from_codes(SIDCodes.from_table(table))
    # log p: first code 1 is likelier; (1, 0) is the best SID overall and belongs to item 2
    # SID probabilities: (1,0) item 2 .48, (0,0) item 0 .36, (1,1) item 1 .12, (0,1) item 2 .04
    dec = FixedDecoder({(): [0.4, 0.6], (0,): [0.9, 0.1], (1,): [0.8, 0.2]})
    res = beam_search(dec, (torch.arange(3),), trie, beam=4, k=4)
    assert res.items[0].tolist() == [2, 0, 1, -1]  # item 2 once, at its best SID (1, 0)
    assert np.isclose(float(res.scores[0, 0].exp()), 0.48, atol=1e-6)
    ranks = ranks_from_topk(res.items.numpy(), np.array([2, 0, 1]))
    assert ranks.tolist() == [1, 2, 3]
    # with only the primary hypothesis the same item ranks last: the second SID is what made it a hit at 1
    only = table_with(base, [2, 2], np.array([2]), np.array([[[0, 1]]]))
    res1 = beam_search(dec, (torch.arange(1),), SIDTrie.from_codes(SIDCodes.from_table(only)), beam=4, k=4)
    assert res1.items[0].tolist() == [0, 1, 2, -1]


# ------------------------------------------------------------------------------------------ UC3
def test_uc3_gates_on_a_constructed_example():
    inf = np.inf
    # 4 cold items, 3 candidates each; NLL per context (lower = the frozen model prefers it)
    nll, ctx = [], []
    for _ in range(3):  # item 0: three contexts that all prefer candidate 2 -> switch
        nll.append([5.0, 6.0, 0.5])
        ctx.append(0)
    for _ in range(2):  # item 1: prefers candidate 1 but only two contexts -> no switch (support)
        nll.append([6.0, 0.1, 6.0])
        ctx.append(1)
    for a in (0.0, 0.02, 0.0, 0.02):  # item 2: a near tie between 0 and 1 -> no switch (margin)
        nll.append([1.0 + a, 1.0 + 0.02 - a, 9.0])
        ctx.append(2)
    for _ in range(4):  # item 3: candidate 2 is invalid (no free code); 1 preferred
        nll.append([4.0, 0.2, inf])
        ctx.append(3)
    d = uc3_decide(np.array(nll), np.array(ctx), 4, tau=1.0, min_support=3, min_margin=0.05)
    assert d.support.tolist() == [3, 2, 4, 4]
    assert d.switch.tolist() == [True, False, False, True]
    assert d.chosen.tolist() == [2, 0, 0, 1]
    assert d.winner[1] == 1 and d.margin[2] < 0.05
    assert d.votes[3, 2] == 0.0
    assert np.isclose(d.switch_rate, 0.5)
    # a context with a uniform preference has zero confidence and does not move the vote
    d2 = uc3_decide(np.array([[1.0, 1.0, 1.0], [0.1, 5.0, 5.0]]), np.array([0, 0]), 1, min_support=1)
    assert np.isclose(d2.votes[0].sum(), 1.0) and d2.votes[0, 0] > 0.9


@pytest.mark.parametrize("arch", ["encdec", "decoder"])
def test_sid_nll_matches_teacher_forced_loss(arch):
    torch.manual_seed(0)
    model = TIGER([4, 3], 6, TIGERConfig(d_model=16, encoder_layers=1, decoder_layers=2, n_heads=2, head_dim=8,
                                         ffn_dim=32, dropout=0.0, user_buckets=0, arch=arch)).eval()
    hist = torch.randint(0, 3, (3, 2, 2))
    hist[1, 0] = -1  # a left-padded history: the shared history pass must mask it as the per-sample pass does
    sids = torch.tensor([[[1, 2], [0, 0]], [[3, 1], [-1, -1]], [[2, 2], [2, 0]]])
    with torch.no_grad():
        nll = sid_nll(model, hist, None, sids)
        for b in range(3):
            for h in range(2):
                if sids[b, h, 0] < 0:
                    assert torch.isinf(nll[b, h])
                    continue
                ce = model(hist[b:b + 1], None, sids[b, h].view(1, -1)) * 2  # mean over 2 positions
                assert torch.isclose(nll[b, h], ce, atol=1e-5)


# ------------------------------------------------------------------------------------------ CPDE
def test_lora_leaves_base_weights_untouched_by_cold_samples():
    torch.manual_seed(0)
    base = TIGER([4, 3, 5], 6, TIGERConfig(d_model=16, encoder_layers=1, decoder_layers=1, n_heads=2, head_dim=8,
                                           ffn_dim=32, dropout=0.0, user_buckets=0))
    pm = add_lora(base, 4, 8.0)
    model = pm.base_model.model
    before = {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" not in k}
    trainable = [k for k, v in pm.named_parameters() if v.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    assert any(".q_proj." in k for k in trainable) and any(".v_proj." in k for k in trainable)
    assert not any(".k_proj." in k or ".o_proj." in k for k in trainable)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    hist = torch.randint(0, 3, (8, 3, 3))
    hyps = torch.randint(0, 3, (8, 4, 3))  # cold samples with four hypotheses each
    for _ in range(3):
        loss = sid_nll(model, hist, None, hyps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(pm.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # the adapters did learn
    merged = pm.merge_and_unload()
    assert not torch.equal(merged.decoder[0].attn.q_proj.weight, base.decoder[0].attn.q_proj.weight)
    assert torch.equal(merged.decoder[0].attn.k_proj.weight, base.decoder[0].attn.k_proj.weight)


def test_weight_update_moves_toward_the_likelier_hypothesis_and_stays_normalised():
    w = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    alpha = w.clone()
    nll_sum = torch.tensor([[1.0, 8.0], [0.0, 0.0], [2.0, 0.0]])
    cnt = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    new = update_weights(w, alpha, nll_sum, cnt, valid, keep=0.7)
    assert new[0, 0] > 0.5 > new[0, 1]  # item 0: hypothesis 0 has the lower NLL
    assert torch.equal(new[1], w[1])  # item 1 was not seen: unchanged
    assert torch.allclose(new.sum(1), torch.ones(3)) and new[2, 1] == 0  # invalid stays at zero


# ------------------------------------------------------------------------------------------ CART
def test_cart_full_beam_is_exact():
    torch.manual_seed(2)
    n, sizes = 30, [3, 3, 2]
    base = torch.stack([torch.randint(0, k, (n,)) for k in sizes], 1)
    cart = CART(torch.randn(n, 8), base, sizes, CARTConfig(logit_scale=3.0), [torch.randn(k, 8) for k in sizes])
    with torch.no_grad():
        z = cart.item_vectors(torch.arange(n))
    cands, scores = candidate_sids(cart, 18)  # width 18 keeps every prefix: the search is exhaustive
    with torch.no_grad():
        for i in range(3):
            allc = list(itertools.product(*[range(k) for k in sizes]))
            sc = []
            for c in allc:
                lgs = cart.walk(z[i:i + 1], None, torch.tensor([c]))[0]
                sc.append(sum(float(lg.log_softmax(-1)[0, c[lv]]) for lv, lg in enumerate(lgs)) / 3)
            assert np.allclose(scores[i], np.sort(sc)[::-1], atol=1e-5)
            own = dict(zip(allc, sc, strict=True))
            assert np.allclose([own[tuple(c)] for c in cands[i].tolist()], scores[i], atol=1e-5)
    assert (np.diff(candidate_sids(cart, 4)[1], axis=1) <= 1e-6).all()  # a narrower beam: best first


@pytest.mark.parametrize("kind", ["rqkmeans", "rqvae"])
def test_cart_in_the_base_space_starts_exactly_on_the_static_sids(kind):
    """The base quantiser's latents and codebooks with squared-distance logits reproduce the static SIDs at step 0."""
    from sidrec.dream.cart import _share_on_base
    from sidrec.sid.base import build_tokenizer
    from sidrec.sid.config import TokenizerConfig

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    tc = TokenizerConfig(kind=kind, levels=3, codebook_sizes=[8], seed=0, epochs=5, hidden_dims=[32],
                         latent_dim=6, batch_size=64)
    tok = build_tokenizer(tc).fit(emb)
    base = torch.from_numpy(tok.encode(emb))
    lat, books = tok.residual_space(emb)
    cart = CART(torch.from_numpy(lat), base, [8, 8, 8], CARTConfig(), [torch.from_numpy(b) for b in books])
    assert _share_on_base(cart, base) == 1.0
    cands, _ = candidate_sids(cart, 4)
    # the static SID is in every item's pool and mostly first (the pool ranks whole sequences, not the greedy path)
    assert (cands == base.numpy()[:, None]).all(2).any(1).all()
    assert (cands[:, 0] == base.numpy()).all(1).mean() > 0.7
    with pytest.raises(SidrecError, match="codebooks"):
        CART(torch.from_numpy(lat), base, [8, 8, 8], CARTConfig())


def test_family_negatives_same_family_never_cooccurring():
    docs = ["red lipstick matte", "red lipstick gloss", "red lipstick matte long", "blue shampoo", "lipstick red"]
    fam = ["lips", "lips", "lips", "hair", "lips"]
    train = [np.array([0, 1]), np.array([3, 4])]  # 0 and 1 were bought together
    neg = family_negatives(docs, fam, train, k=3)
    assert neg.shape == (5, 3)
    assert 1 not in neg[0] and 0 not in neg[0]  # co-occurring and self excluded
    assert set(neg[0][neg[0] >= 0]) == {2, 4}
    assert neg[0][0] == 2  # textually closest first
    assert (neg[3] == -1).all()  # no other item in its family
    assert all(fam[j] == fam[i] for i in range(5) for j in neg[i] if j >= 0)
    # the rewrite hook changes the retrieval query, not the filters
    neg2 = family_negatives(docs, fam, train, k=1, rewrite=lambda t: ["lipstick red"] * len(t))
    assert neg2[0, 0] == 4
    far = family_negatives(docs, fam, train, k=3, closest=False)  # the far end of the family
    assert set(far[0][far[0] >= 0]) == {2, 4} and far[0][0] == 4
    assert all(fam[j] == fam[i] for i in range(5) for j in far[i] if j >= 0)


# ------------------------------------------------------------------------------------------ new items
def test_new_items_get_valid_unique_sids(tmp_path):
    from sidrec.sid.config import TokenizerConfig
    from sidrec.sid.pipeline import tokenize

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((60, 8)).astype(np.float32)
    cfg = TokenizerConfig(kind="rqkmeans", levels=2, codebook_sizes=[4], collision_codebook=16)
    res = tokenize(cfg, emb, [f"i{i}" for i in range(60)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: tiger\nfeatures:\n  kind: attributes\n")
    res.tokenizer.save(run / "tokenizer")
    res.table.save(run / "sid_table.parquet")
    items = tmp_path / "new.jsonl"
    items.write_text("\n".join(json.dumps({"item_id": f"new{i}"}) for i in range(5)) + "\n")
    new_emb = tmp_path / "new.npy"
    np.save(new_emb, emb[[0, 0, 1, 2, 3]])  # copies of known items: their prefixes are already taken
    table, path = add_items(run, items, embeddings=new_emb)
    assert path.exists() and table.n_items == 65 and table.item_ids[-1] == "new4"
    again = SIDTable.load(path)  # validated on load: one primary each, no SID shared by two items
    assert len(np.unique(again.codes, axis=0)) == again.n_sids == 65
    assert (again.codes[-5:, :-1] == res.tokenizer.encode(emb[[0, 0, 1, 2, 3]])).all()  # content codes kept
    assert (again.primary[:60] == SIDTable.load(run / "sid_table.parquet").primary).all()  # old ones unchanged
    with pytest.raises(SidrecError, match="already in the catalogue"):
        add_items(run, items, embeddings=new_emb)
    more = tmp_path / "more.csv"
    more.write_text("item_id,title\nlater1,x\n")
    np.save(tmp_path / "more.npy", emb[[0]])
    table2, _ = add_items(run, more, embeddings=tmp_path / "more.npy")  # extends the catalogue table
    assert table2.n_items == 66 and table2.item_ids[-1] == "later1" and len(np.unique(table2.codes, axis=0)) == 66
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"item_id": "x"}) + "\n")
    with pytest.raises(SidrecError, match="has no text"):  # an item without text would get the SID of ''
        add_items(run, other)
    with pytest.raises(SidrecError, match="cannot embed new items"):  # accepted, but attributes cannot embed it
        add_items(run, other, allow_empty_text=True)


def test_new_items_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"item_id": "a"}\n{"title": "no id"}\n')
    with pytest.raises(SidrecError, match=r"bad.jsonl, line 2: .*item_id"):
        read_new_items(p)
    p.write_text('{"item_id": "a"}\nnot json\n')
    with pytest.raises(SidrecError, match="line 2: not valid JSON"):
        read_new_items(p)
    p.write_text('{"item_id": "a"}\n{"item_id": "a"}\n')
    with pytest.raises(SidrecError, match="more than once"):
        read_new_items(p)


def test_new_items_files_read_as_spreadsheets_and_editors_write_them(tmp_path):
    """A CSV with a byte-order mark, a quoted field holding a newline, a JSON string holding U+2028: read as meant;
    a byte that is not UTF-8, a field over the csv module's limit and a row wider than the header are named."""
    p = tmp_path / "n.csv"
    p.write_bytes("\ufeffitem_id,title\nN1,\"two\nlines\"\nN2,x\n".encode())
    assert read_records(p, "") == [(2, {"item_id": "N1", "title": "two\nlines"}), (4, {"item_id": "N2", "title": "x"})]
    j = tmp_path / "n.jsonl"
    j.write_text('{"item_id": "N1", "title": "a\u2028b"}\n', encoding="utf-8")
    assert read_new_items(j) == [{"item_id": "N1", "title": "a\u2028b"}]
    p.write_bytes(b"item_id,title\nN1,ok\nN2,caf\xe9\n")
    with pytest.raises(SidrecError, match=r"n\.csv: not UTF-8 text at byte 26 \(line 3\)"):
        read_new_items(p)
    p.write_text("item_id,title\nN1," + "y" * 200_000 + "\n")
    with pytest.raises(SidrecError, match=r"n\.csv, line 2: a field longer than the CSV reader's limit of 131,072"):
        read_new_items(p)
    p.write_text("item_id,title\nN1,a,b\n")
    with pytest.raises(SidrecError, match=r"line 2: 3 fields, but the header names 2"):
        read_new_items(p)


def test_dream_config_section_loads():
    from sidrec.config import load_config

    cfg = load_config(None, ["dream.cart.epochs=2", "dream.hypotheses=3"])
    d: DREAMConfig = cfg.dream
    assert d.cart.epochs == 2 and d.hypotheses == 3
    with pytest.raises(SidrecError):
        load_config(None, ["dream.cart.epoch=2"])


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("arch", ["encdec", "decoder"])
def test_dream_stages_end_to_end_on_a_tiny_run(tmp_path, arch):
    import hashlib

    from sidrec.config import load_config
    from sidrec.dream.pipeline import STAGES, run_dream
    from sidrec.pipeline import train
    from test_tiger import TINY

    run = tmp_path / "tiger"
    train(load_config(None, TINY + ["train.epochs=3", "data.cold_threshold=12", f"run_dir={run}", f"tiger.arch={arch}"]))
    digest = hashlib.sha256((run / "sid_table.parquet").read_bytes()).hexdigest()
    out = run_dream(run, ["dream.cart.epochs=1", "dream.cart.queue_size=256", "dream.cpde_epochs=2",
                          "dream.cpde_warmup_epochs=1", "dream.cpde_update_every=1", "dream.cpde_batch_size=32"],
                    progress=False)
    assert tuple(out["stages"]) == STAGES
    for res in out["stages"].values():
        assert {"all", "warm", "cold"} <= set(res) and res["cold"]["n_users"] > 0
        assert {"recall@5", "ndcg@10", "recall@50"} <= set(res["all"])
    d = out["diagnostics"]
    assert 0 <= d["cart_primary_changed"] <= 1 and 0 <= d["uc3_switch_rate"] <= 1
    assert d["lambda_warm"] == 0.0 and d["lambda_kd"] > 0  # the warm NLL is off by default; KD: the sample ratio
    assert len(d["cpde_weight_history"]) > 1 and np.isclose(sum(d["cpde_mean_weights"]), 1.0, atol=1e-4)
    base = SIDTable.load(run / "sid_table.parquet")
    split_freq = np.bincount(np.concatenate([s[:-2] if len(s) >= 3 else s for s in _sequences(run)]),
                             minlength=base.n_items)
    warm = split_freq > 12
    cart = SIDTable.load(run / "dream" / "sid_table.cart.parquet").primary.numpy()
    for name in ("uc3", "cpde"):
        t = SIDTable.load(run / "dream" / f"sid_table.{name}.parquet")  # validated: unique, one primary each
        assert (t.primary.numpy()[warm] == cart[warm]).all()  # UC3 and CPDE move cold items only
    assert (run / "dream" / "model.safetensors").exists() and (run / "dream" / "report.md").exists()
    assert (run / "dream" / "cpde.png").stat().st_size > 1000
    assert hashlib.sha256((run / "sid_table.parquet").read_bytes()).hexdigest() == digest  # run untouched
    # a second run with other CPDE settings reuses the CART fit (same candidates, same stage-1 table)
    cart1 = SIDTable.load(run / "dream" / "sid_table.cart.parquet").codes
    again = run_dream(run, ["dream.cart.epochs=1", "dream.cart.queue_size=256", "dream.cpde_epochs=1",
                            "dream.cpde_warmup_epochs=0", "dream.cpde_batch_size=32"],
                      stages=("static",), split=("valid", "test"), progress=False)
    assert again["diagnostics"].get("cart_reused") and "cart_reused" not in d
    # several splits: fitted once, evaluated on each (valid numbers differ from test ones)
    assert set(again["by_split"]) == {"valid", "test"} and again["stages"] == again["by_split"]["valid"]
    assert again["by_split"]["valid"]["static"]["all"] != again["by_split"]["test"]["static"]["all"]
    assert "| test | static | all |" in (run / "dream" / "report.md").read_text()
    assert (SIDTable.load(run / "dream" / "sid_table.cart.parquet").codes == cart1).all()
    assert again["diagnostics"]["bridge"]["status"] == "reused"  # the bridge for the same CART table too


def _sequences(run):
    from sidrec.pipeline import load_run

    _, ds, _, _ = load_run(run)
    return ds.sequences()


def test_cli_dream_add_items_and_recommend_over_the_extended_table(tmp_path):
    from sidrec.config import load_config
    from sidrec.pipeline import dataset_from_config
    from sidrec.sid.stage import run_features
    from test_cli import _assert_clean_error, run
    from test_tiger import TINY

    rd = tmp_path / "tiger"
    p = run("train", *TINY, "train.epochs=2", "data.cold_threshold=12", "--run-dir", str(rd))
    assert p.returncode == 0, p.stderr
    p = run("dream", str(rd), "dream.cart.epochs=1", "dream.cart.queue_size=128", "dream.cpde_epochs=1",
            "dream.cpde_warmup_epochs=0", "dream.cpde_update_every=1", "dream.cpde_batch_size=64", "--split", "both")
    assert p.returncode == 0, p.stderr
    assert "cpde-beam" in p.stdout and "cold" in p.stdout and (rd / "dream" / "dream.json").exists()
    assert "DREAM stages - valid" in p.stdout and "DREAM stages - test" in p.stdout
    _assert_clean_error(run("dream", str(rd), "--split", "train"), "--split")
    p = run("recommend", str(rd), "--user", "U000001", "-k", "5", "--sid-table",
            str(rd / "dream" / "sid_table.cpde.parquet"), "--weights", str(rd / "dream" / "model.safetensors"))
    assert p.returncode == 0, p.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    _assert_clean_error(run("recommend", str(rd), "--user", "U000001", "--weights", str(tmp_path / "junk.safetensors")),
                        "junk.safetensors")
    _assert_clean_error(run("dream", str(rd), "dream.negatives=llm"), "dream.negatives")
    _assert_clean_error(run("dream", str(rd), "--split", "train"), "--split")
    # new items: bad file -> exit 2 naming the line; good file -> valid SIDs, recommendable at once
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "n1"}\n[1, 2]\n')
    _assert_clean_error(run("add-items", str(rd), str(bad)), "bad.jsonl, line 2")
    cfg = load_config([rd / "config.yaml"])
    emb = run_features(cfg, dataset_from_config(cfg))
    good = tmp_path / "new.jsonl"
    good.write_text("".join(json.dumps({"item_id": f"NEW{i}"}) + "\n" for i in range(3)))
    np.save(tmp_path / "new.npy", emb[:3])
    _assert_clean_error(run("add-items", str(rd), str(good)), "has no text")  # SIDs from empty text: refused
    p = run("add-items", str(rd), str(good), "--embeddings", str(tmp_path / "new.npy"))
    assert p.returncode == 0, p.stderr
    table = SIDTable.load(rd / "sid_table.catalogue.parquet")
    assert table.item_ids[-3:] == ["NEW0", "NEW1", "NEW2"]
    p = run("recommend", str(rd), "--user", "U000001", "-k", "120", "--sid-table",
            str(rd / "sid_table.catalogue.parquet"))
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------------------------------ refine added items
def test_neighbour_prefixes_distinct_nearest_and_not_own():
    from sidrec.dream.refine import neighbour_prefixes

    rng = np.random.default_rng(3)
    pool = rng.standard_normal((40, 6)).astype(np.float32)
    pre = rng.integers(0, 3, size=(40, 2))
    q = np.concatenate([pool[[5, 9]] + 0.01, np.full((1, 6), np.nan, np.float32)])
    own = np.array([pre[5], [9, 9], [0, 0]])
    got = neighbour_prefixes(q, pool, pre, own, n=4)
    assert (got[2] == -1).all()  # no content vector: no neighbours
    cos = (pool / np.linalg.norm(pool, axis=1, keepdims=True)) @ (q[0] / np.linalg.norm(q[0]))
    want = []
    for j in np.argsort(-cos, kind="stable"):
        t = tuple(pre[j])
        if t != tuple(own[0]) and t not in want:
            want.append(t)
    assert [tuple(x) for x in got[0]] == want[:4]
    assert len({tuple(x) for x in got[1]}) == 4  # distinct


def test_refine_added_items_from_first_interactions(tmp_path):
    from sidrec.config import load_config
    from sidrec.dream.newitems import add_items
    from sidrec.dream.refine import refine_items
    from sidrec.dream.uc3 import sid_nll
    from sidrec.pipeline import load_run, train
    from sidrec.sid.stage import run_features
    from test_cli import _assert_clean_error
    from test_cli import run as cli
    from test_tiger import TINY

    rd = tmp_path / "tiger"
    train(load_config(None, TINY + ["train.epochs=3", "data.cold_threshold=12", "tiger.user_buckets=16",
                                    f"run_dir={rd}"]))
    cfg, ds, split, task = load_run(rd)
    emb = run_features(cfg, ds)
    cold = np.flatnonzero(split.item_freq <= 12)[:6]
    items = tmp_path / "new.jsonl"
    items.write_text("".join(json.dumps({"item_id": f"NEW{k}"}) + "\n" for k in range(len(cold))))
    np.save(tmp_path / "new.npy", emb[cold])  # new items that look like cold ones: their content paths are rare
    table0, path = add_items(rd, items, embeddings=tmp_path / "new.npy")
    n_run = ds.n_items
    # one context per item (known users), plus an unknown user whose only context comes from the file
    inter = tmp_path / "first.csv"
    lines = ["user_id,item_id,timestamp"] + [f"{ds.user_ids[k]},NEW{k},{100 + k}" for k in range(len(cold))]
    lines += [f"stranger,{ds.item_ids[0]},1", "stranger,NEW0,2"]
    inter.write_text("\n".join(lines) + "\n")
    # default gates (support >= 3): one or two contexts per item never switch
    res = refine_items(rd, inter, out=tmp_path / "strict.parquet", progress=False)
    assert res.added == len(cold) and res.with_contexts == len(cold) and res.contexts == len(cold) + 1
    assert res.switched == [] and (SIDTable.load(res.path).codes == table0.codes).all()
    # loose gates: every item ends with the candidate the frozen model finds likeliest in its context
    res = refine_items(rd, inter, out=tmp_path / "loose.parquet", progress=False,
                       overrides=["dream.uc3_min_support=1", "dream.uc3_min_margin=0"])
    new = SIDTable.load(res.path)  # validated on load: unique SIDs, one primary each
    assert (new.codes[:n_run] == table0.codes[:n_run]).all()  # the run's items are never touched
    assert res.switched, "no added item switched although its content path is a rare one"
    task.use_sids(table0)
    warm_prefixes = {tuple(p) for p in table0.codes[np.flatnonzero(split.item_freq > 12), :-1]}
    for k in range(1, len(cold)):  # items with exactly one context (NEW0 has two)
        hist = task.codes_of(torch.as_tensor(ds.sequence(k)[-cfg.data.max_len:])[None])
        sids = torch.as_tensor(np.stack([table0.codes[n_run + k], new.codes[n_run + k]]))[None]
        old_nll, new_nll = sid_nll(task.model, hist, task._users(torch.tensor([k])), sids)[0].tolist()
        if f"NEW{k}" in res.switched:
            assert new_nll < old_nll and tuple(new.codes[n_run + k, :-1]) in warm_prefixes
        else:
            assert (new.codes[n_run + k] == table0.codes[n_run + k]).all()
    # bad input: unknown item names the file and line; the CLI exits 2 without a traceback
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\nU000001,NEW0\nU000002,NOPE\n")
    with pytest.raises(SidrecError, match=r"bad.csv, line 3: item 'NOPE'"):
        refine_items(rd, bad, progress=False)
    _assert_clean_error(cli("refine-items", str(rd), str(bad)), "bad.csv, line 3")
    p = cli("refine-items", str(rd), str(inter), "dream.uc3_min_support=1", "dream.uc3_min_margin=0")
    assert p.returncode == 0, p.stderr
    assert f"{len(res.switched)} switched" in p.stdout and (SIDTable.load(path).codes == new.codes).all()


def test_dream_paper_mode_retokenizes_every_item_and_trains_a_bridge(tmp_path):
    """paper mode: warm items take CART's top-1 too, a bridge TIGER learns that table (reused on a rerun), and
    UC3 / CPDE change only cold items of it."""
    import json

    from sidrec.config import load_config
    from sidrec.dream.pipeline import run_dream
    from sidrec.pipeline import train
    from test_tiger import TINY

    run = tmp_path / "tiger"
    train(load_config(None, TINY + ["train.epochs=2", "data.cold_threshold=12", f"run_dir={run}",
                                    "tiger.arch=decoder"]))
    sets = ["dream.cart.epochs=2", "dream.cart.queue_size=256", "dream.cart.w_anchor=0", "dream.cpde_epochs=1",
            "dream.cpde_warmup_epochs=0", "dream.cpde_update_every=1", "dream.cpde_batch_size=32"]
    out = run_dream(run, sets, progress=False)
    d = out["diagnostics"]
    assert d["bridge"]["status"] == "trained"
    assert d["lambda_warm"] == 0.0 and d["lambda_kd"] > 0  # automatic in paper mode: the warm NLL is off
    base = SIDTable.load(run / "sid_table.parquet").primary.numpy()
    cart = SIDTable.load(run / "dream" / "sid_table.cart.parquet").primary.numpy()
    bridge = SIDTable.load(run / "dream" / "bridge" / "sid_table.parquet").primary.numpy()
    assert (bridge == cart).all()  # the bridge learned the CART table
    split_freq = np.bincount(np.concatenate([s[:-2] if len(s) >= 3 else s for s in _sequences(run)]),
                             minlength=len(base))
    warm = split_freq > 12
    assert ((cart != base).any(1) & warm).any()  # warm items are re-tokenized too
    assert d["cart_warm_changed"] > 0 and 0 <= d["static_outside_topn"]["all"] <= 1
    assert len(d["cart_positions_changed"]["warm"]) == cart.shape[1] - 1 and max(d["cart_positions_changed"]["warm"]) > 0
    parts = d["uc3_fallback_support"] + d["uc3_fallback_margin"] + d["uc3_kept_by_vote"] + d["uc3_switch_rate"]
    assert parts == pytest.approx(1.0)  # every cold item either switched or kept candidate 0 for one reason
    for name in ("uc3", "cpde"):
        t = SIDTable.load(run / "dream" / f"sid_table.{name}.parquet").primary.numpy()
        assert (t[warm] == cart[warm]).all()  # later stages move cold items only, from the CART table
    uc3 = SIDTable.load(run / "dream" / "sid_table.uc3.parquet").primary.numpy()
    switched = (uc3 != cart).any(1)
    assert switched.sum() == round(d["uc3_switch_rate"] * d["cold_items"])  # fallback: Phi_R, not the base SID
    assert (run / "dream" / "bridge" / "metrics.json").exists()
    again = run_dream(run, sets, stages=("static", "cart"), progress=False)
    assert again["diagnostics"]["bridge"]["status"] == "reused"
    assert json.loads((run / "dream" / "bridge.json").read_text())["table"]
    assert again["stages"]["cart"]["all"] == out["stages"]["cart"]["all"]  # same bridge, same numbers


def test_cart_bridge_alone_is_a_complete_run_and_skips_the_later_stages(tmp_path):
    """run_cart_bridge (benchmarks/scaling.py's DREAM arm): CART's table and a bridge run with its own final evaluation
    (test, alone and + content), no UC3 / CPDE tables; a second call reuses both the CART fit and the bridge."""
    import json

    from sidrec.config import load_config
    from sidrec.dream.pipeline import run_cart_bridge
    from sidrec.pipeline import train
    from test_tiger import TINY

    run = tmp_path / "tiger"
    train(load_config(None, TINY + ["train.epochs=1", "data.cold_threshold=12", f"run_dir={run}",
                                    "tiger.arch=decoder"]))
    sets = ["dream.cart.epochs=1", "dream.cart.queue_size=256"]
    out = run_cart_bridge(run, sets, progress=False)
    bridge = run / "dream" / "bridge"
    assert out["bridge"] == str(bridge) and out["diagnostics"]["bridge"]["status"] == "trained"
    m = json.loads((bridge / "metrics.json").read_text())
    assert "test" in m and m["protocol"] == json.loads((run / "metrics.json").read_text())["protocol"]
    cart = SIDTable.load(run / "dream" / "sid_table.cart.parquet").primary.numpy()
    assert (SIDTable.load(bridge / "sid_table.parquet").primary.numpy() == cart).all()
    assert not any((run / "dream" / f"sid_table.{s}.parquet").exists() for s in ("uc3", "cpde"))
    assert json.loads((run / "dream" / "cart_bridge.json").read_text())["bridge"] == str(bridge)
    again = run_cart_bridge(run, sets, progress=False)
    assert again["diagnostics"]["bridge"]["status"] == "reused" and again["diagnostics"]["cart_reused"]


def test_info_nce_prefers_the_positive_key_and_averages_positions():
    from sidrec.dream.cart import info_nce

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 16, 8), dim=-1)
    queue = torch.nn.functional.normalize(torch.randn(3, 32, 8), dim=-1)
    hard = torch.nn.functional.normalize(torch.randn(3, 16, 2, 8), dim=-1)
    ok = torch.ones(16, 2, dtype=torch.bool)
    same = info_nce(q, q, queue, hard, ok, 0.1)
    other = info_nce(q, q[:, torch.randperm(16)], queue, hard, ok, 0.1)
    assert same < other
    per = torch.stack([info_nce(q[i:i + 1], q[i:i + 1], queue[i:i + 1], hard[i:i + 1], ok, 0.1) for i in range(3)])
    assert torch.allclose(same, per.mean())  # the mean over SID positions
    ok[:, 1] = False  # a missing hard negative does not count
    assert info_nce(q, q, queue, hard, ok, 0.1) < same


@pytest.mark.parametrize("arch", ["encdec", "decoder"])
def test_mean_nll_is_the_sum_over_positions_divided_by_their_number(arch):
    from sidrec.dream.uc3 import sid_nll
    from sidrec.methods.tiger.model import TIGER, TIGERConfig

    torch.manual_seed(0)
    cfg = TIGERConfig(d_model=16, encoder_layers=1, decoder_layers=1, n_heads=2, head_dim=8, ffn_dim=32,
                      dropout=0.0, user_buckets=0, arch=arch)
    m = TIGER([8, 8, 4], max_len=5, cfg=cfg).eval()
    hist = torch.randint(0, 4, (3, 5, 3))
    sids = torch.randint(0, 4, (3, 2, 3))
    sids[0, 1] = -1
    total, mean = sid_nll(m, hist, None, sids), sid_nll(m, hist, None, sids, reduce="mean")
    fin = torch.isfinite(total)
    assert torch.allclose(mean[fin], total[fin] / 3) and not torch.isfinite(mean[0, 1])


def test_paper_cpde_cold_samples_train_only_adapters_and_warm_samples_the_base():
    """eq. 18: inside base_output_stopped a cold loss leaves every base weight without gradient; outside it a warm
    loss reaches them."""
    from sidrec.dream.cpde import base_output_stopped

    torch.manual_seed(0)
    base = TIGER([4, 3, 5], 6, TIGERConfig(d_model=16, encoder_layers=1, decoder_layers=1, n_heads=2, head_dim=8,
                                           ffn_dim=32, dropout=0.0, user_buckets=0))
    pm = add_lora(base, 4, 8.0)
    model = pm.base_model.model
    for _, p in pm.named_parameters():
        p.requires_grad_(True)
    with torch.no_grad():  # non-zero B so the adapters pass gradient back
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    hist = torch.randint(0, 3, (8, 3, 3))
    hyps = torch.randint(0, 3, (8, 2, 3))
    with base_output_stopped(pm):
        sid_nll(model, hist, None, hyps, reduce="mean").mean().backward()
    q = model.decoder[0].attn.q_proj
    assert q.base_layer.weight.grad is None  # the adapted layer's frozen path got nothing
    assert q.lora_A["default"].weight.grad.abs().sum() > 0
    pm.zero_grad(set_to_none=True)
    sid_nll(model, hist, None, hyps, reduce="mean").mean().backward()  # a warm sample: full gradients
    assert q.base_layer.weight.grad is not None and q.base_layer.weight.grad.abs().sum() > 0


def test_gated_weight_update_waits_for_a_confident_best_hypothesis():
    w = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    alpha = w.clone()
    valid = torch.ones(2, 2, dtype=torch.bool)
    cnt = torch.ones(2, 2)
    sure = update_weights(w, alpha, torch.tensor([[0.5, 4.0], [0.5, 4.0]]), cnt, valid, keep=0.7, delta=2.0)
    unsure = update_weights(w, alpha, torch.tensor([[9.0, 12.5], [9.0, 12.5]]), cnt, valid, keep=0.7, delta=2.0)
    assert sure[0, 0] > 0.6 and abs(unsure[0, 0] - 0.5) < 0.01  # same NLL gap, low confidence: barely moves
    assert torch.allclose(sure.sum(1), torch.ones(2)) and torch.allclose(unsure.sum(1), torch.ones(2))
