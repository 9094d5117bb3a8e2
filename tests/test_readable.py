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


# ---------------------------------------------------------------------------------------------- output that fits
@pytest.fixture
def terminal80(monkeypatch):
    """The command line's console as an 80-column terminal (rich squeezes tables to fit one)."""
    from rich.console import Console

    import sidrec.cli as C

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(C, "out", Console(force_terminal=True, color_system=None, width=80))


def _cells(m: dict, ks: list[int]) -> list[str]:
    """Every metric cell a table of ``m`` (subset -> metrics) shows."""
    from sidrec.cli import _metric

    return [_metric(r[f"{x}@{k}"]) for sub, r in m.items() if sub in ("all", "warm", "cold")
            for k in ks for x in ("recall", "ndcg") if f"{x}@{k}" in r]


def _fits(text: str, cells: list[str]) -> None:
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines), max(lines, key=len)
    assert "…" not in text, text
    words = set(text.split())
    assert all(c in words for c in cells), [c for c in cells if c not in words]


def test_metric_tables_fit_80_columns(tmp_path, monkeypatch, capsys, terminal80):
    import numpy as np

    def encode(texts, model="", batch_size=0, progress=True):
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr("sidrec.features.core.encode_texts", encode)
    run = tmp_path / "run"
    # fused: three models in the final table (the run's ranking, the model alone, popularity)
    assert cli("train", *TINY[:-1], "fusion.lambdas=[0,1]", "--run-dir", str(run)) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    _fits(text, _cells(m["test"], [10, 50]) + _cells(m["popularity_test"], [10, 50]))
    assert cli("evaluate", str(run), "--split", "both") == 0
    text = capsys.readouterr().out
    again = json.loads((run / "metrics.json").read_text())
    _fits(text, _cells(again["valid"], [5, 10, 20, 50]) + _cells(again["test"], [5, 10, 20, 50]))


def test_report_is_markdown_with_a_training_curve(run):
    from markdown_it import MarkdownIt

    from sidrec.config import load_config
    from sidrec.pipeline import render_report

    text = (run / "report.md").read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables = [t for t in tokens if t.type == "table_open"]
    rows = [t for t in tokens if t.type == "tr_open"]
    assert len(tables) == 1 and len(rows) == text.count("\n| "), text
    images = [c.attrs["src"] for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "image"]
    assert "training_curve.png" in images and all((run / src).is_file() for src in images), images
    assert (run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a tie warning goes after the table, which stays one table with all its rows
    m = json.loads((run / "metrics.json").read_text())
    m["test"]["all"]["tied@10"] = 0.5
    tied = render_report(load_config(None, TINY), m, ["training_curve.png"])
    tokens = MarkdownIt("commonmark").enable("table").parse(tied)
    assert sum(t.type == "table_open" for t in tokens) == 1
    assert sum(t.type == "tr_open" for t in tokens) == len(rows)
    assert tied.index("Warning: test / all") > tied.index("| test (popularity) |")


# ---------------------------------------------------------------------------------------------- progress notes
def test_long_steps_say_so_on_stderr_when_it_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    import numpy as np

    monkeypatch.setattr("sidrec.progress.NOTE_MIN_ROWS", 0)  # the tiny data stands for a large one

    def encode(texts, model="", batch_size=0, progress=True):
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr("sidrec.features.core.encode_texts", encode)
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli("train", *TINY[:-1], "fusion.lambdas=[0,1]", "--run-dir", str(run)) == 0
    err = capsys.readouterr().err.splitlines()
    for needle in ("embedding 60 item texts", "choosing the content fusion on valid (200 users",
                   "evaluating test (200 users"):
        assert sum(needle in ln for ln in err) == 1, (needle, err)
    assert cli("evaluate", str(run), "--split", "both") == 0
    err = capsys.readouterr().err
    assert "sidrec: evaluating valid (200 users" in err and "sidrec: evaluating test (200 users" in err, err
    assert cli("tokenize", "data.path=synthetic", "data.synthetic_users=200", "data.synthetic_items=60",
               "tokenizer.levels=2", "tokenizer.codebook_sizes=[4,4]", "--run-dir", str(tmp_path / "tok")) == 0
    assert "sidrec: fitting the rqkmeans tokenizer on 60 items" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- help text
@pytest.mark.parametrize("command", [["train"], ["evaluate"], ["recommend"], ["data", "fetch"], ["data", "stats"],
                                     ["tokenize"], ["fuse"]])
def test_help_has_no_template_artefacts(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert cli(*command, "--help") == 0
    text = capsys.readouterr().out
    for artefact in ("<bool>", "<str>", "<path>", "<int>", "{run}", "{name}", "{input}"):
        assert artefact not in text, (artefact, text)
    for line in text.splitlines():
        if "--json" in line:
            assert len(line.split("--json", 1)[1].strip(" │")) > 10, line  # the flag says what it does
    if command == ["train"]:
        assert "train.max_minutes" in text and "train.device" in text
