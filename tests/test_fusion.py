"""Content grounding (sidrec.fusion): the content ranker, late fusion on dense and beam-search models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sidrec.config import ContentConfig, FusionConfig, load_config
from sidrec.data.protocol import EvalSet
from sidrec.decoding.beam import beam_search, sequence_log_probs
from sidrec.decoding.trie import SIDCodes, SIDTrie
from sidrec.errors import SidrecError
from sidrec.eval.evaluator import Evaluator, excludes
from sidrec.fusion import BeamCandidates, ContentIndex, Fusion, Grounding, fusion_from_record, rank_candidates
from sidrec.methods.tiger.model import TIGER, TIGERConfig
from sidrec.pipeline import load_run, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.path=synthetic", "data.synthetic_users=300", "data.synthetic_items=80", "data.max_len=10",
        "features.kind=attributes", "train.progress=false", "train.threads=1", "eval.ks=[5,10]"]


def _index(n: int = 12, d: int = 6, seed: int = 0, freq: np.ndarray | None = None, **kw) -> ContentIndex:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    return ContentIndex(v, np.ones(n, dtype=np.int64) if freq is None else freq, ContentConfig(**kw))


def test_content_ranker_has_no_history_rule_of_its_own():
    """Every item, a query item included, scores its cosine (+ tie key); only ``exclude`` (the protocol's one
    rule, applied by the caller) removes history items, and then all of them, not just the query items."""
    idx = _index(query_items=3)
    hist = torch.tensor([[-1, 4, 7, 2], [1, 3, 5, 9], [-1, -1, -1, 0]])
    s = idx.scores(hist)
    assert torch.isfinite(s).all()
    assert torch.allclose(s, idx.similarity(hist).double() + idx.tie)
    one = _index(query_items=1)
    assert (one.scores(hist).argmax(1) == torch.tensor([2, 9, 0])).all()  # the last item is its own best match
    items, _ = idx.search(hist, 12 - 4, exclude=hist)
    for row, h in zip(items, ([4, 7, 2], [1, 3, 5, 9], [0]), strict=True):
        assert not set(row.tolist()) & set(h) and (row >= 0).all()
    # the faiss search and the dense ranking agree (exact inner-product index), with and without the exclusion
    kept, _ = idx.search(hist, 5)
    assert (kept == s.topk(5, dim=1).indices.numpy()).all()
    masked = s.clone()
    masked[torch.arange(3).view(-1, 1).expand_as(hist)[hist >= 0], hist[hist >= 0]] = float("-inf")
    assert (items[:, :5] == masked.topk(5, dim=1).indices.numpy()).all()


def test_identical_text_ties_go_to_the_more_popular_item():
    v = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], dtype=np.float32)
    idx = ContentIndex(v, np.array([5, 1, 9, 2]), ContentConfig())
    s = idx.scores(torch.tensor([[0]]))
    assert s[0, 2] > s[0, 1]  # same vector, item 2 has 9 training interactions vs 1
    assert s[0, 1] > s[0, 3]  # the tie key never reorders distinct similarities
    h = torch.tensor([[0]])
    assert idx.search(h, 2, exclude=h)[0].tolist() == [[2, 1]]


def test_recency_weighted_query():
    idx = _index(query_items=2, decay=0.5)
    q = idx.query(torch.tensor([[3, 5]]))
    expect = idx.vectors[5] + 0.5 * idx.vectors[3]
    assert torch.allclose(q[0], expect / expect.norm(), atol=1e-6)


def test_fusion_weights_cold_items_separately():
    idx = _index(n=4)
    g = Grounding(idx, np.array([0, 9, 3, 20]), 5, FusionConfig())
    assert g.weights(Fusion(2.0, 7.0)).tolist() == [7.0, 2.0, 7.0, 2.0]


def test_an_item_outside_the_beam_reaches_the_top10_through_content():
    """A candidate the beam missed, with a slightly lower log-likelihood but the highest similarity, ranks
    first under fusion; with the fusion off the beam's own list comes back unchanged."""
    n_items = 30
    idx = _index(n=n_items)
    g = Grounding(idx, np.full(n_items, 10), 5, FusionConfig())
    beam_items = torch.arange(10).view(1, -1)
    beam_scores = -torch.arange(10, dtype=torch.float32).view(1, -1) - 1.0
    items = torch.cat([beam_items, torch.tensor([[25]])], 1)
    ll = torch.cat([beam_scores, torch.tensor([[-3.5]])], 1)
    sim = torch.zeros(1, 11)
    sim[0, 10] = 0.9
    bc = BeamCandidates(beam_items, beam_scores, items, ll, sim, items >= 10)
    it, sc, src = rank_candidates(g, bc, Fusion(4.0, 4.0), 10)
    assert it[0, 0] == 25 and bool(src[0, 0]) and src[0, 1:].sum() == 0
    it0, sc0, _ = rank_candidates(g, bc, Fusion(), 10)
    assert torch.equal(it0, beam_items) and torch.equal(sc0, beam_scores)


@pytest.mark.parametrize("arch", ["encdec", "decoder"])
def test_teacher_forced_scores_equal_the_beam_scores(arch):
    """Scoring a content candidate and finding it by beam search give the same log-probability."""
    torch.manual_seed(0)
    cfg = TIGERConfig(d_model=32, encoder_layers=1, decoder_layers=1, n_heads=2, head_dim=16, ffn_dim=64,
                      dropout=0.0, user_buckets=0, arch=arch)
    model = TIGER([8, 8, 4], 6, cfg).eval()
    codes = torch.unique(torch.stack([torch.randint(0, k, (40,)) for k in (8, 8, 4)], -1), dim=0)
    trie = SIDTrie.from_codes(SIDCodes.from_primary(codes, [8, 8, 4]))
    hist = torch.stack([torch.randint(0, k, (3, 4)) for k in (8, 8, 4)], -1)
    hist[1, :2] = -1
    res = beam_search(model, (hist, None), trie, beam=6)
    tf = sequence_log_probs(model, (hist, None), res.sids)
    ok = torch.isfinite(res.sid_scores)
    assert torch.allclose(tf[ok], res.sid_scores[ok], atol=1e-4)
    bad = res.sids.clone()
    bad[:, 0, 1] = -1
    assert torch.isinf(sequence_log_probs(model, (hist, None), bad)[:, 0]).all()


def test_fp32_readout_leaves_no_ties_that_bf16_logits_create():
    """bf16 logits (8-bit mantissa) tie many top-10 slots; the same hidden states read out in fp32 do not."""
    from sidrec.eval.evaluator import tied_share

    torch.manual_seed(0)
    h = torch.randn(64, 32)
    w = torch.randn(3000, 32) * 0.3
    bf16 = (h.bfloat16() @ w.bfloat16().t()).float()
    fp32 = h.float() @ w.float().t()
    tie_bf16 = tied_share(bf16.topk(11, dim=1).values).mean()
    tie_fp32 = tied_share(fp32.topk(11, dim=1).values).mean()
    assert tie_bf16 > 0.05 and tie_fp32 == 0.0


def test_sasrec_scores_are_read_out_in_fp32_under_bf16(tmp_path):
    from sidrec.methods.sasrec.task import SASRecTask

    cfg = load_config(None, TINY + ["method=sasrec", "train.bf16=true"])
    from sidrec.data.protocol import LeaveOneOut
    from sidrec.pipeline import dataset_from_config

    ds = dataset_from_config(cfg)
    task = SASRecTask(cfg, LeaveOneOut.from_dataset(ds, 10, 5))
    s = task.model_scores(task.model, task.split.valid.padded_histories(np.arange(8), pad=-1))
    assert s.dtype == torch.float32


def test_lambda_zero_gives_the_models_own_ranks_and_fusion_is_chosen_on_valid(tmp_path):
    """A run chooses its fusion on validation; Fusion() reproduces the model alone exactly, for a dense and a
    beam-search model; evaluate and recommend of the saved run use the chosen fusion."""
    for method, extra in (("sasrec", ["sasrec.d_model=16", "sasrec.ffn_dim=32", "sasrec.n_layers=1"]),
                          ("tiger", ["tokenizer.kind=rqkmeans", "tokenizer.levels=2", "tokenizer.codebook_sizes=[8]",
                                     "tokenizer.collision_codebook=64", "tiger.d_model=32", "tiger.encoder_layers=1",
                                     "tiger.decoder_layers=1", "tiger.n_heads=2", "tiger.head_dim=16",
                                     "tiger.ffn_dim=64", "tiger.user_buckets=0", "tiger.beam=10",
                                     "fusion.candidates=20"])):
        run = tmp_path / method
        cfg = load_config(None, TINY + [f"method={method}", "train.epochs=2", f"run_dir={run}",
                                        "fusion.lambdas=[0,2,50]"] + extra)
        res = train(cfg)
        f = json.loads((run / "fusion.json").read_text())
        assert {g["lambda"] for g in f["grid"]} >= {0.0, 2.0, 50.0}
        _, _, _, task = load_run(run)
        assert task.fusion == fusion_from_record(f)
        from sidrec import fusion

        alone, fused = fusion.evaluate(task, task.model, "test", [Fusion(), task.fusion])
        assert alone["all"] == res["model_only"]["test"]["all"] and fused["all"] == res["test"]["all"]
        # the model alone through fusion's path is the model's own path, to the last digit
        task.fusion = Fusion()
        exclude = excludes(task.cfg)  # the run's protocol (the default: exclude)
        assert exclude
        if method == "tiger":
            items, scores = task.decode(task.model, task.split.test, 10, exclude)
            own, _ = task.evaluator("test").evaluate_topk(items.numpy(), scores.numpy())
        else:
            es = task.split.test
            own, _ = task.evaluator("test").evaluate_scores(  # the task's scoring (bf16 autocast where native)
                lambda rows, t=task, e=es: t.model_scores(t.model, e.padded_histories(rows, pad=-1)),
                exclude_history=exclude)
        own["all"].pop("content@10", None)
        alone["all"].pop("content@10", None)
        assert own["all"] == alone["all"]


def test_grid_choice_prefers_the_smaller_lambda_on_ties():
    """Ties on validation keep the smaller lambda: a grid on which the content never helps keeps the model."""
    from sidrec import fusion

    class Flat:
        scoring = "dense"
        eval_batch_size = 64
        logits_unnormalised = False
        device = torch.device("cpu")

        def __init__(self):
            self.cfg = load_config(None, ["eval.ks=[10]"])
            n = 20
            self.grounding = Grounding(_index(n=n), np.full(n, 10), 5, FusionConfig(lambdas=[0, 1, 2]))
            rng = np.random.default_rng(0)
            hists = [rng.choice(n, 3, replace=False) for _ in range(40)]
            self.es = EvalSet("valid", np.arange(40), hists, rng.integers(0, n, 40))

        def eval_subset(self, split, max_users=0, shortest=False):
            return Evaluator(self.es, np.full(20, 10), [10])

        def model_scores(self, model, hist):  # a model that ranks the target first: fusion cannot improve it
            s = torch.zeros(len(hist), 20)
            s[torch.arange(len(hist)), torch.from_numpy(self.es.targets[: len(hist)])] = 100.0
            return s

    t = Flat()
    rec = fusion.choose(t, None)
    assert rec["lambda"] == 0.0 and rec["lambda_cold"] == 0.0


def test_content_method_writes_a_normal_run(tmp_path):
    run = tmp_path / "c"
    res = train(load_config(None, TINY + ["method=content", f"run_dir={run}"]))
    assert res["summary"]["epochs"] == 0 and res["test"]["all"]["tied@10"] <= 0.01
    assert (run / "config.yaml").exists() and (run / "report.md").exists() and not (run / "checkpoints").exists()
    _, ds, _, task = load_run(run)
    assert task.evaluate(task.model, "test")["all"] == res["test"]["all"]
    from sidrec.pipeline import recommend

    recs = recommend(run, ds.user_ids[0], k=5)[0]
    last = ds.item_ids[ds.sequence(0)[-1]]
    assert len(recs) == 5 and last not in [i for i, _ in recs]


def test_missing_or_mis_sized_feature_file_is_one_clear_error(tmp_path):
    for arr, needle in ((None, "embeddings file not found"), (np.zeros((3, 4), np.float32), "has 3 rows")):
        path = tmp_path / "v.npy"
        if arr is not None:
            np.save(path, arr)
        cfg = load_config(None, TINY + ["method=content", "features.kind=npy", f"features.npy_path={path}",
                                        f"run_dir={tmp_path / 'r'}"])
        with pytest.raises(SidrecError, match=needle):
            train(cfg)
        assert not (tmp_path / "r").exists()
    with pytest.raises(SidrecError, match="do not fit a catalogue"):
        ContentIndex(np.zeros((3, 4), np.float32), np.ones(5), ContentConfig())


def test_fuse_chooses_again_with_another_query_and_keeps_it(tmp_path):
    """`sidrec fuse RUN content.query_items=2` re-chooses lambda with that query; fusion.json keeps the query,
    so evaluate / recommend rank with it although config.yaml says otherwise; other settings are refused."""
    from sidrec.pipeline import fuse

    run = tmp_path / "s"
    train(load_config(None, TINY + ["method=sasrec", "sasrec.d_model=16", "sasrec.ffn_dim=32", "sasrec.n_layers=1",
                                    "train.epochs=1", f"run_dir={run}", "fusion.lambdas=[0,2]"]))
    out = fuse(run, ["content.query_items=2", "content.decay=0.3", "fusion.lambdas=[0,4]", "fusion.extend=0"])
    rec = json.loads((run / "fusion.json").read_text())
    assert rec["content"] == {"query_items": 2, "decay": 0.3} and {g["lambda"] for g in rec["grid"]} <= {0.0, 4.0}
    _, _, _, task = load_run(run)
    assert task.cfg.content.query_items == 2 and task.grounding.index.cfg.query_items == 2
    assert task.evaluate(task.model, "test")["all"] == out["test"]["all"]
    with pytest.raises(SidrecError, match="reads only fusion"):
        fuse(run, ["train.lr=1"])


def test_sasrec_content_embeddings_place_a_never_seen_item_by_its_content(tmp_path):
    """item_content=add: an item never trained scores like its content twin; the run reloads (the fixed
    vectors are rebuilt from the features cache, not stored) to the same metrics. init: the table starts
    with the content's neighbourhoods."""
    from sidrec.config import SASRecConfig
    from sidrec.methods.sasrec.model import SASRec, content_pca

    c = torch.randn(30, 12, generator=torch.Generator().manual_seed(0))
    c[7] = c[3]  # item 7 has item 3's text
    m = SASRec(30, 8, SASRecConfig(d_model=16, ffn_dim=32, item_content="add"), c).eval()
    with torch.no_grad():
        m.item_emb.weight[8] = m.item_emb.weight[4]  # a cold item's id part is its initialisation: equal here
        s = m.score(torch.tensor([[1, 2, 5]]))
    assert torch.isclose(s[0, 7], s[0, 3])
    z = content_pca(torch.nn.functional.normalize(c, dim=1), 16)
    assert z.shape == (30, 16) and torch.allclose(z[7], z[3], atol=1e-5)
    assert torch.allclose(z[:, :12].std(0), torch.full((12,), 16**-0.5), atol=1e-4) and (z[:, 12:] == 0).all()
    run = tmp_path / "add"
    cfg = load_config(None, TINY + ["method=sasrec", "train.epochs=1", f"run_dir={run}", "fusion.lambdas=[0]",
                                    "sasrec.d_model=16", "sasrec.ffn_dim=32", "sasrec.item_content=add"])
    res = train(cfg)
    _, _, _, task = load_run(run)
    assert task.evaluate(task.model, "test")["all"] == res["test"]["all"]


def test_a_best_lambda_at_the_grid_edge_extends_the_grid():
    """The content ranks every target first and the model ranks it below a rival by a margin that lambda 2 cannot
    overcome: the grid [0, 1, 2] goes on (4, 8, ...) until the best lambda is inside it, and says where it ended."""
    from sidrec import fusion

    n, users = 20, 30
    idx = _index(n=n, d=8)
    rng = np.random.default_rng(0)
    hists = [rng.choice(n, 3, replace=False) for _ in range(users)]
    hist = torch.from_numpy(np.stack(hists))
    sim = idx.similarity(hist)
    sim[torch.arange(users).view(-1, 1).expand(-1, 3), hist] = -2.0  # history items: never the best match
    targets = sim.argmax(1).numpy()  # the content's first item is every user's target
    top2 = sim.topk(2, dim=1).values
    # the model puts the target a margin below every rival: lambda = c_u is what user u needs (c_u in [.5, 6])
    margin = (top2[:, 0] - top2[:, 1]) * torch.linspace(0.5, 6.0, users)

    class Edge:
        scoring = "dense"
        eval_batch_size = 64
        logits_unnormalised = False
        device = torch.device("cpu")

        def __init__(self, lambdas, extend):
            self.cfg = load_config(None, ["eval.ks=[10]"])
            self.grounding = Grounding(idx, np.full(n, 10), 5, FusionConfig(lambdas=lambdas, extend=extend, cold=False))
            self.es = EvalSet("valid", np.arange(users), hists, targets)

        def eval_subset(self, split, max_users=0, shortest=False):
            return Evaluator(self.es, np.full(n, 10), [10])

        def model_scores(self, model, hist):  # every other item a margin above the target, more for later users
            s = margin[: len(hist)].view(-1, 1).repeat(1, n)
            s[torch.arange(len(hist)), torch.from_numpy(targets[: len(hist)])] = 0.0
            return s

    rec = fusion.choose(Edge([0, 1, 2], 4), None)
    lams = [g["lambda"] for g in rec["grid"]]
    assert lams == [0, 1, 2, 4, 8, 16] and rec["lambda"] == 8 and not rec["at_grid_edge"], rec["grid"]
    assert rec["valid"]["all"]["ndcg@10"] > rec["valid_model"]["all"]["ndcg@10"]
    stuck = fusion.choose(Edge([0, 1, 2], 0), None)  # no extension allowed: the record says it is at the edge
    assert stuck["lambda"] == 2.0 and stuck["at_grid_edge"] and stuck["grid_max"] == 2.0


def test_grouped_fusion_is_the_mixture_of_a_warm_and_a_cold_ranking():
    """Grouped: the fused scores are, up to a per-user constant, log((1 - g) p(i | warm) + g p(i | cold)) with
    p(. | warm) the lambda-fused model within the warm items, p(. | cold) ``log p + lambda_cold * sim`` within the
    cold ones and logit g = the lambda-fused model's log-odds of a cold item + cold_lift; lambda_cold = lambda with
    no lift is the additive fusion again; rows with no rankable cold item, and history items at -inf, are kept."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(5, 12, generator=gen).log_softmax(1)
    logp[0, :3] = float("-inf")  # a user's history under `exclude`
    sim = torch.rand(5, 12, generator=gen)
    cold = torch.tensor([i % 3 == 0 for i in range(12)])
    f = Fusion(2.0, 7.0, 0.8, True)
    fused = Grounding.fuse(logp, sim, cold.view(1, -1), f)
    ok = torch.isfinite(logp)
    w, c = logp + 2.0 * sim, logp + 7.0 * sim
    in_w, in_c = (~cold & ok), (cold & ok)
    pw = w.masked_fill(~in_w, float("-inf")).log_softmax(1)
    pc = c.masked_fill(~in_c, float("-inf")).log_softmax(1)
    logit = (w.masked_fill(~in_c, float("-inf")).logsumexp(1) - w.masked_fill(~in_w, float("-inf")).logsumexp(1)) + 0.8
    g = torch.sigmoid(logit).view(-1, 1)
    mix = torch.where(cold, g.log() + pc, (1 - g).log() + pw)
    diff = (fused - mix)[ok].view(-1)
    rows = torch.arange(5).view(-1, 1).expand(5, 12)[ok]
    for r in range(5):  # one constant per row
        assert torch.allclose(diff[rows == r], diff[rows == r][0].expand(int((rows == r).sum())), atol=1e-4)
    assert torch.isinf(fused[0, :3]).all()
    same = Grounding.fuse(logp, sim, cold.view(1, -1), Fusion(3.0, 3.0, 0.0, True))
    assert torch.allclose(same[ok], (logp + 3.0 * sim)[ok], atol=1e-5)
    warm_only = torch.zeros(1, 12, dtype=torch.bool)
    assert torch.equal(Grounding.fuse(logp, sim, warm_only, f), logp + 2.0 * sim)
    assert Fusion(0.0, 0.0, 0.0, True).off and not Fusion(0.0, 0.0, 0.5, True).off



def test_the_cold_frequency_term_reorders_the_cold_items_only():
    """``cold_freq`` adds ``cold_freq * log(1 + training interactions)`` to the cold items' scores within their
    group and leaves the group's mass and every warm score as they were; 0 is the grouped fusion without it; a
    record without the key (before it existed) reads back as 0, and the record round-trips."""
    gen = torch.Generator().manual_seed(1)
    logp = torch.randn(4, 12, generator=gen).log_softmax(1)
    logp[1, :2] = float("-inf")
    sim = torch.rand(4, 12, generator=gen)
    cold = torch.tensor([i % 3 == 0 for i in range(12)]).view(1, -1)
    log_freq = torch.log1p(torch.arange(12, dtype=torch.float32) % 6).view(1, -1)
    base, with_freq = Fusion(2.0, 7.0, 0.8, True), Fusion(2.0, 7.0, 0.8, True, -2.0)
    a = Grounding.fuse(logp, sim, cold, base, log_freq)
    b = Grounding.fuse(logp, sim, cold, with_freq, log_freq)
    ok = torch.isfinite(logp)
    warm = ~cold.expand_as(logp) & ok
    assert torch.equal(a[warm], b[warm]) and torch.isinf(b[~ok]).all()
    in_c = cold.expand_as(logp) & ok
    lse = [x.masked_fill(~in_c, float("-inf")).logsumexp(1) for x in (a, b)]
    assert torch.allclose(lse[0], lse[1], atol=1e-5)  # the cold group's mass is unchanged
    d = (b - a - (-2.0) * log_freq).masked_fill(~in_c, 0.0)
    for r in range(4):  # one constant per row among the cold items
        assert torch.allclose(d[r][in_c[r]], d[r][in_c[r]][0].expand(int(in_c[r].sum())), atol=1e-4)
    assert torch.equal(Grounding.fuse(logp, sim, cold, Fusion(2.0, 7.0, 0.8, True, 0.0)), a)
    with pytest.raises(ValueError):
        Grounding.fuse(logp, sim, cold, with_freq)
    assert fusion_from_record(with_freq.record()) == with_freq
    assert fusion_from_record({"lambda": 2, "lambda_cold": 7, "cold_lift": 0.8, "grouped": True}).cold_freq == 0
    assert not Fusion(0.0, 0.0, 0.0, True, -1.0).off

class _Random:
    """A dense task with fixed random log-probabilities, half the items cold; valid and test share the users and
    histories and differ only in their targets (``test_targets`` replaces the test split's)."""

    scoring = "dense"
    eval_batch_size = 32
    logits_unnormalised = True
    device = torch.device("cpu")
    n, users = 30, 80

    def __init__(self, run, test_targets=None):
        self.cfg = load_config(None, ["eval.ks=[10]", "fusion.lambdas=[0,1,4]", "fusion.cold_lifts=[0,1,2]"])
        rng = np.random.default_rng(0)
        self.freq = np.where(np.arange(self.n) % 2 == 0, 2, 20)
        self.grounding = Grounding(_index(n=self.n, d=6, freq=self.freq), self.freq, 5, self.cfg.fusion)
        hists = [rng.choice(self.n, 4, replace=False) for _ in range(self.users)]
        self.sets = {"valid": EvalSet("valid", np.arange(self.users), hists, rng.integers(0, self.n, self.users)),
                     "test": EvalSet("test", np.arange(self.users), hists,
                                     rng.integers(0, self.n, self.users) if test_targets is None else test_targets)}
        self.logits = torch.from_numpy(rng.standard_normal((self.users, self.n)).astype(np.float32)) * 3
        self.model = torch.nn.Identity()
        self.fusion = Fusion()
        self._row = {}

    def eval_subset(self, split, max_users=0, shortest=False):
        self._split = split
        return Evaluator(self.sets[split], self.freq, [10])

    def model_scores(self, model, hist):  # rows are found by their history (the users' histories are distinct)
        es = self.sets["valid"]
        keys = {tuple(h.tolist()): i for i, h in enumerate(es.padded_histories(pad=-1))}
        return self.logits[[keys[tuple(h.tolist())] for h in hist]]


def test_the_fusion_is_fitted_on_validation_users_only(tmp_path):
    """The whole choice (lambda, lambda_cold, the cold lift, the content floor) reads validation users only:
    other test targets leave fusion.json as it was, and change the test numbers."""
    from sidrec import fusion

    recs, tests = [], []
    for seed in (1, 2):
        t = _Random(tmp_path, np.random.default_rng(seed).integers(0, _Random.n, _Random.users))
        run = tmp_path / f"r{seed}"
        run.mkdir()
        out = fusion.final_evaluation(t, run, {})
        recs.append(json.loads((run / "fusion.json").read_text()))
        tests.append(out["test"]["all"])
        assert {(g["lambda"], g["lambda_cold"], g["cold_lift"], g["grouped"]) for g in recs[-1]["grid"]} >= {
            (1.0, 1.0, 0.0, False), (4.0, 4.0, 0.0, False)}
    assert recs[0] == recs[1] and tests[0] != tests[1]
    assert recs[0]["cold_floor"]["content_valid_cold"] >= 0


def test_the_choice_takes_a_negative_cold_freq_when_validation_buys_rarely_trained_cold_items():
    """A model that ranks cold items by their training interactions while the users buy the least trained cold
    item near their query: the cold_freq grid (chosen on validation) takes a negative weight, and it lifts the
    cold targets over the choice without it."""
    from sidrec import fusion

    t = _Random(None)
    t.freq = np.where(np.arange(t.n) % 2 == 0, np.arange(t.n) % 6, 20)  # cold items with 0..5 interactions
    t.grounding = Grounding(_index(n=t.n, d=6, freq=t.freq), t.freq, 5, t.cfg.fusion)
    cold = torch.from_numpy(t.freq <= 5)
    t.logits = t.logits + 3.0 * torch.from_numpy(np.log1p(t.freq)).float() * cold  # the model's frequency bias
    es = t.sets["valid"]
    sim = t.grounding.index.similarity(es.padded_histories(pad=-1))
    seen = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, es.padded_seen(pad=-1), True)
    rare = cold & torch.from_numpy(t.freq <= 1)
    by_content = sim.masked_fill(seen | ~rare, -9).argmax(1)
    by_model = t.logits.masked_fill(seen | cold, -99).argmax(1)
    targets = torch.where(torch.arange(t.users) % 2 == 0, by_content, by_model).numpy()
    t.sets = {k: EvalSet(k, es.users, es.histories, targets) for k in ("valid", "test")}
    t.cfg.fusion.lambdas, t.cfg.fusion.cold_lifts = [0, 1, 4], [0, 1, 2]
    t.cfg.fusion.cold_freqs = [-4, -2, 0]
    rec = fusion.choose(t, t.model)
    assert rec["grouped"] and rec["cold_freq"] < 0, rec
    t.cfg.fusion.cold_freqs = [0]
    without = fusion.choose(t, t.model)
    assert without["cold_freq"] == 0
    assert rec["valid"]["cold"]["ndcg@10"] > without["valid"]["cold"]["ndcg@10"]


def test_the_floor_keeps_the_cold_targets_and_lambda_zero_is_the_model():
    """A model biased against cold items: on the all-user metric alone fusion leaves the cold targets lower; with
    the floor the chosen setting ranks the cold targets at least as well as the content ranker on validation; with
    every weight 0 the fused path returns the model's own ranks."""
    from sidrec import fusion

    t = _Random(None)
    cold = torch.from_numpy(t.freq <= 5)
    t.logits = t.logits - 4.0 * cold.float()  # popularity bias against cold items
    es = t.sets["valid"]
    sim = t.grounding.index.similarity(es.padded_histories(pad=-1))
    seen = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, es.padded_seen(pad=-1), True)
    by_content = sim.masked_fill(seen | ~cold, -9).argmax(1)  # even users buy the cold item the content points to
    by_model = t.logits.masked_fill(seen | cold, -99).argmax(1)  # odd users the model's first warm item
    targets = torch.where(torch.arange(t.users) % 2 == 0, by_content, by_model).numpy()
    t.sets = {k: EvalSet(k, es.users, es.histories, targets) for k in ("valid", "test")}
    t.cfg.fusion.cold_lifts, t.cfg.fusion.lambdas = [0, 1, 2, 4, 8], [0, 1, 4, 50]
    rec = fusion.choose(t, t.model)
    f = rec["cold_floor"]
    assert rec["grouped"] and rec["valid"]["cold"]["ndcg@10"] >= f["content_valid_cold"] > 0 and f["met"]
    t.cfg.fusion.cold_floor, t.cfg.fusion.cold_objective = False, "all"
    plain = fusion.choose(t, t.model)
    assert plain["valid"]["cold"]["ndcg@10"] <= rec["valid"]["cold"]["ndcg@10"]
    alone, zero = fusion.evaluate(t, t.model, "test", [Fusion(), Fusion(0.0, 0.0, 0.0, True)])
    assert alone == zero
    own = t.eval_subset("test").evaluate_scores(
        lambda rows: t.model_scores(None, t.sets["test"].padded_histories(rows, pad=-1)), exclude_history=True)[0]
    assert own["all"] == alone["all"]


def test_the_cold_passes_keep_the_whole_list_within_cold_max_loss():
    """One user in five buys the cold item the content points to, the rest the model's first warm item: the floor
    alone buys those cold targets with a large all-user loss; with ``fusion.cold_max_loss`` the choice keeps the
    all-user validation metric within that fraction of the model alone's (and says the floor was missed)."""
    from sidrec import fusion

    def task(max_loss: float) -> _Random:
        t = _Random(None)
        cold = torch.from_numpy(t.freq <= 5)
        t.logits = t.logits - 4.0 * cold.float()
        es = t.sets["valid"]
        sim = t.grounding.index.similarity(es.padded_histories(pad=-1))
        seen = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, es.padded_seen(pad=-1), True)
        by_content = sim.masked_fill(seen | ~cold, -9).argmax(1)
        by_model = t.logits.masked_fill(seen | cold, -99).argmax(1)
        targets = torch.where(torch.arange(t.users) % 5 == 0, by_content, by_model).numpy()
        t.sets = {k: EvalSet(k, es.users, es.histories, targets) for k in ("valid", "test")}
        t.cfg.fusion.cold_lifts, t.cfg.fusion.lambdas = [0, 1, 2, 4, 8], [0, 1, 4, 50]
        t.cfg.fusion.cold_max_loss = max_loss
        return t

    t = task(1.0)
    free = fusion.choose(t, t.model)
    t = task(0.05)
    kept = fusion.choose(t, t.model)
    alone = kept["valid_model"]["all"]["ndcg@10"]
    assert free["valid"]["all"]["ndcg@10"] < 0.9 * alone  # the guard has something to prevent here
    assert kept["valid"]["all"]["ndcg@10"] >= 0.95 * alone
    assert kept["valid"]["cold"]["ndcg@10"] > kept["valid_model"]["cold"]["ndcg@10"]  # still lifts the cold targets
    assert kept["cold_floor"]["max_loss"] == 0.05 and not kept["cold_floor"]["met"]
