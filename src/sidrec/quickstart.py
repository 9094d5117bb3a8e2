"""``sidrec quickstart``: the whole pipeline on the embedded synthetic dataset in a few minutes.

It is the README's first command, so it must work offline on a fresh 2-core machine and show a true
result: the content ranker (item text alone) and trained models against the popularity ranker, each model fused
with the content when that won on validation (the table shows the weight), on the test split, full-catalogue
ranking. The synthetic data plants a signal of each kind (:mod:`sidrec.data.synthetic`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sidrec.config import load_config
from sidrec.pipeline import train

# (method, overrides) trained in order. The budget is 90 s for all three (issue 60) on a 2-core AVX2-only CPU (fp32), so:
# SASRec stops at 15 epochs (validation NDCG flat after ~15 of the earlier 30); TIGER is the causal
# `decoder` arch (every item of a history is a target in one pass; ~3x cheaper per epoch than encdec) with
# small batches (synthetic users are few, so batch 256 gave 12 steps per epoch) and no dropout (CPU dropout
# cost a third of the step; on this data it changed test NDCG@10 by < .005).
QUICKSTART_METHODS: list[tuple[str, list[str]]] = [
    ("content", []),  # no training: the cosine of the item text vectors to the user's last items
    ("sasrec", ["train.epochs=15", "train.batch_size=128", "train.lr=2e-3", "train.patience=5",
                "sasrec.dropout=0.2", "sasrec.emb_dropout=0.2"]),
    # the generative pipeline: MiniLM item text -> RQ-KMeans SIDs (3 x 16 + collision code) -> small TIGER
    ("tiger", ["size=none", "tokenizer.kind=rqkmeans", "tokenizer.levels=3", "tokenizer.codebook_sizes=[16]",
               # 2 layers, 6 epochs: 58% of the CPU time of 4 layers x 8 epochs and a better validation N@10
               # (.3053 vs .2875; fused test .3231 vs .3269), which brought the demo within 90 s (issue 60)
               "tokenizer.collision_codebook=64", "tiger.arch=decoder", "tiger.d_model=64", "tiger.layers=2",
               "tiger.n_heads=4", "tiger.head_dim=16", "tiger.ffn_dim=256", "tiger.dropout=0.0",
               "train.epochs=6", "train.batch_size=32", "train.lr=3e-3", "train.patience=4",
               "train.eval_users=500",
               # the content candidates the fusion scores beside the beam (default 100): each is one teacher-forced
               # pass, on valid and, once fused, on test. Issue 60, same run: 50 took 2/3 of the time of 100 and
               # chose a better fusion on validation (N@10 .3262 vs .3173); 30 left @50 to a 50-item list
               "fusion.candidates=50"]),
]


# the smallest catalogue the demo runs on: its TIGER's codebooks have 16 codes, and a codebook cannot have more
# codes than there are items (sidrec.sid.pipeline.preflight)
MIN_ITEMS = 16


def _label(method: str, res: dict[str, Any]) -> str:
    """The method's name, with '+content' and the weight lambda of the content similarity when its ranking is fused
    with it (chosen on validation, :func:`sidrec.fusion.choose`; the cold items' weights are in the run's
    fusion.json). Short: the table must fit 80 columns."""
    f = res.get("fusion") or {}
    from sidrec.fusion import is_fused

    return f"{method}+content λ={f['lambda']:g}" if is_fused(f) else method


def _short_list_note(rows: list[tuple[str, dict[str, Any], int | None]], k: int) -> str | None:
    """One line on the n/a cells: which rows rank fewer than ``k`` items and why; None when every row has @k.

    Why a note: a beam-search model alone ranks only the items its beam returns (``tiger.beam``, 20 here), and
    Recall / NDCG at K above that are not measured (:func:`sidrec.fusion.drop_beyond`), not zero.
    """
    short = [(name, width) for name, m, width in rows if f"ndcg@{k}" not in m["all"]]
    if not short:
        return None
    why = "; ".join(f"{name} alone ranks only the {w} items its beam search returns (tiger.beam={w})" if w
                    else f"{name} ranks fewer than {k} items" for name, w in short)
    return f"n/a: not measured, the ranked list is shorter than {k} ({why})"


def free_threads() -> tuple[int, str]:
    """Threads that will not stall on this machine now: the cores less the load already on them (at least 1),
    unless ``OMP_NUM_THREADS`` says otherwise; and a line saying why.

    Why: two threads on a 2-core machine with another job running stall each other (measured: 264 s with two,
    118 s with one; docs/RESULTS.md), and a first command must not take minutes longer than it says.
    """
    from sidrec.env import omp_threads

    cores = os.cpu_count() or 1
    n_env = omp_threads()  # a value that is not a thread count is a one-line error, not a traceback
    if n_env is not None:
        return n_env, f"{n_env} thread(s) (OMP_NUM_THREADS)"
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores, f"{cores} thread(s)"
    n = max(1, min(cores, round(cores - load)))
    return n, f"{n} thread(s): {cores} cores, load {load:.1f}"


def run_quickstart(run_dir: Path, users: int = 3000, items: int = 600, console: Console | None = None,
                   methods: list[tuple[str, list[str]]] | None = None) -> dict[str, Any]:
    console = console or Console()
    results: dict[str, Any] = {}
    t_all = time.time()
    threads, why = free_threads()
    console.print(f"using {why}")
    base = ["data.path=synthetic", f"data.synthetic_users={users}", f"data.synthetic_items={items}",
            "data.max_len=20", "train.progress=true", f"train.threads={threads}"]
    pop = None
    widths: dict[str, int | None] = {}
    for method, ov in methods or QUICKSTART_METHODS:
        t0 = time.time()
        console.print(f"[bold]training {method}[/] on the synthetic dataset ({users} users, {items} items)")
        cfg = load_config(None, base + [f"method={method}", f"run_dir={run_dir / method}"] + ov)
        res = train(cfg, overwrite=True)  # the demo always replaces its own earlier runs
        results[method] = res
        widths[method] = cfg.tiger.beam if method in ("tiger", "diger") else None
        pop = res["popularity_test"]
        console.print(f"  done in {time.time() - t0:.0f}s -> {run_dir / method}")
    t = Table(title=f"test split, full-catalogue ranking ({time.time() - t_all:.0f}s in all)")
    for c in ["model", "R@10", "N@10", "R@50", "N@50", "N@10 / popularity"]:
        t.add_column(c, justify="left" if c == "model" else "right")
    assert pop is not None
    p10 = pop["all"]["ndcg@10"]
    rows = [("popularity", pop, None)] + [(_label(m, r), r["test"], widths[m]) for m, r in results.items()]
    for name, m, _ in rows:
        a = m["all"]
        ratio = a["ndcg@10"] / p10 if p10 > 0 else float("inf")
        t.add_row(name, *(f"{a[key]:.4f}" if key in a else "n/a" for key in ("recall@10", "ndcg@10", "recall@50",
                                                                           "ndcg@50")), f"{ratio:.1f}x")
    console.print(t)
    note = _short_list_note(rows, 50)
    if note:
        console.print(note)
    results["popularity"] = pop
    return results
