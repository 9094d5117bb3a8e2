"""SASRec (full-softmax cross-entropy) on Beauty, Sports and Toys with configs/data/<dataset>.yaml +
configs/sasrec.yaml, trained to convergence (patience, no minute cap), alone and grounded in content
(``sasrec+content``: late fusion with the content similarity, lambda chosen on validation; see
src/sidrec/fusion.py).

Usage: python benchmarks/sasrec.py [beauty sports toys] [--threads 2] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sidrec.config import load_config
from sidrec.pipeline import fuse, load_run, train

from _common import REPO, grounded_records, run_records, save, split_positionals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty", "sports", "toys"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the run directory and the variant name (A/B settings)")
    ap.add_argument("--reuse", action="store_true", help="re-evaluate an existing runs/bench run instead of training")
    args = ap.parse_intermixed_args()
    args.datasets, args.overrides = split_positionals(args.datasets, ["beauty", "sports", "toys"])
    torch.set_num_threads(args.threads)
    for name in args.datasets:
        run_dir = f"runs/bench/sasrec-{name}" + (f"-{args.tag}" if args.tag else "")
        cfg = load_config([REPO / "configs" / "data" / f"{name}.yaml", REPO / "configs" / "sasrec.yaml"],
                          [f"run_dir={run_dir}", f"train.threads={args.threads}", "train.progress=false"] + args.overrides)
        run = REPO / cfg.run_dir
        t0 = time.time()
        if args.reuse and (run / "metrics.json").exists():
            res = json.loads((run / "metrics.json").read_text())
            wall = res["wall_s"]
            if "fusion" not in res:  # trained before content grounding: choose its fusion now (no retraining)
                res = fuse(run)
        else:
            res = train(cfg, overwrite=True)  # a benchmark re-run replaces its earlier run
            wall = time.time() - t0
        variant = f"d{cfg.sasrec.d_model} L{cfg.sasrec.n_layers} len{cfg.data.max_len} CE"
        variant += f", {args.tag}" if args.tag else ""
        recs = grounded_records(name, "sasrec", variant, res, wall)
        # the same checkpoint with the user's own history items removed from the ranking (RecBole's full-sort
        # protocol; these datasets never repeat an item in a sequence, so a seen item is never a target)
        _, _, _, task = load_run(run)
        task.cfg.eval.exclude_history = True
        task.fusion = type(task.fusion)()  # the model alone, as before grounding
        seen = {s: task.evaluate(task.model, s) for s in ("valid", "test")}
        recs += run_records(name, "sasrec", variant + ", seen items excluded", seen, wall)
        recs += run_records(name, "popularity", "train frequency", {"test": res["popularity_test"]}, 0.0)
        for r in recs:
            r["metrics"]["epochs"] = res["summary"]["epochs"]
            r["metrics"]["best_epoch"] = res["summary"]["best_epoch"]
        save("sasrec", recs)
        t, x = res["model_only"]["test"]["all"], seen["test"]["all"]
        g, f = res["test"]["all"], res["fusion"]
        print(f"{name}: test R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f} (seen items excluded: "
              f"{x['recall@10']:.4f} / {x['ndcg@10']:.4f}); + content (lambda {f['lambda']:g}/{f['lambda_cold']:g}) "
              f"{g['recall@10']:.4f} / {g['ndcg@10']:.4f}; {res['summary']['epochs']} epochs in {wall / 60:.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
