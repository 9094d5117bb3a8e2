"""Time ``sidrec quickstart`` end to end (fresh run directory) and record its test metrics vs popularity."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sidrec.fusion import is_fused

from _common import record, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--note", default="", help="how the machine was during the run (e.g. other jobs paused)")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="sidrec-qs-"))
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = f"{os.getloadavg()[0]:.1f}"  # the machine's load before the run (the quickstart picks its threads by it)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "sidrec.cli", "quickstart", "--run-dir", str(out)],
                       capture_output=True, text=True)
    wall = time.time() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the quickstart process: what the machine's load inflates less than the wall time
    cpu = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)
    load += f" -> {os.getloadavg()[0]:.1f}"
    print(p.stdout[-3000:], p.stderr[-2000:])
    if p.returncode != 0:
        raise SystemExit(p.returncode)
    recs, pop_metrics, protocol, threads = [], None, None, None
    for run in sorted(d for d in out.iterdir() if (d / "metrics.json").exists()):
        m = json.loads((run / "metrics.json").read_text())
        pop = m["popularity_test"]["all"]["ndcg@10"]
        metrics = dict(m["test"]["all"])
        metrics["ndcg@10_vs_popularity"] = metrics["ndcg@10"] / pop
        metrics["run_s"] = m["wall_s"]
        f = m.get("fusion") or {}
        method = f"{run.name}+content" if is_fused(f) else run.name
        if f:  # the content weights chosen on validation (0: the model alone), beside the model alone on test
            metrics["lambda"], metrics["lambda_cold"] = float(f["lambda"]), float(f["lambda_cold"])
            metrics["model_only_ndcg@10"] = m["model_only"]["test"]["all"]["ndcg@10"]
            # the validation numbers the choice was made on
            metrics["valid_ndcg@10"] = m["valid"]["all"]["ndcg@10"]
            metrics["valid_model_only_ndcg@10"] = m["model_only"]["valid"]["all"]["ndcg@10"]
        threads = int(yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"])
        recs.append(record("synthetic", method, "quickstart", "test", "all", metrics, wall, threads=threads,
                           protocol=m.get("protocol"), load=load, cpu_s=cpu, note=args.note))
        pop_metrics, protocol = m["popularity_test"]["all"], m.get("protocol")
    if pop_metrics is not None:
        recs.append(record("synthetic", "popularity", "quickstart", "test", "all", pop_metrics, 0.0, threads=threads,
                           protocol=protocol, load=load, cpu_s=cpu, note=args.note))
    save("quickstart", recs, merge_key=("dataset", "variant"))  # one quickstart: its rows replace every earlier one
    shutil.rmtree(out, ignore_errors=True)
    print(f"quickstart wall time {wall:.0f}s, CPU {cpu:.0f}s")


if __name__ == "__main__":
    main()
