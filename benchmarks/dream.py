"""DREAM's stage table on top of the benchmark TIGER runs: static SIDs -> CART -> + UC3 -> + CPDE.

Usage: python benchmarks/dream.py [beauty toys ...] [--threads 1] [--split valid test] [--tag NAME] [key=value ...]

Needs the TIGER run of benchmarks/tiger.py (runs/bench/tiger-<dataset>, or --run DIR); its files are not
changed, DREAM writes DIR/dream/ (with the bridge TIGER DIR/dream/bridge, trained with the run's own settings
and budget). The first design (cold items only, the original run as evaluator; removed in the renovation of
2026-12-06) has rows recorded without the ", paper" tag; they keep their old
labels, paper rows are labelled ", paper". ``key=value`` overrides go to the ``dream`` section (e.g.
dream.lambda_kd=1). Writes
benchmarks/results/dream.json: per stage and subset (all / warm / cold) Recall and NDCG at 5, 10 and 50
(beam 50, so @50 is exact), plus one diagnostics record per dataset (share of cold / warm items whose primary
SID CART changed, static SIDs outside CART's top 8, UC3 switch rate, mean CPDE hypothesis weights, bridge
epochs, time per stage).
``--tag`` is appended to the variant names so tuning runs do not overwrite the main table. With several
``--split`` values the stages are fitted once and evaluated on each (settings chosen on valid, reported on test).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sidrec.dream.pipeline import STAGES, run_dream

from _common import record, save, split_positionals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", nargs="+", default=["test"], choices=["valid", "test"])
    ap.add_argument("--tag", default="")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES),
                    help="stages to evaluate (e.g. static cart uc3 with dream.cpde_epochs=0: the CART-only row first)")
    ap.add_argument("--run", default="", help="the TIGER run directory (default: runs/bench/tiger-<dataset>)")
    args = ap.parse_intermixed_args()
    datasets, overrides = split_positionals(args.datasets, ["beauty"])
    torch.set_num_threads(args.threads)
    for name in datasets:
        run = Path(args.run) if args.run else Path("runs/bench") / f"tiger-{name}"
        if not (run / "metrics.json").exists():
            raise SystemExit(f"{run} has no finished TIGER run: python benchmarks/tiger.py {name} first")
        t0 = time.time()
        out = run_dream(run, [f"train.threads={args.threads}", *overrides], split=tuple(args.split),
                        stages=tuple(args.stages), progress=False)
        wall = time.time() - t0
        # ", paper": the pipeline as the paper describes it (the first design's rows, without the tag, stay as records)
        tag = ", paper" + (f", {args.tag}" if args.tag else "")
        recs = []
        for sp, stages in out["by_split"].items():
            for stage, res in stages.items():
                t_eval = out["timings"].get(f"eval_{stage}_s" if sp == args.split[0] else f"eval_{stage}_{sp}_s", 0.0)
                for sub in ("all", "warm", "cold"):
                    recs.append(record(name, "dream" if stage != "static" else "tiger", f"{stage}{tag}", sp,
                                       sub, res[sub], t_eval, args.threads))
        d = out["diagnostics"]
        diag = {"cart_primary_changed": d["cart_primary_changed"], "uc3_switch_rate": d["uc3_switch_rate"],
                "uc3_items_with_support": d["uc3_items_with_support"], "cold_items": d["cold_items"],
                "cpde_top1_changed": d["cpde_top1_changed"], "lambda_kd": d["lambda_kd"],
                "lambda_warm": d["lambda_warm"],
                "cart_warm_changed": d.get("cart_warm_changed", 0.0),
                # share of items whose greedy CART codes are their static ones, at step 0 and after the last epoch
                **({"cart_equal_base_start": d["cart_losses"][0]["equal_base_start"],
                    "cart_equal_base_end": d["cart_losses"][-1]["equal_base"]}
                   if d.get("cart_losses") and "equal_base_start" in d["cart_losses"][0] else {}),
                **{f"cart_positions_changed_{sub}_l{i + 1}": v
                   for sub, vals in d.get("cart_positions_changed", {}).items() for i, v in enumerate(vals)},
                **{k: d[k] for k in ("uc3_fallback_support", "uc3_fallback_margin", "uc3_kept_by_vote") if k in d},
                **{f"static_outside_top8_{k}": v for k, v in d.get("static_outside_topn", {}).items()},
                **({"bridge_epochs": d["bridge"]["epochs"], "bridge_train_s": d["bridge"]["train_s"]}
                   if "bridge" in d else {}),
                **{f"cpde_mean_weight_{i + 1}": w for i, w in enumerate(d["cpde_mean_weights"])},
                **{k: v for k, v in out["timings"].items() if not k.startswith("eval_")}}
        recs.append(record(name, "dream", f"diagnostics{tag}", args.split[0], "all", diag, wall, args.threads))
        save("dream", recs, merge_key=("dataset", "method", "variant", "split"))
        s = out["stages"]
        print(f"{name} ({args.split[0]}), N@10 all / warm / cold: " + "; ".join(
            f"{st} {s[st]['all']['ndcg@10']:.4f} / {s[st]['warm']['ndcg@10']:.4f} / {s[st]['cold']['ndcg@10']:.4f}"
            for st in s) + f" in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
