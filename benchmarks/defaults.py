"""Each method with no setting but the data: the preset of this machine on a 2,000-item catalogue (issue #27).

Usage:
  python benchmarks/defaults.py prepare                     # runs/data/beauty-2k from ../shared/data (Beauty)
  python benchmarks/defaults.py run [tiger acerec sasrec content] [--minutes 10] [--threads 1]
  python benchmarks/defaults.py run tiger acerec --minutes 0  # the same presets trained to convergence
  python benchmarks/defaults.py run sasrec acerec --minutes 0 train.schedule=plateau   # one setting changed

``prepare`` keeps Beauty's 2,000 most-interacted items and the users with at least 5 interactions among them
(the size of the shops a new user brings: 1,585-2,420 items), as a prepared dataset with the items' text.
``run`` trains ``sidrec train method=NAME data.path=runs/data/beauty-2k`` through the command line, i.e. with
the preset that ``size: auto`` resolves to on this machine (the CPU presets here), ``train.max_minutes`` as
the only budget (0 = epochs + patience), ``train.threads`` as the only machine setting and the ``key=value``
settings given (each named in the variant and the run directory), and records per
split and subset the model alone and fused with the content signal, with the epoch count, the mean and first
epoch time (from the run's log.jsonl) and the wall time of the whole command.
Writes benchmarks/results/defaults.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import REPO, SHARED, grounded_records, save, split_positionals

DATA = REPO / "runs" / "data" / "beauty-2k"
N_ITEMS, MIN_USER = 2000, 5


def cmd_prepare() -> None:
    from sidrec.data.dataset import Dataset
    from sidrec.data.formats import load_dataset

    ds = load_dataset(SHARED / "amazon14_beauty", name="beauty")
    counts = np.bincount(ds.flat, minlength=ds.n_items)
    keep = np.sort(np.argsort(-counts, kind="stable")[:N_ITEMS])
    new_index = np.full(ds.n_items, -1)
    new_index[keep] = np.arange(len(keep))
    seqs, users = [], []
    for u in range(ds.n_users):  # one pass over 22k users at preparation time, not a hot path
        s = new_index[ds.sequence(u)]
        s = s[s >= 0]
        if len(s) >= MIN_USER:
            seqs.append(s)
            users.append(ds.user_ids[u])
    items = {k: [v[i] for i in keep] for k, v in ds.items.items()}
    small = Dataset.from_sequences("beauty-2k", seqs, [ds.item_ids[i] for i in keep], users, items,
                                   source=f"{ds.source}: the {N_ITEMS} most-interacted items, users with >= {MIN_USER}")
    if DATA.exists():
        shutil.rmtree(DATA)
    small.save(DATA)
    print(f"{DATA}: {small.n_users} users, {small.n_items} items, {small.n_interactions} interactions", flush=True)


def _epochs(run: Path) -> tuple[int, float, float]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    times = [float(r["epoch_s"]) for r in rows if "epoch_s" in r]
    return len(times), float(np.mean(times)) if times else 0.0, times[0] if times else 0.0


def cmd_run(methods: list[str], minutes: float, threads: int, settings: list[str]) -> None:
    if not (DATA / "users.parquet").exists():
        raise SystemExit(f"{DATA} is missing: run `python benchmarks/defaults.py prepare` first")
    for method in methods:
        cap = f"{minutes:g}-min cap" if minutes else "to convergence"
        tag = "".join(f"-{o.split('=', 1)[0].split('.')[-1]}{o.split('=', 1)[1]}" for o in settings)
        run = REPO / "runs" / "bench" / f"defaults-beauty-2k-{method}-{cap.replace(' ', '')}{tag}"
        cmd = [sys.executable, "-m", "sidrec.cli", "train", f"method={method}", f"data.path={DATA}",
               f"train.max_minutes={minutes:g}", f"train.threads={threads}", "train.progress=false",
               *settings, "--run-dir", str(run), "--overwrite"]
        print(" ".join(cmd[1:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=REPO)
        wall = time.time() - t0
        res = json.loads((run / "metrics.json").read_text())
        cfg_size = next((ln.split(":", 1)[1].strip() for ln in (run / "config.yaml").read_text().splitlines()
                         if ln.startswith("size:")), "?")
        n, mean_s, first_s = _epochs(run) if (run / "log.jsonl").exists() else (0, 0.0, 0.0)
        named = f"only {' '.join(settings)}" if settings else "no settings"
        recs = grounded_records("beauty-2k", method, f"{named} (preset size {cfg_size}), {cap}", res, wall)
        for r in recs:
            r["metrics"].update(epochs=n, mean_epoch_s=round(mean_s, 1), first_epoch_s=round(first_s, 1))
            r["command"] = " ".join(["sidrec", *cmd[3:]])
        save("defaults", recs)
        t = res["test"]["all"]
        print(f"{method} ({cap}, size {cfg_size}): test N@10 {t['ndcg@10']:.4f} R@10 {t['recall@10']:.4f}, "
              f"{n} epochs, {mean_s:.0f} s/epoch, {wall / 60:.1f} min", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["prepare", "run"])
    ap.add_argument("methods", nargs="*", help="methods (default tiger acerec) and key=value settings")
    ap.add_argument("--minutes", type=float, default=10.0, help="train.max_minutes of each run (0 = no cap)")
    ap.add_argument("--threads", type=int, default=1, help="train.threads of each run")
    args = ap.parse_intermixed_args()  # key=value settings may follow the options
    if args.command == "prepare":
        cmd_prepare()
    else:
        methods, settings = split_positionals(args.methods, ["tiger", "acerec"])
        cmd_run(methods, args.minutes, args.threads, settings)


if __name__ == "__main__":
    main()
