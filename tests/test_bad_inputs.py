"""Hostile and broken input, every sub-command: exit code 2, one line naming the culprit, no traceback, and
nothing that existed before is changed (issues #21, #44, #59).

The command line runs in-process (``sidrec.cli.main``), with the working directory set to a fresh folder, so a
stray write (a run folder, a feature cache) shows up as a changed file tree. Only Ctrl-C needs a subprocess.

The Python API has its own table (``API_CASES``): a wrong argument is a ``SidrecError`` (a ``ValueError``) whose
message names the argument; a property test feeds random JSON-like values to ``Recommender.recommend``.
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
# a tiny TIGER (a SID table, a tokenizer, a catalogue that add-items can extend) for add-items / refine-items cases
TIGER = ["size=none", "method=tiger", *DATA, "features.kind=attributes", "tokenizer.kind=rqkmeans", "tokenizer.levels=2",
         "tokenizer.codebook_sizes=[4]", "tokenizer.collision_codebook=16", "tokenizer.progress=false",
         "tiger.d_model=8", "tiger.encoder_layers=1", "tiger.decoder_layers=1", "tiger.n_heads=1", "tiger.head_dim=8",
         "tiger.ffn_dim=16", "tiger.beam=10", "train.epochs=1", "train.progress=false", "fusion.lambdas=[0]"]


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
        assert cli("train", *TIGER, "--run-dir", str(root / "tiger")) == 0
        _added_items(root)
    finally:
        os.chdir(cwd)
    (root / "file.txt").write_text("a file, not a folder\n")
    return root


def _added_items(root: Path) -> None:
    """Two items added to the TIGER run's catalogue (refine-items reads their first interactions)."""
    import numpy as np

    from sidrec.config import load_config
    from sidrec.features import item_features
    from sidrec.pipeline import dataset_from_config

    cfg = load_config([root / "tiger" / "config.yaml"])
    emb = item_features(cfg.features, dataset_from_config(cfg))
    np.save(root / "new.npy", emb[:2] + 0.01)
    (root / "new.jsonl").write_text('{"item_id": "N1", "title": "one"}\n{"item_id": "N2", "title": "two"}\n')
    assert cli("add-items", str(root / "tiger"), str(root / "new.jsonl"), "--embeddings", str(root / "new.npy")) == 0


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
    # the run's own dream section, edited (a second 'dream:' block is refused as a duplicate key)
    cfg.write_text(cfg.read_text().replace("  rewrite_command: ''", f"  rewrite_command: touch {tmp / 'pwned'}"))
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


# ---------------------------------------------------------------------------------- round three (issue 59)
class Env(list):
    """The arguments of a case that also sets environment variables (``env``) while the command runs."""

    env: dict[str, str]


def _env(env: dict[str, str], *argv: str) -> Callable[[Path, Path], list[str]]:
    """A case run with ``env`` set (WORLD_SIZE=abc, ...): the variables are parsed with a one-line error."""
    def setup(base: Path, tmp: Path) -> list[str]:
        out = Env(_args(*argv)(base, tmp))
        out.env = {k: v.replace("{base}", str(base)) for k, v in env.items()}
        return out
    return setup


def _files(files: dict[str, str | bytes], *argv: str) -> Callable[[Path, Path], list[str]]:
    """A case that first writes ``files`` (name -> text or bytes) into its folder."""
    def setup(base: Path, tmp: Path) -> list[str]:
        for name, content in files.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return _args(*argv)(base, tmp)
    return setup


def _edited(name: str, file: str, content: str | bytes | Callable[[str], str], *argv: str
            ) -> Callable[[Path, Path], list[str]]:
    """A case on a private copy of the base's ``name`` whose ``file`` was replaced (or edited by a function)."""
    def setup(base: Path, tmp: Path) -> list[str]:
        p = _copy(base, tmp, name) / file
        if callable(content):
            p.write_text(content(p.read_text()))
        else:
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return _args(*[a.replace("{copy}", str(tmp / f"{name}-copy")) for a in argv])(base, tmp)
    return setup


# small raw datasets in each format, to be broken one way at a time
_CSV = "user,item,timestamp\n" + "".join(f"u{u},i{(u * 7 + t) % 30},{t}\n" for u in range(40) for t in range(6))
_S3 = "".join(f"{u} " + " ".join(str((u * 7 + t) % 30 + 1) for t in range(6)) + "\n" for u in range(1, 40))
_LC = "{" + ",".join(f'"{u}": [' + ",".join(str((u * 7 + t) % 30) for t in range(6)) + "]" for u in range(40)) + "}"
_INTER = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
    f"u{u}\ti{(u * 7 + t) % 30}\t{t}\n" for u in range(40) for t in range(6))
_BIG = "x" * (50 << 20)  # a 50 MB field


def _dup_section(base: Path, tmp: Path) -> list[str]:
    """The issue's example: the first block's ``epochs: 1`` silently became the default 200."""
    (tmp / "c.yaml").write_text("train:\n  epochs: 1\ndata:\n  path: synthetic\ntrain:\n  lr: 0.01\n")
    return ["train", "-c", str(tmp / "c.yaml"), *TINY[1:3], "--run-dir", str(tmp / "r")]


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
    ("serve not a run", _args("serve", "{tmp}/none"), "not a run directory"),
    ("serve port out of range", _args("serve", "{base}/run", "--port", "70000"), "--port"),
    ("data fetch unknown name", _args("data", "fetch", "nosuch"), "nosuch"),
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
    # round three (issue 59): values numpy / torch refuse with a traceback
    ("seed negative", _args("train", *TINY, "seed=-1", "--run-dir", R), "'seed'"),
    ("seed beyond 2^32", _args("train", *TINY, "seed=4294967296", "--run-dir", R), "'seed'"),
    ("synthetic seed negative", _args("train", *TINY, "data.synthetic_seed=-1", "--run-dir", R), "data.synthetic_seed"),
    ("tokenize seed negative", _args("tokenize", *DATA, "seed=-5", "--run-dir", R), "'seed'"),
    ("tokenizer seed negative", _args("tokenize", *DATA, "features.kind=attributes", "tokenizer.levels=2",
                                      "tokenizer.codebook_sizes=[4]", "tokenizer.seed=-1", "--run-dir", R),
     "tokenizer.seed"),
    ("config show seed beyond 2^32", _args("config", "show", "seed=99999999999"), "'seed'"),
    ("threads beyond 64 bits", _args("train", *TINY, "train.threads=99999999999999999999", "--run-dir", R),
     "train.threads"),
    ("threads beyond a C int", _args("train", *TINY, "train.threads=1099511627776", "--run-dir", R), "train.threads"),
    ("model width beyond 64 bits", _args("train", *TINY, "sasrec.d_model=99999999999999999999", "--run-dir", R),
     "sasrec.d_model"),
    ("synthetic catalogue of 2 items", _args("train", *TINY, "data.synthetic_items=2", "--run-dir", R),
     "data.synthetic_items"),
    # fuse reads metrics.json to merge into it
    ("fuse a metrics.json cut short", _edited("run", "metrics.json", lambda t: t[:100], "fuse", "{copy}"),
     "metrics.json:"),
    ("fuse a metrics.json that is a list", _edited("run", "metrics.json", "[1, 2]", "fuse", "{copy}"), "metrics.json"),
    ("fuse a metrics.json not UTF-8", _edited("run", "metrics.json", b"\xff\xfe{}", "fuse", "{copy}"), "metrics.json"),
    # add-items / refine-items readers
    ("add-items CSV not UTF-8", _files({"n.csv": b"item_id,title\nN9,caf\xe9\n"}, "add-items", "{base}/tiger",
                                       "{tmp}/n.csv"), "byte 20 (line 2)"),
    ("add-items JSONL not UTF-8", _files({"n.jsonl": b'{"item_id": "N9", "title": "caf\xe9"}\n'}, "add-items",
                                         "{base}/tiger", "{tmp}/n.jsonl"), "n.jsonl: not UTF-8 text at byte"),
    ("add-items CSV field over the csv limit", _files({"n.csv": "item_id,title\nN9," + "y" * 200_000 + "\n"},
                                                     "add-items", "{base}/tiger", "{tmp}/n.csv"), "line 2"),
    ("add-items CSV row wider than its header", _files({"n.csv": "item_id,title\nN9,a,b\n"}, "add-items",
                                                       "{base}/tiger", "{tmp}/n.csv"), "header"),
    ("add-items embeddings that are text", _files({"n.jsonl": '{"item_id": "N9", "title": "t"}\n', "e.npy": "1,2\n"},
                                                  "add-items", "{base}/tiger", "{tmp}/n.jsonl", "--embeddings",
                                                  "{tmp}/e.npy"), "--embeddings"),
    ("add-items embeddings empty file", _files({"n.jsonl": '{"item_id": "N9", "title": "t"}\n', "e.npy": b""},
                                               "add-items", "{base}/tiger", "{tmp}/n.jsonl", "--embeddings",
                                               "{tmp}/e.npy"), "e.npy"),
    ("refine-items CSV not UTF-8", _files({"i.csv": b"user_id,item_id\nU\xe9,N1\n"}, "refine-items", "{base}/tiger",
                                          "{tmp}/i.csv"), "i.csv: not UTF-8 text at byte 17"),
    ("refine-items JSONL not UTF-8", _files({"i.jsonl": b'{"user_id": "\xe9", "item_id": "N1"}\n'}, "refine-items",
                                            "{base}/tiger", "{tmp}/i.jsonl"), "i.jsonl: not UTF-8"),
    ("refine-items CSV field over the csv limit", _files({"i.csv": "user_id,item_id\n" + "u" * 200_000 + ",N1\n"},
                                                         "refine-items", "{base}/tiger", "{tmp}/i.csv"), "limit"),
    ("refine-items CSV row wider than its header", _files({"i.csv": "user_id,item_id\nu1,N1,zz\n"}, "refine-items",
                                                          "{base}/tiger", "{tmp}/i.csv"), "line 2"),
    # the environment the project reads
    ("WORLD_SIZE not a number", _env({"WORLD_SIZE": "abc"}, "train", *TINY, "--run-dir", R), "WORLD_SIZE"),
    ("WORLD_SIZE 0", _env({"WORLD_SIZE": "0"}, "train", *TINY, "--run-dir", R), "WORLD_SIZE"),
    ("WORLD_SIZE 2 without torchrun", _env({"WORLD_SIZE": "2"}, "train", *TINY, "--run-dir", R), "torchrun"),
    ("RANK not a number", _env({"RANK": "abc"}, "train", *TINY, "--run-dir", R), "RANK"),
    ("RANK 3 without torchrun", _env({"RANK": "3"}, "train", *TINY, "--run-dir", R), "RANK"),
    ("RANK negative", _env({"RANK": "-1"}, "train", *TINY, "--run-dir", R), "RANK"),
    ("LOCAL_RANK not a number", _env({"LOCAL_RANK": "abc"}, "train", *TINY, "--run-dir", R), "LOCAL_RANK"),
    ("LOCAL_RANK not a number, evaluate", _env({"LOCAL_RANK": "x1"}, "evaluate", "{base}/run"), "LOCAL_RANK"),
    ("OMP_NUM_THREADS not a number, quickstart", _env({"OMP_NUM_THREADS": "abc"}, "quickstart", "--run-dir", R),
     "OMP_NUM_THREADS"),
    ("OMP_NUM_THREADS not a number, train", _env({"OMP_NUM_THREADS": "abc"}, "train", *TINY, "--run-dir", R),
     "OMP_NUM_THREADS"),
    ("SIDREC_CACHE a file", _env({"SIDREC_CACHE": "{base}/file.txt"}, "train", *TINY, "--run-dir", R), "SIDREC_CACHE"),
    # dataset readers
    ("S3-Rec datamaps.json a list", _files({"s/sequential_data.txt": _S3, "s/datamaps.json": "[1, 2]"}, "data", "stats",
                                           "{tmp}/s"), "datamaps.json"),
    ("S3-Rec datamaps id2item a list", _files({"s/sequential_data.txt": _S3, "s/datamaps.json": '{"id2item": [1]}'},
                                              "data", "stats", "{tmp}/s"), "id2item"),
    ("S3-Rec id that int() half-accepts", _files({"s.txt": _S3 + "77 1 2 \u00b2\n"}, "data", "prepare",
                                                 "{tmp}/s.txt", "--format", "s3rec", "--out", R), "s.txt:40"),
    ("S3-Rec items.jsonl not UTF-8", _files({"s/sequential_data.txt": _S3, "s/items.jsonl": b'{"item_id": "1", '
                                             b'"title": "\xe9"}\n'}, "data", "stats", "{tmp}/s"), "items.jsonl"),
    ("S3-Rec datamaps.json not UTF-8", _files({"s/sequential_data.txt": _S3, "s/datamaps.json": b'{"id2item": '
                                               b'{"1": "\xe9"}}'}, "data", "stats", "{tmp}/s"), "datamaps.json"),
    ("LC-Rec items missing from item.json, strict", _files({"d.inter.json": _LC, "d.item.json": '{"0": {"title": "a"}}'},
                                                           "data", "prepare", "{tmp}/d.inter.json", "--strict-items",
                                                           "--out", R), "29 of the 30 items"),
    ("LC-Rec interactions not UTF-8", _files({"d.inter.json": b'{"1": ["\xe9"]}'}, "data", "stats",
                                             "{tmp}/d.inter.json"), "byte 8 (line 1)"),
    ("LC-Rec item.json not UTF-8", _files({"d.inter.json": _LC, "d.item.json": b'{"0": {"title": "\xe9"}}'}, "data",
                                          "stats", "{tmp}/d.inter.json"), "byte 17"),
    ("CSV with a 50 MB field", _files({"x.csv": "user,item,title\nu1,i1," + _BIG + "\n"}, "data", "stats",
                                      "{tmp}/x.csv"), "x.csv:2: a row of"),
    ("items CSV with a 50 MB field", _files({"d/interactions.csv": _CSV, "d/items.csv": "item,title\ni1," + _BIG + "\n"},
                                            "data", "stats", "{tmp}/d"), "16 MiB"),
    ("CSV not UTF-8", _files({"x.csv": _CSV.encode() + b"u\xe9,i1,9\n"}, "data", "stats", "{tmp}/x.csv"),
     "line 242"),
    ("items CSV not UTF-8", _files({"d/interactions.csv": _CSV, "d/items.csv": b"item,title\ni1,caf\xe9\n"}, "data",
                                   "prepare", "{tmp}/d", "--out", R), "items.csv: not UTF-8"),
    ("RecBole .inter not UTF-8", _files({"d/d.inter": _INTER.encode() + b"u\xe9\ti1\t9\n"}, "data", "stats", "{tmp}/d"),
     "d.inter: not UTF-8 text at byte"),
    ("sessions file not UTF-8", _files({"s.txt": b"I00001,\xe9\n"}, "recommend", "{base}/run", "--sessions",
                                       "{tmp}/s.txt"), "byte 7"),
    ("embed npy empty", _files({"e.npy": b""}, "embed", *DATA, "features.kind=npy", "features.npy_path={tmp}/e.npy"),
     "features.npy_path"),
    ("evaluate a SID source record cut short", _edited("tiger", "sid_table.source.json", "{", "evaluate", "{copy}"),
     "sid_table.source.json"),
    # quickstart: a catalogue its TIGER cannot split
    ("quickstart one item", _args("quickstart", "--items", "1", "--run-dir", R), "--items"),
    ("quickstart fewer items than codes", _args("quickstart", "--items", "15", "--users", "50", "--run-dir", R),
     "--items"),
    # YAML keys given twice: the first block used to be dropped silently
    ("config section given twice", _dup_section, "line 1"),
    ("config key given twice", _files({"c.yaml": "train:\n  epochs: 1\n  epochs: 2\n"}, "config", "show", "-c",
                                      "{tmp}/c.yaml"), "c.yaml:3: duplicate key 'train.epochs'"),
    ("config base with a key given twice", _files({"b.yaml": "seed: 1\nseed: 2\n", "c.yaml": "base: b.yaml\n"},
                                                  "config", "show", "-c", "{tmp}/c.yaml"), "b.yaml:2"),
    ("run config.yaml with a key given twice", _edited("run", "config.yaml", lambda t: t + "seed: 3\n", "evaluate",
                                                       "{copy}"), "duplicate key 'seed'"),
]


@pytest.mark.parametrize(("setup", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(base, tmp_path, monkeypatch, capsys, setup, needle):
    case = tmp_path / "case"
    case.mkdir()
    argv = setup(base, case)
    for key, value in getattr(argv, "env", {}).items():
        monkeypatch.setenv(key, value)
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
    assert len(CASES) >= 150
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


# ---------------------------------------------------------------------------------------------- the Python API
@pytest.fixture(scope="module")
def rec(base):
    """The shared tiny SASRec run, loaded through the API."""
    import sidrec

    return sidrec.load(base / "run")


def _recommend(**kwargs):
    """A case that calls ``rec.recommend`` with a real history unless the case gives its own."""
    def call(rec, base, tmp):
        args = {"history": rec.items[:2], **kwargs}
        if "user" in kwargs:
            args.pop("history")
        return rec.recommend(**args)
    return call


def _train(*args, **kwargs):
    """A case that calls ``sidrec.train``; settings that would train anything point at a dataset that is not there."""
    def call(rec, base, tmp):
        import sidrec

        return sidrec.train(*args, **kwargs)
    return call


_NO_DATA = ["data.path=/nonexistent/sidrec-data"]
API_CASES: list[tuple[str, Callable, str]] = [
    ("k a float", _recommend(k=2.5), "k"),
    ("k a string", _recommend(k="5"), "k"),
    ("k a boolean", _recommend(k=True), "k"),
    ("k None", _recommend(k=None), "k"),
    ("k NaN", _recommend(k=float("nan")), "k"),
    ("user an empty list", _recommend(user=[]), "user"),
    ("user a number not in the dataset", _recommend(user=123), "user"),
    ("user a boolean", _recommend(user=True), "user"),
    ("user a mapping", _recommend(user={}), "user"),
    ("user a float", _recommend(user=1.5), "user"),
    ("user [None]", _recommend(user=[None]), "user"),
    ("user a list of lists", lambda rec, b, t: rec.recommend(user=[[rec.users[0]]]), "user"),
    ("history [None]", _recommend(history=[None]), "history"),
    ("history a mapping", _recommend(history={"I00001": 1}), "history"),
    ("history a number", _recommend(history=5), "history"),
    ("history [1.5]", _recommend(history=[1.5]), "history"),
    ("history a set", _recommend(history={"I00001"}), "history"),
    ("history [[None]]", _recommend(history=[[None]]), "history"),
    ("history of bytes", _recommend(history=[b"I00001"]), "history"),
    ("history nested three deep", lambda rec, b, t: rec.recommend(history=[[[rec.items[0]]]]), "history"),
    ("history mixing ids and lists", lambda rec, b, t: rec.recommend(history=[rec.items[0], [rec.items[1]]]),
     "history"),
    ("exclude None", _recommend(exclude=None), "exclude"),
    ("exclude [None]", _recommend(exclude=[None]), "exclude"),
    ("exclude a mapping", lambda rec, b, t: rec.recommend(history=rec.items[:2], exclude={rec.items[0]: 1}),
     "exclude"),
    ("skip_unknown a string", _recommend(skip_unknown="yes"), "skip_unknown"),
    ("train config a number", _train(5), "config"),
    ("train config a mapping", _train({"train": {"epochs": 1}}), "config"),
    ("train config a list holding a number", _train([5]), "config"),
    ("train overrides one string", _train(None, "train.lr=1"), "overrides"),
    ("train overrides holding a number", _train(None, [5]), "overrides"),
    ("train overrides without '='", _train(None, _NO_DATA + ["train.lr"]), "overrides"),
    ("train resume a string", _train(None, _NO_DATA, resume="no"), "resume"),
    ("train overwrite a string", _train(None, _NO_DATA, overwrite="yes"), "overwrite"),
    ("load a number", lambda rec, b, t: __import__("sidrec").load(5), "run_dir"),
    ("load None", lambda rec, b, t: __import__("sidrec").load(None), "run_dir"),
    ("load weights a number", lambda rec, b, t: __import__("sidrec").load(b / "run", 5), "weights"),
    ("Recommender of a number", lambda rec, b, t: __import__("sidrec").Recommender(5), "run_dir"),
]


@pytest.mark.parametrize(("call", "argument"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_api_argument_is_a_sidrec_error_naming_it(base, rec, tmp_path, monkeypatch, call, argument):
    from sidrec.errors import SidrecError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SidrecError) as info:
        call(rec, base, tmp_path)
    assert isinstance(info.value, ValueError)
    assert f"argument '{argument}'" in str(info.value), str(info.value)
    assert not list(tmp_path.iterdir()), "a refused call wrote files"


def test_api_table_is_large():
    assert len(API_CASES) >= 25


def test_one_id_is_one_id_never_its_characters(rec):
    """``exclude="I00009"`` used to be read as the set of characters {'I', '0', '9'} and I00009 came first."""
    history = rec.items[:2]
    top = rec.recommend(history=history, k=5)
    first = top[0][0]
    without = rec.recommend(history=history, k=5, exclude=first)
    assert first not in [i for i, _ in without] and len(without) == 5
    assert without == rec.recommend(history=history, k=5, exclude=[first])
    # one item id as the history is a history of that item
    assert rec.recommend(history=rec.items[3], k=3) == rec.recommend(history=[rec.items[3]], k=3)


def test_unknown_ids_name_the_argument(rec):
    from sidrec.errors import SidrecError

    with pytest.raises(SidrecError, match="argument 'history': unknown item id 'nope'"):
        rec.recommend(history=["nope"])
    with pytest.raises(SidrecError, match="argument 'user': unknown user 'nobody'"):
        rec.recommend(user="nobody")


def test_recommend_answers_or_refuses_any_json_like_value(rec):
    """Random JSON-like values (and real ids) for every argument of ``recommend``: a list of (id, score), a list of
    such lists, or a SidrecError; never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sidrec.errors import SidrecError

    ids = st.sampled_from(rec.items[:8] + rec.users[:4])
    scalars = st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats(allow_nan=True) | st.text(max_size=6) | ids
    json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3),
                                                                                                  inner, max_size=3),
                             max_leaves=10)
    absent = st.just(Ellipsis)
    arguments = st.fixed_dictionaries({
        "history": absent | json_like | st.lists(ids, max_size=5) | st.lists(st.lists(ids, max_size=4), max_size=3),
        "user": absent | json_like | st.sampled_from(rec.users[:4]) | st.lists(st.sampled_from(rec.users[:4]),
                                                                               max_size=3),
        "k": absent | json_like | st.integers(-2, 60),
        "exclude": absent | json_like | st.lists(ids, max_size=3),
        "skip_unknown": absent | json_like,
    })

    def is_row(row):
        return isinstance(row, list) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                             and isinstance(p[1], float) for p in row)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(arguments)
    def check(args):
        kwargs = {k: v for k, v in args.items() if v is not Ellipsis}
        try:
            out = rec.recommend(**kwargs)
        except SidrecError:
            return
        assert is_row(out) or (isinstance(out, list) and all(is_row(r) for r in out)), out

    check()


# --------------------------------------------------------------------------------------- readers, said not refused
def test_ids_that_int_half_accepts_are_read_as_strings(tmp_path, capsys):
    """A superscript digit passes ``str.isdigit`` but not ``int``: such ids crashed the readers' sorting."""
    (tmp_path / "x.csv").write_text(_CSV + "\u00b2,i1,9\n\u00b2,i2,10\n\u00b2,i3,11\n")
    assert cli("data", "prepare", str(tmp_path / "x.csv"), "--out", str(tmp_path / "p")) == 0
    from sidrec.data.dataset import Dataset

    assert "\u00b2" in Dataset.load(tmp_path / "p").user_ids
    (tmp_path / "d.inter.json").write_text(_LC[:-1] + ', "99": [1, 2, "\u00b3"]}')
    assert cli("data", "stats", str(tmp_path / "d.inter.json")) == 0


def test_items_missing_from_item_json_are_counted_and_reported(tmp_path, capsys):
    (tmp_path / "d.inter.json").write_text(_LC)
    (tmp_path / "d.item.json").write_text('{"0": {"title": "a"}, "1": {"title": "b"}}')
    capsys.readouterr()
    assert cli("data", "stats", str(tmp_path / "d.inter.json")) == 0
    err = capsys.readouterr().err
    assert "sidrec: warning:" in err and "28 of the 30 items" in err and "d.item.json" in err, err
    assert cli("data", "stats", str(tmp_path / "d.inter.json"), "--strict-items") == 2


def test_a_short_synthetic_catalogue_is_generated():
    """Fewer items than the generator's 24 topics used to crash with numpy's 'high <= 0'."""
    from sidrec.data.synthetic import generate

    ds = generate(n_users=40, n_items=5)
    assert ds.n_items == 5 and ds.n_users > 0
