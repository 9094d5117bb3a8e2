"""Issue 58: the grouped fusion (cold items ranked by content, sized by the model's own cold mass plus a cold lift,
chosen above the content ranker's cold floor) against the additive fusion it replaces, on trained SASRec runs.

Nothing is trained. Each source run is copied (config.yaml, checkpoints/best.safetensors, fusion.json,
metrics.json, log.jsonl; never written) to ``runs/cold_fusion/<run>`` and the copy is re-fused
(``sidrec.pipeline.fuse``: every choice on validation, test read once). Records (``benchmarks/results/
cold_fusion.json``; protocol, seed, dataset, subsets all / warm / cold, valid and test):

- ``sasrec`` / ``model alone``: the run's model alone;
- ``sasrec+content`` / ``additive (before issue 58)``: the source run's own fusion, as its metrics.json has it;
- ``sasrec+content`` / ``--variant`` (default ``grouped, cold floor``): the copy re-fused by today's
  ``fusion.choose`` with the given ``fusion.*`` overrides (``fusion.cold_freqs=[0]``: the grouped fusion as first
  merged, without the cold group's frequency term); ``choose_s`` is the time the choice took (validation only);
- ``content`` / ``content ranker``: the content ranker runs named by ``--content`` (the cold floor's source).

``--frontier`` also ranks test under every setting of the new choice's last grid (the cold lifts) and the old
choice's lambda_cold grid, one pass each, recorded as ``frontier ...`` variants: the overall-vs-cold frontier of
docs/lab/cold.md (read, never chosen on).

Usage: python benchmarks/cold_fusion.py RUN_DIR... [--content RUN_DIR...] [--threads 1] [--frontier]
       [--work runs/cold_fusion] [--reuse] [--variant NAME] [fusion.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from sidrec import fusion
from sidrec.config import load_config
from sidrec.pipeline import fuse, load_run

from _common import REPO, record, run_records, save, split_positionals

COPIED = ("config.yaml", "fusion.json", "metrics.json", "log.jsonl", "checkpoints/best.safetensors")
NEW = "grouped, cold floor"
OLD = "additive (before issue 58)"


def copy_run(src: Path, dst: Path) -> None:
    """The files a re-fusion reads, never ``last.*`` (a resumable state the copy does not need)."""
    for name in COPIED:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dst / name)


def frontier(run: Path, old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Test metrics of the old choice's lambda_cold grid and the new choice's cold-lift grid (one pass each)."""
    _, _, _, task = load_run(run)
    old_f = [fusion.Fusion(g["lambda"], g["lambda_cold"]) for g in old["grid"] if g["lambda"] == old["lambda"]]
    new_f = [fusion.fusion_from_record(g) for g in new["grid"]
             if g.get("grouped") and g["lambda"] == new["lambda"] and g["lambda_cold"] == new["lambda_cold"]
             and g.get("cold_freq", 0.0) == new.get("cold_freq", 0.0)]
    out = []
    for label, settings in (("additive", old_f), ("grouped", new_f)):
        for f, m in zip(settings, fusion.evaluate(task, task.model, "test", settings), strict=True):
            out.append((f"frontier {label}: {f.name()}", m))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="trained SASRec run directories (read only)")
    ap.add_argument("--content", nargs="*", default=[], help="content ranker run directories (read only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frontier", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="record an already re-fused copy instead of fusing again")
    ap.add_argument("--work", default="runs/cold_fusion", help="where the copies live (relative to the repository)")
    ap.add_argument("--variant", default=NEW, help="the record's variant name for the re-fused ranking")
    args = ap.parse_intermixed_args()
    args.runs, overrides = split_positionals(args.runs + args.content, [])
    args.runs, args.content = [r for r in args.runs if r not in args.content], [c for c in args.content if "=" not in c]
    torch.set_num_threads(args.threads)
    records: list[dict[str, Any]] = []
    chose: list[float] = []  # seconds of each fusion.choose (the validation passes), timed around the library's own
    real_choose = fusion.choose

    def timed_choose(*a: Any, **kw: Any) -> dict[str, Any]:
        t = time.time()
        out = real_choose(*a, **kw)
        chose.append(time.time() - t)
        return out

    fusion.choose = timed_choose
    for c in args.content:
        cfg = load_config([Path(c) / "config.yaml"])
        m = json.loads((Path(c) / "metrics.json").read_text())
        records += run_records(cfg.data.name, "content", "content ranker", m, m.get("wall_s", 0.0), seed=None)
    for src in map(Path, args.runs):
        dst = REPO / args.work / src.name
        old = json.loads((src / "metrics.json").read_text())
        cfg = load_config([src / "config.yaml"])
        t0 = time.time()
        chose.clear()
        if not (args.reuse and (dst / "metrics.json").exists()):
            copy_run(src, dst)
            fuse(dst, overrides)
        new = json.loads((dst / "metrics.json").read_text())
        wall = time.time() - t0
        kw = {"seed": cfg.seed, "protocol": new["protocol"], "source": str(src)}
        new_kw = {**kw, "choose_s": round(chose[0], 1)} if chose else kw
        records += run_records(cfg.data.name, "sasrec", "model alone", {**old, **old["model_only"]}, old["wall_s"], **kw)
        records += run_records(cfg.data.name, "sasrec+content", OLD, old, old["wall_s"], fusion=_fusion(old), **kw)
        records += run_records(cfg.data.name, "sasrec+content", args.variant, new, wall, fusion=_fusion(new), **new_kw)
        if args.frontier:
            for variant, m in frontier(dst, old["fusion"], new["fusion"]):
                records += [record(cfg.data.name, "sasrec+content", f"{args.variant}: {variant}", "test", sub, m[sub],
                                   0.0, **kw)
                            for sub in ("all", "warm", "cold")]
        print(f"{cfg.data.name} seed {cfg.seed}: test N@10 all / cold, old "
              f"{old['test']['all']['ndcg@10']:.4f} / {old['test']['cold']['ndcg@10']:.4f}, new "
              f"{new['test']['all']['ndcg@10']:.4f} / {new['test']['cold']['ndcg@10']:.4f} "
              f"({fusion.fusion_from_record(new['fusion']).name()}; chosen in {chose[0] if chose else 0:.0f} s)",
              flush=True)
    print(save("cold_fusion", records, merge_key=("dataset", "method", "variant", "protocol", "seed")))


def _fusion(m: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's fusion choice a record keeps (not its grid)."""
    f = m["fusion"]
    keys = ("lambda", "lambda_cold", "cold_lift", "grouped", "cold_freq", "cold_floor", "at_grid_edge", "grid_max",
            "content")
    return {k: f[k] for k in keys if k in f}


if __name__ == "__main__":
    main()
