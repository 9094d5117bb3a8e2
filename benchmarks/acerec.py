"""ACERec on Beauty / Sports / Toys, its ablations, and inference throughput against TIGER's beam search.

Usage:
  python benchmarks/acerec.py train [beauty sports toys] [--threads 2]
         [--variants atm (default) mean mlp nointent noisa recon r4 r16 short4 rpg, or joined: rpg+intent]
         [--reuse] [--tag TEXT]
         [--compare-epoch N] [--select] [key=value ...]
  python benchmarks/acerec.py test [beauty ...] --variants V --select [key=value ...]   (test read once, alone and
         fused, of the --select runs of the setting chosen on validation)
  python benchmarks/acerec.py speed [--acerec runs/bench/acerec-beauty-atm] [--tiger runs/bench/tiger-beauty]
         [--users 1000] [--threads 2]
  python benchmarks/acerec.py baselines [--acerec RUN]   (zero-training rankers on RUN's SIDs and features)

``train`` writes runs/bench/acerec-<dataset>-<variant> and records per split / subset; the variants are the
issue's ablations on one backbone: atm (full model), mean (mean pooling instead of the Attentive Token
Merger), nointent (no intent token: predict from the mean of the block's latent states), noisa (no
item-level alignment loss), mlp (an MLP merger), recon (the reconstruction term on, alpha .03), r4 / r16
(compression ratio 32 / k with k = 8 / 2 latents; the default is r = 8), short4 (the same model on 4-code OPQ
IDs, which gets its own table). All other variants of a dataset share one OPQ table (copied from the first run).
``speed`` scores the same test users with both trained models, in one process, each the way its evaluation
runs it: ACERec's holistic scoring (exact top-10 over the full catalogue) and TIGER's constrained beam search
(beam 20, top-10), both under the same precision (fp32) and threads, and reports users/s and the peak
resident memory added by each (measured in a fresh child process per method). A warm-up call on 8 users
runs first, so ACERec's catalogue table (merged item tokens, built once per model) is not in the timing,
as in a server.
Writes benchmarks/results/acerec.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import resource
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.config import load_config
from sidrec.eval.evaluator import excludes
from sidrec.pipeline import fuse, load_run

from _common import (
    REPO,
    add_protocol_option,
    copy_tokenizer_stage,
    grounded_records,
    protocol_overrides,
    protocol_results,
    record,
    save,
    split_positionals,
    train_or_resume,
)

VARIANTS = {
    "atm": [],
    "mean": ["acerec.merge=mean"],
    "mlp": ["acerec.merge=mlp"],
    "nointent": ["acerec.intent_token=false"],
    "noisa": ["acerec.isa=false"],
    "recon": ["acerec.recon_weight=0.03"],  # the paper's reconstruction term on (alpha .03)
    "codes": ["acerec.atm_values=codes"],  # ATM's attention reads out the code tokens themselves (issue 46)
    "r4": ["acerec.n_latents=8"],  # compression ratio r = 32 / k (the default k = 4 is r = 8)
    "r16": ["acerec.n_latents=2"],
    "short4": ["tokenizer.subspaces=4"],  # the same model on 4-code OPQ IDs (the paper's short-ID comparison)
    # RPG's design on the same code: one token per item (the mean of its code embeddings), no intent token, no
    # ISA, identity-start heads; the best setting on Beauty validation at equal budget (docs/acerec.md)
    "rpg": ["acerec.merge=mean", "acerec.n_latents=1", "acerec.intent_token=false", "acerec.isa=false"],
    # components added back one at a time to a base (`rpg+intent`, `rpg+isa`, `rpg+atm1`, `rpg+short4`): the
    # ablation read the other way round, from the best design at equal budget
    "intent": ["acerec.intent_token=true"],
    "isa": ["acerec.isa=true"],
    "atm1": ["acerec.merge=atm"],  # the Attentive Token Merger producing the same single token as the mean
}


def variant_overrides(variant: str) -> list[str]:
    """A variant name, or several joined by '+' (applied left to right), -> config overrides."""
    parts = variant.split("+")
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant part(s) {', '.join(unknown)} in '{variant}'; known: {', '.join(VARIANTS)}")
    return [o for p in parts for o in VARIANTS[p]]
def read_test(run: Path) -> dict:
    """Read test once for a model-selection run (trained with ``eval.test=false``): :func:`sidrec.pipeline.fuse`
    chooses the fusion again on validation (the same grid, so the same choice) and scores test alone and fused
    into the run's ``metrics.json``, so a second call fails instead of reading test twice."""
    if not (run / "metrics.json").exists():
        raise SystemExit(f"{run}: no finished run to read test of (no metrics.json); train it with --select first")
    if "test" in json.loads((run / "metrics.json").read_text()):
        raise SystemExit(f"{run}: test was already read ({run / 'metrics.json'})")
    return fuse(run, test=True)


def cmd_train(args: argparse.Namespace, overrides: list[str], datasets: list[str]) -> None:
    for variant in args.variants:  # a typo fails before an hour of training, not after
        variant_overrides(variant)
    for name in datasets:
        first: Path | None = None
        for variant in args.variants:
            run = Path("runs/bench") / f"acerec-{name}-{variant}-{args.protocol[0]}"
            if args.select:  # one directory per setting of the grid; test is never computed
                run = run.with_name(run.name + "-" + "-".join(
                    o.split("=", 1)[0].split(".")[-1] + o.split("=", 1)[-1] for o in overrides))
            # short4 fits its own 4-subspace table; `test` reads finished runs and never touches their stages
            if first is not None and "short4" not in variant.split("+") and args.command == "train":
                copy_tokenizer_stage(first, run)
            files = [REPO / "configs" / "data" / f"{name}.yaml", REPO / "configs" / "acerec.yaml"]
            if name == "beauty":  # whitened PCA before OPQ: chosen on Beauty validation (configs/opq-whitened.yaml)
                files.append(REPO / "configs" / "opq-whitened.yaml")
            cfg = load_config(files,
                              [f"run_dir={run}", f"train.threads={args.threads}", "train.progress=false"]
                              + protocol_overrides(args.protocol)
                              + variant_overrides(variant) + overrides + (["eval.test=false"] if args.select else []))
            reused = args.reuse and (run / "metrics.json").exists()
            if args.command == "test":  # the single test read of a setting chosen on validation
                res, reused = read_test(run), True
                wall = float(res["summary"]["train_s"])
            elif reused:
                res = json.loads((run / "metrics.json").read_text())
                wall = float(res["summary"]["train_s"])
            else:
                res, wall = train_or_resume(cfg, run, args.reuse)
            first = first or run
            label = (variant if reused else f"{variant}{args.tag}") + (
                ", selection " + " ".join(overrides) if args.select else "")
            res.setdefault("protocol", load_config([run / "config.yaml"]).eval.protocol)  # runs from before the field
            rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
            for protocol, res_ in protocol_results(run, res, args.protocol):
                key = "valid_ndcg@10" if protocol == args.protocol[0] else f"valid_{protocol}_ndcg@10"
                curve = {int(r["epoch"]): r[key] for r in rows if r.get(key) is not None}
                recs = grounded_records(name, "acerec", label, res_, wall, seed=cfg.seed)
                for r in recs:
                    r["metrics"].update(epochs=res_["summary"]["epochs"], best_epoch=res_["summary"]["best_epoch"])
                    if args.compare_epoch in curve:  # equal-budget comparison of variants stopped at different epochs
                        r["metrics"][f"valid_subset_ndcg@10_epoch{args.compare_epoch}"] = curve[args.compare_epoch]
                save("acerec", recs, reused=reused)
                split = "test" if "test" in res_ else "valid"
                t = res_[split]["all"]
                print(f"{name} {variant} [{protocol}]: {split} R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f} in "
                      f"{wall / 60:.1f} min", flush=True)


def _measure(kind: str, run: str, users: int, threads: int, seed: int, out: mp.Queue) -> None:
    """Child process: load one model, score ``users`` test users, report users/s and peak RSS growth."""
    torch.set_num_threads(threads)
    cfg, ds, split, task = load_run(run)
    cfg.train.bf16 = False
    es = split.test
    rows = np.sort(np.random.default_rng(seed).choice(len(es), min(users, len(es)), replace=False))
    sub = es.subset(rows)
    warm = sub.subset(np.arange(min(8, len(sub))))
    if kind == "acerec":
        def run_once(e):  # exact top-10 over the full catalogue, as `sidrec recommend` runs it
            task.recommend(e, 10)
    else:
        def run_once(e):
            task.decode(task.model, e, 10, beam=20)
    run_once(warm)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    run_once(sub)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put({"name": ds.name, "users": len(sub), "seconds": dt, "users_per_s": len(sub) / dt,
             "peak_rss_mb": peak / 1024, "rss_growth_mb": max(0, peak - base) / 1024,
             "items": int(split.n_items),
             # what ACERec's cost depends on: tokens per item in the history (latents + intent token)
             "design": _design(task.model.cfg) if kind == "acerec" else ""})


def _design(c) -> str:
    """ACERec's setting as a label: tokens per history item (latents + intent token) set its cost."""
    return f"{c.merge} k={c.n_latents}" + (" + intent token" if c.intent_token else "")


def cmd_speed(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    res = {}
    for kind, run in (("acerec", args.acerec), ("tiger", args.tiger)):
        q = ctx.Queue()
        p = ctx.Process(target=_measure, args=(kind, run, args.users, args.threads, 0, q))
        p.start()
        while kind not in res:  # a child that dies (bad run directory, out of memory) must not hang the parent
            try:
                res[kind] = q.get(timeout=5)
            except queue.Empty:
                if not p.is_alive():
                    raise SystemExit(f"{kind}: the measuring process failed (exit code {p.exitcode}), see above") from None
        p.join()
        print(f"{kind}: {res[kind]['users_per_s']:.1f} users/s, peak RSS {res[kind]['peak_rss_mb']:.0f} MB")
    a, t = res["acerec"], res["tiger"]
    name = a["name"]
    recs = [
        record(name, "acerec", f"holistic scoring ({a['design']}), exact top-10 of the catalogue, fp32", "test", "all",
               {"users": a["users"], "users_per_s": a["users_per_s"], "peak_rss_mb": a["peak_rss_mb"],
                "rss_growth_mb": a["rss_growth_mb"], "speedup_vs_tiger": a["users_per_s"] / t["users_per_s"]},
               a["seconds"], args.threads),
        record(name, "tiger", f"beam search W20, top-10, fp32 (compared with acerec {a['design']})", "test", "all",
               {"users": t["users"], "users_per_s": t["users_per_s"], "peak_rss_mb": t["peak_rss_mb"],
                "rss_growth_mb": t["rss_growth_mb"]}, t["seconds"], args.threads),
    ]
    print(f"holistic / beam: {a['users_per_s'] / t['users_per_s']:.2f}x; wrote {save('acerec', recs)}")


def cmd_baselines(args: argparse.Namespace) -> None:
    """Zero-training rankers on a trained run's SIDs and features: can the long SIDs carry the signal at all?

    ``code overlap``: an item's score is the number of OPQ codes it shares with the user's most recent item
    (what an RPG-style model predicts at initialisation, when its state is the mean of the last item's code
    embeddings), ties (many items share as many codes) broken by content cosine; ``content cosine``: cosine
    of the item features (the text embeddings OPQ quantises) to the most recent item. Both add training
    popularity at 1e-3 of a unit as a last tie-break. History items are kept, as in every headline row.
    """
    from sidrec.features.core import item_features

    cfg, ds, split, task = load_run(args.acerec)
    codes = task.model.item_codes  # (N, m)
    pop = torch.from_numpy(split.item_freq.astype(np.float32))
    pop = 1e-3 * pop / pop.max()
    emb = torch.nn.functional.normalize(torch.from_numpy(item_features(cfg.features, ds, progress=False)), dim=-1)
    rankers = {
        "code overlap with the last item, ties by content cosine":
            lambda last: (codes[last].unsqueeze(1) == codes.unsqueeze(0)).sum(-1).float() + 1e-2 * (emb[last] @ emb.t()),
        "content cosine to the last item": lambda last: emb[last] @ emb.t(),
    }
    recs = []
    for variant, fn in rankers.items():
        for split_name in ("valid", "test"):
            t0 = time.time()
            ev = task.evaluator(split_name)
            es = ev.eval_set

            def score(rows: np.ndarray, fn=fn, es=es) -> torch.Tensor:
                last = es.padded_histories(rows, pad=-1)[:, -1].clamp(min=0)
                return fn(last) + pop

            m, _ = ev.evaluate_scores(score, 256, excludes(cfg))
            for sub in ("all", "warm", "cold"):
                if sub in m:
                    recs.append(record(ds.name, "zero-training", variant + args.tag, split_name, sub, m[sub],
                                       time.time() - t0, args.threads, protocol=cfg.eval.protocol))
            print(f"{variant} {split_name}: R@10 {m['all']['recall@10']:.4f} N@10 {m['all']['ndcg@10']:.4f}", flush=True)
    print(f"wrote {save('acerec', recs)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["train", "test", "speed", "baselines"])
    ap.add_argument("datasets", nargs="*", default=[])
    ap.add_argument("--variants", nargs="+", default=["atm"], help=f"one or more of {', '.join(VARIANTS)}, or "
                    "several joined by '+' (e.g. rpg+intent)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true")
    add_protocol_option(ap)
    ap.add_argument("--tag", default="", help="appended to the variant name of newly trained runs (train) or of the "
                    "zero-training rankers (baselines, e.g. to name the run's text encoder)")
    ap.add_argument("--compare-epoch", type=int, default=4,
                    help="also record each run's validation-subset NDCG@10 after this epoch (equal budget)")
    ap.add_argument("--select", action="store_true",
                    help="model selection: validation only (eval.test=false), one run directory per override set")
    ap.add_argument("--acerec", default="runs/bench/acerec-beauty-atm")
    ap.add_argument("--tiger", default="runs/bench/tiger-beauty")
    ap.add_argument("--users", type=int, default=1000)
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    datasets, overrides = split_positionals(args.datasets, ["beauty"])
    if args.command in ("train", "test"):
        if args.command == "test" and not args.select:
            raise SystemExit("test reads the runs of a --select grid: give --select and the same settings")
        cmd_train(args, overrides, datasets)
    elif args.command == "baselines":
        cmd_baselines(args)
    else:
        cmd_speed(args)


if __name__ == "__main__":
    main()
