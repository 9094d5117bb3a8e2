"""docs/own-dataset.md followed for each of the five formats, and the promises it makes (issue #20):
text from whatever field a reader provides, one-line refusal when items have no text, original ids in and
out of ``sidrec recommend``.

Each dataset is tiny (8 users, 10 items) and written by the test with ids unlike 0..n-1, so a mix-up of
internal indices and original ids cannot pass. The sentence encoder is replaced by a stub that records the
texts (loading MiniLM is tested in test_features.py).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from test_bad_inputs import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-dataset.md"
TINY = ["train.epochs=1", "sasrec.d_model=8", "sasrec.ffn_dim=16", "sasrec.n_layers=1", "train.progress=false",
        "train.batch_size=16"]
N_USERS, N_ITEMS = 8, 10




def doc_configs() -> dict[str, str]:
    blocks = re.findall(r"```yaml\n# own-dataset: (\w+)\n(.*?)```", DOC.read_text(), re.S)
    return {fmt: body for fmt, body in blocks}


def _sequences(user_ids: list[str], item_ids: list[str]) -> dict[str, list[str]]:
    """Deterministic histories of 4-6 distinct items per user."""
    rng = np.random.default_rng(0)
    return {u: [item_ids[i] for i in rng.permutation(len(item_ids))[: 4 + k % 3]] for k, u in enumerate(user_ids)}


def _text(item: str) -> str:
    return f"gadget {item} with special words"


def write_dataset(fmt: str, folder: Path, with_text: bool = True) -> tuple[dict[str, list[str]], str]:
    """Write a dataset of format ``fmt``; returns the histories by original id and the non-default text field."""
    folder.mkdir(parents=True)
    if fmt == "s3rec":
        users, items = [str(101 + k) for k in range(N_USERS)], [str(501 + 7 * k) for k in range(N_ITEMS)]
        seqs = _sequences(users, items)
        (folder / "sequences.txt").write_text("".join(f"{u} {' '.join(s)}\n" for u, s in seqs.items()))
        recs = [{"item_id": i, "keywords": _text(i) if with_text or k == 0 else ""} for k, i in enumerate(items)]
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return seqs, "keywords"
    if fmt == "lcrec":
        users, items = [str(k) for k in range(3, 3 + N_USERS)], [str(k) for k in range(20, 20 + N_ITEMS)]
        seqs = _sequences(users, items)
        (folder / "Shop.inter.json").write_text(json.dumps({u: [int(i) for i in s] for u, s in seqs.items()}))
        (folder / "Shop.item.json").write_text(json.dumps({i: {"description": _text(i)} for i in items}))
        return seqs, "description"
    if fmt == "recbole":
        users, items = [f"user-{k}" for k in range(N_USERS)], [f"sku-{k:03d}" for k in range(N_ITEMS)]
        seqs = _sequences(users, items)
        rows = [f"{u}\t{i}\t{t}\n" for u, s in seqs.items() for t, i in enumerate(s)]
        (folder / "Shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(rows))
        (folder / "Shop.item").write_text("item_id:token\ttext:token_seq\n" + "".join(f"{i}\t{_text(i)}\n" for i in items))
        return seqs, "text"
    if fmt == "amazon":
        users, items = [f"A{k}XYZ" for k in range(N_USERS)], [f"B00{k}QQ" for k in range(N_ITEMS)]
        seqs = _sequences(users, items)
        reviews = [json.dumps({"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": 1000 + t})
                   for u, s in seqs.items() for t, i in enumerate(s)]
        meta = [json.dumps({"asin": i, "description": [_text(i)]}) for i in items]
        for name, lines in (("Shop_5.json.gz", reviews), ("meta_Shop.json.gz", meta)):
            with gzip.open(folder / name, "wt") as fh:
                fh.write("".join(line + "\n" for line in lines))
        return seqs, "description"
    assert fmt == "tabular"
    users, items = [f"u{k:03d}" for k in range(N_USERS)], [f"0{k}7" for k in range(N_ITEMS)]
    seqs = _sequences(users, items)
    rows = [f"{u},{i},{t}\n" for u, s in seqs.items() for t, i in enumerate(s)]
    (folder / "interactions.csv").write_text("user,item,timestamp\n" + "".join(rows))
    (folder / "items.csv").write_text("item,keywords\n" + "".join(
        f"{i},{_text(i) if with_text or k == 0 else ''}\n" for k, i in enumerate(items)))
    return seqs, "keywords"


FORMATS = ["s3rec", "lcrec", "recbole", "amazon", "tabular"]


@pytest.fixture
def stub_encoder(monkeypatch):
    seen: list[str] = []

    def encode(texts, model="", batch_size=0, progress=True):
        seen.extend(texts)
        rng = np.random.default_rng(len(texts))
        v = rng.standard_normal((len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr("sidrec.features.core.encode_texts", encode)
    return seen


def test_the_doc_has_a_config_for_every_format():
    assert sorted(doc_configs()) == sorted(FORMATS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_own_dataset_doc_end_to_end(fmt, tmp_path, monkeypatch, capsys, stub_encoder):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "cache"))  # the encoder must see this dataset's texts
    proj = tmp_path / "project"
    seqs, field = write_dataset(fmt, proj / "my_data")
    (proj / "my.yaml").write_text(doc_configs()[fmt])
    # paths in the config are relative to the config file, not to the working directory (tmp_path)
    assert cli("data", "stats", str(proj / "my_data"), "--format", fmt, "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == N_USERS and stats["field_coverage"][field] == 1.0
    # text from the reader's own field, not placeholders
    assert cli("embed", "-c", str(proj / "my.yaml"), "--out", str(tmp_path / "e.npy")) == 0, capsys.readouterr().err
    assert len(stub_encoder) == N_ITEMS and all("special words" in t for t in stub_encoder), stub_encoder
    shown = capsys.readouterr().out  # what the encoder was given: the template, a sample, the cut count
    assert "template:" in shown and "sample (" in shown and "tokens" in shown, shown
    assert cli("train", "-c", str(proj / "my.yaml"), *TINY, "--run-dir", "runs/mine") == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "mine" / "metrics.json").exists()
    # original ids in and out; the user's own items are left out by default
    from sidrec.pipeline import recommend

    all_items = {i for s in seqs.values() for i in s}
    for user, hist in list(seqs.items())[:3]:
        recs = recommend(tmp_path / "runs" / "mine", user, k=3)[0]
        assert len(recs) == 3 and {i for i, _ in recs} <= all_items - set(hist), (user, recs, hist)
        with_hist = recommend(tmp_path / "runs" / "mine", user, k=N_ITEMS, exclude_history=False)[0]
        assert {i for i, _ in with_hist} == all_items
    capsys.readouterr()
    user = next(iter(seqs))
    assert cli("recommend", "runs/mine", "--user", user, "-k", "3") == 0
    out = capsys.readouterr().out
    assert sum(i in out for i in all_items - set(seqs[user])) == 3


@pytest.mark.parametrize("fmt", ["s3rec", "tabular"])
def test_embed_refuses_items_without_text(fmt, tmp_path, monkeypatch, capsys, stub_encoder):
    monkeypatch.chdir(tmp_path)
    write_dataset(fmt, tmp_path / "my_data", with_text=False)
    assert cli("embed", f"data.path={tmp_path / 'my_data'}", f"data.format={fmt}") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "9 of 10 items" in err[0] and "keywords 10%" in err[0], err
    assert "features.template" in err[0] and not stub_encoder
    assert not (tmp_path / ".cache").exists()


# ---------------------------------------------------------------------------------------------- config and CLI
def test_config_paths_resolve_relative_to_the_file(tmp_path, monkeypatch, capsys):
    from sidrec.config import load_config
    from sidrec.errors import SidrecError
    from sidrec.pipeline import dataset_from_config

    write_dataset("tabular", tmp_path / "proj" / "my_data")
    (tmp_path / "proj" / "conf").mkdir()
    (tmp_path / "proj" / "conf" / "base.yaml").write_text("data:\n  path: ../my_data\n  format: tabular\n")
    (tmp_path / "proj" / "conf" / "my.yaml").write_text("base: base.yaml\nmethod: sasrec\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config([tmp_path / "proj" / "conf" / "my.yaml"])
    assert Path(cfg.data.path) == (tmp_path / "proj" / "my_data").resolve()
    assert dataset_from_config(cfg).n_users == N_USERS
    # on the command line: relative to the working directory
    assert load_config(None, ["data.path=proj/my_data"]).data.path == "proj/my_data"
    (tmp_path / "proj" / "conf" / "bad.yaml").write_text("data:\n  path: my_data\n")
    with pytest.raises(SidrecError, match=r"'my_data' \(in .*bad.yaml, relative to its folder .*conf"):
        dataset_from_config(load_config([tmp_path / "proj" / "conf" / "bad.yaml"]))
    with pytest.raises(SidrecError, match="relative to the working directory"):
        dataset_from_config(load_config(None, ["data.path=nowhere"]))


def test_repo_configs_point_at_the_shared_data():
    from sidrec.config import load_config

    repo = Path(__file__).resolve().parents[1]
    for name, folder in (("beauty", "amazon14_beauty"), ("sports", "amazon14_sports"),
                         ("toys", "amazon14_toys")):
        cfg = load_config([repo / "configs" / "data" / f"{name}.yaml"])
        assert Path(cfg.data.path) == (repo.parent / "shared" / "data" / folder).resolve(), cfg.data.path


def test_config_show_lists_every_key_and_round_trips(tmp_path, capsys):
    from sidrec.config import load_config
    from sidrec.runs import settings

    assert cli("config", "show", "train.lr=0.01", 'features.template="{title}"') == 0
    text = capsys.readouterr().out
    assert "lr: 0.01  # default: 0.001" in text and "tokenizer:" in text and "dream:" in text
    (tmp_path / "shown.yaml").write_text(text)
    again, ref = load_config([tmp_path / "shown.yaml"]), load_config(None, ["train.lr=0.01", 'features.template="{title}"'])
    assert settings(again) == settings(ref)
    assert len([ln for ln in text.splitlines() if ":" in ln]) >= len(settings(ref))


def test_train_help_lists_the_methods(capsys):
    from sidrec.methods.registry import METHODS

    assert cli("train", "--help") == 0
    text = capsys.readouterr().out
    assert all(m in text for m in METHODS), text


def test_evaluate_table_is_not_cut_at_80_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli("train", "data.path=synthetic", "data.synthetic_users=60", "data.synthetic_items=40", *TINY,
               "--run-dir", "r") == 0
    capsys.readouterr()
    assert cli("evaluate", "r") == 0
    out = capsys.readouterr().out
    assert "…" not in out and re.search(r"\d\.\d{4}", out), out


def test_auto_template_keeps_the_beauty_text_unchanged():
    from sidrec.data.dataset import Dataset
    from sidrec.features import item_texts

    items = {"title": ["L&#39;Oreal Mascara", None, "Soap"], "brand": ["L&#39;Oreal", "Acme", None],
             "categories": [["Makeup", "Eyes"], ["Bath"], None], "attributes_raw": [["x"], [], None]}
    ds = Dataset.from_sequences("b", [[0, 1, 2]], ["a", "b", "c"], ["u"], items)
    old = "{title}. Brand: {brand}. Categories: {categories}."
    assert item_texts(ds, "auto") == item_texts(ds, old)
    ds.items["keywords"] = ["kw1", None, "kw3"]
    assert item_texts(ds, "auto")[2] == "Soap. Keywords: kw3."


@pytest.mark.realdata
def test_auto_template_on_the_real_datasets():
    """Beauty reads exactly as before (same text, same cached vectors and SIDs); Sports (no titles) and Toys get
    their keywords / category paths instead of placeholders."""
    from conftest import shared_data
    from sidrec.data.formats import load_dataset
    from sidrec.features.core import item_texts, render_item_texts

    beauty = load_dataset(shared_data("amazon14_beauty"))
    assert item_texts(beauty, "auto") == item_texts(beauty, "{title}. Brand: {brand}. Categories: {categories}.")
    for name, field in (("amazon14_sports", "Keywords: "), ("amazon14_toys", "Category paths: ")):
        texts, missing = render_item_texts(load_dataset(shared_data(name)), "auto")
        assert not missing.any() and field in texts[0]


def test_toys_and_sports_configs_embed_item_text():
    """Issue #16: the Toys and Sports configs read item text (not attribute ids), Toys under Beauty's template."""
    from conftest import shared_data
    from sidrec.config import load_config
    from sidrec.features.core import checked_item_texts
    from sidrec.pipeline import dataset_from_config

    repo = Path(__file__).resolve().parents[1]
    shared_data("amazon14_toys")
    for name, expect in (("toys", "Hasbro Electronic Catch Phrase. Categories: Games, Handheld Games."),
                         ("sports", "Brand: Ghost. Categories: Hunting & Fishing")):
        cfg = load_config([repo / "configs" / "data" / f"{name}.yaml"])
        assert cfg.features.kind == "text"
        texts = checked_item_texts(dataset_from_config(cfg), cfg.features.template, cfg.features.min_text_coverage)
        assert texts[0].startswith(expect), texts[0]


# the budget of each method in the test below (the guide's runs stop by patience or train.max_minutes; a test
# needs a fixed count), and a warm-up a 1,000-user catalogue finishes (the presets' are sized for Beauty's
# 170+ steps an epoch)
GUIDE_EPOCHS = {"sasrec": 20, "tiger": 16, "diger": 12, "acerec": 10}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(GUIDE_EPOCHS))
@pytest.mark.parametrize("source", ["synthetic", "lcrec"])
def test_each_method_as_the_guide_gives_it_beats_popularity_with_lists_per_user(method, source, tmp_path,
                                                                                  monkeypatch, capsys):
    """Issue #27's acceptance: `method: NAME` with the guide's config and nothing else of the method (its
    preset for this machine) trains a model that beats popularity and gives different users different lists,
    on the embedded synthetic data and on the same data written as an LC-Rec shop (ids and text from files)."""
    from sidrec.data.synthetic import generate
    from sidrec.pipeline import recommend

    monkeypatch.chdir(tmp_path)
    ds = generate(n_users=1000, n_items=600)  # OPQ learns its rotation in 384 dimensions: >= 384 items
    if source == "synthetic":
        config = "data:\n  path: synthetic\n  synthetic_users: 1000\n  synthetic_items: 600\n"
    else:
        shop = tmp_path / "my_data"
        shop.mkdir()
        num = {i: str(100 + 3 * k) for k, i in enumerate(ds.item_ids)}  # ids unlike the internal indices
        (shop / "Shop.inter.json").write_text(json.dumps(
            {str(7 + u): [int(num[ds.item_ids[i]]) for i in ds.sequence(u)] for u in range(ds.n_users)}))
        (shop / "Shop.item.json").write_text(json.dumps(
            {num[i]: {"title": ds.items["title"][k], "brand": ds.items["brand"][k],
                      "categories": ds.items["categories"][k]} for k, i in enumerate(ds.item_ids)}))
        config = doc_configs()["lcrec"].replace("method: sasrec\n", "")
    (tmp_path / "my.yaml").write_text(config + f"method: {method}\n")
    budget = [f"train.epochs={GUIDE_EPOCHS[method]}", "train.warmup_steps=20", "train.threads=1",
              "train.progress=false"]
    assert cli("train", "-c", "my.yaml", *budget, "--run-dir", "runs/mine") == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    ours, pop = res["test"]["all"]["ndcg@10"], res["popularity_test"]["all"]["ndcg@10"]
    alone = res.get("model_only", res)["test"]["all"]["ndcg@10"]
    assert ours > pop, (method, source, ours, alone, pop)
    users = [str(7 + u) for u in range(40)] if source == "lcrec" else ds.user_ids[:40]
    lists = {tuple(i for i, _ in recommend(tmp_path / "runs" / "mine", u, k=10)[0]) for u in users}
    assert len(lists) >= 20, (method, source, len(lists))
