"""Shared helpers for benchmark scripts: machine description and the results-record format.

Every script writes ``benchmarks/results/<script>.json``: a JSON list of records with ``dataset``,
``method``, ``variant``, ``split``, ``subset``, ``metrics`` (lower-case names), ``wall_s``, ``machine``,
``command`` and ``date``. ``render_results.py`` turns them into the tables of docs/RESULTS.md.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from sidrec.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIDREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine(threads: int | None = None) -> str:
    """CPU model and capability (AVX2 / AVX512 / +AMX...), cores, threads, torch and the precision ``auto`` picks."""
    from sidrec import precision

    cpu = precision.cpu_model()
    t = threads or torch.get_num_threads()
    auto = "bf16" if precision.use_bf16("auto") else "fp32"
    return (f"{cpu} ({precision.cpu_capability()}), {os.cpu_count()} cores, {t} torch threads, torch {torch.__version__}, "
            f"auto precision {auto}")


def command() -> str:
    """The command line as a shell would need it typed, so a record's ``command`` can be pasted back."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def record(dataset: str, method: str, variant: str, split: str, subset: str, metrics: dict[str, Any],
           wall_s: float, threads: int | None = None) -> dict[str, Any]:
    m = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return {"dataset": dataset, "method": method, "variant": variant, "split": split, "subset": subset,
            "metrics": m, "wall_s": round(wall_s, 2), "machine": machine(threads), "command": command(),
            "date": _dt.date.today().isoformat()}


def run_records(dataset: str, method: str, variant: str, metrics: dict[str, Any], wall_s: float,
                subsets: tuple[str, ...] = ("all", "warm", "cold")) -> list[dict[str, Any]]:
    """Records for the valid and test splits of one run's ``metrics.json`` (per subset)."""
    out = []
    for split in ("valid", "test"):
        for sub in subsets:
            if sub in metrics.get(split, {}):
                out.append(record(dataset, method, variant, split, sub, metrics[split][sub], wall_s))
    return out


def grounded_records(dataset: str, method: str, variant: str, metrics: dict[str, Any], wall_s: float,
                     subsets: tuple[str, ...] = ("all", "warm", "cold")) -> list[dict[str, Any]]:
    """Records of one run's model alone (``method``) and, when its content fusion chose a lambda > 0, of the
    fused ranking (``method+content``, the variant naming lambda and lambda_cold, both chosen on validation)."""
    f = metrics.get("fusion") or {}
    alone = {**metrics, **metrics.get("model_only", {})}
    out = run_records(dataset, method, variant, alone, wall_s, subsets)
    if f:
        q = f.get("content") or {}
        query = (f", query last {q['query_items']} items decay {q['decay']:g}" if q.get("query_items", 1) > 1
                 else ", query last item") if q else ""
        fv = f"{variant}, lambda {f['lambda']:g}, cold lambda {f['lambda_cold']:g} (chosen on valid){query}"
        out += run_records(dataset, f"{method}+content", fv, metrics, wall_s, subsets)
    return out


MAX_TIED = 0.01  # share of top-10 slots decided by the evaluator's index tie-break that a model row may have


def check_ties(records: list[dict[str, Any]]) -> None:
    """Fail loudly when a model's top-10 lists are ordered by ties rather than by the model.

    The evaluator breaks equal scores by item index; above 1% of tied slots a row measures that index order,
    not the model (ACERec on attribute SIDs once had 75-80% of items sharing all codes). Records are saved
    first, so the evidence stays; the script then exits 1 naming every offending row.
    """
    bad = [f"{r['dataset']} {r['method']} [{r['variant']}] {r['split']}/{r['subset']}: tied@10 {r['metrics']['tied@10']:.3f}"
           for r in records if r["method"] != "popularity" and r["metrics"].get("tied@10", 0.0) > MAX_TIED]
    if bad:
        raise SystemExit("ranking decided by ties (> 1% of top-10 slots):\n  " + "\n  ".join(bad))


def save(name: str, records: list[dict[str, Any]], merge_key: tuple[str, ...] = ("dataset", "method", "variant"),
         reused: bool = False) -> Path:
    """Write records, replacing earlier records of the same (dataset, method, variant) and keeping the rest.

    The read-merge-write holds an exclusive lock on a side file, so two benchmark processes finishing at the
    same moment (variants run in parallel) cannot drop each other's records. ``reused`` (records re-read from
    a finished run, ``--reuse``): each record keeps the machine, command and date of the earlier record of the
    same row, since the run was trained then, possibly on another CPU.
    """
    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else []
        if reused:
            row = ("dataset", "method", "variant", "split", "subset")
            earlier = {tuple(r[k] for k in row): r for r in old}
            for r in records:
                prev = earlier.get(tuple(r[k] for k in row), {})
                r.update({k: prev[k] for k in ("machine", "command", "date") if k in prev})
        new_keys = {tuple(r[k] for k in merge_key) for r in records}
        kept = [r for r in old if tuple(r[k] for k in merge_key) not in new_keys]
        write_json(path, kept + records)
    check_ties(records)
    return path


def split_positionals(words: list[str], default: list[str]) -> tuple[list[str], list[str]]:
    """Positional words -> (dataset names, ``key=value`` config overrides), so flags may go anywhere."""
    return [w for w in words if "=" not in w] or list(default), [w for w in words if "=" in w]


def copy_tokenizer_stage(src: Path, dst: Path) -> None:
    """Give run ``dst`` the SID table and tokenizer state of run ``src`` (so variants share one table)."""
    from sidrec.runs import copy_tokenizer_stage as copy_stage

    if (dst / "sid_table.parquet").exists():
        return
    copy_stage(src, dst)  # creates dst when it is new
