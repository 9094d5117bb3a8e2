"""DIGER vs the two-stage TIGER with the same backbone, data, RQ-VAE and budget, plus DIGER's ablations.

Usage: python benchmarks/diger.py [beauty] [--variants tiger frqud ...] [--seeds 42 43] [--threads 2]
       [--reuse] [--resume] [--tag TEXT] [key=value ...]

Variants: tiger (two-stage, configs/tiger-cpu.yaml with DIGER's backbone), frqud, sdud, both (SDUD
+ FrqUD, the configs' default), nodecay (Gumbel without decay), ste (plain straight-through: no noise, no
decay), gaussian (Gaussian noise instead of Gumbel, FrqUD), gap (noise in units of each level's logit gap),
detached (the authors' public code: the recommendation loss does not reach the tokenizer), sinkhorn (the
two-stage TIGER on DIGER's Sinkhorn-derived table: the tokenizer never moves). The first implementation
(noisy codes as the recommender's inputs and targets, variant ``noisy``) lost and was removed; its rows stay in
docs/RESULTS.md. Every run of a seed starts from the
same SID table: the tokenizer stage's files are copied from the seed's first run, so the variants differ only
in training.
With --reuse a finished run directory (metrics.json present) is read instead of retrained.
Writes runs/bench/diger-<dataset>-<variant>-s<seed>-<protocol> and benchmarks/results/diger.json (one record per run and
split/subset, with utilisation per level and SID drift; docs/RESULTS.md renders the mean / sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sidrec.config import load_config
from sidrec.pipeline import train

from _common import (
    REPO,
    add_protocol_option,
    copy_tokenizer_stage,
    grounded_records,
    protocol_overrides,
    protocol_results,
    save,
    split_positionals,
)

VARIANTS = {
    # the two-stage TIGER with DIGER's backbone and budget (configs/diger.yaml = tiger-cpu.yaml's decoder and
    # 60-minute cap + RQ-VAE, history 50, tied logits)
    "tiger": ("tiger-cpu", ["tokenizer.kind=rqvae", "data.max_len=50", "tiger.tie_head=true"]),
    "frqud": ("diger", ["diger.decay=frqud"]),
    "sdud": ("diger", ["diger.decay=sdud"]),
    "both": ("diger", ["diger.decay=both"]),
    "nodecay": ("diger", ["diger.decay=none"]),
    "ste": ("diger", ["diger.noise=none", "diger.decay=none"]),
    "gaussian": ("diger", ["diger.noise=gaussian", "diger.decay=frqud"]),
    "gap": ("diger", ["diger.noise_unit=gap"]),  # noise in units of each level's logit gap
    "detached": ("diger", ["diger.rec_to_tokenizer=false"]),  # the authors' public code: no L_gen into the tokenizer
    # two-stage TIGER on DIGER's Sinkhorn-derived table (the tokenizer never moves): separates what the balanced
    # derivation gives from what joint training gives
    "sinkhorn": ("diger", ["diger.tokenizer_lr=0", "diger.noise=none", "diger.decay=none"]),
}


def sid_stats(run: Path) -> dict[str, float]:
    """Final utilisation per level and SID drift of a DIGER run (from its diger_log.jsonl)."""
    log = run / "diger_log.jsonl"
    if not log.exists():
        rep = json.loads((run / "tokenizer_report.json").read_text()) if (run / "tokenizer_report.json").exists() else {}
        out = {f"utilization_l{i + 1}": u for i, u in enumerate(rep.get("utilization", []))}
        out["sid_drift"] = 0.0
        return out
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    last = [r for r in rows if r["when"] == "evaluate test"] or rows
    r = last[-1]
    out = {f"utilization_l{i + 1}": u for i, u in enumerate(r["utilization"])}
    out.update(sid_drift=r["sid_drift"], collision_rate=r["collision_rate"],
               noise_scale_final=r["noise_scale"])
    for key in ("logit_gap", "flip_rate"):  # per level, at the last re-derivation
        out.update({f"{key}_l{i + 1}": v for i, v in enumerate(r.get(key, []))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty"])
    ap.add_argument("--variants", nargs="+", default=["tiger", "frqud"], choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    add_protocol_option(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the run directories and variant names (other budgets)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (end-of-epoch checkpoint, no metrics.json) instead of restarting")
    args = ap.parse_intermixed_args()
    datasets, overrides = split_positionals(args.datasets, ["beauty"])
    torch.set_num_threads(args.threads)
    for name in datasets:
        for seed in args.seeds:
            first: Path | None = None
            for variant in args.variants:
                conf, extra = VARIANTS[variant]
                run = Path("runs/bench") / (f"diger-{name}-{variant}-s{seed}" + (f"-{args.tag}" if args.tag else "")
                                            + f"-{args.protocol[0]}")
                if first is not None:
                    copy_tokenizer_stage(first, run)
                cfg = load_config([REPO / "configs" / "data" / f"{name}.yaml", REPO / "configs" / f"{conf}.yaml"],
                                  [f"run_dir={run}", f"seed={seed}", f"train.threads={args.threads}",
                                   "train.progress=false"] + protocol_overrides(args.protocol) + extra + overrides)
                t0 = time.time()
                reused = args.reuse and (run / "metrics.json").exists()
                if reused:
                    res = json.loads((run / "metrics.json").read_text())
                    wall = float(res["summary"].get("wall_s", res["summary"].get("train_s", 0.0)))
                elif args.resume and any((run / "checkpoints" / f).exists()
                                             for f in ("last.state.safetensors", "last.state.pt")):
                    before = sum(json.loads(x).get("epoch_s", 0.0)
                                 for x in (run / "log.jsonl").read_text().splitlines() if x.strip())
                    res = train(cfg, resume=True)
                    wall = time.time() - t0 + before  # epochs trained before the interruption count too
                else:
                    res = train(cfg, overwrite=True)  # a benchmark re-run replaces its earlier run
                    wall = time.time() - t0
                first = first or run
                method = "tiger" if variant == "tiger" else "diger"
                label = variant + (f", {args.tag}" if args.tag else "")
                res.setdefault("protocol", load_config([run / "config.yaml"]).eval.protocol)  # runs from before it
                stats = sid_stats(run)
                for protocol, r_ in protocol_results(run, res, args.protocol):
                    recs = grounded_records(name, method, label, r_, wall, seed=seed)
                    for r in recs:
                        r["metrics"].update(stats, epochs=r_["summary"]["epochs"], best_epoch=r_["summary"]["best_epoch"])
                    save("diger", recs, reused=reused)
                    t = r_.get("model_only", r_)["test"]["all"]  # the model alone (the +content record beside it)
                    print(f"{name} {variant} seed {seed} [{protocol}]: test R@10 {t['recall@10']:.4f} N@10 "
                          f"{t['ndcg@10']:.4f} drift {stats.get('sid_drift', 0):.3f} in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
