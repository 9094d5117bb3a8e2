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
           wall_s: float, threads: int | None = None, protocol: str | None = None, **extra: Any) -> dict[str, Any]:
    """One record; ``protocol`` (``exclude`` | ``keep``: how the user's history was ranked, see
    ``eval.protocol``) is part of every model row, so no table mixes the two; ``extra`` (e.g. ``seed``,
    ``fusion``) is kept as is."""
    m = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    out = {"dataset": dataset, "method": method, "variant": variant, "split": split, "subset": subset,
           "protocol": protocol, "metrics": m, "wall_s": round(wall_s, 2), "machine": machine(threads),
           "command": command(), "date": _dt.date.today().isoformat()}
    out.update(extra)
    return out


def run_records(dataset: str, method: str, variant: str, metrics: dict[str, Any], wall_s: float,
                subsets: tuple[str, ...] = ("all", "warm", "cold"), **extra: Any) -> list[dict[str, Any]]:
    """Records for the valid and test splits of one run's ``metrics.json`` (per subset), under the run's protocol
    (``metrics["protocol"]``, written by every run since the protocol setting exists)."""
    out = []
    extra.setdefault("protocol", metrics.get("protocol"))
    for split in ("valid", "test"):
        for sub in subsets:
            if sub in metrics.get(split, {}):
                out.append(record(dataset, method, variant, split, sub, metrics[split][sub], wall_s, **extra))
    return out


def grounded_records(dataset: str, method: str, variant: str, metrics: dict[str, Any], wall_s: float,
                     subsets: tuple[str, ...] = ("all", "warm", "cold"), **extra: Any) -> list[dict[str, Any]]:
    """Records of one run's model alone (``method``) and, when its content fusion chose a lambda > 0, of the
    fused ranking (``method+content``, same variant; its ``fusion`` field names lambda and lambda_cold, both chosen
    on validation, the query window, the grid's top and whether the choice sits at that edge)."""
    f = metrics.get("fusion") or {}
    alone = {**metrics, **metrics.get("model_only", {})}
    out = run_records(dataset, method, variant, alone, wall_s, subsets, **extra)
    if f:
        q = f.get("content") or {}
        lams = [g["lambda"] for g in f.get("grid", [])]
        fusion = {"lambda": f["lambda"], "lambda_cold": f["lambda_cold"], "cold_lift": f.get("cold_lift", 0.0),
                  "grouped": f.get("grouped", False), "cold_freq": f.get("cold_freq", 0.0),
                  "cold_floor": f.get("cold_floor"), "query_items": q.get("query_items"),
                  "decay": q.get("decay"), "grid_max": f.get("grid_max", max(lams, default=None)),
                  "at_grid_edge": f.get("at_grid_edge", bool(lams) and max(f["lambda"], f["lambda_cold"]) >= max(lams))}
        out += run_records(dataset, f"{method}+content", variant, metrics, wall_s, subsets, fusion=fusion, **extra)
    return out


# ranking rows of these methods (alone or + content) must say their protocol (issue 56); a script that writes one
# without it is refused before anything is saved
PROTOCOL_METHODS = {"popularity", "content", "sasrec", "tiger", "diger", "acerec"}

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


def save(name: str, records: list[dict[str, Any]],
         merge_key: tuple[str, ...] = ("dataset", "method", "variant", "protocol", "seed"),
         reused: bool = False) -> Path:
    """Write records, replacing earlier records of the same (dataset, method, variant) and keeping the rest.

    The read-merge-write holds an exclusive lock on a side file, so two benchmark processes finishing at the
    same moment (variants run in parallel) cannot drop each other's records. ``reused`` (records re-read from
    a finished run, ``--reuse``): each record keeps the machine, command and date of the earlier record of the
    same row, since the run was trained then, possibly on another CPU.
    """
    missing = [f"{r['dataset']} {r['method']} [{r['variant']}]" for r in records
               if r["method"].split("+")[0] in PROTOCOL_METHODS and "ndcg@10" in r["metrics"]
               and r.get("protocol") not in ("exclude", "keep")]
    if missing:
        raise SystemExit("records without a protocol (exclude | keep):\n  " + "\n  ".join(missing))
    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else []
        if reused:
            row = ("dataset", "method", "variant", "protocol", "seed", "split", "subset")
            earlier = {tuple(r.get(k) for k in row): r for r in old}
            for r in records:
                prev = earlier.get(tuple(r.get(k) for k in row), {})
                r.update({k: prev[k] for k in ("machine", "command", "date") if k in prev})
        new_keys = {tuple(r.get(k) for k in merge_key) for r in records}
        kept = [r for r in old if tuple(r.get(k) for k in merge_key) not in new_keys]
        write_json(path, kept + records)
    check_ties(records)
    return path


def split_positionals(words: list[str], default: list[str]) -> tuple[list[str], list[str]]:
    """Positional words -> (dataset names, ``key=value`` config overrides), so flags may go anywhere."""
    return [w for w in words if "=" not in w] or list(default), [w for w in words if "=" in w]


def add_protocol_option(ap: Any) -> None:
    """``--protocol exclude [keep]``: the run's protocol, and optionally the other one selected from the same
    training (``eval.also_protocol``: its own early stopping, fusion and test in RUN/<protocol>/)."""
    ap.add_argument("--protocol", choices=["exclude", "keep"], nargs="+", default=["exclude"],
                    help="the run's protocol, and optionally the other one, selected from the same training")


def protocol_overrides(protocols: list[str]) -> list[str]:
    """The config overrides of ``--protocol``; two protocols must differ."""
    if len(protocols) > 2 or len(set(protocols)) != len(protocols):
        raise SystemExit("--protocol: one protocol, or the two protocols once each")
    return [f"eval.protocol={protocols[0]}"] + [f"eval.also_protocol={p}" for p in protocols[1:]]


def protocol_results(run: Path, res: dict[str, Any], protocols: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(protocol, metrics) per protocol asked for: the run's own, and the second selection's (``res['also']``, or
    RUN/<protocol>/metrics.json when the run is re-read with ``--reuse``)."""
    rows = [(protocols[0], res)]
    for other in protocols[1:]:
        also = res.get("also")
        if also is None and (run / other / "metrics.json").exists():
            also = json.loads((run / other / "metrics.json").read_text())
        if also is None:
            raise SystemExit(f"{run}: has no selection for protocol '{other}' (trained without eval.also_protocol)")
        rows.append((other, also))
    for protocol, r in rows:
        r.setdefault("protocol", protocol)  # runs from before metrics.json named it
        if r["protocol"] != protocol:
            raise SystemExit(f"{run}: selected under protocol '{r['protocol']}', asked for '{protocol}'")
    return rows


def copy_tokenizer_stage(src: Path, dst: Path) -> None:
    """Give run ``dst`` the SID table and tokenizer state of run ``src`` (so variants share one table)."""
    from sidrec.runs import copy_tokenizer_stage as copy_stage

    if (dst / "sid_table.parquet").exists():
        return
    copy_stage(src, dst)  # creates dst when it is new


def cut_run(run: Path) -> bool:
    """Whether ``run`` holds a training state to resume (a run cut before it wrote its metrics)."""
    return any((run / "checkpoints" / f).exists() for f in ("last.state.safetensors", "last.state.pt"))


def train_or_resume(cfg: Any, run: Path, reuse: bool) -> tuple[dict[str, Any], float]:
    """Train ``cfg`` afresh, or with ``--reuse`` and a run cut before its metrics, resume it from its checkpoint.

    Why: ``--reuse`` means "keep what this run has"; starting such a run over replaced hours of training (a Sports
    SASRec cut during its fusion choice was trained again from epoch 1, 2026-12-07). The wall time of a resumed run
    is its logged epochs before the cut plus this process's time.
    """
    import time

    from sidrec.pipeline import train

    t0 = time.time()
    if reuse and cut_run(run):
        log = run / "log.jsonl"
        before = sum(json.loads(x).get("epoch_s", 0.0) for x in log.read_text().splitlines() if x.strip()) \
            if log.exists() else 0.0
        print(f"--reuse: {run} has no metrics.json but a training state: resuming it", flush=True)
        return train(cfg, resume=True), before + time.time() - t0
    return train(cfg, overwrite=True), time.time() - t0  # a benchmark re-run replaces its earlier run
