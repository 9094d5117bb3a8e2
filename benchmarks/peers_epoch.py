"""One training epoch of sidrec's SASRec against one epoch of a peer's code on the same data, as a ratio (issue 57).

Why: the issue's acceptance asks how the cost of training compares, not only the accuracy. A peer that reaches its
number in 42 epochs of 7 minutes and sidrec's backbone in 30 epochs of 1 minute are not the same offer. Both sides
are timed in one run, on the same machine, data and thread count, so the ratio holds even where the absolute
seconds depend on the day's load (which is recorded: ``loadavg``).

- **sidrec**: ``configs/data/beauty.yaml`` + ``configs/sasrec.yaml`` (``train.threads=1``), built by the pipeline's
  own builder and trained by the shared ``Trainer`` for one epoch (``train.epochs=1``); the time is the epoch's
  ``epoch_s`` from ``log.jsonl`` (the training steps and the epoch's batches, not the validation after them).
  It is run once before and once after the peer, and the ratio uses their mean, so a load that changes during
  the run does not favour either side.
- **the peer** (TV-Rec, github.com/yehjin-shin/TV-Rec): their ``main.py``, unmodified, run in a subprocess from
  ``--peer-repo`` (a scratch checkout outside the project) with the arguments of their Beauty log / ``run.sh``
  (``--lr 0.0005 --reg_weight 0 --hidden_dropout_prob 0.5 --M 32 --max_seq_length 50``, batch 256, seed 42) plus
  ``--no_cuda --num_workers 0`` (their default is 8 loader processes; one thread means one process here) and an
  output folder in a temporary directory. ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``. The subprocess
  wraps their ``Trainer.train`` with a timer before ``main.py`` runs, times the first call (epoch 0, their data
  loader included) and stops the run there (no validation, no test). Nothing of theirs is copied into the project.

Both epochs cover the same targets: each user's last ``max_len + 1`` training items give ``max_len`` next-item
targets, sidrec as one row per user (every position trained), TV-Rec as one sample per prefix (the last position
trained); the record states both counts.

``--peer-batches N`` times the peer's first N batches only and scales to its epoch (recorded as ``timed_batches``).

Usage: python benchmarks/peers_epoch.py --peer-repo /work/scratch/TV-Rec [--threads 1] [--peer-batches N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from peers import peer_commit
from sidrec.config import load_config
from sidrec.data.protocol import LeaveOneOut
from sidrec.methods.registry import get_builder
from sidrec.pipeline import dataset_from_config, seed_everything
from sidrec.training.trainer import Trainer

from _common import REPO, record, save

THEIR_BEAUTY = ["--data_name", "Beauty", "--model_type", "TVRec", "--lr", "0.0005", "--reg_weight", "0",
                "--hidden_dropout_prob", "0.5", "--M", "32", "--max_seq_length", "50", "--batch_size", "256",
                "--seed", "42", "--train_name", "epoch_timing", "--no_cuda", "--num_workers", "0"]

# runs in the peer's checkout: their main.py unmodified, its Trainer.train timed and the run ended after epoch 0
PEER_DRIVER = r"""
import itertools, json, os, runpy, sys, time
import torch
torch.set_num_threads(int(os.environ["PEER_THREADS"]))
sys.path.insert(0, os.getcwd())
import dataset, trainers
_train = trainers.Trainer.train
LIMIT = int(os.environ["PEER_BATCHES"])
class Done(Exception):
    pass
class First:
    def __init__(self, loader, n):
        self.loader, self.n = loader, n
    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)
    def __len__(self):
        return self.n
def timed(self, epoch):
    full = self.train_dataloader
    n = len(full) if LIMIT <= 0 else min(LIMIT, len(full))
    self.train_dataloader = First(full, n)
    t0 = time.perf_counter()
    _train(self, epoch)
    out = {"timed_s": time.perf_counter() - t0, "timed_batches": n, "samples": len(full.dataset),
           "batches": len(full), "threads": torch.get_num_threads()}
    print("PEER_EPOCH " + json.dumps(out), flush=True)
    raise Done
trainers.Trainer.train = timed
sys.argv = ["main.py"] + json.loads(os.environ["PEER_ARGS"])
try:
    runpy.run_path("main.py", run_name="__main__")
except Done:
    pass
"""


def sidrec_epoch(threads: int, run_dir: Path) -> dict[str, Any]:
    """One epoch of configs/sasrec.yaml on Beauty through the pipeline's builder and the shared Trainer."""
    cfg = load_config([REPO / "configs" / "data" / "beauty.yaml", REPO / "configs" / "sasrec.yaml"],
                      [f"train.threads={threads}", "train.epochs=1", "train.progress=false", f"run_dir={run_dir}"])
    torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    ds = dataset_from_config(cfg)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    task = get_builder(cfg.method)(cfg, ds, split, run_dir)
    task.to(torch.device("cpu"))
    seed_everything(cfg.seed)
    targets = sum(int((b["target"] >= 0).sum()) for b in task.train_batches(0))
    batches = len(task.train_batches(0))
    trainer = Trainer(task, cfg.train, run_dir, cfg.seed)
    trainer.fit()
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"epoch_s": float(log[0]["epoch_s"]), "samples": targets, "batches": batches,
            "threads": torch.get_num_threads()}


def peer_epoch(repo: Path, threads: int, out_dir: Path, batches: int = 0) -> dict[str, Any]:
    """One epoch of their main.py (Beauty, their logged arguments) in a subprocess, timed inside it; ``batches`` > 0
    times only the epoch's first batches and scales the time to the whole epoch (their batches are all alike: 256
    random samples, each padded to ``max_seq_length``, so the time per batch is flat)."""
    args = THEIR_BEAUTY + ["--output_dir", str(out_dir) + "/"]
    out_dir.mkdir(parents=True, exist_ok=True)  # their logger opens its file before main.py creates the folder
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PEER_THREADS": str(threads), "PEER_ARGS": json.dumps(args), "PEER_BATCHES": str(batches)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEER_DRIVER], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER_EPOCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"their main.py failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1].split(" ", 1)[1])
    out["epoch_s"] = out["timed_s"] * out["batches"] / out["timed_batches"]
    out["process_wall_s"] = round(wall, 2)
    out["command"] = "python main.py " + " ".join(args)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer-repo", type=Path, required=True, help="scratch checkout of yehjin-shin/TV-Rec")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer-batches", type=int, default=0,
                    help="time only the peer's first N batches and scale to its epoch (0 = the whole epoch): on a "
                         "loaded 2-core machine their epoch alone can take 20 minutes")
    a = ap.parse_args()
    load = [os.getloadavg()]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peers_epoch_") as tmp:
        ours = [sidrec_epoch(a.threads, Path(tmp) / "sidrec_before")]
        load.append(os.getloadavg())
        theirs = peer_epoch(a.peer_repo, a.threads, Path(tmp) / "peer", a.peer_batches)
        load.append(os.getloadavg())
        ours.append(sidrec_epoch(a.threads, Path(tmp) / "sidrec_after"))
        load.append(os.getloadavg())
    ours_s = sum(o["epoch_s"] for o in ours) / len(ours)
    ratio = theirs["epoch_s"] / ours_s
    per_target = (theirs["epoch_s"] / theirs["samples"]) / (ours_s / ours[0]["samples"])
    print(f"sidrec SASRec epoch {[round(o['epoch_s'], 1) for o in ours]} s ({ours[0]['samples']} targets, "
          f"{ours[0]['batches']} batches); TV-Rec epoch {theirs['epoch_s']:.1f} s ({theirs['samples']} samples, "
          f"{theirs['batches']} batches); ratio TV-Rec / sidrec {ratio:.2f} (per target {per_target:.2f}); "
          f"load average {[round(x[0], 2) for x in load]}")
    metrics = {"sidrec_epoch_s": round(ours_s, 2), "peer_epoch_s": round(theirs["epoch_s"], 2),
               "epoch_ratio": round(ratio, 3), "per_target_ratio": round(per_target, 3)}
    rec = record("beauty", "epoch time: tvrec (their code) / sasrec (sidrec)", "configs/sasrec.yaml vs run.sh Beauty",
                 "train", "all", metrics, time.perf_counter() - t_start, threads=a.threads,
                 sidrec={"config": "configs/data/beauty.yaml + configs/sasrec.yaml, train.threads=1",
                         "epoch_s_before_after": [round(o["epoch_s"], 2) for o in ours],
                         "targets": ours[0]["samples"], "batches": ours[0]["batches"]},
                 peer={"repo": f"yehjin-shin/TV-Rec@{peer_commit(a.peer_repo)}", "command": theirs["command"],
                       "samples": theirs["samples"], "batches": theirs["batches"],
                       "timed_batches": theirs["timed_batches"], "timed_s": round(theirs["timed_s"], 2),
                       "process_wall_s": theirs["process_wall_s"]},
                 loadavg_1_5_15=[[round(v, 2) for v in x] for x in load],
                 note="timing record (no ranking metrics); 2 cores shared with other training jobs, see loadavg")
    print(save("peers", [rec]))


if __name__ == "__main__":
    main()
