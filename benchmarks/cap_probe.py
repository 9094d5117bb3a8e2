"""How well ``train.max_minutes`` predicts the evaluations a command ends with (the cap's probe).

Usage:
  python benchmarks/cap_probe.py RUN [RUN ...] [--users 128] [--threads 1]

For each finished run (with content fusion), the trainer's probe is repeated on its best weights -- the
validation pass, the fusion choice and the fused test on ``users`` random validation users and on the ``users``
with the shortest histories -- and the cost it fits (seconds per user and per padded history position,
``sidrec.training.trainer.fit_pass_cost``) predicts the three passes the capped command reserves: the
validation at the cap (``train.eval_users``), the fusion choice on all validation users, and the test split.
Then the three passes are run and timed. The per-user estimate of the first probe (one random sample, which is
evaluated as one batch padded to its longest history) is recorded beside it. Why: a run whose reserve is
overestimated is starved (DIGER on a 2,000-item catalogue trained one step of a 10-minute cap), one whose
reserve is underestimated overruns its cap.

Writes benchmarks/results/cap_probe.json (one record per run: predicted and measured seconds per pass).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sidrec.fusion import Fusion, choose
from sidrec.fusion import evaluate as evaluate_fused
from sidrec.pipeline import load_run
from sidrec.training.trainer import predict_pass_s, probe_pass_costs

from _common import record, save

PASSES = ("valid_at_cap", "fusion_choice", "test")


def measure(run: Path, users: int) -> tuple[str, str, dict[str, float]]:
    """(method, dataset, seconds predicted by the trainer's probe and measured, per pass) of a finished run."""
    cfg, _, _, task = load_run(run)
    task.model.eval()
    assert task.grounding is not None, f"{run}: the probe times the content fusion; this run has none"
    t0 = time.time()
    cost = probe_pass_costs(task, users)
    out: dict[str, float] = {"probe_s": time.time() - t0}
    sample = task.eval_subset("valid", users).eval_set  # the first probe's one random sample
    sets = [task.eval_subset("valid", cfg.train.eval_users).eval_set, task.evaluator("valid").eval_set,
            task.evaluator("test").eval_set]
    for name, c, es in zip(PASSES, cost, sets, strict=True):
        out[f"{name}_predicted_s"] = predict_pass_s(task, c, es)
        # the first probe's rule: the sample's time (which the fit reproduces) per user, times the users
        out[f"{name}_per_user_estimate_s"] = predict_pass_s(task, c, sample) / len(sample) * len(es)
    t0 = time.time()
    task.evaluate(task.model, "valid", cfg.train.eval_users)
    t1 = time.time()
    choose(task, task.model)
    t2 = time.time()
    evaluate_fused(task, task.model, "test", [Fusion(), Fusion(1.0, 1.0)])
    t3 = time.time()
    out.update(valid_at_cap_s=t1 - t0, fusion_choice_s=t2 - t1, test_s=t3 - t2, total_s=t3 - t0)
    for key in ("predicted", "per_user_estimate"):
        out[f"total_{key}_s"] = sum(out[f"{p}_{key}_s"] for p in PASSES)
    return cfg.method, cfg.data.name or Path(cfg.data.path).name, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--users", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        t0 = time.time()
        method, dataset, m = measure(run, args.users)
        save("cap_probe", [record(dataset, method, f"probe on {args.users} + {args.users} users ({run.name})",
                                  "valid+test", "all", m, time.time() - t0, args.threads)])
        print(f"{run}: reserve predicted {m['total_predicted_s']:.0f} s (first probe's per-user rule "
              f"{m['total_per_user_estimate_s']:.0f} s), measured {m['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
