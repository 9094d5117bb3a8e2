"""The seed methods along a size axis (issue 62): each paper's pair trained identically at three sizes on the
2,000-item Beauty set, the effect (method / baseline, test N@10) as a function of parameters, a log-linear trend and
its projection to the paper's size.

Usage:
  python benchmarks/scaling.py list [--only PATTERN ...]        # the jobs, their state and estimated minutes
  python benchmarks/scaling.py run [--only PATTERN ...] [--budget-min 55] [--max-jobs N] [--no-hard-stop]
  python benchmarks/scaling.py calibrate [--only PATTERN ...] [--steps 12]   # step + evaluation timings per job size
  python benchmarks/scaling.py plan                             # the plan table (minutes per job, thread-hours)
  python benchmarks/scaling.py report                           # ratios, trends, projections, docs/img/scaling_<pair>.png
  python benchmarks/scaling.py job ID [--prior-wall S]          # one job (what `run` starts in a child process)

``PATTERN`` is an fnmatch pattern over job ids (``acerec-*``, ``*-s43``, ``diger-diger-L4-s42``). The data is
``runs/data/beauty-2k`` (``benchmarks/defaults.py prepare``; prepared here when missing). Runs go to
``runs/bench/scaling/<job id>``; records to ``benchmarks/results/scaling.json``.

The pairs, and how their sizes scale (as each paper sizes its model):

- ``acerec``: ACERec as the paper designs it (``full``: configs/acerec.yaml, ATM with k = 4 latents + intent token +
  ISA) against RPG's one-token design (``rpg``: configs/acerec-rpg.yaml), both on the whitened OPQ table of
  configs/opq-whitened.yaml (as benchmarks/acerec.py runs Beauty; the two arms of a seed share one table). Width:
  d 32 / 64 / 128, 2 layers, 4 heads, FFN at the paper's ratio 1024 / 448 (``acerec.ffn_dim: 0``). The paper's
  model is d 448, 2 layers, 4 heads, FFN 1024: it is wider than the CPU model at the same depth. d 256 was the
  first plan; calibrated, the full model there took ~2 hours a run (219 CPU-s an epoch), past the 60-minute job,
  so the axis ends at the d 128 where the ablations were measured (docs/lab/scaling.md).
- ``diger``: DIGER (configs/diger.yaml: SDUD + FrqUD) against the two-stage TIGER it starts from (``tiger``:
  tiger-cpu with an RQ-VAE, history 50 and tied code logits, benchmarks/diger.py's ``tiger`` variant; the two
  arms of a seed share one RQ-VAE table). Depth: 1 / 2 / 4 causal blocks of d 128, 4 heads x 32, FFN 512
  (tiger-cpu's width). Why depth: DIGER's paper model (the authors' config/beauty_jo.yaml) is a T5 of d 128 with
  6 + 6 layers, 4 heads x 64, FFN 512, and TIGER's is d 128 with 4 + 4 layers, 6 heads x 64, FFN 1024: both are
  already d 128; what the CPU model lacks is depth.
- ``dream``: DREAM's "CART only" row (``cart``: the bridge TIGER trained on CART's table with the static run's own
  settings, :func:`sidrec.dream.pipeline.run_cart_bridge`) against the static SIDs (``static``: the ``diger``
  pair's ``tiger`` run of the same size and seed, so DREAM starts from TIGER's RQ-VAE table, as in the paper),
  on the cold-target test N@10. CART works in the RQ-VAE's latent space from the base table, so its fit does not
  depend on the model's size: it is fitted once per seed and copied between sizes. DREAM's paper backbone is an
  LLM, orders of magnitude beyond any size here: no projection is made to it; the report projects to TIGER's
  paper size (the static model DREAM refines here) and says that this is not DREAM's.
- ``sasrec``: SASRec (configs/sasrec.yaml) at ACERec's widths d 32 / 64 / 128, 2 blocks, 2 heads, FFN 4 d
  (sasrec.yaml's d 64 has FFN 256; the SASRec paper: d 50, 2 blocks, 1 head). Its ratios are each ACERec arm over
  SASRec at the same width: is the gap between a SID model and an ID model closing with size?

Each pair's x axis is the parameter count of the model both arms share (``PAPER``'s arm: the one-token ACERec,
TIGER's recommender; DIGER's count would add its RQ-VAE).

Every job: seed 42 at every size, seed 43 too at the largest (the seeds' spread there); the headline protocol
(``eval.protocol=exclude``), one thread, to convergence (``train.max_minutes=0``: epochs + patience as each config
sets them), the final evaluation alone and + content (lambda chosen on validation; src/sidrec/fusion.py), so every
row exists alone and + content from one training. A record carries ``pair``, ``arm``, ``size``, ``seed``,
``params`` (the model's parameter count) and ``wall_s`` (every process the job took, summed over chunks).

Resumable: a job whose record exists is skipped; a run with ``metrics.json`` but no record is recorded without
training; a run cut mid-way continues from its last end-of-epoch checkpoint (the trainer's exact resume;
the bridge through ``run_cart_bridge``'s own resume). ``run --budget-min M`` starts a job only when the
minutes left cover its estimate (the first job of a chunk always starts), and with the hard stop (default) a job
still running at M minutes is interrupted (SIGINT) and resumes in the next chunk from its last epoch, so a
background chunk never outlives M minutes and never loses more than the epoch in flight.

Estimates (``list``, ``plan``, the budget gate) come from ``calibrate``: per job, its model built as the job
builds it, ``--steps`` training steps timed at random batch positions after two warm-up steps, and the
trainer's own probe of the evaluations (:func:`sidrec.training.trainer.probe_pass_costs`: a validation pass at
``train.eval_users``, the fusion choice and the fused test) at initial weights; the CART fit is timed for one
epoch. A job's minutes = set-up + E x (epoch + validation / eval_every) + final evaluation, with E the epochs to
convergence the same configs took at d 128 on this set (:data:`EPOCHS`; a larger model may stop sooner or later).
Finished jobs replace the estimate of their own arm and size by their measured wall time.

``report`` pairs each method run with its baseline run of the same size and seed, fits
ln(ratio) = a + b log10(params) by least squares over every (size, seed) point, gives b's 95% t-interval
(grows / shrinks / cannot tell) and the projected ratio at the paper model's parameter count (built on this data
from a finished run's tokenizer stage) with its 95% interval for the mean; a projection further beyond the
largest size than the measured span, or from fewer than 4 points, is reported as not supported.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, RESULTS, grounded_records, record, save

DATA = REPO / "runs" / "data" / "beauty-2k"
RUNS = REPO / "runs" / "bench" / "scaling"
CONF = REPO / "configs"
IMG = REPO / "docs" / "img"
NAME = "scaling"
DATASET = "beauty-2k"
SEEDS = (42, 43)  # seed 42 at every size, both at the largest

# the sizes of each pair, smallest first: (label, overrides)
SIZES: dict[str, list[tuple[str, list[str]]]] = {
    "acerec": [(f"d{d}", [f"acerec.d_model={d}", "acerec.n_layers=2", "acerec.n_heads=4", "acerec.ffn_dim=0"])
               for d in (32, 64, 128)],
    "diger": [(f"L{n}", [f"tiger.layers={n}", "tiger.d_model=128", "tiger.n_heads=4", "tiger.head_dim=32",
                         "tiger.ffn_dim=512"]) for n in (1, 2, 4)],
    "sasrec": [(f"d{d}", [f"sasrec.d_model={d}", "sasrec.n_layers=2", "sasrec.n_heads=2", f"sasrec.ffn_dim={4 * d}"])
               for d in (32, 64, 128)],
}
SIZES["dream"] = SIZES["diger"]  # the bridge has the static run's settings, so DREAM's sizes are TIGER's

# (pair, arm) -> (method of the records, config files after configs/data/beauty.yaml, overrides)
ARMS: dict[tuple[str, str], tuple[str, list[str], list[str]]] = {
    ("acerec", "rpg"): ("acerec", ["acerec-rpg.yaml", "opq-whitened.yaml"], []),
    ("acerec", "full"): ("acerec", ["acerec.yaml", "opq-whitened.yaml"], []),
    ("diger", "tiger"): ("tiger", ["tiger-cpu.yaml"], ["tokenizer.kind=rqvae", "data.max_len=50", "tiger.tie_head=true"]),
    ("diger", "diger"): ("diger", ["diger.yaml"], []),
    ("dream", "cart"): ("dream", [], []),  # the bridge of ("diger", "tiger")'s run of the same size and seed
    ("sasrec", "sasrec"): ("sasrec", ["sasrec.yaml"], []),
}
# each pair's ratios: (method arm, baseline arm, subset); the sasrec pair's arms live in the acerec pair
RATIOS: dict[str, list[tuple[tuple[str, str], tuple[str, str], str]]] = {
    "acerec": [(("acerec", "full"), ("acerec", "rpg"), "all")],
    "diger": [(("diger", "diger"), ("diger", "tiger"), "all")],
    "dream": [(("dream", "cart"), ("diger", "tiger"), "cold")],
    "sasrec": [(("acerec", "rpg"), ("sasrec", "sasrec"), "all"), (("acerec", "full"), ("sasrec", "sasrec"), "all")],
}
# each pair's size axis: the parameters of one arm (the model both arms share: TIGER's recommender without DIGER's
# RQ-VAE, the one-token ACERec without the ATM), and the paper's model built from that arm's config on this data for
# its parameter count: (label, arm, overrides)
PAPER: dict[str, tuple[str, tuple[str, str], list[str]]] = {
    "acerec": ("ACERec paper: d 448, 2 layers, 4 heads, FFN 1024", ("acerec", "rpg"),
               ["acerec.d_model=448", "acerec.ffn_dim=1024"]),
    "diger": ("DIGER paper (authors' beauty_jo.yaml): T5 d 128, 6 + 6 layers, 4 heads x 64, FFN 512",
              ("diger", "tiger"), ["tiger.arch=encdec", "tiger.layers=0", "tiger.encoder_layers=6",
                                   "tiger.decoder_layers=6", "tiger.n_heads=4", "tiger.head_dim=64", "tiger.ffn_dim=512"]),
    "dream": ("TIGER paper (DREAM's static model here; DREAM's own LLM backbone is not projected to): T5 d 128, "
              "4 + 4 layers, 6 heads x 64, FFN 1024", ("diger", "tiger"),
              ["tiger.arch=encdec", "tiger.layers=0", "tiger.encoder_layers=4", "tiger.decoder_layers=4",
               "tiger.n_heads=6", "tiger.head_dim=64", "tiger.ffn_dim=1024"]),
    "sasrec": ("ACERec paper size (the SID models'): d 448", ("acerec", "rpg"),
               ["acerec.d_model=448", "acerec.ffn_dim=1024"]),
}
# epochs to convergence of the same configs at d 128 on this set (docs/lab/presets.md: SASRec 106, ACERec's one-token
# design 32, TIGER 60); the full ACERec and DIGER are assumed to take what their baselines took (full ACERec: 30
# epochs on full Beauty, docs/lab/acerec.md); the plan's largest uncertainty
EPOCHS = {("acerec", "rpg"): 32, ("acerec", "full"): 30, ("diger", "tiger"): 60, ("diger", "diger"): 60,
          ("dream", "cart"): 60, ("sasrec", "sasrec"): 106}
STAGE_SHARED = {"acerec": "acerec", "diger": "diger", "dream": "diger", "sasrec": "sasrec"}  # tokenizer-stage groups
OVERHEAD_S = 30.0  # a job's process start, data loading and parameter count


@dataclass(frozen=True)
class Job:
    pair: str
    arm: str
    size: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.pair}-{self.arm}-{self.size}-s{self.seed}"

    @property
    def method(self) -> str:
        return ARMS[(self.pair, self.arm)][0]

    @property
    def variant(self) -> str:
        return f"scaling {self.pair}/{self.arm} {self.size}"

    @property
    def base(self) -> Job | None:
        """The run this job refines (DREAM's bridge: the static TIGER run of the same size and seed)."""
        return Job("diger", "tiger", self.size, self.seed) if self.pair == "dream" else None

    @property
    def run(self) -> Path:
        """The run directory whose ``metrics.json`` holds this job's result."""
        return RUNS / self.base.id / "dream" / "bridge" if self.base else RUNS / self.id


def jobs() -> list[Job]:
    """Every job, in the order a chunk runs them: seed 42 from the smallest size up (each pair's trend first
    appears whole), a bridge after its static run, then the other seeds at the largest size."""
    out: list[Job] = []
    for i in range(3):
        for pair in ("sasrec", "acerec", "diger", "dream"):
            for (p, arm) in ARMS:
                if p == pair:
                    out.append(Job(pair, arm, SIZES[pair][i][0], SEEDS[0]))
    for seed in SEEDS[1:]:
        for pair in ("sasrec", "acerec", "diger", "dream"):
            out += [Job(pair, arm, SIZES[pair][-1][0], seed) for (p, arm) in ARMS if p == pair]
    return out


def select(all_jobs: list[Job], patterns: list[str] | None) -> list[Job]:
    if not patterns:
        return list(all_jobs)
    picked = [j for j in all_jobs if any(fnmatch.fnmatchcase(j.id, p) for p in patterns)]
    if not picked:
        raise SystemExit(f"--only {' '.join(patterns)}: no job matches (ids look like {all_jobs[0].id}; see `list`)")
    return picked


def size_overrides(pair: str, size: str) -> list[str]:
    return dict(SIZES[pair])[size]


def job_config(job: Job, run: Path | None = None, extra: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Config files and overrides of a job's training (DREAM's bridge: its static run's)."""
    j = job.base or job
    _, files, over = ARMS[(j.pair, j.arm)]
    paths = [CONF / "data" / "beauty.yaml"] + [CONF / f for f in files]
    return paths, ([f"data.path={DATA}", f"data.name={DATASET}", "train.max_minutes=0", "train.threads=1",
                    "train.progress=false", "eval.protocol=exclude", f"seed={j.seed}", f"run_dir={run or j.run}"]
                   + over + size_overrides(j.pair, j.size) + list(extra or []))


# ------------------------------------------------------------------ state of a job


def load_records() -> list[dict[str, Any]]:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.exists() else []


def recorded(job: Job, records: list[dict[str, Any]]) -> bool:
    return any(r.get("variant") == job.variant and r.get("seed") == job.seed and r.get("split") == "test"
               for r in records)


def state(job: Job, records: list[dict[str, Any]]) -> str:
    """done (recorded) | record (finished, not recorded) | resume (cut mid-way) | waiting (its base run is not
    finished) | fresh."""
    from sidrec.training.state import STATE_FILE

    if recorded(job, records):
        return "done"
    if (job.run / "metrics.json").exists():
        return "record"
    if job.base is not None and not (job.base.run / "metrics.json").exists():
        return "waiting"
    fitter = stage_fitter(job)
    if fitter is not None and not all((fitter.run / f).exists() for f in ("sid_table.parquet", "sid_table.source.json")):
        return "waiting"  # the seed's first job of this group fits the SIDs every size and arm then reads
    if (job.run / "checkpoints" / STATE_FILE).exists():
        return "resume"
    return "fresh"


def stage_fitter(job: Job) -> Job | None:
    """The job that fits this job's tokenizer stage (the first of its group and seed in list order), when it is
    another job and the group has a stage (SASRec has none); its stage is copied, never fitted twice."""
    if job.pair == "sasrec" or job.base is not None:
        return None
    first = next(j for j in jobs() if STAGE_SHARED[j.pair] == STAGE_SHARED[job.pair] and j.seed == job.seed
                 and j.base is None)
    return None if first == job else first


def stage_source(job: Job) -> Path | None:
    """A finished tokenizer stage of the same group and seed (the first size that fitted one), so every size and
    arm of a seed reads the same SIDs and fits them once."""
    group = STAGE_SHARED[job.pair]
    for j in jobs():
        if STAGE_SHARED[j.pair] == group and j.seed == job.seed and j != job and j.base is None:
            if (j.run / "sid_table.parquet").exists() and (j.run / "sid_table.source.json").exists():
                return j.run
    return None


def cart_cache_source(job: Job) -> Path | None:
    """CART's fit for this seed from another size (its cache key checks data, settings, seed and base table)."""
    for j in jobs():
        if j.pair == "dream" and j.seed == job.seed and j != job:
            f = RUNS / j.base.id / "dream" / "cart_candidates.npz"
            if f.exists():
                return f
    return None


# ------------------------------------------------------------------ estimates


def calibration(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float]]:
    return {(r["pair"], r["arm"], r["size"]): r["metrics"] for r in records if r.get("kind") == "calibration"}


def estimate_s(job: Job, records: list[dict[str, Any]], first_of_group: bool = True) -> float | None:
    """Seconds a job is expected to take: a finished job's wall time for the same arm and size, else the
    calibration's set-up + E x (epoch + validation / eval_every) + final evaluation (+ CART for a seed's first
    bridge); a size without calibration takes the geometric mean of its calibrated neighbours."""
    done = [r["wall_s"] for r in records if r.get("pair") == job.pair and r.get("arm") == job.arm
            and r.get("size") == job.size and r.get("split") == "test" and r.get("subset") == "all"
            and r.get("kind") != "calibration" and r.get("method") == job.method]
    if done:
        return float(np.mean(done))
    cal = calibration(records)
    key = (job.base or job).pair, (job.base or job).arm
    labels = [s for s, _ in SIZES[job.pair]]

    def cal_at(size: str) -> dict[str, float] | None:
        return cal.get((*key, size))

    c = cal_at(job.size)
    if c is None:
        i = labels.index(job.size)
        lo = next((cal_at(s) for s in reversed(labels[:i]) if cal_at(s)), None)
        hi = next((cal_at(s) for s in labels[i + 1:] if cal_at(s)), None)
        if lo is None or hi is None:
            return None
        c = {k: math.sqrt(max(lo[k], 1e-9) * max(hi[k], 1e-9)) for k in lo if k in hi}
    e = EPOCHS[(job.pair, job.arm)]
    s = OVERHEAD_S + e * (c["epoch_s"] + c["valid_s"] / max(1.0, c["eval_every"])) + c["final_s"]
    load_s, fit_s = setup_parts(cal, STAGE_SHARED[key[0]])
    if job.pair == "dream":  # the bridge copies its static run's tokenizer; CART is fitted once per seed
        s += load_s + (cal.get(("dream", "cart", "cart"), {}).get("cart_s", 0.0) if first_of_group else 0.0)
    else:
        s += load_s + (fit_s if first_of_group else 0.0)
    return s


def setup_parts(cal: dict[tuple[str, str, str], dict[str, float]], group: str) -> tuple[float, float]:
    """(seconds to load the data and build a model from a copied tokenizer stage, seconds to fit the stage) of a
    tokenizer-stage group, from its calibration builds (the first fits the stage, the others copy it)."""
    rows = [m for (p, _, _), m in cal.items() if STAGE_SHARED.get(p) == group and "setup_s" in m]
    copied = [m["setup_s"] for m in rows if m.get("stage_copied", 0.0)]
    fitted = [m["setup_s"] for m in rows if not m.get("stage_copied", 0.0)]
    load = float(np.mean(copied)) if copied else (float(np.mean(fitted)) if fitted else 0.0)
    fit = max(0.0, float(np.mean(fitted)) - load) if fitted and copied else 0.0
    return load, fit


def first_of_group(job: Job) -> bool:
    """Whether this job fits its seed's tokenizer stage (or CART) itself: no earlier job of the group and seed."""
    for j in jobs():
        if j == job:
            return True
        if STAGE_SHARED[j.pair] == STAGE_SHARED[job.pair] and j.seed == job.seed and (j.pair == "dream") == (
                job.pair == "dream"):
            return False
    return True


# ------------------------------------------------------------------ one job (child process)


def count_params(run: Path) -> int:
    from sidrec.pipeline import load_run

    _, _, _, task = load_run(run)
    return int(sum(p.numel() for p in task.model.parameters()))


def cmd_job(job_id: str, prior_wall: float, prior_cpu: float = 0.0) -> None:
    """Train (or resume, or read back) one job and record it, alone and + content, with its parameter count."""
    import torch

    from sidrec.config import load_config
    from sidrec.pipeline import train
    from sidrec.runs import copy_tokenizer_stage

    job = next((j for j in jobs() if j.id == job_id), None)
    if job is None:
        raise SystemExit(f"unknown job '{job_id}' (see `python benchmarks/scaling.py list`)")
    torch.set_num_threads(1)
    ensure_data()
    t0 = time.time()
    st = state(job, load_records())
    extra: dict[str, Any] = {}
    if st == "waiting":
        raise SystemExit(f"{job.id}: waits for {(job.base or stage_fitter(job)).id} (its static run, or the job that "
                         "fits its seed's SIDs); run that job first")
    if job.pair == "dream":
        extra = run_bridge(job)
    elif st != "record":
        files, over = job_config(job)
        cfg = load_config(files, over)
        if st == "fresh":
            src = stage_source(job)
            if src is not None and not job.run.exists():
                copy_tokenizer_stage(src, job.run)
        train(cfg, resume=st == "resume", overwrite=st == "fresh")
    res = json.loads((job.run / "metrics.json").read_text())
    wall = prior_wall + time.time() - t0 if st != "record" else float(res.get("wall_s", 0.0)) + prior_wall
    params = count_params(job.run)
    recs = grounded_records(DATASET, job.method, job.variant, res, wall, seed=job.seed, pair=job.pair, arm=job.arm,
                            size=job.size, params=params, threads=1)
    cpu = prior_cpu + time.process_time()  # CPU seconds: the wall time less what other processes took of the core
    for r in recs:
        r["metrics"].update(epochs=res["summary"]["epochs"], best_epoch=res["summary"]["best_epoch"], params=params,
                            cpu_s=cpu, **extra)
    save(NAME, recs)
    t = res.get("model_only", res)["test"]
    print(f"{job.id}: {params:,} parameters, test N@10 all {t['all']['ndcg@10']:.4f} cold {t['cold']['ndcg@10']:.4f}"
          f", {res['summary']['epochs']} epochs, {wall / 60:.1f} min", flush=True)


def run_bridge(job: Job) -> dict[str, float]:
    """DREAM's bridge on the static run of the same size and seed; CART's fit copied from another size when that
    size fitted it for this seed (its cache key checks that it applies)."""
    from sidrec.dream.pipeline import run_cart_bridge
    from sidrec.training.state import STATE_FILE

    base = RUNS / job.base.id
    out = base / "dream"
    out.mkdir(exist_ok=True)
    cache = cart_cache_source(job)
    if cache is not None and not (out / "cart_candidates.npz").exists():
        shutil.copy2(cache, out / "cart_candidates.npz")
    b = job.run
    # a bridge cut before its first end-of-epoch checkpoint cannot be resumed: start it again
    if b.exists() and not (b / "metrics.json").exists() and not (b / "checkpoints" / STATE_FILE).exists():
        shutil.rmtree(b)
    res = run_cart_bridge(base, progress=False)
    d = res["diagnostics"]
    return {"cart_primary_changed": d["cart_primary_changed"], "cart_warm_changed": d["cart_warm_changed"],
            "cart_s": res["timings"].get("cart_s", 0.0), "cart_reused": float(bool(d.get("cart_reused")))}


def ensure_data() -> None:
    if not (DATA / "users.parquet").exists():
        print(f"{DATA} missing: preparing it (benchmarks/defaults.py prepare)", flush=True)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "defaults.py"), "prepare"], check=True, cwd=REPO)


# ------------------------------------------------------------------ a chunk of jobs


def plan_chunk(todo: list[tuple[Job, float | None]], budget_s: float, max_jobs: int) -> list[Job]:
    """The jobs a chunk would start, in order, if each took its estimate: stop at the first whose estimate does
    not fit what is left (the first job of a chunk always starts), or after ``max_jobs``."""
    out, spent = [], 0.0
    for job, est in todo:
        if len(out) >= max_jobs:
            break
        if out and (est is None or spent + est > budget_s):
            break
        out.append(job)
        spent += est or 0.0
    return out


def claim(job: Job) -> Any:
    """An exclusive, non-blocking lock on the job for this chunk (a context manager that releases it), or None when
    another chunk holds it: two chunks in parallel (one per core) take different jobs."""
    import contextlib
    import fcntl

    path = RUNS / "locks" / f"{job.id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")  # noqa: SIM115 -- held until the returned context closes it
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None

    @contextlib.contextmanager
    def held() -> Any:
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    return held()


def ledger_path() -> Path:
    return RUNS / "wall_ledger.json"


def read_ledger() -> dict[str, float]:
    p = ledger_path()
    return json.loads(p.read_text()) if p.exists() else {}


def add_to_ledger(job: Job, seconds: float, cpu: float = 0.0) -> None:
    """Add a finished or interrupted process's wall and CPU seconds to the job's account (summed over chunks)."""
    import fcntl

    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / ".wall_ledger.lock", "w") as lock:  # two chunks finishing at once must not drop a sum
        fcntl.flock(lock, fcntl.LOCK_EX)
        led = read_ledger()
        led[job.id] = led.get(job.id, 0.0) + seconds
        led[f"{job.id} cpu"] = led.get(f"{job.id} cpu", 0.0) + cpu
        ledger_path().write_text(json.dumps(led, indent=1))


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cmd_run(args: argparse.Namespace) -> None:
    ensure_data()
    t_start = time.time()
    budget_s = args.budget_min * 60 if args.budget_min > 0 else float("inf")
    started = 0
    for job in select(jobs(), args.only):
        records = load_records()
        st = state(job, records)
        if st == "done":
            continue
        if st == "waiting":
            print(f"{job.id}: waiting for {(job.base or stage_fitter(job)).id}", flush=True)
            continue
        if started >= args.max_jobs:
            break
        est = estimate_s(job, records, first_of_group(job))
        left = budget_s - (time.time() - t_start)
        led = read_ledger().get(job.id, 0.0)
        remaining = None if est is None else max(0.1 * est, est - led) if st == "resume" else est
        if started and (remaining is None or remaining > left):
            print(f"stop: {job.id} needs ~{(remaining or 0) / 60:.0f} min, {left / 60:.0f} min left in this chunk",
                  flush=True)
            break
        lock = claim(job)
        if lock is None:
            print(f"{job.id}: running in another chunk", flush=True)
            continue
        started += 1
        print(f"[{time.strftime('%H:%M:%S')}] {job.id} ({st}, ~{(remaining or 0) / 60:.0f} min)", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "job", job.id, "--prior-wall", f"{led:.1f}",
               "--prior-cpu", f"{read_ledger().get(f'{job.id} cpu', 0.0):.1f}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        t0, c0 = time.time(), _children_cpu()
        with lock:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env)
            timeout = (max(1.0, budget_s - (time.time() - t_start)) if args.hard_stop and budget_s < float("inf")
                       else None)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: the run folder is released, the last epoch kept
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                add_to_ledger(job, time.time() - t0, _children_cpu() - c0)
                print(f"budget of {args.budget_min:g} min spent: {job.id} interrupted; the next chunk resumes it",
                      flush=True)
                return
            add_to_ledger(job, time.time() - t0, _children_cpu() - c0)
        if rc != 0:
            raise SystemExit(f"{job.id} failed (exit code {rc}); see above")
    print(f"chunk done in {(time.time() - t_start) / 60:.1f} min", flush=True)


def cmd_list(args: argparse.Namespace) -> None:
    records = load_records()
    led = read_ledger()
    total = 0.0
    print(f"{'job':<28} {'state':<8} {'est. min':>8} {'spent min':>9}")
    for job in select(jobs(), args.only):
        st = state(job, records)
        est = estimate_s(job, records, first_of_group(job))
        total += est or 0.0
        print(f"{job.id:<28} {st:<8} {('%.0f' % (est / 60)) if est else '?':>8} {led.get(job.id, 0) / 60:>9.1f}")
    print(f"total estimate: {total / 3600:.1f} thread-hours")


# ------------------------------------------------------------------ calibration


def cmd_calibrate(args: argparse.Namespace) -> None:
    """Time each selected job's model: training steps, the evaluation passes (the trainer's probe), set-up."""
    import torch

    torch.set_num_threads(1)
    ensure_data()
    for job in select(jobs(), args.only):
        if job.seed != SEEDS[0] or (job.pair == "dream" and job.size != SIZES["dream"][0][0]):
            continue  # seeds cost the same; the bridge is its static run's model (timed there) + CART, timed once
        if job.pair == "dream":
            m = calibrate_cart(job)
            key = ("dream", "cart", "cart")
        else:
            m = calibrate_job(job, args.steps, args.fit_stage)
            key = (job.pair, job.arm, job.size)
        m["load_avg_1min"] = os.getloadavg()[0]  # other processes on the machine: the timings are upper bounds
        rec = record(DATASET, job.method, f"calibration {key[0]}/{key[1]} {key[2]}", "-", "-", m,
                     m.get("setup_s", 0.0) + m.get("measure_s", 0.0), threads=1, protocol="exclude", kind="calibration",
                     pair=key[0], arm=key[1], size=key[2], seed=None)
        save(NAME, [rec])
        print(f"{job.id}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()), flush=True)


def _build(job: Job, run: Path, extra: list[str] | None = None, fit_stage: bool = False
           ) -> tuple[Any, Any, float, bool]:
    """The job's task as training builds it, in ``run`` (its tokenizer stage copied from an earlier build of the
    same group when there is one); returns (cfg, task, seconds, whether the stage was copied)."""
    from sidrec.config import load_config
    from sidrec.data.protocol import LeaveOneOut
    from sidrec.methods.registry import get_builder
    from sidrec.pipeline import attach_grounding, dataset_from_config, seed_everything
    from sidrec.runs import copy_tokenizer_stage

    files, over = job_config(job, run, extra)
    cfg = load_config(files, over)
    shutil.rmtree(run, ignore_errors=True)
    for other in [] if fit_stage else sorted((RUNS / "calibration").glob(f"{STAGE_SHARED[job.pair]}-*")):
        if other != run and (other / "sid_table.source.json").exists():
            copy_tokenizer_stage(other, run)
            break
    run.mkdir(parents=True, exist_ok=True)
    copied = (run / "sid_table.parquet").exists()
    t0 = time.process_time()
    seed_everything(cfg.seed)
    ds = dataset_from_config(cfg)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    task = get_builder(cfg.method)(cfg, ds, split, run)
    attach_grounding(task, cfg, ds, split)
    task.to("cpu")
    return cfg, task, time.process_time() - t0, copied


def calibrate_job(job: Job, steps: int, fit_stage: bool = False) -> dict[str, float]:
    import torch

    from sidrec.training.trainer import predict_pass_s, probe_pass_costs

    run = RUNS / "calibration" / job.id
    cfg, task, setup_s, copied = _build(job, run, fit_stage=fit_stage)
    t0 = time.time()
    tb = time.process_time()
    batches = task.train_batches(0)  # DIGER re-derives its table here, once per epoch
    batches_s = time.process_time() - tb
    model = task.model
    model.train()
    groups = task.param_groups(cfg.train.weight_decay, cfg.train.lr) or [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(batches), size=min(len(batches), steps + 2), replace=False)
    spent = 0.0
    for i, b in enumerate(picks):
        t = time.process_time()
        with task.autocast():
            loss = task.loss(model, batches[int(b)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            spent += time.process_time() - t
    per_step = spent / max(1, len(picks) - 2)
    model.eval()
    w0, c0 = time.time(), time.process_time()
    with torch.no_grad():
        cost = probe_pass_costs(task, 128)
    share = (time.process_time() - c0) / max(1e-9, time.time() - w0)  # of a core this process had while probing
    valid_s = share * predict_pass_s(task, cost[0], task.eval_subset("valid", cfg.train.eval_users).eval_set)
    final_s = share * (predict_pass_s(task, cost[1], task.evaluator("valid").eval_set)
                       + predict_pass_s(task, cost[2], task.evaluator("test").eval_set))
    return {"setup_s": setup_s, "stage_copied": float(copied), "s_per_step": per_step,
            "steps_per_epoch": float(len(batches)), "epoch_s": per_step * len(batches) + batches_s, "valid_s": valid_s,
            "eval_every": float(cfg.train.eval_every),
            "final_s": final_s, "probe_core_share": share, "params": float(sum(p.numel() for p in model.parameters())),
            "measure_s": time.time() - t0}


def calibrate_cart(job: Job) -> dict[str, float]:
    """One CART epoch on the static table of the smallest TIGER build (CART does not depend on the model's size)."""
    from sidrec.dream.cart import family_negatives, train_cart
    from sidrec.dream.pipeline import item_docs_and_families
    from sidrec.pipeline import dataset_from_config
    from sidrec.sid.base import load_tokenizer
    from sidrec.sid.stage import run_features
    from sidrec.sid.table import SIDTable

    run = RUNS / "calibration" / f"cart-{job.base.id}"
    cfg, task, _, _ = _build(job.base, run)
    t0 = time.time()
    dcfg, split = cfg.dream, task.split
    ds = dataset_from_config(cfg)
    table = SIDTable.load(run / "sid_table.parquet")
    base = table.primary.numpy()
    emb = run_features(cfg, ds).astype(np.float32)
    docs, fam = item_docs_and_families(ds, cfg.features.template, dcfg.family_field)
    tn = time.process_time()
    negs = family_negatives(docs, fam, split.train, dcfg.cart.hard_negatives, closest=dcfg.negatives == "family")
    negs_s = time.process_time() - tn
    emb, books = load_tokenizer(run / "tokenizer").residual_space(emb)
    epochs = dcfg.cart.epochs
    dcfg.cart.epochs = 1
    te = time.process_time()
    train_cart(emb, base[:, :-1], table.sizes[:-1], split.train, negs, dcfg.cart, cfg.seed, False, codebooks=books)
    epoch_s = time.process_time() - te
    return {"cart_epoch_s": epoch_s, "cart_negatives_s": negs_s, "cart_epochs": float(epochs),
            "cart_s": negs_s + epochs * epoch_s, "measure_s": time.time() - t0}


# ------------------------------------------------------------------ plan


def cmd_plan(args: argparse.Namespace) -> None:
    """The plan as a Markdown table: per job its estimated minutes, and the total in thread-hours."""
    records = load_records()
    cal = calibration(records)
    print("| job | params | epochs (assumed) | s / epoch | validation s (every) | final eval s | set-up s | est. min |")
    print("|---|---|---|---|---|---|---|---|")
    total = 0.0
    for job in select(jobs(), args.only):
        j = job.base or job
        c = cal.get((j.pair, j.arm, j.size), {})
        est = estimate_s(job, records, first_of_group(job))
        total += est or 0.0
        load_s, fit_s = setup_parts(cal, STAGE_SHARED[j.pair])
        first = first_of_group(job)
        setup = load_s + ((cal.get(("dream", "cart", "cart"), {}).get("cart_s", 0.0) if job.pair == "dream" else fit_s)
                          if first else 0.0)

        def cell(k: str, f: str = "{:.0f}", c: dict[str, float] = c) -> str:
            return f.format(c[k]) if k in c else "?"

        print(f"| {job.id} | {cell('params', '{:,.0f}')} | {EPOCHS[(job.pair, job.arm)]} | {cell('epoch_s', '{:.1f}')} | "
              f"{cell('valid_s', '{:.1f}')} ({c.get('eval_every', 1):.0f}) | {cell('final_s')} | {setup:.0f} | "
              f"{('%.0f' % (est / 60)) if est else '?'} |")
    print(f"\ntotal: {total / 3600:.1f} thread-hours ({len(select(jobs(), args.only))} jobs)")


# ------------------------------------------------------------------ report: ratios, trends, projections


@dataclass
class Trend:
    """ln(ratio) = a + b log10(params), least squares over the points, with t-intervals."""

    n: int
    a: float
    b: float
    b_lo: float
    b_hi: float
    s: float
    x_mean: float
    sxx: float
    t: float
    x_min: float
    x_max: float
    points: list[tuple[float, float]] = field(default_factory=list)

    def at(self, x: float) -> tuple[float, float, float]:
        """(ratio, low, high) of the fitted mean ratio at log10(params) = x (95% t-interval)."""
        y = self.a + self.b * x
        se = self.s * math.sqrt(1 / self.n + (x - self.x_mean) ** 2 / self.sxx) if self.n > 2 else math.inf
        return math.exp(y), math.exp(y - self.t * se), math.exp(y + self.t * se)

    @property
    def verdict(self) -> str:
        if self.n < 3 or not math.isfinite(self.b_lo):
            return "cannot tell (fewer than 3 points)"
        if self.b_lo > 0:
            return "grows with size"
        if self.b_hi < 0:
            return "shrinks with size"
        return "cannot tell (the slope's 95% interval holds 0)"

    def projection_supported(self, x: float) -> tuple[bool, str]:
        span = self.x_max - self.x_min
        if self.n < 4:
            return False, f"{self.n} points (at least 4 needed for a 2-df interval)"
        if span <= 0:
            return False, "one size only"
        if x - self.x_max > span:
            return False, (f"the paper's size is {x - self.x_max:.2f} decades of parameters beyond the largest measured, "
                           f"the measured span {span:.2f}")
        return True, ""


def fit_trend(points: list[tuple[float, float]], level: float = 0.95) -> Trend:
    """Least-squares fit of ln(ratio) on log10(params) over (params, ratio) points, with t-intervals."""
    from scipy import stats

    x = np.log10(np.array([p for p, _ in points], dtype=float))
    y = np.log(np.array([r for _, r in points], dtype=float))
    n = len(x)
    xm = float(x.mean()) if n else 0.0
    sxx = float(((x - xm) ** 2).sum())
    if n < 2 or sxx <= 0:
        return Trend(n, float(y.mean()) if n else 0.0, 0.0, -math.inf, math.inf, math.inf, xm, sxx or 1.0, math.inf,
                     float(x.min()) if n else 0.0, float(x.max()) if n else 0.0, points)
    b = float(((x - xm) * (y - y.mean())).sum() / sxx)
    a = float(y.mean() - b * xm)
    df = n - 2
    s = float(math.sqrt(((y - a - b * x) ** 2).sum() / df)) if df > 0 else math.inf
    t = float(stats.t.ppf(0.5 + level / 2, df)) if df > 0 else math.inf
    half = t * s / math.sqrt(sxx) if df > 0 else math.inf
    return Trend(n, a, b, b - half, b + half, s, xm, sxx, t, float(x.min()), float(x.max()), points)


def ratio_points(records: list[dict[str, Any]], method: tuple[str, str], baseline: tuple[str, str], subset: str,
                 fused: bool, x_arm: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """(size, seed, params, ratio) of method over baseline, test N@10, paired by size label position and seed;
    ``params`` is the ``x_arm`` run's of the same size and seed (default: the method's)."""

    def rows(pair: str, arm: str) -> dict[tuple[int, int], dict[str, Any]]:
        labels = [s for s, _ in SIZES[pair]]
        out = {}
        for r in records:
            if (r.get("pair"), r.get("arm")) == (pair, arm) and r.get("split") == "test" and r.get("subset") == subset \
                    and r.get("kind") != "calibration" and r["method"].endswith("+content") == fused \
                    and r.get("protocol") == "exclude":
                out[(labels.index(r["size"]), r["seed"])] = r
        return out

    m, b = rows(*method), rows(*baseline)
    x = rows(*x_arm) if x_arm else m
    out = []
    for key in sorted(set(m) & set(b) & set(x)):
        vm, vb = m[key]["metrics"]["ndcg@10"], b[key]["metrics"]["ndcg@10"]
        if vb > 0 and vm > 0:
            out.append({"size": m[key]["size"], "seed": key[1], "params": x[key]["params"], "ratio": vm / vb,
                        "method": vm, "baseline": vb})
        else:  # no ratio of a zero: said, not hidden
            print(f"no ratio for {method[1]} / {baseline[1]} {m[key]['size']} seed {key[1]} ({subset}, "
                  f"{'+ content' if fused else 'alone'}): N@10 {vm:.4f} / {vb:.4f}", flush=True)
    return out


def paper_params(pair: str) -> int | None:
    """The paper model's parameter count on this data (built from a finished run's tokenizer stage); None when no
    run of that arm has finished."""
    from sidrec.config import load_config
    from sidrec.data.protocol import LeaveOneOut
    from sidrec.methods.registry import get_builder
    from sidrec.pipeline import dataset_from_config
    from sidrec.runs import copy_tokenizer_stage

    _, (p, arm), extra = PAPER[pair]
    donor = next((j.run for j in jobs() if (j.pair, j.arm) == (p, arm) and (j.run / "metrics.json").exists()), None)
    if donor is None:
        return None
    run = RUNS / "paper-size" / f"{p}-{arm}-{pair}"
    shutil.rmtree(run, ignore_errors=True)
    copy_tokenizer_stage(donor, run)
    files, over = job_config(Job(p, arm, SIZES[p][0][0], SEEDS[0]), run, extra)
    cfg = load_config(files, over)
    ds = dataset_from_config(cfg)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    task = get_builder(cfg.method)(cfg, ds, split, run)
    return int(sum(q.numel() for q in task.model.parameters()))


def cmd_report(args: argparse.Namespace) -> None:
    records = load_records()
    trend_recs = []
    print("| pair | ratio | rows | points | slope / decade (95%) | verdict | paper params | projected ratio (95%) |")
    print("|---|---|---|---|---|---|---|---|")
    for pair, specs in RATIOS.items():
        pp = paper_params(pair) if not args.no_paper else None
        series = []
        for method, baseline, subset in specs:
            for fused in (False, True):
                pts = ratio_points(records, method, baseline, subset, fused, PAPER[pair][1])
                if not pts:
                    continue
                tr = fit_trend([(p["params"], p["ratio"]) for p in pts])
                label = f"{method[1]} / {baseline[1]}" + (" + content" if fused else "") + f" ({subset} N@10)"
                series.append((label, pts, tr, fused))
                proj = "–"
                m: dict[str, Any] = {"points": tr.n, "slope_per_decade": tr.b, "slope_lo": tr.b_lo, "slope_hi": tr.b_hi}
                if pp:
                    ok, why = tr.projection_supported(math.log10(pp))
                    r, lo, hi = tr.at(math.log10(pp))
                    m.update(paper_params=pp, projected_ratio=r, projected_lo=lo, projected_hi=hi,
                             projection_supported=float(ok))
                    proj = f"{r:.2f} ({lo:.2f}–{hi:.2f})" + ("" if ok else f"; not supported: {why}")
                sizes = sorted({p["size"] for p in pts})
                print(f"| {pair} | {label} | {', '.join(sizes)} | {tr.n} | {tr.b:+.3f} ({tr.b_lo:+.3f}, {tr.b_hi:+.3f}) | "
                      f"{tr.verdict} | {pp or '?'} | {proj} |")
                trend_recs.append(record(DATASET, "trend", f"scaling {pair}: {label}", "test", subset, m, 0.0, threads=1,
                                         protocol="exclude", kind="trend", pair=pair, verdict=tr.verdict, seed=None))
        if series:
            plot_pair(pair, series, pp)
    if trend_recs:
        save(NAME, trend_recs)


def plot_pair(pair: str, series: list[tuple[str, list[dict[str, Any]], Trend, bool]], paper: int | None) -> Path:
    """Ratio vs parameters per seed, each size's seeds' range, the fitted trend and its 95% band to the paper's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sidrec.io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, fused in zip(axes, (False, True), strict=True):
        for i, (label, pts, tr, _) in enumerate(s for s in series if s[3] == fused):
            color = f"C{i}"
            xs = np.array([p["params"] for p in pts], float)
            ys = np.array([p["ratio"] for p in pts], float)
            ax.scatter(xs, ys, color=color, s=18, label=label)
            for size in sorted({p["size"] for p in pts}):
                sel = [p for p in pts if p["size"] == size]
                if len(sel) > 1:
                    r = [p["ratio"] for p in sel]
                    ax.vlines(np.mean([p["params"] for p in sel]), min(r), max(r), color=color, lw=3, alpha=.4)
            if tr.n >= 2 and math.isfinite(tr.b):
                hi_x = max(tr.x_max, math.log10(paper)) if paper else tr.x_max
                grid = np.linspace(tr.x_min, hi_x, 50)
                fit = np.array([tr.at(g) for g in grid])
                ax.plot(10 ** grid, fit[:, 0], color=color, lw=1)
                if np.isfinite(fit[:, 1:]).all():
                    ax.fill_between(10 ** grid, fit[:, 1], fit[:, 2], color=color, alpha=.12)
        if paper:
            ax.axvline(paper, color="k", ls=":", lw=1)
            ax.text(paper, 0.98, " paper", va="top", fontsize=8, transform=ax.get_xaxis_transform())
        ax.axhline(1.0, color="grey", lw=.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"parameters of {PAPER[pair][1][1]} (this data)")
        ax.set_title("+ content" if fused else "alone")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("ratio of test N@10 (method / baseline)")
    fig.suptitle(f"{pair}: effect vs size (Beauty 2,000 items, exclude)", fontsize=10)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / f"scaling_{pair}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["list", "run", "calibrate", "plan", "report", "job"])
    ap.add_argument("job_id", nargs="?", default="")
    ap.add_argument("--only", nargs="+", default=None, help="fnmatch patterns over job ids")
    ap.add_argument("--budget-min", type=float, default=0.0, help="run: minutes this chunk may take (0 = no limit)")
    ap.add_argument("--max-jobs", type=int, default=1_000_000, help="run: jobs this chunk may start")
    ap.add_argument("--no-hard-stop", dest="hard_stop", action="store_false",
                    help="run: let a job still running at --budget-min finish instead of interrupting it")
    ap.add_argument("--steps", type=int, default=12, help="calibrate: timed training steps per job")
    ap.add_argument("--fit-stage", action="store_true",
                    help="calibrate: fit the tokenizer stage instead of copying an earlier build's (times the fit)")
    ap.add_argument("--prior-wall", type=float, default=0.0, help="job: seconds earlier chunks spent on it")
    ap.add_argument("--prior-cpu", type=float, default=0.0, help="job: CPU seconds earlier chunks spent on it")
    ap.add_argument("--no-paper", action="store_true", help="report: skip the paper-size parameter counts")
    args = ap.parse_args()
    if args.command == "job":
        if not args.job_id:
            raise SystemExit("job: give the job id (see `python benchmarks/scaling.py list`)")
        cmd_job(args.job_id, args.prior_wall, args.prior_cpu)
    else:
        {"list": cmd_list, "run": cmd_run, "calibrate": cmd_calibrate, "plan": cmd_plan, "report": cmd_report}[
            args.command](args)


if __name__ == "__main__":
    main()
