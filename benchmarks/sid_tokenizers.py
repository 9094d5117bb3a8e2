"""Tokenizer diagnostics on the real datasets: RQ-KMeans 3x256, RQ-VAE 3x256 and OPQ 32x256.

For each (dataset, tokenizer): per-level utilisation, perplexity, collision rate and largest collision group
before resolution, uniqueness after resolution, relative reconstruction error and fit wall time on this
machine. The features are the dataset configs': MiniLM text embeddings for all three (Sports and Toys read
attribute features before their item text shipped; those records say "attributes" in their variant).

Usage: python benchmarks/sid_tokenizers.py [beauty sports toys] [--kinds rqkmeans rqvae rqvae-cosine opq]
       [--rqvae-epochs N] [--threads 2]

(Named sid_tokenizers.py, not tokenizers.py: the script's folder is on sys.path and would shadow the Hugging
Face ``tokenizers`` package that sentence-transformers imports.)
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from sidrec.config import load_config
from sidrec.errors import SidrecError
from sidrec.features import item_features
from sidrec.pipeline import dataset_from_config
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.pipeline import tokenize

from _common import REPO, record, save

SETTINGS = {
    "rqkmeans": ("3x256 + collision code", dict(kind="rqkmeans", levels=3, codebook_sizes=[256])),
    "rqvae": ("3x256 + collision code", dict(kind="rqvae", levels=3, codebook_sizes=[256], progress=False)),
    "opq": ("32x256", dict(kind="opq", subspaces=32, subspace_codes=256)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=["beauty", "sports", "toys"])
    ap.add_argument("--kinds", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rqvae-epochs", type=int, default=TokenizerConfig().epochs, help="RQ-VAE epochs (cosine lr)")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)  # faiss's OpenMP pool would otherwise use every core
    for name in args.datasets:
        cfg = load_config([REPO / "configs" / "data" / f"{name}.yaml"])
        cfg.data.path = str((REPO / cfg.data.path).resolve())  # a relative override is relative to the repo root
        ds = dataset_from_config(cfg)
        emb = item_features(cfg.features, ds, progress=False)
        feats = f"{cfg.features.kind} {emb.shape[1]}-d"
        recs = []
        for kind in args.kinds:
            variant, opts = SETTINGS[kind]
            t0 = time.time()
            try:
                res = tokenize(TokenizerConfig(**{"epochs": args.rqvae_epochs, **opts}, seed=args.seed), emb)
            except SidrecError as exc:  # a collision group larger than the 256-code disambiguation level
                print(f"{name} {kind}: {exc}; retrying with tokenizer.collision_codebook=1024", flush=True)
                variant += " (collision codebook 1024)"
                t0 = time.time()
                res = tokenize(TokenizerConfig(**{"epochs": args.rqvae_epochs, **opts}, seed=args.seed,
                                               collision_codebook=1024), emb)
            wall = time.time() - t0
            rep = res.report
            util = rep["utilization"]
            m: dict[str, float] = {f"utilization_l{i + 1}": u for i, u in enumerate(util)} if len(util) <= 4 else {}
            m.update({"utilization_min": float(min(util)), "utilization_mean": float(np.mean(util)),
                      "perplexity_l1": rep["perplexity"][0],
                      "collision_rate_before": rep["collisions_before"]["collision_rate"],
                      "largest_group_before": rep["collisions_before"]["largest_group"],
                      "unique_sids_before": rep["collisions_before"]["unique_sids"],
                      "collision_rate_after": rep["collisions_after"]["collision_rate"],
                      "unique_after": float(rep["collisions_after"]["colliding_items"] == 0),
                      "sid_length": rep["sid_length"], "reconstruction_rel": rep["reconstruction_rel"],
                      "fit_s": rep["fit_s"], "items": rep["items"]})
            if opts["kind"] == "rqvae":
                variant += f", {opts.get('epochs', args.rqvae_epochs)} epochs"
            r = record(name, opts["kind"], f"{variant}, {feats}", "test", "all", m, wall, args.threads)
            recs.append(r)
            print(f"{name} {kind}: util {[round(u, 3) for u in util[:4]]} collisions {m['collision_rate_before']:.3%} "
                  f"(largest {m['largest_group_before']}) -> {m['collision_rate_after']:.3%}, recon "
                  f"{m['reconstruction_rel']:.4f}, {wall:.1f}s", flush=True)
        save("sid_tokenizers", recs)


if __name__ == "__main__":
    main()
