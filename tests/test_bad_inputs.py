"""Hostile and broken input, every sub-command: exit code 2, one line naming the culprit, no traceback, and
nothing that existed before is changed (issue #21).

The command line runs in-process (``sidrec.cli.main``), with the working directory set to a fresh folder, so a
stray write (a run folder, a feature cache) shows up as a changed file tree. Only Ctrl-C needs a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sidrec.cli import main

DATA = ["data.path=synthetic", "data.synthetic_users=60", "data.synthetic_items=40"]  # what embed / tokenize read
TINY = ["data.path=synthetic", "data.synthetic_users=60", "data.synthetic_items=40", "train.epochs=1",
        "sasrec.d_model=8", "sasrec.ffn_dim=16", "sasrec.n_layers=1", "train.progress=false"]


def cli(*argv: str) -> int:
    """Run the command line in-process; the exit code (0 when it returns)."""
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def tree(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with a hash of its bytes (folders as markers), to prove nothing changed."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run, a prepared dataset and a file, shared (read-only) by every case."""
    root = tmp_path_factory.mktemp("base")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli("train", *TINY, "--run-dir", str(root / "run")) == 0
        assert cli("data", "prepare", "synthetic", "--out", str(root / "prep")) == 0
    finally:
        os.chdir(cwd)
    (root / "file.txt").write_text("a file, not a folder\n")
    return root


# ------------------------------------------------------------------------------------------------ case setups
def _copy(base: Path, tmp: Path, name: str) -> Path:
    """A private copy of the shared base's ``name`` (a run or the prepared dataset) that a case may damage."""
    dst = tmp / f"{name}-copy"
    shutil.copytree(base / name, dst)
    return dst


def _prep_copy(base: Path, tmp: Path) -> Path:
    return _copy(base, tmp, "prep")


def _corrupt_json(base: Path, tmp: Path) -> list[str]:
    d = _prep_copy(base, tmp)
    (d / "sidrec_dataset.json").write_text('{\n  "name": "x",\n  "users": 3\n  "items": 4\n}\n')
    return ["data", "stats", str(d)]


def _truncated_parquet(base: Path, tmp: Path) -> list[str]:
    d = _prep_copy(base, tmp)
    data = (d / "users.parquet").read_bytes()
    (d / "users.parquet").write_bytes(data[: len(data) // 2])
    return ["data", "stats", str(d)]


def _cut_sequence_file(base: Path, tmp: Path) -> list[str]:
    (tmp / "seq.txt").write_text("1 1 2 3 4\n2 2 3 4 5\n3 3 4 5 6\n4 1 5 6 7")
    return ["train", *TINY, f"data.path={tmp / 'seq.txt'}", "--run-dir", str(tmp / "r")]


def _one_user(base: Path, tmp: Path) -> list[str]:
    (tmp / "seq.txt").write_text("1 1 2 3 4 5 6\n")
    return ["train", *TINY, f"data.path={tmp / 'seq.txt'}", "--run-dir", str(tmp / "r")]


def _binary_as_s3rec(base: Path, tmp: Path) -> list[str]:
    (tmp / "seq.txt").write_bytes(b"1 2 3\n\xff\xfe\x00 9\n")
    return ["data", "stats", "--format", "s3rec", str(tmp / "seq.txt")]


def _rerun_other_settings(base: Path, tmp: Path) -> list[str]:
    return ["train", *TINY, "train.lr=0.01", "--run-dir", str(base / "run")]


def _resume_other_settings(base: Path, tmp: Path) -> list[str]:
    return ["train", *TINY, "train.lr=0.01", "--resume", "--run-dir", str(base / "run")]


def _resume_and_overwrite(base: Path, tmp: Path) -> list[str]:
    return ["train", *TINY, "--resume", "--overwrite", "--run-dir", str(base / "run")]


def _foreign_run_dir(base: Path, tmp: Path) -> list[str]:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("precious\n")
    return ["train", *TINY, "--overwrite", "--run-dir", str(tmp / "mine")]


def _truncated_state(base: Path, tmp: Path) -> list[str]:
    shutil.copytree(base / "run", tmp / "run")
    st = tmp / "run" / "checkpoints" / "last.state.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    return ["train", "-c", str(tmp / "run" / "config.yaml"), "--resume", "--run-dir", str(tmp / "run")]


def _foreign_state(base: Path, tmp: Path) -> list[str]:
    import torch
    from safetensors.torch import save_file

    shutil.copytree(base / "run", tmp / "run")
    save_file({"x": torch.zeros(2)}, str(tmp / "run" / "checkpoints" / "last.state.safetensors"))
    return ["train", "-c", str(tmp / "run" / "config.yaml"), "--resume", "--run-dir", str(tmp / "run")]


def _bad_yaml(base: Path, tmp: Path) -> list[str]:
    (tmp / "c.yaml").write_text("train:\n  lr: [1, 2\n")
    return ["train", "-c", str(tmp / "c.yaml")]


def _binary_config(base: Path, tmp: Path) -> list[str]:
    (tmp / "c.yaml").write_bytes(b"train:\n  lr: \xff\xfe\x00\x01\n")
    return ["train", "-c", str(tmp / "c.yaml")]


def _alias_bomb(base: Path, tmp: Path) -> list[str]:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
              f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]" for i in range(8)]
    (tmp / "c.yaml").write_text("\n".join(lines) + "\n")
    return ["train", "-c", str(tmp / "c.yaml")]


def _deep_config(base: Path, tmp: Path) -> list[str]:
    (tmp / "c.yaml").write_text("[" * 100_000 + "]" * 100_000)
    return ["train", "-c", str(tmp / "c.yaml")]


def _dream_config_command(base: Path, tmp: Path) -> list[str]:
    shutil.copytree(base / "run", tmp / "run")
    cfg = tmp / "run" / "config.yaml"
    cfg.write_text(cfg.read_text() + f"dream:\n  rewrite_command: touch {tmp / 'pwned'}\n")
    return ["dream", str(tmp / "run")]


def _args(*argv: str) -> Callable[[Path, Path], list[str]]:
    """A case whose arguments need only the shared base folder ({base}) and the case folder ({tmp})."""
    return lambda base, tmp: [a.replace("{base}", str(base)).replace("{tmp}", str(tmp)) for a in argv]


def _base_not_a_string(base: Path, tmp: Path) -> list[str]:
    (tmp / "c.yaml").write_text("base: 5\n")
    return ["train", "-c", str(tmp / "c.yaml")]


def _run_copy(base: Path, tmp: Path) -> Path:
    return _copy(base, tmp, "run")


def _method_changed(base: Path, tmp: Path) -> list[str]:
    """A run whose config.yaml was edited to another method: it must not fit SIDs into the run."""
    run = _run_copy(base, tmp)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("method: sasrec", "method: tiger"))
    return ["evaluate", str(run)]


def _weights_are_a_folder(base: Path, tmp: Path) -> list[str]:
    run = _run_copy(base, tmp)
    (run / "checkpoints" / "best.safetensors").unlink()
    (run / "checkpoints" / "best.safetensors").mkdir()
    return ["evaluate", str(run)]


def _config_cut_short(base: Path, tmp: Path) -> list[str]:
    run = _run_copy(base, tmp)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text[:text.index("train:")])
    return ["evaluate", str(run)]


def _add_items_to_a_fixed_catalogue(base: Path, tmp: Path) -> list[str]:
    run = _run_copy(base, tmp)
    (run / "sid_table.parquet").write_bytes(b"not needed: the method is refused first")
    (tmp / "new.jsonl").write_text('{"item_id": "N1", "title": "a new thing"}\n')
    return ["add-items", str(run), str(tmp / "new.jsonl")]


R = "{tmp}/r"  # a run directory that must never be created by a failing command
CASES: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    # train: nonsense settings, named by key, before any work
    ("batch_size 0", _args("train", *TINY, "train.batch_size=0", "--run-dir", R), "train.batch_size"),
    ("batch_size negative", _args("train", *TINY, "train.batch_size=-5", "--run-dir", R), "train.batch_size"),
    ("epochs 0", _args("train", *TINY, "train.epochs=0", "--run-dir", R), "train.epochs"),
    ("max_len 0", _args("train", *TINY, "data.max_len=0", "--run-dir", R), "data.max_len"),
    ("negative lr", _args("train", *TINY, "train.lr=-1e-3", "--run-dir", R), "train.lr"),
    ("dropout above 1", _args("train", *TINY, "sasrec.dropout=1.5", "--run-dir", R), "sasrec.dropout"),
    ("registered section range", _args("train", *TINY, "dream.cart.momentum=2", "--run-dir", R), "dream.cart.momentum"),
    ("tiger size 0", _args("train", *TINY, "method=tiger", "tiger.d_model=0", "--run-dir", R), "tiger.d_model"),
    ("tokenizer kind typo", _args("train", *TINY, "tokenizer.kind=rqvea", "--run-dir", R), "rqvae"),
    ("unknown method", _args("train", *TINY, "method=nosuch", "--run-dir", R), "nosuch"),
    ("wrong type", _args("train", *TINY, "train.epochs=ten", "--run-dir", R), "train.epochs"),
    ("unknown key", _args("train", *TINY, "train.lrr=1", "--run-dir", R), "train.lr"),
    ("template parsed as YAML", _args("train", *TINY, "features.template={title}", "--run-dir", R), "quote"),
    ("eval ks 0", _args("train", *TINY, "eval.ks=[0,10]", "--run-dir", R), "eval.ks"),
    ("eval ks without 10", _args("train", *TINY, "eval.ks=[5,20]", "--run-dir", R), "must include 10"),
    ("infinite lr", _args("train", *TINY, "train.lr=inf", "--run-dir", R), "finite"),
    ("config not UTF-8", _binary_config, "UTF-8"),
    ("config nested 100k deep", _deep_config, "nested too deeply"),
    ("config alias bomb", _alias_bomb, "aliases"),
    ("prepare negative kcore", _args("data", "prepare", "synthetic", "--kcore", "-1", "--out", R), "--kcore"),
    ("stats negative cold threshold", _args("data", "stats", "synthetic", "--cold-threshold", "-5"), "cold-threshold"),
    ("missing config file", _args("train", "-c", "{tmp}/nope.yaml"), "nope.yaml"),
    ("bad yaml", _bad_yaml, "c.yaml:"),
    ("missing dataset", _args("train", *TINY, "data.path={tmp}/nodata", "--run-dir", R), "nodata"),
    ("sequence file cut mid-line", _cut_sequence_file, "seq.txt:4"),
    ("one-user dataset", _one_user, "at least 2"),
    # train: run directories
    ("resume missing run dir", _args("train", *TINY, "--resume", "--run-dir", R), "nothing to resume"),
    ("re-run with other settings", _rerun_other_settings, "train.lr"),
    ("resume with other settings", _resume_other_settings, "train.lr"),
    ("resume and overwrite", _resume_and_overwrite, "--overwrite"),
    ("run dir under a file", _args("train", *TINY, "--run-dir", "{base}/file.txt/run"), "file.txt"),
    ("foreign folder as run dir", _foreign_run_dir, "not a sidrec run directory"),
    ("truncated resume state", _truncated_state, "last.state.safetensors"),
    ("foreign resume state", _foreign_state, "not a sidrec resume state"),
    # data
    ("corrupt prepared JSON", _corrupt_json, "sidrec_dataset.json:4"),
    ("truncated users.parquet", _truncated_parquet, "users.parquet"),
    ("binary sequence file", _binary_as_s3rec, "UTF-8"),
    ("stats missing path", _args("data", "stats", "{tmp}/nope"), "nope"),
    ("unknown format", _args("data", "stats", "--format", "nosuch", "{base}/prep"), "nosuch"),
    ("prepare out under a file", _args("data", "prepare", "synthetic", "--out", "{base}/file.txt/p"), "file.txt"),
    ("prepare over a foreign folder", _args("data", "prepare", "synthetic", "--out", "{base}/run"),
     "not a prepared sidrec dataset"),
    # embed / tokenize
    ("embed out under a file", _args("embed", *DATA, "--out", "{base}/file.txt/e.npy"), "file.txt"),
    ("embed cache under a file", _args("embed", *DATA, "features.cache_dir={base}/file.txt/c"), "file.txt"),
    ("embed missing npy", _args("embed", *DATA, "features.kind=npy", "features.npy_path={tmp}/e.npy"), "e.npy"),
    ("tokenize levels 0", _args("tokenize", *DATA, "tokenizer.levels=0", "--run-dir", R), "tokenizer.levels"),
    ("tokenize into a trained run", _args("tokenize", *DATA, "tokenizer.levels=2", "--run-dir", "{base}/run"),
     "other settings"),
    # evaluate / recommend
    ("evaluate non-run", _args("evaluate", "{tmp}"), "not a run directory"),
    ("evaluate bad split", _args("evaluate", "{base}/run", "--split", "nope"), "--split"),
    ("recommend without user", _args("recommend", "{base}/run"), "--user"),
    ("recommend k not a number", _args("recommend", "{base}/run", "-u", "U000001", "-k", "ten"), "-k"),
    ("recommend k 0", _args("recommend", "{base}/run", "-u", "U000001", "-k", "0"), "-k"),
    ("recommend unknown user", _args("recommend", "{base}/run", "-u", "nobody"), "nobody"),
    ("recommend missing weights", _args("recommend", "{base}/run", "-u", "U000001", "--weights", "{tmp}/w"), "w"),
    ("fuse a folder that is not a run", _args("fuse", "{tmp}"), "not a run directory"),
    # dream / add-items / refine-items
    ("dream command from config", _dream_config_command, "--allow-config-commands"),
    ("dream bad split", _args("dream", "{base}/run", "--split", "nope"), "--split"),
    ("add-items on a run without SIDs", _args("add-items", "{base}/run", "{tmp}/new.jsonl"), "SID table"),
    ("refine-items candidates 0", _args("refine-items", "{base}/run", "{tmp}/i.csv", "--candidates", "0"),
     "--candidates"),
    # quickstart and the command line itself
    ("quickstart run dir under a file", _args("quickstart", "--run-dir", "{base}/file.txt/q"), "file.txt"),
    ("quickstart zero users", _args("quickstart", "--users", "0", "--run-dir", R), "--users"),
    ("unknown command", _args("nosuch"), "nosuch"),
    ("unknown option", _args("train", "--bogus"), "--bogus"),
    ("data without its argument", _args("data", "stats"), "input"),
    # round two (issue 44): limits, sizes, commands that would ignore a setting, runs that were tampered with
    ("lr that overflows", _args("train", *TINY, "train.lr=1e308", "--run-dir", R), "train.lr"),
    ("weight decay above 1", _args("train", *TINY, "train.weight_decay=2", "--run-dir", R), "train.weight_decay"),
    ("max_len beyond memory", _args("train", *TINY, "data.max_len=1000000000", "--run-dir", R), "data.max_len"),
    ("synthetic users beyond a million", _args("train", *TINY, "data.synthetic_users=2000000000", "--run-dir", R),
     "data.synthetic_users"),
    ("synthetic items 0", _args("train", *TINY, "data.synthetic_items=0", "--run-dir", R), "data.synthetic_items"),
    ("empty data path", _args("train", *TINY, "data.path=", "--run-dir", R), "data.path"),
    ("eval ks only 100", _args("train", *TINY, "eval.ks=[100]", "--run-dir", R), "must include 10"),
    ("cold threshold negative", _args("train", *TINY, "data.cold_threshold=-1", "--run-dir", R), "data.cold_threshold"),
    ("kcore negative in config", _args("train", *TINY, "data.kcore=-2", "--run-dir", R), "data.kcore"),
    ("patience 0", _args("train", *TINY, "train.patience=0", "--run-dir", R), "train.patience"),
    ("warm-up negative", _args("train", *TINY, "train.warmup_steps=-1", "--run-dir", R), "train.warmup_steps"),
    ("grad clip negative", _args("train", *TINY, "train.grad_clip=-1", "--run-dir", R), "train.grad_clip"),
    ("threads negative", _args("train", *TINY, "train.threads=-1", "--run-dir", R), "train.threads"),
    ("eval users negative", _args("train", *TINY, "train.eval_users=-1", "--run-dir", R), "train.eval_users"),
    ("min lr ratio above 1", _args("train", *TINY, "train.min_lr_ratio=2", "--run-dir", R), "train.min_lr_ratio"),
    ("bf16 not a choice", _args("train", *TINY, "train.bf16=maybe", "--run-dir", R), "train.bf16"),
    ("seed not a number", _args("train", *TINY, "seed=abc", "--run-dir", R), "seed"),
    ("content query of 0 items", _args("train", *TINY, "content.query_items=0", "--run-dir", R), "content.query_items"),
    ("content decay above 1", _args("train", *TINY, "content.decay=1.5", "--run-dir", R), "content.decay"),
    ("content index unknown", _args("train", *TINY, "content.index=hnsw", "--run-dir", R), "content.index"),
    ("fusion lambda negative", _args("train", *TINY, "fusion.lambdas=[0,-1]", "--run-dir", R), "fusion.lambdas"),
    ("fusion candidates negative", _args("train", *TINY, "fusion.candidates=-1", "--run-dir", R), "fusion.candidates"),
    ("sasrec item content unknown", _args("train", *TINY, "sasrec.item_content=both", "--run-dir", R),
     "sasrec.item_content"),
    ("acerec merge unknown", _args("train", *TINY, "method=acerec", "acerec.merge=max", "--run-dir", R), "acerec.merge"),
    ("acerec latents 0", _args("train", *TINY, "method=acerec", "acerec.n_latents=0", "--run-dir", R),
     "acerec.n_latents"),
    ("diger decay unknown", _args("train", *TINY, "method=diger", "diger.decay=fast", "--run-dir", R), "diger.decay"),
    ("tiger beam 0", _args("train", *TINY, "method=tiger", "tiger.beam=0", "--run-dir", R), "tiger.beam"),
    ("tiger arch unknown", _args("train", *TINY, "method=tiger", "tiger.arch=rnn", "--run-dir", R), "tiger.arch"),
    ("balance factor below 1", _args("train", *TINY, "tokenizer.balance_factor=0.5", "--run-dir", R),
     "tokenizer.balance_factor"),
    ("dream keep above 1", _args("train", *TINY, "dream.update_keep=1.5", "--run-dir", R), "dream.update_keep"),
    ("features kind unknown", _args("train", *TINY, "features.kind=image", "--run-dir", R), "features.kind"),
    ("data format unknown in config", _args("train", *TINY, "data.format=xml", "--run-dir", R), "data.format"),
    ("config base not a string", _base_not_a_string, "'base'"),
    ("tokenize codebook larger than the catalogue",
     _args("tokenize", *DATA, "tokenizer.codebook_sizes=[5000]", "--run-dir", R), "codes of a codebook"),
    ("tokenize on a device that does not exist",
     _args("tokenize", *DATA, "tokenizer.kind=rqvae", "tokenizer.device=nosuch", "--run-dir", R), "nosuch"),
    ("evaluate a run whose method was changed", _method_changed, "changed to another method"),
    ("evaluate weights that are a folder", _weights_are_a_folder, "found a folder"),
    ("evaluate a config cut short", _config_cut_short, "incomplete run config"),
    ("fuse with a training setting", _args("fuse", "{base}/run", "train.lr=1"), "reads only"),
    ("dream with a training setting", _args("dream", "{base}/run", "train.lr=1"), "reads only"),
    ("refine-items with a training setting", _args("refine-items", "{base}/run", "{tmp}/i.csv", "train.lr=1"),
     "reads only"),
    ("add-items to a fixed catalogue", _add_items_to_a_fixed_catalogue, "fixed catalogue"),
    ("recommend k negative", _args("recommend", "{base}/run", "-u", "U000001", "-k", "-1"), "-k"),
    ("embed with a training setting", _args("embed", *DATA, "train.lr=1"), "reads only"),
    ("tokenize with a model setting", _args("tokenize", *DATA, "tiger.d_model=8", "--run-dir", R), "reads only"),
]


@pytest.mark.parametrize(("setup", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(base, tmp_path, monkeypatch, capsys, setup, needle):
    case = tmp_path / "case"
    case.mkdir()
    argv = setup(base, case)
    monkeypatch.chdir(case)
    before = tree(base, case)
    capsys.readouterr()
    code = cli(*argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("sidrec: error: "), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert tree(base, case) == before, "a failing command changed or created files"


def test_case_table_is_large_and_covers_every_subcommand(base, tmp_path):
    from sidrec.cli import app, data_app

    commands = {(c.name or c.callback.__name__).replace("_", "-")
                for c in [*app.registered_commands, *data_app.registered_commands]}
    argvs = []
    for i, (_, setup, _) in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        argvs.append(setup(base, tmp_path / str(i)))
    used = {a[0] for a in argvs} | {a[1] for a in argvs if a[0] == "data"}
    assert len(CASES) >= 100
    assert commands <= used, commands - used


# ---------------------------------------------------------------------------------------------- pickle payloads
class _Payload:
    """Unpickling this writes a file: what a crafted resume state could do with weights_only=False."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def test_pickled_resume_state_is_refused_and_never_runs(base, tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    (run / "checkpoints" / "last.state.safetensors").unlink()
    marker = tmp_path / "pwned"
    legacy = run / "checkpoints" / "last.state.pt"
    torch.save({"epoch": 1, "optimizer": _Payload(marker)}, legacy)
    before = tree(run)
    assert cli("train", "-c", str(run / "config.yaml"), "--resume", "--run-dir", str(run)) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "last.state.pt" in err and "Traceback" not in err, err
    assert not marker.exists(), "the pickled payload ran"
    assert tree(run) == before
    # the payload is live: the old loader would have run it (so this test can fail)
    torch.load(legacy, weights_only=False)
    assert marker.read_text() == "pwned"


# ---------------------------------------------------------------------------------------------- failed re-runs
def _metrics(run: Path, capsys) -> str:
    capsys.readouterr()
    assert cli("evaluate", str(run), "--json") == 0
    return capsys.readouterr().out


def test_crashing_rerun_leaves_previous_run_evaluable(base, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    ref = _metrics(run, capsys)
    before = tree(run)
    # a setting that crashed the old code after config.yaml had been rewritten
    assert cli("train", *TINY, "train.batch_size=0", "--run-dir", str(run)) == 2
    assert tree(run) == before
    # --overwrite and a failure while the model is built: the old run comes back byte for byte
    import sidrec.methods.sasrec.task as sasrec_recipe

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while building the model")

    monkeypatch.setattr(sasrec_recipe, "build", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train", *TINY, "train.lr=0.01", "--overwrite", "--run-dir", str(run)])
    monkeypatch.undo()
    assert tree(run) == before
    assert _metrics(run, capsys) == ref
    assert not list(tmp_path.glob(".run.replaced-*"))
    # --overwrite that succeeds replaces the run
    assert cli("train", *TINY, "train.lr=0.01", "--overwrite", "--run-dir", str(run)) == 0
    assert "lr: 0.01" in (run / "config.yaml").read_text()
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_failed_train_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("train", *TINY, "method=nosuch") == 2
    import sidrec.methods.sasrec.task as sasrec_recipe

    monkeypatch.setattr(sasrec_recipe, "build", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        main(["train", *TINY, "--run-dir", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- the command line
def test_bare_commands_print_help_and_exit_0(capsys):
    assert cli() == 0
    assert "train" in capsys.readouterr().out
    assert cli("data") == 0
    assert "prepare" in capsys.readouterr().out


def test_ctrl_c_prints_interrupted_and_exits_130(tmp_path):
    """The only subprocess here: SIGINT must reach a real process running a real command."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-m", "sidrec.cli", "train", "data.path=synthetic", "train.epochs=200",
                          "data.synthetic_users=300", "train.progress=false", "--run-dir", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         # a suite started in the background (`nohup pytest &`) ignores SIGINT and its children
                         # would inherit that; the child must see Ctrl-C as a terminal user's process does
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 90
    while not (run / "config.yaml").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """``kill -9`` during ``data prepare`` (or a checkpoint) leaves ``.<name>.<pid>.*.tmp``; the next write of the
    same file removes it when that process is gone, and never touches a live writer's."""
    from sidrec.io import atomic_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".prep.{pid}.abc123.tmp"
    stale.mkdir()
    (stale / "items.parquet").write_bytes(b"half")
    live = tmp_path / f".prep.{os.getppid()}.def456.tmp"  # a running process (the test runner's parent)
    live.mkdir()
    with atomic_path(tmp_path / "prep", is_dir=True) as tmp:
        (tmp / "done").write_text("ok")
    assert not stale.exists() and live.exists() and (tmp_path / "prep" / "done").exists()


def test_a_csv_with_a_byte_order_mark_is_recognised(tmp_path):
    """A spreadsheet's CSV export starts with a UTF-8 byte-order mark; format detection must still see 'user'."""
    rows = "".join(f"u{u},i{(u * 7 + t) % 30},{t}\n" for u in range(40) for t in range(6))
    (tmp_path / "x.csv").write_bytes(b"\xef\xbb\xbf" + ("user,item,timestamp\n" + rows).encode())
    assert cli("data", "stats", str(tmp_path / "x.csv")) == 0
