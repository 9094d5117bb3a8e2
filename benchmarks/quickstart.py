"""Time ``sidrec quickstart`` end to end (fresh run directory) and record its test metrics vs popularity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sidrec.fusion import is_fused

from _common import record, save


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="sidrec-qs-"))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "sidrec.cli", "quickstart", "--run-dir", str(out)],
                       capture_output=True, text=True)
    wall = time.time() - t0
    print(p.stdout[-3000:], p.stderr[-2000:])
    if p.returncode != 0:
        raise SystemExit(p.returncode)
    recs, pop_metrics = [], None
    for run in sorted(d for d in out.iterdir() if (d / "metrics.json").exists()):
        m = json.loads((run / "metrics.json").read_text())
        pop = m["popularity_test"]["all"]["ndcg@10"]
        metrics = dict(m["test"]["all"])
        metrics["ndcg@10_vs_popularity"] = metrics["ndcg@10"] / pop
        metrics["run_s"] = m["wall_s"]
        f = m.get("fusion") or {}
        method = f"{run.name}+content" if is_fused(f) else run.name
        recs.append(record("synthetic", method, "quickstart", "test", "all", metrics, wall))
        pop_metrics = m["popularity_test"]["all"]
    if pop_metrics is not None:
        recs.append(record("synthetic", "popularity", "quickstart", "test", "all", pop_metrics, 0.0))
    save("quickstart", recs)
    shutil.rmtree(out, ignore_errors=True)
    print(f"quickstart wall time {wall:.0f}s")


if __name__ == "__main__":
    main()
