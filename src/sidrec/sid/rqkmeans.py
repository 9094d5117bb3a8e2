"""RQ-KMeans: residual k-means, the training-free alternative to RQ-VAE.

Level 1 clusters the item embeddings; level l clusters what is left after subtracting the chosen centroids
of levels 1..l-1. No gradient training, so it is fast and deterministic (faiss k-means with a fixed seed).

Optional *balanced* assignment caps every code at ``ceil(n/K * balance_factor)`` items. Plain k-means on
skewed catalogues puts thousands of items into a few cells, which later shows up as long collision groups
and a weak first code; a capacity cap spreads them out at a small cost in reconstruction error. The cap
only applies to the fitted catalogue: a new item is encoded to its nearest centroid. Fitted items keep the
code the balanced assignment gave them (they are remembered by a hash of their embedding), so encoding the
catalogue again reproduces the table.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np
import torch

from sidrec.errors import SidrecError
from sidrec.sid.base import Tokenizer, check_input, register
from sidrec.sid.config import TokenizerConfig

_CHUNK = 4096


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid per row (squared L2), computed in float64 in fixed-size chunks.

    float64 and a fixed chunk size make the result independent of how many rows are encoded together, so
    encoding one new item gives the same code as encoding it with the whole catalogue.
    """
    c = centroids.astype(np.float64)
    cn = (c * c).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), _CHUNK):
        xb = x[s:s + _CHUNK].astype(np.float64)
        out[s:s + _CHUNK] = np.argmin(cn[None, :] - 2.0 * xb @ c.T, axis=1)
    return out


def sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, K) squared L2 distances in float64."""
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    d = (x64 * x64).sum(1)[:, None] - 2.0 * x64 @ c64.T + (c64 * c64).sum(1)[None, :]
    return np.maximum(d, 0.0)


def balanced_assign(x: np.ndarray, centroids: np.ndarray, capacity: int) -> np.ndarray:
    """Greedy capacity-constrained assignment by distance, in batched rounds.

    Each round every unassigned item proposes its nearest code that still has room; each code accepts its
    closest proposers up to its remaining capacity (ties by item index); codes that filled up are removed
    for everybody. Every round either assigns all proposers or fills at least one code, so there are at
    most K+1 rounds, each a vectorised argmin over (unassigned x K).
    """
    n, k = len(x), len(centroids)
    if capacity * k < n:
        raise SidrecError(f"balanced assignment: capacity {capacity} x {k} codes cannot hold {n} items")
    dist = sq_distances(x, centroids)
    codes = np.full(n, -1, dtype=np.int64)
    remaining = np.full(k, capacity, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        sub = dist[todo]
        prop = np.argmin(sub, axis=1)
        pd = sub[np.arange(len(todo)), prop]
        order = np.lexsort((todo, pd, prop))
        sc = prop[order]
        rank = np.arange(len(order)) - np.searchsorted(sc, sc, side="left")
        accept = rank < remaining[sc]
        codes[todo[order[accept]]] = sc[accept]
        remaining -= np.bincount(sc[accept], minlength=k)
        todo = np.sort(todo[order[~accept]])
        dist[:, remaining == 0] = np.inf
    return codes


def row_keys(x: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each row's exact float32 bits (splitmix-style mixing, wrapping sums)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    cols = np.arange(x.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = bits * np.uint64(0x9E3779B97F4A7C15) + cols * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
        key = np.add.reduce(h, axis=1, dtype=np.uint64)
    return key.view(np.int64)


@register
class RQKMeansTokenizer(Tokenizer):
    """Residual k-means over ``tokenizer.levels`` levels with ``tokenizer.codebook_sizes`` codes each."""

    kind = "rqkmeans"

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        self._sizes = cfg.sizes()
        if cfg.balanced and cfg.balance_factor < 1.0:
            raise SidrecError(f"tokenizer.balance_factor must be >= 1.0, got {cfg.balance_factor}")
        self.centroids: list[np.ndarray] = []
        self._memo_keys = np.zeros(0, dtype=np.int64)
        self._memo_codes = np.zeros((0, len(self._sizes)), dtype=np.int64)

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self._sizes)

    def _fit(self, emb: np.ndarray) -> None:
        n, d = emb.shape
        residual = emb.copy()
        self.centroids = []
        all_codes = np.empty((n, len(self._sizes)), dtype=np.int64)
        from sidrec.device import faiss_gpu, resolve

        gpu = faiss_gpu(resolve(self.cfg.device, "tokenizer.device"))  # faiss-gpu's k-means on a CUDA run
        for level, k in enumerate(self._sizes):
            km = faiss.Kmeans(d, k, niter=self.cfg.kmeans_iters, seed=self.seed * 1009 + level, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=256, gpu=gpu)
            km.train(np.ascontiguousarray(residual))
            cents = np.asarray(km.centroids, dtype=np.float32).copy()
            if self.cfg.balanced:
                cap = math.ceil(n / k * self.cfg.balance_factor)
                codes = balanced_assign(residual, cents, cap)
            else:
                codes = nearest(residual, cents)
            self.centroids.append(cents)
            all_codes[:, level] = codes
            residual -= cents[codes]
        if self.cfg.balanced:
            keys = row_keys(emb)
            order = np.argsort(keys, kind="stable")
            self._memo_keys, self._memo_codes = keys[order], all_codes[order]
        else:
            self._memo_keys = np.zeros(0, dtype=np.int64)
            self._memo_codes = np.zeros((0, len(self._sizes)), dtype=np.int64)

    def _encode(self, emb: np.ndarray) -> np.ndarray:
        residual = emb.copy()
        codes = np.empty((len(emb), len(self._sizes)), dtype=np.int64)
        for level, cents in enumerate(self.centroids):
            codes[:, level] = nearest(residual, cents)
            residual -= cents[codes[:, level]]
        if len(self._memo_keys):
            keys = row_keys(emb)
            pos = np.clip(np.searchsorted(self._memo_keys, keys), 0, len(self._memo_keys) - 1)
            hit = self._memo_keys[pos] == keys
            codes[hit] = self._memo_codes[pos[hit]]
        return codes

    def residual_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The embeddings themselves and the centroids of every level (balanced fits keep some items off
        their nearest centroid, so the nearest-codeword path can differ from the remembered table there)."""
        self._require_fitted()
        emb = check_input(embeddings, self.dim, source=f"{self.kind} embeddings")
        return emb.astype(np.float32), [c.copy() for c in self.centroids]

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        out = np.zeros((len(codes), self.dim or 0), dtype=np.float32)
        for level, cents in enumerate(self.centroids):
            out += cents[codes[:, level]]
        return out

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"centroids.{i}": c for i, c in enumerate(self.centroids)}
        state["memo.keys"] = self._memo_keys
        state["memo.codes"] = self._memo_codes
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.centroids = [tensors[f"centroids.{i}"].numpy().astype(np.float32) for i in range(len(self._sizes))]
        self._memo_keys = tensors["memo.keys"].numpy().astype(np.int64)
        self._memo_codes = tensors["memo.codes"].numpy().astype(np.int64)
