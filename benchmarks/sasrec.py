"""SASRec (full-softmax cross-entropy) on Beauty, Sports and Toys with configs/data/<dataset>.yaml +
configs/sasrec.yaml (or ``--config sasrec-content.yaml``), trained to convergence (patience, no minute cap), alone
and grounded in content (``sasrec+content``: late fusion with the content similarity, lambda chosen on validation;
see src/sidrec/fusion.py).

One protocol per row (``--protocol``, ``eval.protocol``): early stopping and lambda are chosen on that protocol's
validation metric, and its records say so (``protocol``); the two protocols are never mixed in one row.
``--protocol exclude keep`` trains once and selects twice (``eval.also_protocol``: the second protocol's early
stopping, fusion and test from the same training, in RUN/keep/; equal to a run of its own with the same seed,
tests/test_history_protocol.py). Several ``--seeds`` give the seeds' spread (docs/RESULTS.md renders mean +/- sd
per protocol).

Usage: python benchmarks/sasrec.py [beauty sports toys] [--config sasrec.yaml] [--protocol exclude [keep]]
       [--seeds 42 43 44] [--threads 1] [--tag NAME] [--reuse] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from sidrec.config import load_config
from sidrec.pipeline import fuse

from _common import (
    REPO,
    add_protocol_option,
    grounded_records,
    protocol_overrides,
    protocol_results,
    run_records,
    save,
    split_positionals,
    train_or_resume,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty", "sports", "toys"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default="sasrec.yaml", help="the method setting in configs/ (sasrec-content.yaml: "
                                                             "content-initialised item table)")
    add_protocol_option(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--tag", default="", help="suffix of the run directory and the variant name (A/B settings)")
    ap.add_argument("--reuse", action="store_true", help="record an existing runs/bench run instead of training")
    args = ap.parse_intermixed_args()
    args.datasets, args.overrides = split_positionals(args.datasets, ["beauty", "sports", "toys"])
    torch.set_num_threads(args.threads)
    tag = args.tag or ("content-init" if args.config == "sasrec-content.yaml" else "")
    for name in args.datasets:
        for seed in args.seeds:
            run_one(name, seed, tag, args)


def run_one(name: str, seed: int, tag: str, args: argparse.Namespace) -> None:
    run_dir = f"runs/bench/sasrec-{name}" + (f"-{tag}" if tag else "") + f"-{args.protocol[0]}-seed{seed}"
    cfg = load_config([REPO / "configs" / "data" / f"{name}.yaml", REPO / "configs" / args.config],
                      [f"run_dir={run_dir}", f"train.threads={args.threads}", "train.progress=false", f"seed={seed}"]
                      + protocol_overrides(args.protocol) + args.overrides)
    run = REPO / cfg.run_dir
    res, wall = _result(run, cfg, args)
    for protocol, r in protocol_results(run, res, args.protocol):
        _record(name, seed, tag, cfg, protocol, r, wall, args)


def _result(run, cfg, args: argparse.Namespace) -> tuple[dict, float]:
    """The run's metrics (trained now, or read back with ``--reuse``)."""
    if args.reuse and (run / "metrics.json").exists():
        res = json.loads((run / "metrics.json").read_text())
        wall = res["wall_s"]
        if "fusion" not in res:  # trained before content grounding: choose its fusion now (no retraining)
            res = fuse(run)
        # runs trained before metrics.json named its protocol: the run's own config says which it was
        res.setdefault("protocol", load_config([run / "config.yaml"]).eval.protocol)
    else:
        res, wall = train_or_resume(cfg, run, args.reuse)
    return res, wall


def _record(name: str, seed: int, tag: str, cfg, protocol: str, res: dict, wall: float,
            args: argparse.Namespace) -> None:
    variant = f"d{cfg.sasrec.d_model} L{cfg.sasrec.n_layers} len{cfg.data.max_len} CE" + (f", {tag}" if tag else "")
    extra = {"seed": seed, "epochs": res["summary"]["epochs"], "best_epoch": res["summary"]["best_epoch"]}
    recs = grounded_records(name, "sasrec", variant, res, wall, **extra)
    recs += run_records(name, "popularity", "train frequency", {"test": res["popularity_test"]}, 0.0,
                        protocol=protocol, seed=None)
    save("sasrec", recs, reused=args.reuse)
    t, g, f = res["model_only"]["test"]["all"], res["test"]["all"], res["fusion"]
    print(f"{name} [{protocol}, seed {seed}]: test R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f}; + content "
          f"(lambda {f['lambda']:g}/{f['lambda_cold']:g}) {g['recall@10']:.4f} / {g['ndcg@10']:.4f}; "
          f"{res['summary']['epochs']} epochs (best {res['summary']['best_epoch']}) in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
