"""A two-process torchrun (gloo on CPU) trains and evaluates through the normal code path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_processes(tmp_path):
    torchrun = shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        cmd + ["--standalone", "--nproc_per_node=2", "-m", "sidrec.cli", "train", "data.path=synthetic",
               "data.synthetic_users=300", "data.synthetic_items=80", "train.epochs=20", "sasrec.d_model=16",
               "train.batch_size=32", "sasrec.ffn_dim=32", "train.lr=5e-3", "train.progress=false",
               "--run-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["summary"]["epochs"] == 20
    # 10 epochs left this tiny model level with popularity (CI: .163 vs .165); 20 clear it by ~2x
    assert m["test"]["all"]["ndcg@10"] > 1.3 * m["popularity_test"]["all"]["ndcg@10"]
    log = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert len(log) == 20  # rank 0 alone logs


def test_torchrun_trains_acerec(tmp_path):
    """ACERec under DistributedDataParallel: every parameter must get a gradient on every rank (DDP refuses a
    model with unused ones); this runs it end to end with the synthetic config's OPQ IDs."""
    torchrun = shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        cmd + ["--standalone", "--nproc_per_node=2", "-m", "sidrec.cli", "train", "-c", "configs/data/synthetic.yaml",
               "-c", "configs/acerec-small.yaml",
               "data.synthetic_users=400", "train.epochs=3", "acerec.d_model=32",
               "acerec.ffn_dim=64", "train.progress=false", "--run-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).resolve().parents[1],
    )
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["summary"]["epochs"] == 3 and m["test"]["all"]["n_users"] == 400
