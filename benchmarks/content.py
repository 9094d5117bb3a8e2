"""The content ranker (``method: content``, no training) on Beauty, Sports and Toys.

The query setting (the last item, or a recency-weighted mean of the last n items) is chosen on validation;
test is read once, for the chosen setting. Also measured: the IVF index's top-10 against the exact (flat)
index, the recall an approximate search gives up for speed on catalogues of ~1M items.

Both protocols (``eval.protocol``): ``exclude`` (every history item removed from the ranking) and ``keep`` (history
items ranked like any item: the user's last items are their own nearest neighbours), each choosing its query on its
own validation metric.

Usage: python benchmarks/content.py [beauty sports toys] [--threads 1] [--protocols exclude keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from sidrec.config import load_config
from sidrec.pipeline import load_run, train

from _common import REPO, record, run_records, save, split_positionals

# (content.query_items, content.decay): the last item; the last 2 / 3 / 5 weighted decay**k
QUERIES = [(1, 0.5), (2, 0.5), (3, 0.5), (3, 0.3), (5, 0.5)]


def variant_name(n: int, decay: float) -> str:
    return "last item" if n == 1 else f"last {n} items, decay {decay:g}"


def ivf_records(name: str, run: str, threads: int) -> list[dict]:
    """Top-10 of the IVF index against the exact one, for the test users (recall of the exact list)."""
    _, _, split, task = load_run(run)
    es = split.test
    hist = es.padded_histories(pad=-1)
    t0 = time.time()
    exact, _ = task.index.search(hist, 10)
    t_flat = time.time() - t0
    out = []
    idx = type(task.index)(task.index.vectors.numpy(), split.item_freq,
                           dataclasses.replace(task.cfg.content, index="ivf"))
    ivf = idx._index()  # built (and trained) once, outside the timing
    for nprobe in (4, 16, 64):
        ivf.nprobe = nprobe
        t0 = time.time()
        approx, _ = idx.search(hist, 10)
        t_ivf = time.time() - t0
        hit = (approx[:, :, None] == exact[:, None, :]).any(2) & (approx >= 0)
        out.append(record(name, "content", f"ivf nlist {ivf.nlist} nprobe {nprobe} vs flat", "test", "all",
                          {"recall_vs_exact@10": float(hit.sum() / max(1, (exact >= 0).sum())),
                           "ms_per_user_ivf": 1000 * t_ivf / len(es), "ms_per_user_flat": 1000 * t_flat / len(es)},
                          t_ivf, threads))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty", "sports", "toys"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--protocols", nargs="+", default=["exclude", "keep"], choices=["exclude", "keep"])
    args = ap.parse_intermixed_args()
    args.datasets, overrides = split_positionals(args.datasets, ["beauty", "sports", "toys"])
    torch.set_num_threads(args.threads)
    for name in args.datasets:
        for protocol in args.protocols:
            measure(name, protocol, overrides, args.threads, ivf=protocol == args.protocols[0])


def measure(name: str, protocol: str, overrides: list[str], threads: int, ivf: bool) -> None:
    """The query chosen on ``protocol``'s validation, then test once, for one dataset."""
    base = [REPO / "configs" / "data" / f"{name}.yaml"]
    common = ["method=content", f"train.threads={threads}", "train.progress=false", f"eval.protocol={protocol}"]
    common += overrides
    recs, scores = [], {}
    for n, decay in QUERIES:  # selection on validation only (eval.test=false computes no test metric)
        run = f"runs/bench/content-{name}-{protocol}-q{n}-d{decay:g}"
        cfg = load_config(base, common + [f"run_dir={run}", f"content.query_items={n}", f"content.decay={decay}",
                                          "eval.test=false"])
        t0 = time.time()
        res = train(cfg, overwrite=True)
        recs += run_records(name, "content", variant_name(n, decay), res, time.time() - t0, seed=None)
        scores[(n, decay)] = res["valid"]["all"]["ndcg@10"]
    n, decay = max(QUERIES, key=lambda q: (scores[q], -q[0]))
    run = f"runs/bench/content-{name}-{protocol}"
    t0 = time.time()
    res = train(load_config(base, common + [f"run_dir={run}", f"content.query_items={n}", f"content.decay={decay}"]),
                overwrite=True)
    wall = time.time() - t0
    chosen = variant_name(n, decay) + " (chosen on valid)"
    recs += [r for r in run_records(name, "content", chosen, res, wall, seed=None) if r["split"] == "test"]
    recs += run_records(name, "popularity", "train frequency", {"test": res["popularity_test"]}, 0.0,
                        protocol=protocol, seed=None)
    if ivf:
        recs += ivf_records(name, run, threads)
    save("content", recs)
    t = res["test"]["all"]
    print(f"{name} [{protocol}]: content kNN ({chosen}) test R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f} "
          f"cold N@10 {res['test']['cold']['ndcg@10']:.4f} tied@10 {t['tied@10']:.4f} "
          f"(valid N@10 by query: {', '.join(f'{variant_name(*q)} {v:.4f}' for q, v in scores.items())})",
          flush=True)


if __name__ == "__main__":
    main()
