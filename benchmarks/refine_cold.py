"""Cold items as if they were new: the refine-items vote (own SID vs nearest warm items' code paths).

Usage: python benchmarks/refine_cold.py [beauty toys ...] [--threads 1] [--candidates 8] [--split valid test]
       [key=value ...]   (dream.uc3_* gates)

``sidrec refine-items`` re-chooses an added item's SID from its first interactions with the frozen model,
choosing between the item's content SID and the code paths of the warm items closest to it in content. Here
the run's own cold items (<= data.cold_threshold training interactions) play the new items and their
training interactions the first interactions, so the effect can be measured with the usual leave-one-out
protocol. Rows: ``static`` (the run), ``refined`` (each cold item at its voted SID: Compat-Top1) and
``refined + own`` (the voted SID and the original one both registered: Beam-Aware). Needs the TIGER run of
benchmarks/tiger.py (runs/bench/tiger-<dataset>). Writes benchmarks/results/refine_cold.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.config import load_config
from sidrec.data.batches import prefix_samples
from sidrec.dream.refine import neighbour_candidates
from sidrec.dream.sids import table_with
from sidrec.dream.uc3 import uc3_vote
from sidrec.pipeline import load_run
from sidrec.sid.stage import run_features
from sidrec.sid.table import SIDTable

from _common import record, save, split_positionals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--split", nargs="+", default=["test"], choices=["valid", "test"])
    args = ap.parse_intermixed_args()
    datasets, overrides = split_positionals(args.datasets, ["beauty"])
    torch.set_num_threads(args.threads)
    for name in datasets:
        t0 = time.time()
        run = Path("runs/bench") / f"tiger-{name}"
        cfg, ds, split, task = load_run(run)
        # beam 50 and cut-offs 5/10/50, as in benchmarks/dream.py, so the static row matches its table
        task.tcfg = dataclasses.replace(task.tcfg, beam=max(50, task.tcfg.beam))
        task.cfg.eval.ks = sorted(set(task.cfg.eval.ks) | {5, 10, 50})
        dcfg = load_config([run / "config.yaml"], overrides).dream
        base_table = SIDTable.load(run / "sid_table.parquet")
        base = base_table.primary.numpy()
        cold = np.flatnonzero(split.item_freq <= cfg.data.cold_threshold)
        warm = np.flatnonzero(split.item_freq > cfg.data.cold_threshold)
        emb = run_features(cfg, ds).astype(np.float32)
        cands = neighbour_candidates(base, base_table.sizes, cold, emb[cold], emb[warm], warm, args.candidates)
        task.use_sids(base_table)
        samples = prefix_samples(split.train, cfg.data.max_len)
        cold_index = np.full(ds.n_items, -1, dtype=np.int64)
        cold_index[cold] = np.arange(len(cold))
        tgt = samples["flat"][samples["end"]]
        ctx_rows = np.flatnonzero(cold_index[tgt] >= 0)
        dec = uc3_vote(task, samples, ctx_rows, cold_index[tgt[ctx_rows]], np.arange(ds.n_users), cands, dcfg, False)
        chosen = cands[np.arange(len(cold)), dec.chosen]
        vote_s = time.time() - t0
        both = np.stack([chosen, np.where(dec.switch[:, None], base[cold], -1)], 1)
        tables = {"static": base_table, "refined": table_with(base, base_table.sizes, cold, chosen[:, None]),
                  "refined + own": table_with(base, base_table.sizes, cold, both)}
        recs = []
        for sp in args.split:
            for variant, table in tables.items():
                t1 = time.time()
                task.use_sids(table)
                res = task.evaluate(task.model, sp)
                for sub in ("all", "warm", "cold"):
                    recs.append(record(name, "tiger" if variant == "static" else "refine", variant, sp, sub,
                                       res[sub], time.time() - t1, args.threads))
                print(f"{name} {sp} {variant}: N@10 all {res['all']['ndcg@10']:.4f} warm {res['warm']['ndcg@10']:.4f}"
                      f" cold {res['cold']['ndcg@10']:.4f} R@10 cold {res['cold']['recall@10']:.4f}", flush=True)
        diag = {"cold_items": len(cold), "switch_rate": dec.switch_rate, "contexts": len(ctx_rows),
                "items_with_support": float((dec.support >= dcfg.uc3_min_support).mean()),
                "valid_candidates": float((cands >= 0).all(2).sum(1).mean()), "vote_s": vote_s}
        recs.append(record(name, "refine", "diagnostics", args.split[0], "all", diag, time.time() - t0, args.threads))
        save("refine_cold", recs, merge_key=("dataset", "method", "variant", "split"))
        print(f"{name}: {dec.switch_rate:.1%} of {len(cold)} cold items switched ({len(ctx_rows)} contexts, "
              f"vote {vote_s:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
