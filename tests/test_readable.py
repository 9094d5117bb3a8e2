"""Output a person can read (issue 60): recommendations with titles and a named score, for the history too, in the
CLI and the API; --json keeps ids and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bad_inputs import cli

TINY = ["data.path=synthetic", "data.synthetic_users=200", "data.synthetic_items=60", "train.epochs=1",
        "sasrec.d_model=8", "sasrec.ffn_dim=16", "sasrec.n_layers=1", "train.progress=false", "train.batch_size=32",
        "fusion.lambdas=[0]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A quickstart-like run: SASRec on the embedded synthetic dataset (which has titles)."""
    root = tmp_path_factory.mktemp("readable")
    assert cli("train", *TINY, "--run-dir", str(root / "run")) == 0
    return root / "run"


def _titles(run: Path) -> dict[str, str]:
    from sidrec.data.synthetic import generate

    ds = generate(n_users=200, n_items=60)
    return dict(zip(ds.item_ids, ds.items["title"], strict=True))


def test_recommend_prints_titles_for_history_and_recommendations(run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    titles = _titles(run)
    from sidrec.data.synthetic import generate

    ds = generate(n_users=200, n_items=60)
    user = ds.user_ids[0]
    history = [ds.item_ids[int(i)] for i in ds.sequence(0)]
    assert cli("recommend", str(run), "--user", user, "-k", "3") == 0
    shown = capsys.readouterr().out
    assert f"history of user {user}" in shown
    assert all(titles[i] in shown for i in history[-10:]), shown
    assert "logit" in shown, shown  # SASRec alone: its scores are logits
    assert cli("recommend", str(run), "--user", user, "-k", "3", "--json") == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["score"] == "logit" and rec["field"] == "title"
    assert [h["item"] for h in rec["history"]] == history
    assert len(rec["recommendations"]) == 3
    for r in rec["recommendations"]:
        assert r["title"] == titles[r["item"]] and r["title"] in shown and isinstance(r["score"], float)
    # another field, named by the user; an unknown one is one line
    assert cli("recommend", str(run), "--history", ",".join(history[:2]), "-k", "2", "--show", "brand") == 0
    assert "brand" in capsys.readouterr().out
    assert cli("recommend", str(run), "--user", user, "--show", "colour") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "colour" in err[0] and "title" in err[0], err


def test_the_api_shows_titles_and_names_the_score(run):
    import io

    from rich.console import Console

    import sidrec

    rec = sidrec.load(run)
    titles = _titles(run)
    history = list(titles)[:3]
    assert rec.score_name == "logit"
    assert rec.item_text(history[0]) == {history[0]: titles[history[0]]}
    buf = io.StringIO()
    records = rec.show(history=history, k=4, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert [r["item"] for r in records] == [i for i, _ in rec.recommend(history=history, k=4)]
    assert all(titles[i] in text for i in history) and all(r["title"] in text for r in records)
    assert all(set(r) == {"rank", "item", "score", "title"} for r in records)
