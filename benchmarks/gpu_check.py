"""The prepared GPU check (issue 42): the ``-m gpu`` tests, then Beauty TIGER and ACERec at paper size for a fixed
number of minutes each, and the same models' CPU speed for the ratio; records to ``benchmarks/results/gpu.json``.

Per model it records: training samples/s on the device (timed steps after warm-up, synchronised), the same on the
CPU (a few steps, all cores), their ratio, peak GPU memory, and the run's log for the minutes it trained (time per
epoch, validation N@10 per epoch on ``--eval-users`` validation users). A *sample* is one trained next-item
prediction (as in ``benchmarks/throughput.py``). The runs are speed and sanity checks, not reference rows: they stop
at the minute cap, and the fusion choice and the test split are skipped.

The device machine carries only the working tree and named git-ignored folders, so the data goes along:

    python benchmarks/gpu_check.py --prepare          # here: Beauty + its cached item vectors -> .gpu_data/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl faiss-cpu==1.15.1   # the one package the GPU image lacks
    # on the GPU machine (the device tool's run, carry [".gpu_data", ".whl"], timeout 600; ~48 MiB travel):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
        export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && \
        python3 benchmarks/gpu_check.py --device cuda --data .gpu_data; cp benchmarks/results/gpu.json $OUT/
    # back here: copy the returned gpu.json over benchmarks/results/gpu.json, render docs/RESULTS.md

``train.max_minutes`` bounds each model's whole run (the SID stage and the evaluations included), so the check
takes about the tests (~1-2 min) + 2 x (``--minutes`` + the timing steps, ~1 min) on one GPU: ~8 minutes at 2.

``--device cpu --minutes 0.5`` is a dry run of the same script (quick tokenizers, small evaluation subset; CI-size
time on the synthetic data with ``--dataset synthetic``); it writes to ``runs/gpu_check/gpu_dry_run.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sidrec.config import load_config
from sidrec.data.protocol import LeaveOneOut
from sidrec.device import describe, resolve, to_device
from sidrec.methods.registry import get_builder
from sidrec.pipeline import dataset_from_config, seed_everything, train

from _common import REPO, SHARED, copy_tokenizer_stage, record, save

CONFIGS = {"tiger": ["configs/tiger.yaml"], "acerec": ["configs/acerec-paper.yaml"]}
WHITENED = "configs/opq-whitened.yaml"  # ACERec on Beauty: whitened PCA to 320 dims before OPQ (not on synthetic)
# fast SID stages for the dry run (the cost of a training step does not depend on the SIDs' quality)
QUICK = {"tiger": ["tokenizer.kind=rqkmeans", "tokenizer.kmeans_iters=5"],
         "acerec": ["tokenizer.opq_iters=2"]}


def prepare(data: Path) -> None:
    """Copy Beauty and its cached item vectors into ``data`` (git-ignored), for the device machine."""
    src = SHARED / "amazon14_beauty"
    if not src.exists():
        raise SystemExit(f"{src}: not found (the shared data must be beside the checkout)")
    shutil.copytree(src, data / "amazon14_beauty", dirs_exist_ok=True)
    cache = data / "features"
    cache.mkdir(parents=True, exist_ok=True)
    from sidrec.io import features_cache

    for f in features_cache().glob("beauty-text-*.npy"):
        shutil.copy2(f, cache / f.name)
    print(f"prepared {data} ({sum(p.stat().st_size for p in data.rglob('*') if p.is_file()) / 2**20:.1f} MiB)")


def overrides(args: argparse.Namespace, name: str, device: str) -> tuple[list[Path], list[str]]:
    """Config files and settings of one model's check."""
    over = [f"train.device={device}", f"train.max_minutes={args.minutes}", "train.progress=false",
            f"train.eval_users={args.eval_users}", "train.patience=1000", "eval.test=false", "fusion.lambdas=[0]",
            "tokenizer.progress=false"]
    if args.dataset == "synthetic":
        files = [REPO / "configs" / "data" / "synthetic.yaml"]
        over += ["features.kind=attributes"]
    else:
        files = [REPO / "configs" / "data" / "beauty.yaml"]
        if args.data:
            over += [f"data.path={Path(args.data).resolve() / 'amazon14_beauty'}",
                     f"features.cache_dir={Path(args.data) / 'features'}"]
    files += [REPO / c for c in CONFIGS[name]]
    if name == "acerec" and args.dataset == "beauty":
        files.append(REPO / WHITENED)
    if device == "cpu":
        over += QUICK[name]
    return files, over


def samples_per_second(files: list[Path], over: list[str], device: torch.device, steps: int, run: Path,
                       compile: bool = False) -> dict[str, float]:
    """Training samples/s of the model on ``device`` over ``steps`` timed steps (after the warm-up steps: 2, or 6
    with ``compile``, i.e. ``torch.compile(dynamic=True)`` as ``train.compile`` does, whose compile time is left
    out and reported apart)."""
    cfg = load_config(files, over + [f"run_dir={run}"])
    seed_everything(cfg.seed)
    ds = dataset_from_config(cfg)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    run.mkdir(parents=True, exist_ok=True)
    task = get_builder(cfg.method)(cfg, ds, split, run).to(device)
    batches = task.train_batches(0)
    opt = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad], lr=cfg.train.lr)
    task.model.train()
    model = torch.compile(task.model, dynamic=True) if compile else task.model
    warm = 6 if compile else 2
    n_samples, spent, warm_s = 0, 0.0, 0.0
    for i, batch in enumerate(batches[: steps + warm]):
        t = batch.get("target", batch.get("seq"))
        n = int((t >= 0).sum()) if t is not None else len(next(iter(batch.values())))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with task.autocast():
            loss = task.loss(model, to_device(batch, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warm:
            spent += time.perf_counter() - t0
            n_samples += n
        else:
            warm_s += time.perf_counter() - t0
    return {"samples_per_s": n_samples / max(spent, 1e-9), "timed_steps": max(0, min(steps, len(batches) - warm)),
            "warmup_s": warm_s}


def check(args: argparse.Namespace, name: str, device: torch.device, work: Path) -> list[dict[str, Any]]:
    files, over = overrides(args, name, device.type)
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    train(load_config(files, over + [f"run_dir={run}"]))
    wall = time.time() - t0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    metrics: dict[str, Any] = {"epochs": len(log), "train_s": wall,
                               "epoch_s": sum(r["epoch_s"] for r in log) / max(1, len(log)),
                               "valid_ndcg@10_last": log[-1].get("valid_ndcg@10", float("nan")) if log else float("nan")}
    if device.type == "cuda":
        metrics["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    speed_dir = work / f"{name}-speed"
    shutil.rmtree(speed_dir, ignore_errors=True)
    copy_tokenizer_stage(run, speed_dir)  # the run's SIDs: not fitted again for the timing
    speed = samples_per_second(files, over, device, args.steps, speed_dir)
    metrics["samples_per_s"] = speed["samples_per_s"]
    if args.compile:  # train.compile is kept off unless this shows a gain
        comp = samples_per_second(files, over, device, args.steps, speed_dir, compile=True)
        metrics["compiled_samples_per_s"] = comp["samples_per_s"]
        metrics["compile_warmup_s"] = comp["warmup_s"]
    if args.cpu_steps > 0:
        cpu_over = [o for o in over if not o.startswith("train.device")] + ["train.device=cpu"]
        torch.set_num_threads(args.cpu_threads)
        cpu = samples_per_second(files, cpu_over, torch.device("cpu"), args.cpu_steps, speed_dir)
        metrics["cpu_samples_per_s"] = cpu["samples_per_s"]
        metrics["speedup_vs_cpu"] = metrics["samples_per_s"] / max(cpu["samples_per_s"], 1e-9)
    rec = record(args.dataset, name, f"paper size, {args.minutes:g} min, {describe(device).get('gpu', 'cpu')}",
                 "valid", "all", metrics, wall)
    rec["per_epoch"] = [{"epoch": r["epoch"], "epoch_s": r["epoch_s"], "valid_ndcg@10": r.get("valid_ndcg@10")}
                        for r in log]
    rec["device"] = describe(device)
    print(f"{name}: {metrics}", flush=True)
    return [rec]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="copy the data the check needs into --data and stop")
    p.add_argument("--data", default=".gpu_data", help="folder with the copied data (git-ignored)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dataset", default="beauty", choices=["beauty", "synthetic"])
    p.add_argument("--minutes", type=float, default=2.0, help="minutes per model run (train.max_minutes: set-up, "
                                                         "training and evaluation)")
    p.add_argument("--models", nargs="+", default=["tiger", "acerec"], choices=sorted(CONFIGS))
    p.add_argument("--eval-users", type=int, default=0, help="validation users per epoch (0: 2000 on a GPU, 100 on a CPU)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps on the device")
    p.add_argument("--cpu-steps", type=int, default=3, help="timed training steps on the CPU for the ratio (0: skip)")
    p.add_argument("--cpu-threads", type=int, default=0, help="CPU threads for the ratio (0: all cores)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="also time the torch.compile'd step (auto: on a GPU only)")
    p.add_argument("--skip-tests", action="store_true", help="do not run the -m gpu tests first")
    p.add_argument("--out", default="", help="results file (default: benchmarks/results/gpu.json on a GPU, "
                                             "runs/gpu_check/gpu_dry_run.json on the CPU)")
    args = p.parse_args()
    data = Path(args.data)
    if args.prepare:
        prepare(data)
        return
    device = resolve(args.device)
    args.compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    if not args.data or not (data / "amazon14_beauty").exists():
        args.data = ""  # the shared data beside the checkout (configs/data/beauty.yaml)
    args.eval_users = args.eval_users or (2000 if device.type == "cuda" else 100)
    args.cpu_threads = args.cpu_threads or torch.get_num_threads()
    if device.type == "cpu":
        args.steps = min(args.steps, 3)
    work = REPO / "runs" / "gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    if not args.skip_tests:
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                              "tests/test_devices.py"], cwd=REPO, capture_output=True, text=True)
        tail = (res.stdout.strip().splitlines() or [""])[-1]
        print(f"-m gpu tests: {tail}", flush=True)
        records.append(record(args.dataset, "gpu tests", tail, "-", "-", {"exit_code": res.returncode},
                              time.time() - t0))
    for name in args.models:
        records += check(args, name, device, work)
    out = Path(args.out) if args.out else None
    if out is None and device.type == "cuda":
        save("gpu", records)
        print("wrote benchmarks/results/gpu.json")
        return
    out = out or work / "gpu_dry_run.json"
    out.write_text(json.dumps(records, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
