"""Training throughput on Beauty: samples/s and achieved GFLOP/s per model, fp32 vs ``train.bf16=auto``, next
to the machine's measured fp32 / bf16 matmul peak, all in one run on one machine.

A *sample* is one trained next-item prediction (one target item): a prefix sample for TIGER ``encdec`` and
DIGER, one position of a user window for SASRec, ACERec and TIGER ``decoder``. Model FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` over the forward and backward passes of the same batches that
are timed (in a separate, untimed pass), so GFLOP/s = counted FLOPs / measured seconds.
``epoch_s`` = the epoch's samples / samples per second (training only, no evaluation). fp32 and ``auto`` of a
model are timed in alternating rounds and each keeps its best round, so a change of machine load during the
run does not favour either.

Models and settings are the configs on Beauty (``configs/data/beauty.yaml`` + ``configs/*.yaml``): SASRec, TIGER
``tiger-cpu.yaml`` with ``tiger.arch=encdec`` and ``decoder`` (equal width and depth: 2 + 2 blocks vs 4 causal
blocks), DIGER (``diger.yaml``), ACERec before this change (per-item code projections, FFN 1024), after it at FFN
1024 (equal settings) and at the new default FFN (the paper's ratio). The SIDs are fitted quickly (RQ-KMeans for
TIGER, a 5-epoch RQ-VAE for DIGER, OPQ for ACERec): their quality does not change the cost of a step.

Usage: python benchmarks/throughput.py [--threads 1] [--steps 12] [--models sasrec tiger-encdec ...]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from sidrec import precision
from sidrec.config import load_config
from sidrec.data.protocol import LeaveOneOut
from sidrec.methods.registry import get_builder
from sidrec.pipeline import dataset_from_config, seed_everything

from _common import REPO, record, save

B = REPO / "configs"
DATA = B / "data" / "beauty.yaml"
# name -> (config files, overrides, run directory shared by the models that use the same SIDs)
MODELS: dict[str, tuple[list[Path], list[str], str]] = {
    "sasrec": ([DATA, B / "sasrec.yaml"], [], "sasrec"),
    "tiger-encdec": ([DATA, B / "tiger-cpu.yaml"], ["tiger.arch=encdec", "tokenizer.kind=rqkmeans"], "rqkmeans"),
    "tiger-decoder": ([DATA, B / "tiger-cpu.yaml"], ["tiger.arch=decoder", "tokenizer.kind=rqkmeans"], "rqkmeans"),
    "diger": ([DATA, B / "diger.yaml"], ["tokenizer.epochs=5"], "rqvae5"),
    "acerec-before": ([DATA, B / "acerec.yaml", B / "opq-whitened.yaml"], ["acerec.ffn_dim=1024"], "opq"),
    "acerec-ffn1024": ([DATA, B / "acerec.yaml", B / "opq-whitened.yaml"], ["acerec.ffn_dim=1024"], "opq"),
    "acerec": ([DATA, B / "acerec.yaml", B / "opq-whitened.yaml"], [], "opq"),
}


def n_samples(batch: dict[str, torch.Tensor]) -> int:
    if isinstance(batch.get("target"), list):  # one random batch in length bands
        return sum(n_samples({"target": t}) for t in batch["target"])
    if "target" in batch and batch["target"].dim() == 2:  # (B, t) next-item targets, -1 = none
        return int((batch["target"] >= 0).sum())
    if "window" in batch:
        w = batch["window"] >= 0
        return int((w[:, 1:] & w[:, :-1]).sum())
    return len(batch["target"])


def per_item_items(model: Any) -> Any:
    """ACERec's item path as it was before the code-token table: LayerNorm and K/V per item x code."""

    def items(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = model.code_tokens(codes)
        s = model.summarise(x.mean(1))
        return x, s, model.merger(x, s)

    return items


def prepare(task: Any, setting: str, steps: int) -> dict[str, Any]:
    """Optimizer, the timed batches (a typical stretch of the epoch) and their counted FLOPs, after warm-up."""
    model = task.model
    batches = task.train_batches(0)
    mid = len(batches) // 2  # skip the shortest / longest ends of length-grouped epochs
    picked = (batches[mid:] + batches[:mid])[: steps + 2]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    run = {"task": task, "setting": setting, "opt": opt, "timed": picked[2:], "seconds": [], "samples": 0,
           "epoch_samples": sum(n_samples(b) for b in batches), "epoch_steps": len(batches)}
    for b in picked[:2]:  # warm-up (allocator, lazy kernels)
        step(run, b)
    flops = FlopCounterMode(display=False)
    with flops:
        for b in run["timed"]:
            with precision.autocast(setting):
                loss = task.loss(model, b)
            loss.backward()
    opt.zero_grad(set_to_none=True)
    run["flops"] = flops.get_total_flops()
    run["timed_samples"] = sum(n_samples(b) for b in run["timed"])
    return run


def step(run: dict[str, Any], b: dict[str, torch.Tensor]) -> None:
    with precision.autocast(run["setting"]):
        loss = run["task"].loss(run["task"].model, b)
    run["opt"].zero_grad(set_to_none=True)
    loss.backward()
    run["opt"].step()


def measure(runs: list[dict[str, Any]], rounds: int, min_s: float) -> list[dict[str, float]]:
    """Time the runs' batches in alternating rounds (A B A B ...), so a machine whose load changes slows every
    setting alike; each setting's speed is its best round (the least disturbed)."""
    for _ in range(rounds):
        for run in runs:
            t0 = time.perf_counter()
            reps = 0
            while True:
                for b in run["timed"]:
                    step(run, b)
                reps += 1
                dt = time.perf_counter() - t0
                if dt >= min_s / rounds or reps >= 3:
                    break
            run["seconds"].append(dt / reps)
    out = []
    for run in runs:
        dt = min(run["seconds"])  # seconds for one pass over the timed batches
        sps = run["timed_samples"] / dt
        out.append({"samples_per_s": sps, "gflops": run["flops"] / dt / 1e9, "step_s": dt / len(run["timed"]),
                    "epoch_s": run["epoch_samples"] / sps, "epoch_samples": run["epoch_samples"],
                    "epoch_steps": run["epoch_steps"], "flops_per_sample": run["flops"] / run["timed_samples"],
                    "rounds": len(run["seconds"]), "round_spread": max(run["seconds"]) / dt - 1})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12, help="batches timed per model (after 2 warm-up steps)")
    ap.add_argument("--min-s", type=float, default=8.0, help="time each model and precision about this long")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per model")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=["fp32", "auto", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recs = []
    t_all = time.time()
    scratch = REPO / "runs" / "bench" / "throughput"  # SID tables fitted for timing only: refitted every run
    shutil.rmtree(scratch, ignore_errors=True)
    peak32 = precision.matmul_gflops(torch.float32, n=1024, min_s=1.0)
    peak16 = precision.matmul_gflops(torch.bfloat16, n=1024, min_s=1.0)
    auto = "bf16" if precision.use_bf16("auto") else "fp32"
    print(f"matmul 1024^3: fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s; auto -> {auto}; "
          f"{precision.cpu_capability()}", flush=True)
    recs.append(record("beauty", "matmul", "1024^3 peak", "n/a", "all",
                       {"fp32_gflops": peak32, "bf16_gflops": peak16, "bf16_over_fp32": peak16 / peak32}, 0.0,
                       args.threads))
    for name in args.models:
        files, ov, sub = MODELS[name]
        cfg = load_config(files, ov + [f"run_dir={scratch / sub}", "train.progress=false",
                                       "tokenizer.progress=false"])
        cfg.data.path = str((REPO / cfg.data.path).resolve()) if not Path(cfg.data.path).is_absolute() else cfg.data.path
        ds = dataset_from_config(cfg)
        split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
        run = Path(cfg.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        runs, labels = [], []
        for setting in args.precisions:
            seed_everything(cfg.seed)
            task = get_builder(cfg.method)(cfg, ds, split, run)
            if name == "acerec-before":
                task.model.items = per_item_items(task.model)
            label = {"fp32": "false", "auto": "auto", "bf16": "true"}[setting]
            runs.append(prepare(task, label, args.steps))
            labels.append((setting, label))
        for (setting, label), m in zip(labels, measure(runs, args.rounds, args.min_s), strict=True):
            resolved = "bf16" if precision.use_bf16(label) else "fp32"
            m["peak_fraction"] = m["gflops"] / (peak16 if resolved == "bf16" else peak32)
            variant = f"{name}, {setting}" + (f" (-> {resolved})" if setting == "auto" else "")
            print(f"{variant:38s} {m['samples_per_s']:9.0f} samples/s  {m['gflops']:6.1f} GFLOP/s  "
                  f"step {m['step_s'] * 1e3:7.1f} ms  epoch ~{m['epoch_s']:6.1f} s ({m['epoch_steps']} steps)", flush=True)
            recs.append(record("beauty", cfg.method, variant, "train", "all", m, m["epoch_s"], args.threads))
        save("throughput", recs)  # after every model: a later failure keeps what was measured
    print(f"wrote {save('throughput', recs)} in {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
