"""SASRec (full-softmax cross-entropy) on Beauty, Sports and Toys with the configs in configs/<dataset>/.

Usage: python benchmarks/sasrec.py [beauty sports toys] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from sidrec.config import load_config
from sidrec.pipeline import train

from _common import REPO, run_records, save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty", "sports", "toys"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs=argparse.REMAINDER, default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.datasets:
        cfg = load_config([REPO / "configs" / name / "sasrec.yaml"],
                          [f"run_dir=runs/bench/sasrec-{name}", f"train.threads={args.threads}",
                           "train.progress=false"] + args.overrides)
        t0 = time.time()
        res = train(cfg)
        wall = time.time() - t0
        variant = f"d{cfg.sasrec.d_model} L{cfg.sasrec.n_layers} len{cfg.data.max_len} CE"
        recs = run_records(name, "sasrec", variant, res, wall)
        recs += run_records(name, "popularity", "train frequency", {"test": res["popularity_test"]}, 0.0)
        for r in recs:
            r["metrics"]["epochs"] = res["summary"]["epochs"]
            r["metrics"]["best_epoch"] = res["summary"]["best_epoch"]
        save("sasrec", recs)
        t = res["test"]["all"]
        print(f"{name}: test R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f} in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
