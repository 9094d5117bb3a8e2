"""One protocol for every method (``eval.protocol``): under ``exclude`` no method and no fused ranking returns an
item of the user's history, and a beam's list is not shortened by it; under ``keep`` a history item is scored by
the same formula as any other item (no rule of the fusion's own); a repeat target stays masked under ``exclude``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidrec import fusion
from sidrec.config import load_config
from sidrec.data.protocol import EvalSet
from sidrec.eval.evaluator import NOT_FOUND, Evaluator
from sidrec.fusion import Fusion, _log_probs
from sidrec.pipeline import load_run, train
from test_api import METHODS, TINY

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {"content": [], "sasrec": [], "tiger": ["fusion.candidates=20"], "acerec": []}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory):
    """A tiny trained run of each method family (content ranker, ID model, beam SID model, holistic SID model),
    with its fusion forced on (a tiny run's validation may choose lambda 0, which would test nothing)."""
    method = request.param
    run = tmp_path_factory.mktemp("protocol") / method
    train(load_config(None, TINY + METHODS[method] + FAMILIES[method] + ["train.epochs=1", f"run_dir={run}"]))
    _, _, split, task = load_run(run)
    if task.trainable:
        task.fusion = Fusion(2.0, 3.0)
    return method, split, task


def _seen(items: np.ndarray, es: EvalSet) -> int:
    return sum(len(set(row[row >= 0].tolist()) & set(h.tolist())) for row, h in zip(items, es.histories, strict=True))


def test_exclude_removes_every_history_item_from_every_ranking(family_run):
    method, split, task = family_run
    es = split.test
    assert task.cfg.eval.protocol == "exclude"  # the default
    k = 10
    for f in ([Fusion(), task.fusion] if task.trainable else [task.fusion]):
        task.fusion = f
        items, _ = task.recommend(es, k)  # the run's protocol: exclude
        assert _seen(items, es) == 0, (method, f)
        # not shortened by the removal: every user gets k items (the beam masks seen items inside the search)
        assert (items >= 0).all(), (method, f)
        kept, _ = task.recommend(es, k, exclude_history=False)
        assert _seen(kept, es) > 0 or method == "content", (method, f)  # under keep history items do come back
    # the evaluator ranks with the same rule: no history item is above... nor is any target masked for free
    m = task.evaluate(task.model, "test")
    assert m["all"]["n_repeat"] == 0  # synthetic sequences never repeat an item


def test_keep_scores_a_history_item_by_the_fusion_formula(family_run):
    """Under keep the fused score of a history item is the model's log-probability + lambda * its similarity,
    like any other item's: no special case for the query items (dense models: every item; beam models: the
    candidates, the user's last item among them since it is its own nearest content neighbour)."""
    method, split, task = family_run
    es = split.test.subset(np.arange(8))
    hist = es.padded_histories(pad=-1)
    if not task.trainable:  # the content ranker: a history item scores its cosine (+ tie key) like any item
        n = task.index.n_items
        items, scores = task.recommend(es, n, exclude_history=False)
        expect = task.index.scores(hist)
        for b in range(len(es)):
            for i in es.histories[b]:
                pos = int(np.nonzero(items[b] == i)[0][0])
                assert scores[b, pos] == pytest.approx(float(expect[b, i]), abs=1e-6)
        return
    g = task.grounding
    f = task.fusion
    if task.scoring == "dense":
        n = g.index.n_items
        items, scores = task.recommend(es, n, exclude_history=False)
        with torch.no_grad():
            logp = _log_probs(task, task.model_scores(task.model, hist))
            expect = logp + g.weights(f).view(1, -1) * g.index.similarity(hist)
        for b in range(len(es)):
            for i in es.histories[b]:
                pos = int(np.nonzero(items[b] == i)[0][0])
                assert scores[b, pos] == pytest.approx(float(expect[b, i]), abs=1e-5)
        return
    bc = fusion.beam_candidates(task, task.model, es, content=True, exclude_history=False)
    last = hist[:, -1]
    hit = bc.items == last.view(-1, 1)
    assert hit.any(1).all()  # the last item is a candidate of its own user
    from sidrec.decoding.beam import sequence_log_probs

    with torch.no_grad():
        ll = sequence_log_probs(task._decoder(task.model), (task.codes_of(hist), task._users(torch.from_numpy(es.users))),
                                task.codes_of(last.view(-1, 1)))[:, 0]
    sim = g.index.similarity(hist).gather(1, last.view(-1, 1))[:, 0]
    lam = g.weights(f)[last]
    fused = bc.ll[hit] + lam * bc.sim[hit]
    assert torch.allclose(fused, ll.float() + lam * sim, atol=1e-4)


def test_a_repeat_target_stays_masked_under_exclude():
    """On data with repeat purchases no answer can be read from the mask: a target that is in the history is
    masked like every history item (a miss), for a model that scores it highest and for one that scores it last."""
    rng = np.random.default_rng(1)
    n, items = 40, 25
    hists = [rng.choice(items, 5, replace=False) for _ in range(n)]
    targets = np.array([h[2] if u % 2 else rng.choice(np.setdiff1d(np.arange(items), h)) for u, h in enumerate(hists)])
    es = EvalSet("test", np.arange(n), hists, targets)
    ev = Evaluator(es, np.ones(items, dtype=np.int64), ks=[10])
    oracle = torch.zeros(n, items)
    oracle[torch.arange(n), torch.from_numpy(targets)] = 10.0  # a model that knows the answer
    m, ranks = ev.evaluate_scores(lambda rows: oracle[rows].clone(), exclude_history=True)
    repeat = np.arange(n) % 2 == 1
    assert (ranks[repeat] == NOT_FOUND).all() and (ranks[~repeat] == 1).all()
    assert m["all"]["n_repeat"] == repeat.sum() and m["all"]["recall@10"] == pytest.approx(0.5)
    # a model that ranks history items last: the unmasked target could never be read from the mask either
    anti = torch.rand(n, items)
    _, r2 = ev.evaluate_scores(lambda rows: anti[rows].clone(), exclude_history=True)
    assert (r2[repeat] == NOT_FOUND).all()


def test_old_runs_name_the_renamed_setting():
    """A run trained before `eval.protocol` says `eval.exclude_history` in its config.yaml: it still loads."""
    assert load_config(None, ["eval.exclude_history=true"]).eval.protocol == "exclude"
    assert load_config(None, ["eval.exclude_history=false"]).eval.protocol == "keep"
    from sidrec.errors import SidrecError

    with pytest.raises(SidrecError, match="eval.protocol"):
        load_config(None, ["eval.protocol=maybe"])


def test_exclude_removes_history_items_older_than_the_models_window():
    """A user with more items than ``data.max_len`` has seen more than the model reads: `exclude` removes the whole
    history (TV-Rec and RecBole mask it all; 144 Beauty users have more than 50 items), in the evaluator and in
    `recommend`, and the leave-one-out split keeps it."""
    from sidrec.data.dataset import Dataset
    from sidrec.data.protocol import LeaveOneOut

    ds = Dataset.from_sequences("t", [list(range(8)), [3, 1, 2]], [f"i{i}" for i in range(10)], ["a", "b"])
    split = LeaveOneOut.from_dataset(ds, max_len=3)
    assert split.test.histories[0].tolist() == [4, 5, 6] and split.test.seen[0].tolist() == list(range(7))
    es = split.test.subset(np.array([0]))
    assert es.seen[0].tolist() == list(range(7))
    ev = Evaluator(es, np.ones(10, dtype=np.int64), ks=[10])
    scores = torch.tensor([[9.0, 8.0, 0, 0, 0, 0, 0, 5.0, 0, 0]])  # items 0 and 1: seen, older than the window
    _, ranks = ev.evaluate_scores(lambda rows: scores[rows].clone(), exclude_history=True)
    assert ranks.tolist() == [1]  # target 7 first once every seen item is gone
    _, kept = ev.evaluate_scores(lambda rows: scores[rows].clone(), exclude_history=False)
    assert kept.tolist() == [3]


def _metrics(run) -> dict:
    import json

    return json.loads((run / "metrics.json").read_text())


def test_the_other_protocols_selection_equals_a_run_of_its_own(tmp_path):
    """``eval.also_protocol``: one training, two selections. The second protocol's folder must hold exactly what a
    separate run of that protocol (same seed) gives: its early stopping, its fusion and its test numbers. It would
    differ if validating under the second protocol drew random numbers, or if its selection went on after its own
    patience was spent (the run trains on while the first protocol's patience lasts)."""
    # lr .02, patience 2: the exclude selection spends its patience at epoch 19 while keep trains on to epoch 20
    base = TINY + METHODS["sasrec"] + ["train.epochs=20", "train.patience=2", "train.lr=0.02", "fusion.lambdas=[0,1,4]"]
    both, alone = tmp_path / "both", tmp_path / "keep-alone"
    train(load_config(None, base + ["eval.protocol=exclude", "eval.also_protocol=keep", f"run_dir={both}"]))
    train(load_config(None, base + ["eval.protocol=keep", f"run_dir={alone}"]))
    sub, ref = _metrics(both / "keep"), _metrics(alone)
    assert sub["protocol"] == ref["protocol"] == "keep"
    assert sub["summary"]["best_epoch"] == ref["summary"]["best_epoch"]
    assert sub["fusion"]["lambda"] == ref["fusion"]["lambda"]
    for part in ("test", "valid"):
        assert sub[part]["all"] == ref[part]["all"]
    assert sub["model_only"]["test"]["all"] == ref["model_only"]["test"]["all"]
    # the run's own protocol is untouched by the second selection
    first = tmp_path / "exclude-alone"
    train(load_config(None, base + ["eval.protocol=exclude", f"run_dir={first}"]))
    assert _metrics(both)["test"]["all"] == _metrics(first)["test"]["all"]
    assert _metrics(both)["summary"]["best_epoch"] == _metrics(first)["summary"]["best_epoch"]
    _, _, _, task = load_run(both / "keep")  # a complete run folder of its own protocol
    assert task.cfg.eval.protocol == "keep"


@pytest.mark.parametrize("extra, word", [(["eval.also_protocol=exclude"], "own protocol"),
                                         (["eval.also_protocol=keep", "train.schedule=plateau"], "train.schedule"),
                                         (["eval.also_protocol=keep", "train.max_minutes=5"], "train.max_minutes")])
def test_also_protocol_refuses_what_would_make_the_two_trainings_differ(extra, word):
    from sidrec.errors import SidrecError

    with pytest.raises(SidrecError, match=word):
        load_config(None, TINY + METHODS["sasrec"] + ["eval.protocol=exclude"] + extra)
