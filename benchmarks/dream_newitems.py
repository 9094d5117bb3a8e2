"""New items, measured honestly: a TIGER trained without a held-out set of items, which are then added with
``sidrec add-items`` and refined with ``sidrec refine-items`` from their training interactions.

Usage: python benchmarks/dream_newitems.py [toys beauty ...] [--share 0.05] [--threads 1] [--minutes 30]
       [key=value ...]

Why: DREAM's stage table measures items that were cold in training; a shop's real problem is an item the model
has never seen. This script makes that case from the leave-one-out data:

1. Held-out items H: the ``--share`` of the catalogue that comes *latest in users' timelines* (highest mean
   relative position in the sequences they appear in). The Amazon files keep each user's order but no global
   timestamps, so "first appearance" needs a proxy; this one picks items bought late in the histories that hold
   them, without favouring rare or popular ones (Toys: 596 items, mean 12.9 interactions vs 14.1 overall).
2. The backbone: ``configs/tiger-cpu.yaml`` (after ``configs/data/<dataset>.yaml``) trained on the data with every
   interaction of H removed (same users in the same order, so hashed user tokens agree), in
   ``runs/bench/newitems-<dataset>/tiger`` (reused when finished). Its own leave-one-out split never holds out more
   than the full data's does.
3. ``add_items`` gives H their content SIDs from the run's tokenizer (text only; no retraining).
4. ``refine_items`` re-chooses their SIDs from their interactions in the *training* portion of the full data
   (positions before each user's validation item), each with the true preceding history: every such user is
   passed as a new pseudo-user whose rows are that prefix, so no validation or test item enters a context.
   Deviation: a pseudo-user's hashed user token is not the real user's.
5. Evaluation on the full data's test split (history items kept, beam of the run), with the catalogue table
   reordered to the full data's items: users whose test target is in H (subset ``new``), and all users
   (``all`` / ``warm`` / ``cold`` by the full data's training counts), before and after refinement. Histories
   hold added items too; they are read with the same table's SIDs.

Writes benchmarks/results/dream_newitems.json (variants ``added (content SIDs)`` and ``refined``, plus a
diagnostics record: items held out, with training interactions, switched, scored contexts, times).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.config import load_config
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import LeaveOneOut
from sidrec.dream.newitems import add_items
from sidrec.dream.refine import refine_items
from sidrec.eval.evaluator import Evaluator, excludes
from sidrec.pipeline import dataset_from_config, load_run, train
from sidrec.sid.table import SIDTable

from _common import REPO, record, save, split_positionals


def held_out_items(ds: Dataset, share: float) -> np.ndarray:
    """Indices of the ``share`` of items with the highest mean relative position (0 = first, 1 = last)."""
    seqs = ds.sequences()
    flat = np.concatenate(seqs)
    lens = np.concatenate([np.full(len(s), len(s)) for s in seqs])
    pos = np.concatenate([np.arange(len(s)) for s in seqs])
    rel = pos / np.maximum(lens - 1, 1)
    mean_rel = np.bincount(flat, rel, ds.n_items) / np.maximum(np.bincount(flat, minlength=ds.n_items), 1)
    k = max(1, round(share * ds.n_items))
    return np.sort(np.argsort(-mean_rel, kind="stable")[:k])


def without_items(ds: Dataset, drop: np.ndarray) -> Dataset:
    """The dataset with every interaction of ``drop`` removed; same users in the same order, original item ids."""
    keep = np.ones(ds.n_items, bool)
    keep[drop] = False
    new_index = np.cumsum(keep) - 1
    seqs = [new_index[s[keep[s]]] for s in ds.sequences()]
    items = {k: [v[i] for i in np.flatnonzero(keep)] for k, v in ds.items.items()}
    return Dataset.from_sequences(ds.name, seqs, [ds.item_ids[i] for i in np.flatnonzero(keep)], ds.user_ids, items,
                                  source=f"{ds.source} without {len(drop)} held-out items")


def items_file(ds: Dataset, held: np.ndarray, path: Path) -> Path:
    """JSON Lines of the held-out items' ids and text fields, as ``sidrec add-items`` reads them."""
    with open(path, "w") as fh:
        for i in held:
            row = {"item_id": ds.item_ids[i], **{k: v[i] for k, v in ds.items.items() if k != "item_id"}}
            fh.write(json.dumps(row) + "\n")
    return path


def interactions_file(ds: Dataset, held: np.ndarray, path: Path) -> tuple[Path, int]:
    """The held-out items' training-portion interactions, each user as a pseudo-user holding the true prefix.

    Rows are every item of the user's training portion up to (and including) their last held-out item, in
    order, with the position as timestamp; returns the file and the number of held-out interactions in it.
    """
    is_held = np.zeros(ds.n_items, bool)
    is_held[held] = True
    n = 0
    with open(path, "w") as fh:
        fh.write("user_id,item_id,timestamp\n")
        for u, s in enumerate(ds.sequences()):
            train_part = s[:max(len(s) - 2, 0)]
            hits = np.flatnonzero(is_held[train_part])
            if not len(hits):
                continue
            n += len(hits)
            for p, i in enumerate(train_part[:hits[-1] + 1]):
                fh.write(f"newitems-{ds.user_ids[u]},{ds.item_ids[i]},{p}\n")
    return path, n


def catalogue_split(full: Dataset, table: SIDTable, max_len: int, cold_threshold: int) -> LeaveOneOut:
    """The full data's leave-one-out split with items numbered as the catalogue table numbers them."""
    pos = {x: k for k, x in enumerate(table.item_ids or [])}
    remap = np.array([pos[x] for x in full.item_ids])
    order = np.argsort(remap)
    ds = Dataset.from_sequences(full.name, [remap[s] for s in full.sequences()], [full.item_ids[i] for i in order],
                                full.user_ids)
    return LeaveOneOut.from_dataset(ds, max_len, cold_threshold)


def evaluate_table(task, cfg, table: SIDTable, split: LeaveOneOut, new_mask: np.ndarray) -> dict[str, dict]:
    """Test metrics of the run's model decoding over ``table``: all / warm / cold users and those with new targets."""
    task.use_sids(table, source="catalogue table")
    es = split.split("test")
    items, scores = task.decode(task.model, es, max(cfg.eval.ks), excludes(cfg))
    items, scores = items.numpy(), scores.numpy()
    out, _ = Evaluator(es, split.item_freq, cfg.eval.ks, cfg.data.cold_threshold).evaluate_topk(items, scores)
    rows = np.flatnonzero(new_mask[es.targets])
    sub, _ = Evaluator(es.subset(rows), split.item_freq, cfg.eval.ks, cfg.data.cold_threshold).evaluate_topk(
        items[rows], scores[rows])
    return {"all": out["all"], "warm": out["warm"], "cold": out["cold"], "new": sub["all"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["toys"])
    ap.add_argument("--share", type=float, default=0.05, help="share of the catalogue held out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=30.0, help="the backbone's training budget")
    ap.add_argument("--candidates", type=int, default=8, help="SIDs voted on per item by refine-items")
    args = ap.parse_intermixed_args()
    datasets, overrides = split_positionals(args.datasets, ["toys"])
    if not 0 < args.share < 1:
        raise SystemExit(f"--share must be in (0, 1), got {args.share}")
    torch.set_num_threads(args.threads)
    for name in datasets:
        t0 = time.time()
        base_cfgs = [REPO / "configs" / "data" / f"{name}.yaml", REPO / "configs" / "tiger-cpu.yaml"]
        work = REPO / "runs" / "bench" / f"newitems-{name}"
        work.mkdir(parents=True, exist_ok=True)
        full = dataset_from_config(load_config(base_cfgs))
        held = held_out_items(full, args.share)
        data_dir = work / f"data-{args.share:g}"
        if not data_dir.exists():
            without_items(full, held).save(data_dir)
        run = work / f"tiger-{args.share:g}"
        if not (run / "metrics.json").exists():
            cfg = load_config(base_cfgs, [f"data.path={data_dir}", "data.format=prepared", f"run_dir={run}",
                                           f"train.threads={args.threads}", f"train.max_minutes={args.minutes}",
                                           "train.progress=false", *overrides])
            train(cfg, resume=(run / "checkpoints").exists())
        t_train = time.time() - t0

        t1 = time.time()
        cat = run / "newitems" / "catalogue.parquet"
        cat.parent.mkdir(exist_ok=True)
        for f in cat.parent.glob("*"):
            f.unlink()  # add-items extends an existing table: start from the run's own each time
        added, _ = add_items(run, items_file(full, held, work / "held_out_items.jsonl"), cat)
        inter, n_inter = interactions_file(full, held, work / "held_out_interactions.csv")
        refined_path = run / "newitems" / "refined.parquet"
        res = refine_items(run, inter, cat, refined_path, candidates=args.candidates, progress=False)
        t_refine = time.time() - t1

        cfg, ds, _, task = load_run(run)
        split = catalogue_split(full, added, cfg.data.max_len, cfg.data.cold_threshold)
        new_mask = np.zeros(added.n_items, bool)
        new_mask[ds.n_items:] = True
        recs = []
        for variant, table in (("added (content SIDs)", added), ("refined", res.table)):
            t2 = time.time()
            with torch.no_grad():
                m = evaluate_table(task, cfg, table, split, new_mask)
            for sub, vals in m.items():
                recs.append(record(name, "tiger" if variant.startswith("added") else "dream", variant, "test", sub,
                                   vals, time.time() - t2, args.threads))
            print(f"{name} {variant}: new-item targets ({m['new']['n_users']} users) R@10 {m['new']['recall@10']:.4f} "
                  f"N@10 {m['new']['ndcg@10']:.4f}; all R@10 {m['all']['recall@10']:.4f} N@10 {m['all']['ndcg@10']:.4f}",
                  flush=True)
        train_part = [s[:max(len(s) - 2, 0)] for s in full.sequences()]
        n_train = np.bincount(np.concatenate(train_part), minlength=full.n_items)[held]
        diag = {"held_out_items": len(held), "share": args.share,
                "held_with_training_interactions": int((n_train > 0).sum()),
                "held_training_interactions": n_inter, "contexts_scored": res.contexts,
                "items_with_contexts": res.with_contexts, "items_switched": len(res.switched),
                "new_target_users": int(new_mask[split.split("test").targets].sum()),
                "backbone_epochs": json.loads((run / "metrics.json").read_text())["summary"]["epochs"],
                "train_s": round(t_train, 1), "add_refine_s": round(t_refine, 1)}
        recs.append(record(name, "dream", "newitems diagnostics", "test", "all", diag, time.time() - t0, args.threads))
        save("dream_newitems", recs, merge_key=("dataset", "method", "variant", "split"))


if __name__ == "__main__":
    main()
