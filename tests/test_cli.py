"""The command line as a user runs it: exit codes, one-line errors, end-to-end commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "sidrec.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def _assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def test_missing_file_and_unknown_format(tmp_path):
    _assert_clean_error(run("data", "stats", str(tmp_path / "nope")), "not found")
    (tmp_path / "weird.bin").write_bytes(b"\x00\x01")
    _assert_clean_error(run("data", "stats", str(tmp_path)), "unknown dataset format")


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "seq.txt").write_text("1 1 2 3\n2 4 x5\n3 5 6\n")
    _assert_clean_error(run("data", "stats", "--format", "s3rec", str(tmp_path)), "seq.txt:2")


def test_unknown_config_key_and_bad_type():
    _assert_clean_error(run("train", "train.lrr=1e-3"), "did you mean 'train.lr'")
    _assert_clean_error(run("train", "train.epochs=abc"), "train.epochs")


def test_prepare_stats_and_json(tmp_path):
    out = tmp_path / "prep"
    p = run("data", "prepare", "synthetic", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert (out / "sidrec_dataset.json").exists()
    p = run("data", "stats", str(out), "--json")
    s = json.loads(p.stdout)
    assert s["items"] == 600 and s["test_users"]["cold"] + s["test_users"]["warm"] == s["test_users"]["all"]


def test_train_evaluate_recommend(tmp_path):
    run_dir = tmp_path / "run"
    p = run("train", "data.path=synthetic", "data.synthetic_users=300", "data.synthetic_items=80",
            "train.epochs=2", "sasrec.d_model=16", "sasrec.ffn_dim=32", "--run-dir", str(run_dir))
    assert p.returncode == 0, p.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m["test"]) >= {"all", "warm", "cold", "bucket_0-5", "bucket_>20"}
    assert "recall@10" in m["test"]["all"] and m["test"]["all"]["n_users"] > 0
    p = run("evaluate", str(run_dir), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["test"]["all"] == pytest.approx(m["test"]["all"])
    p = run("recommend", str(run_dir), "--user", "U000001", "-k", "5", "--json")
    assert p.returncode == 0 and len(json.loads(p.stdout)[0]["recommendations"]) == 5, p.stdout
    _assert_clean_error(run("recommend", str(run_dir), "--user", "nobody"), "unknown user")
    _assert_clean_error(run("evaluate", str(tmp_path)), "not a run directory")
    _assert_clean_error(run("train", "--resume", "--run-dir", str(tmp_path / "fresh"), "data.path=synthetic"),
                        "nothing to resume")


def test_quickstart_runs_end_to_end_small(tmp_path):
    p = run("quickstart", "--run-dir", str(tmp_path / "qs"), "--users", "300", "--items", "100")
    assert p.returncode == 0, p.stderr[-2000:]
    for method in ("sasrec", "tiger"):
        m = json.loads((tmp_path / "qs" / method / "metrics.json").read_text())
        assert m["test"]["all"]["n_users"] == 300
    assert "popularity" in p.stdout and "tiger" in p.stdout


def test_training_outside_a_terminal_prints_a_line_per_epoch(tmp_path):
    """Under nohup, CI or a pipe there is no progress bar; each epoch still says where the run is."""
    p = run("train", "data.path=synthetic", "data.synthetic_users=200", "data.synthetic_items=60", "train.epochs=2",
            "sasrec.d_model=8", "sasrec.ffn_dim=16", "sasrec.n_layers=1", "fusion.lambdas=[0]",
            "--run-dir", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ") and "valid ndcg@10" in lines[0]
