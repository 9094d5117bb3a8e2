"""``sidrec serve`` under load: requests/s and p50 / p99 latency per run at concurrency 1 / 8 / 32.

Each run is served by the command a user types (``sidrec serve RUN --port 0``, a process of its own) on
127.0.0.1 only; this script is the load: ``concurrency`` keep-alive connections (raw asyncio sockets, so the
client costs little of the shared cores), each sending its next request as soon as the last is answered, a
bounded number of requests per level (``--requests``; fewer for beam-search runs, ``--beam-requests``), after a
warm-up. A request is one history -- a dataset user's history without its last item, as item ids, oldest first
-- and ``k`` 10, answered under the run's own protocol and fusion (``POST /recommend``).

``client_cpu_ms`` is this load generator's own CPU time per request (~0.1-0.2 ms: it takes little of the
cores it shares with the server). Besides the HTTP numbers a record holds ``model_ms``: the median time of the
same requests ranked in this process by the Python API (``Recommender.query`` + ``rank``, one at a time), so
the share of HTTP / JSON / queueing in the latency can be read off. ``loadavg`` is the machine's 1-minute load
average when the level ran (this machine is shared: other jobs' load shows in the tail).

Usage: python benchmarks/serve.py --run sasrec=PATH --run content=PATH ... [--concurrency 1 8 32]
       [--max-batch 1 8] [--requests 400] [--beam-requests 120] [--dataset beauty] [--note TEXT]
       [--server-src OTHER_CHECKOUT/src]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sidrec

from _common import REPO, record, save


def histories(rec: Any, n: int, seed: int = 0) -> list[list[str]]:
    """``n`` users' histories without their last item (as item ids), a fixed random sample of the dataset."""
    rng = np.random.default_rng(seed)
    users = rng.choice(len(rec.users), size=min(n, len(rec.users)), replace=False)
    out = []
    for u in users:
        seq = rec.dataset.sequence(int(u))[:-1][-50:]
        out.append([rec.dataset.item_ids[int(i)] for i in seq])
    return out


def model_ms(rec: Any, bodies: list[dict[str, Any]]) -> float:
    """Median ms of the Python API on the same requests, one at a time, in this process (one torch thread)."""
    times = []
    with torch.inference_mode():
        for b in bodies:
            t = time.perf_counter()
            rec.rank([rec.query(history=b["history"], k=b["k"])])
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> tuple[int, bytes]:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


def request(path: str, body: dict[str, Any] | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def load(port: int, payloads: list[bytes], concurrency: int) -> tuple[list[float], float, int]:
    """Send ``payloads`` over ``concurrency`` connections; latencies (s), wall seconds, non-200 answers."""
    queue = list(reversed(payloads))
    lat: list[float] = []
    errors = 0

    async def conn() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                p = queue.pop()
                t = time.perf_counter()
                status, _ = await _one(reader, writer, p)
                lat.append(time.perf_counter() - t)
                errors += status != 200
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0, errors


def start(run: Path, max_batch: int, threads: int, src: Path = REPO / "src", extra: tuple[str, ...] = ()
          ) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, "-c", "from sidrec.cli import main; main()", "serve", str(run),
                             "--port", "0", "--max-batch", str(max_batch), "--threads", str(threads), *extra],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "sidrec serve:" not in line:
        proc.kill()
        raise SystemExit(f"{run}: the server did not start ({line.strip()})")
    return proc, int(line.strip().rsplit(":", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="METHOD=RUN_DIR (repeat)")
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=400, help="requests per level (dense-scoring runs)")
    ap.add_argument("--beam-requests", type=int, default=120, help="requests per level (beam-search runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server's model thread")
    ap.add_argument("--content-thread", nargs="+", choices=["no", "yes"], default=["yes"],
                    help="serve --content-thread (the content similarity on a second thread): no, yes or both")
    ap.add_argument("--note", default="", help="appended to each record's variant (e.g. how a run was made)")
    ap.add_argument("--server-src", type=Path, default=REPO / "src",
                    help="the sidrec package the server runs from (another checkout's src/: an A/B against an older "
                         "commit, measured back to back under the same load)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    records = []
    for spec in args.run:
        method, _, path = spec.partition("=")
        run = Path(path)
        rec = sidrec.load(run)
        beam = getattr(rec.task, "scoring", "dense") == "beam"
        n = args.beam_requests if beam else args.requests
        bodies = [{"history": h, "k": 10} for h in histories(rec, n)]
        payloads = [request("/recommend", b) for b in bodies]
        alone_ms = model_ms(rec, bodies[: min(n, 100)])
        f = getattr(rec.task, "fusion", None)
        fused = f is not None and not f.off
        name = f"{method}+content" if fused and method != "content" else method
        for mb, side in [(mb, side) for mb in args.max_batch for side in args.content_thread]:
            # a --server-src checkout older than the setting has no such flag (and no second thread)
            knows = "content_thread" in (args.server_src / "sidrec" / "serve.py").read_text()
            extra = (("--content-thread",) if side == "yes" else ("--no-content-thread",)) if knows else ()
            side = side if knows else "no"
            proc, port = start(run, mb, args.threads, args.server_src, extra)
            try:
                asyncio.run(load(port, payloads[:20], 1))  # warm-up
                for c in args.concurrency:
                    cpu = time.process_time()
                    lat, wall, errors = asyncio.run(load(port, payloads, c))
                    cpu = time.process_time() - cpu
                    ms = np.array(lat) * 1000
                    m = {"requests": len(lat), "concurrency": c, "max_batch": mb, "errors": errors,
                         "req_per_s": len(lat) / wall, "p50_ms": float(np.percentile(ms, 50)),
                         "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "model_ms": alone_ms,
                         "client_cpu_ms": 1000 * cpu / len(lat), "loadavg": round(os.getloadavg()[0], 2)}
                    variant = (f"c{c} max_batch {mb}" + (" content thread" if side == "yes" else "")
                               + (f" {args.note}" if args.note else ""))
                    r = record(args.dataset, name, variant, "serve", "single-history", m, wall, threads=args.threads,
                               protocol=rec.cfg.eval.protocol, run=str(run), items=len(rec.items))
                    records.append(r)
                    tag = f"{mb}{' +thread' if side == 'yes' else ''}"
                    print(f"{name:16s} c={c:<3d} max_batch={tag}: {m['req_per_s']:7.1f} req/s  p50 {m['p50_ms']:7.1f} ms  "
                          f"p99 {m['p99_ms']:7.1f} ms  (model alone {alone_ms:.1f} ms; client CPU "
                          f"{m['client_cpu_ms']:.2f} ms/request; errors {errors}; load {m['loadavg']})", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    if not args.no_save:
        print(save("serve", records))


if __name__ == "__main__":
    main()
