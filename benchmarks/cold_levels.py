"""Where cold items lose: per-SID-position NLL and rank of the test target's SID, warm vs cold users.

Usage: python benchmarks/cold_levels.py [beauty toys ...] [--run RUN] [--threads 1] [--tag NAME]

For the TIGER run of benchmarks/tiger.py (runs/bench/tiger-<dataset>) and, when present, each DREAM stage in
its dream/ folder, the teacher-forced negative log-likelihood of every test user's target SID at each
position (and the rank of the target code among its level's codes) is averaged over warm and cold users.
In paper mode (a ``dream/bridge`` run exists) the CART and UC3 tables are read by the bridge backbone, the
model that was trained on them; otherwise (``cold_only``) by the static one.
A beam search keeps a SID only if every prefix stays among the best ones, so the level at which cold targets
fall behind is the level that keeps them out of the top-K. For each table it also records how much content
structure its prefixes carry: per level, the mean cosine of an item's feature vector to the centroid of the
items sharing its prefix (``coherence_l*``, items in groups of 2+), the largest group and the code-usage
entropy. Writes benchmarks/results/cold_levels.json; ``--tag`` is appended to the variant names, so the
records of another base run do not replace the main ones.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.dream.uc3 import level_log_probs
from sidrec.features import item_features
from sidrec.pipeline import load_run
from sidrec.sid.table import SIDTable

from _common import record, save, split_positionals


def target_levels(task, model, table: SIDTable, es, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(n, L) NLL and rank (0 = the model's top code) of each user's target SID at each position."""
    task.use_sids(table)
    nll, rank = [], []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(es), batch):
            rows = np.arange(s, min(len(es), s + batch))
            hist = task.codes_of(es.padded_histories(rows, pad=-1))
            users = task._users(torch.from_numpy(es.users[rows]))
            tgt = task.codes_of(torch.from_numpy(es.targets[rows]))
            mem, val = model.encode(hist, users)
            lps = level_log_probs(model, mem, val, tgt)
            own = [lp.gather(1, tgt[:, i:i + 1]) for i, lp in enumerate(lps)]
            nll.append(-torch.cat(own, 1))
            rank.append(torch.stack([(lp > o).sum(1) for lp, o in zip(lps, own, strict=True)], 1))
    return torch.cat(nll).numpy(), torch.cat(rank).numpy()


def with_weights(model: torch.nn.Module, weights: Path) -> torch.nn.Module:
    """A copy of the run's model holding other weights of the same architecture (bridge, CPDE): the dataset and
    task are built once, not once per model."""
    from safetensors.torch import load_model

    other = copy.deepcopy(model)
    load_model(other, str(weights))
    return other.eval()


def prefix_structure(codes: np.ndarray, features: np.ndarray) -> dict[str, float]:
    """Per prefix level: coherence (mean cosine to the prefix group's centroid), largest group, entropy."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-9)
    out: dict[str, float] = {}
    for lv in range(1, codes.shape[1]):
        _, group, sizes = np.unique(codes[:, :lv], axis=0, return_inverse=True, return_counts=True)
        group = group.ravel()
        cent = np.zeros((len(sizes), x.shape[1]))
        np.add.at(cent, group, x)
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-9)
        cos = (x * cent[group]).sum(1)
        multi = sizes[group] > 1
        p = sizes / sizes.sum()
        out[f"coherence_l{lv}"] = float(cos[multi].mean())
        out[f"largest_group_l{lv}"] = float(sizes.max())
        out[f"entropy_l{lv}"] = float(-(p * np.log(p)).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty"])
    ap.add_argument("--run", default="", help="the TIGER run (default runs/bench/tiger-<dataset>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="appended to the variant names (another base run)")
    args = ap.parse_intermixed_args()
    tag = f", {args.tag}" if args.tag else ""
    datasets, _ = split_positionals(args.datasets, ["beauty"])
    torch.set_num_threads(args.threads)
    for name in datasets:
        run = Path(args.run) if args.run else Path("runs/bench") / f"tiger-{name}"
        cfg, ds, split, task = load_run(run)
        es = split.test
        cold = split.item_freq[es.targets] <= cfg.data.cold_threshold
        stages = {"static": (task.model, SIDTable.load(run / "sid_table.parquet"))}
        dd = run / "dream"
        bridge_w = dd / "bridge" / "checkpoints" / "best.safetensors"
        reader = with_weights(task.model, bridge_w) if bridge_w.exists() else task.model
        for st in ("cart", "uc3"):
            if (dd / f"sid_table.{st}.parquet").exists():
                stages[st] = (reader, SIDTable.load(dd / f"sid_table.{st}.parquet"))
        if (dd / "model.safetensors").exists() and (dd / "sid_table.cpde.parquet").exists():
            stages["cpde"] = (with_weights(task.model, dd / "model.safetensors"),
                              SIDTable.load(dd / "sid_table.cpde.parquet"))
        recs = []
        feats = item_features(cfg.features, ds, progress=False)
        for st, (model, table) in stages.items():
            mode = "" if st == "static" else (", bridge" if bridge_w.exists() else ", static model")
            t0 = time.time()
            struct = prefix_structure(table.primary.numpy(), feats)
            recs.append(record(name, "tiger" if st == "static" else "dream", f"prefix structure of the {st} table{tag}",
                               "catalogue", "all", struct, time.time() - t0, args.threads))
            print(name, st, {k: round(v, 3) for k, v in struct.items()}, flush=True)
            nll, rank = target_levels(task, model, table, es)
            for sub, mask in (("warm", ~cold), ("cold", cold)):
                met: dict[str, float] = {"n_users": float(mask.sum()), "nll_total": float(nll[mask].sum(1).mean())}
                for lv in range(nll.shape[1]):
                    met[f"nll_l{lv + 1}"] = float(nll[mask, lv].mean())
                    met[f"rank_median_l{lv + 1}"] = float(np.median(rank[mask, lv]))
                recs.append(record(name, "tiger" if st == "static" else "dream",
                                   f"target SID NLL per position, {st}{mode}{tag}", "test", sub, met, time.time() - t0,
                                   args.threads))
                print(name, st, sub, {k: round(v, 2) for k, v in met.items()}, flush=True)
        save("cold_levels", recs)


if __name__ == "__main__":
    main()
