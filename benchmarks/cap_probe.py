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
from sidrec.training.trainer import fit_pass_cost

from _common import record, save


def measure(run: Path, users: int) -> dict[str, float]:
    cfg, _, _, task = load_run(run)
    task.model.eval()
    assert task.grounding is not None, f"{run}: the probe times the content fusion; this run has none"
    task.evaluate(task.model, "valid", 8)  # one-time costs (content index, per-weights tables) out of the timings
    samples = []
    for shortest in (False, True):
        t0 = time.time()
        task.evaluate(task.model, "valid", users, shortest)
        t1 = time.time()
        choose(task, task.model, max_users=users, shortest=shortest)
        t2 = time.time()
        evaluate_fused(task, task.model, "valid", [Fusion(), Fusion(1.0, 1.0)], max_users=users, shortest=shortest)
        t3 = time.time()
        es = task.eval_subset("valid", users, shortest).eval_set
        samples.append((len(es), es.padded_positions(task.eval_batch), [t1 - t0, t2 - t1, t3 - t2]))
    (n, p_a, t_a), (_, p_b, t_b) = samples
    cost = [fit_pass_cost(n, p_a, a, p_b, b) for a, b in zip(t_a, t_b, strict=True)]
    sets = [task.eval_subset("valid", cfg.train.eval_users).eval_set, task.evaluator("valid").eval_set,
            task.evaluator("test").eval_set]
    out: dict[str, float] = {"probe_s": sum(t_a) + sum(t_b)}
    for name, (a, b), t, es in zip(("valid_at_cap", "fusion_choice", "test"), cost, t_a, sets, strict=True):
        out[f"{name}_predicted_s"] = a * len(es) + b * es.padded_positions(task.eval_batch)
        out[f"{name}_per_user_estimate_s"] = t / n * len(es)  # the first probe's rule
    t0 = time.time()
    task.evaluate(task.model, "valid", cfg.train.eval_users)
    t1 = time.time()
    choose(task, task.model)
    t2 = time.time()
    evaluate_fused(task, task.model, "test", [Fusion(), Fusion(1.0, 1.0)])
    t3 = time.time()
    out.update(valid_at_cap_s=t1 - t0, fusion_choice_s=t2 - t1, test_s=t3 - t2)
    for key in ("predicted", "per_user_estimate"):
        out[f"total_{key}_s"] = sum(out[f"{p}_{key}_s"] for p in ("valid_at_cap", "fusion_choice", "test"))
    out["total_s"] = t3 - t0
    out["method"] = cfg.method  # type: ignore[assignment]
    out["dataset"] = cfg.data.name or Path(cfg.data.path).name  # type: ignore[assignment]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--users", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        t0 = time.time()
        m = measure(run, args.users)
        method, dataset = str(m.pop("method")), str(m.pop("dataset"))
        save("cap_probe", [record(dataset, method, f"probe on {args.users} + {args.users} users ({run.name})",
                                  "valid+test", "all", m, time.time() - t0, args.threads)])
        print(f"{run}: reserve predicted {m['total_predicted_s']:.0f} s (first probe's per-user rule "
              f"{m['total_per_user_estimate_s']:.0f} s), measured {m['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
