"""TIGER decoding speed: our batched trie-constrained beam search vs the per-user reference decoder.

Both decoders use the same trained weights, the same trie and the same scoring rule, so they must return
the same items; the script checks that (``agreement`` = fraction of users whose top-K lists are identical,
``overlap`` = mean share of common items) and measures users per second for

* ``beam_search`` as the recipe's evaluation runs it (``TIGERTask.decode``: batches of
  ``tiger.eval_batch_users`` users x ``beam`` hypotheses, dense trie tables, decoder key/value cache),
* the same with the cache off (the decoder re-runs on the whole prefix at every step),
* ``reference_decode_one``: one user at a time, a Python dict trie, full decoder re-run per step.

Precision: float32 for all decoders by default (``--bf16`` runs all of them under bf16 autocast), so the
agreement check compares like with like whatever ``train.bf16`` the run was trained with. In fp32 the lists
agree exactly up to float rounding between batched and single-user shapes (near-ties); under bf16 that
rounding is coarse enough to reorder close candidates (synthetic check: 67% identical lists, 99% overlap).

Usage: python benchmarks/tiger_decode.py --run runs/bench/tiger-beauty [--users 500] [--beam 20] [--k 10]
       [--batch N] [--threads 2] [--bf16] [--no-save]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from sidrec.decoding.reference import dict_trie, reference_decode_one, sid_to_item
from sidrec.pipeline import load_run

from _common import record, save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench/tiger-beauty", help="a trained TIGER run directory")
    ap.add_argument("--users", type=int, default=500, help="test users decoded (a fixed random subset)")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="users per beam-search batch (0 = tiger.eval_batch_users)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="decode under bf16 autocast (all decoders)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg, ds, split, task = load_run(args.run)
    if cfg.method != "tiger":
        raise SystemExit(f"{args.run} is a '{cfg.method}' run, not a TIGER run")
    model = task.model.eval()
    tcfg = task.tcfg
    if args.batch:
        tcfg.eval_batch_users = args.batch
    cfg.train.bf16 = args.bf16  # TIGERTask.decode autocasts when this is set
    es = split.test
    n = min(args.users, len(es))
    rows = np.sort(np.random.default_rng(args.seed).choice(len(es), n, replace=False))
    sub = es.subset(rows)
    print(f"{ds.name}: {n} test users, {task.trie.n_leaves} SIDs of {task.sids.length} codes "
          f"(sizes {task.sids.sizes}), beam {args.beam}, K {args.k}, batch {tcfg.eval_batch_users}, "
          f"{'bf16' if args.bf16 else 'fp32'}, {args.threads} threads")

    def batched(kv_cache: bool) -> tuple[np.ndarray, float]:
        tcfg.kv_cache = kv_cache
        task.decode(model, sub.subset(np.arange(min(4, n))), args.k, beam=args.beam)  # warm-up
        t0 = time.perf_counter()
        items, _ = task.decode(model, sub, args.k, exclude_history=False, beam=args.beam)
        return items.numpy(), time.perf_counter() - t0

    ours, ours_s = batched(True)
    nocache, nocache_s = batched(False)
    tcfg.kv_cache = True

    # the reference: built and run the way per-user public code does (trie construction not timed)
    allowed = dict_trie(task.sids.codes)
    owner = sid_to_item(task.sids.codes, task.sids.sid_item)
    depth = task.trie.depth

    def reference(i: int) -> list[int]:
        hist = torch.as_tensor(sub.histories[i], dtype=torch.long).view(1, -1)
        if hist.shape[1] == 0:
            hist = torch.full((1, 1), -1, dtype=torch.long)
        user = task._users(torch.tensor([int(sub.users[i])]))
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with amp:
            items, _ = reference_decode_one(model, task.codes_of(hist), user, allowed, owner, depth, args.beam, args.k)
        return items

    reference(0)  # warm-up
    t0 = time.perf_counter()
    ref = [reference(i) for i in range(n)]
    ref_s = time.perf_counter() - t0

    def agreement(items: np.ndarray) -> tuple[float, float]:
        same, overlap = 0, 0.0
        for row, r in zip(items.tolist(), ref, strict=True):
            got = [i for i in row if i >= 0]
            same += got == r
            overlap += len(set(got) & set(r)) / max(1, len(r))
        return same / n, overlap / n

    agree, overlap = agreement(ours)
    agree_nc, overlap_nc = agreement(nocache)
    ref_ups, ours_ups, nc_ups = n / ref_s, n / ours_s, n / nocache_s
    prec = "bf16" if args.bf16 else "fp32"
    base = f"W{args.beam} K{args.k} {prec}"
    bs = tcfg.eval_batch_users
    common = {"users": n, "beam": args.beam, "k": args.k}
    recs = [
        record(ds.name, "tiger", f"beam_search {base} batch {bs} kv_cache", "test", "all",
               {**common, "users_per_s": ours_ups, "decode_speedup": ours_ups / ref_ups, "agreement": agree,
                "overlap": overlap}, ours_s, args.threads),
        record(ds.name, "tiger", f"beam_search {base} batch {bs} no cache", "test", "all",
               {**common, "users_per_s": nc_ups, "decode_speedup": nc_ups / ref_ups, "agreement": agree_nc,
                "overlap": overlap_nc}, nocache_s, args.threads),
        record(ds.name, "tiger", f"reference per-user {base}", "test", "all",
               {**common, "users_per_s": ref_ups}, ref_s, args.threads),
    ]
    print(f"beam_search (kv cache): {ours_ups:8.1f} users/s  speed-up {ours_ups / ref_ups:6.1f}x  "
          f"identical top-{args.k} {agree:.3f}  overlap {overlap:.3f}")
    print(f"beam_search (no cache): {nc_ups:8.1f} users/s  speed-up {nc_ups / ref_ups:6.1f}x  "
          f"identical top-{args.k} {agree_nc:.3f}  overlap {overlap_nc:.3f}")
    print(f"reference (per user):   {ref_ups:8.1f} users/s")
    if not args.no_save:
        print(f"wrote {save('tiger_decode', recs)}")


if __name__ == "__main__":
    main()
