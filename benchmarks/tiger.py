"""TIGER end to end on Beauty, Sports and Toys: tokenizer stage + training + beam-search evaluation, alone
and grounded in content (``tiger+content``: the beam's items and the content top-N rescored by the model,
plus lambda x similarity; lambda chosen on validation, src/sidrec/fusion.py).

Usage: python benchmarks/tiger.py [beauty sports toys] [--config tiger-cpu] [--protocol exclude|keep] [--seed 42]
       [--threads 2] [--tag T] [--sids-from RUN] [key=value ...]
Writes runs/bench/tiger-<dataset>[-<tag>]-<protocol>-seed<seed> (reused by benchmarks/tiger_decode.py) and
benchmarks/results/tiger.json. One protocol per run (``eval.protocol``): early stopping and lambda are chosen on its
validation metric; under ``exclude`` the beam search masks the user's history inside the search.
``--sids-from`` copies another run's SID table and tokenizer, so variants (e.g. ``tiger.arch=encdec`` vs
``decoder``) are compared on the very same SIDs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sidrec.config import load_config
from sidrec.pipeline import fuse

from _common import (
    REPO,
    add_protocol_option,
    copy_tokenizer_stage,
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
    ap.add_argument("--config", default="tiger-cpu", help="configs/<CONFIG>.yaml (after configs/data/<dataset>.yaml)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="read a finished runs/bench run instead of training")
    add_protocol_option(ap)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--variant", default="", help="label of the records (default: derived from the config)")
    ap.add_argument("--tag", default="", help="suffix of the run directory (variants side by side)")
    ap.add_argument("--sids-from", default="", help="run directory whose SID table / tokenizer this run reuses")
    args = ap.parse_intermixed_args()
    args.datasets, args.overrides = split_positionals(args.datasets, ["beauty", "sports", "toys"])
    torch.set_num_threads(args.threads)
    for name in args.datasets:
        run = Path("runs/bench") / (f"tiger-{name}" + (f"-{args.tag}" if args.tag else "")
                                    + f"-{args.protocol[0]}-seed{args.seed}")
        if args.sids_from:
            copy_tokenizer_stage(Path(args.sids_from), run)
        cfg = load_config([REPO / "configs" / "data" / f"{name}.yaml", REPO / "configs" / f"{args.config}.yaml"],
                          [f"run_dir={run}", f"train.threads={args.threads}", "train.progress=false",
                           f"seed={args.seed}"] + protocol_overrides(args.protocol) + args.overrides)
        reused = args.reuse and (run / "metrics.json").exists()
        if reused:
            res = json.loads((run / "metrics.json").read_text())
            wall = float(res.get("wall_s", res["summary"]["train_s"]))
            if "fusion" not in res and cfg.fusion.lambdas != [0]:  # trained before grounding: choose it now
                res = fuse(run)
        else:
            res, wall = train_or_resume(cfg, run, args.reuse)
        tc, tok = cfg.tiger, cfg.tokenizer
        depth = (f"decoder {tc.layers or tc.encoder_layers + tc.decoder_layers}L" if tc.arch == "decoder"
                 else f"{tc.encoder_layers}+{tc.decoder_layers}L")
        variant = args.variant or (f"{args.config}: {tok.kind} {tok.levels}x{tok.codebook_sizes[0]}+1, "
                                   f"{depth} d{tc.d_model}, beam {tc.beam}" + "".join(f", {o}" for o in args.overrides))
        res.setdefault("protocol", load_config([run / "config.yaml"]).eval.protocol)  # runs from before the field
        rep = json.loads((run / "tokenizer_report.json").read_text()) if (run / "tokenizer_report.json").exists() else {}
        for _, r in protocol_results(run, res, args.protocol):
            record_run(name, variant, r, wall, rep, args.seed, reused)


def record_run(name: str, variant: str, res: dict, wall: float, rep: dict, seed: int, reused: bool) -> None:
    """The records of one protocol's selection of a run (alone, + content, popularity), with the tokenizer's report."""
    recs = grounded_records(name, "tiger", variant, res, wall, seed=seed)
    if "popularity_test" in res:
        recs += run_records(name, "popularity", "train frequency", {"test": res["popularity_test"]}, 0.0,
                            protocol=res["protocol"], seed=None)
    for r in recs:
        r["metrics"]["epochs"] = res["summary"]["epochs"]
        r["metrics"]["best_epoch"] = res["summary"]["best_epoch"]
        if rep:
            r["metrics"]["utilization_l1"] = rep["utilization"][0]
            r["metrics"]["tokenizer_collision_rate"] = rep["collisions_before"]["collision_rate"]
            if "reconstruction_rel" in rep:
                r["metrics"]["tokenizer_recon_rel"] = rep["reconstruction_rel"]
    save("tiger", recs, reused=reused)
    t, alone = res["test"], res.get("model_only", res)["test"]
    print(f"{name} [{res['protocol']}]: test R@10 {alone['all']['recall@10']:.4f} N@10 {alone['all']['ndcg@10']:.4f} "
          f"cold {alone['cold']['ndcg@10']:.4f}; + content {t['all']['recall@10']:.4f} / {t['all']['ndcg@10']:.4f} cold "
          f"{t['cold']['ndcg@10']:.4f} (content@10 {t['all'].get('content@10', 0):.3f}) in {wall / 60:.1f} min",
          flush=True)


if __name__ == "__main__":
    main()
