"""Product quantisation (PQ) and optimised PQ (OPQ) via faiss: ACERec's long semantic IDs (32 x 256).

Why PQ for long IDs: residual levels carry less and less information (level 30 of an RQ would be noise),
whereas PQ splits the (rotated) embedding into ``m`` independent subspaces, so every one of the 32 codes
carries a comparable share of the content and a model can score the codes independently (ACERec's
holistic scoring sums per-subspace log-probabilities). OPQ first learns a rotation that balances the
variance across subspaces, which lowers the quantisation error compared with plain PQ.

faiss does the learning (``PCAMatrix``, ``OPQMatrix``, ``ProductQuantizer``). The learned transforms are
collapsed into one affine map ``x -> x W^T + c`` (and its pseudo-inverse for reconstruction) and stored with
the codebooks as plain tensors, so encoding new items needs no faiss objects and is exactly reproducible:
nearest centroid per subspace in float64, in fixed-size chunks (see :func:`sidrec.sid.rqkmeans.nearest`).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch

from sidrec.errors import SidrecError
from sidrec.sid.base import Tokenizer, register
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.rqkmeans import nearest


def _affine(vt: Any, d_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, c) of a faiss LinearTransform, so that apply(x) == x @ W.T + c."""
    d_out = vt.d_out
    W = faiss.vector_to_array(vt.A).reshape(d_out, d_in).astype(np.float64)
    c = faiss.vector_to_array(vt.b).astype(np.float64) if vt.have_bias else np.zeros(d_out)
    return W, c


@register
class OPQTokenizer(Tokenizer):
    """``tokenizer.subspaces`` codes of ``tokenizer.subspace_codes`` each; optional PCA, learned rotation."""

    kind = "opq"
    rotate = True

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        m, k = cfg.subspaces, cfg.subspace_codes
        if m < 1:
            raise SidrecError(f"tokenizer.subspaces must be >= 1, got {m}")
        if k < 2 or k & (k - 1) or k > 65536:
            raise SidrecError(f"tokenizer.subspace_codes must be a power of two in [2, 65536] (faiss PQ), got {k}")
        self.W = np.zeros((0, 0))
        self.c = np.zeros(0)
        self.W_inv = np.zeros((0, 0))
        self.centroids = np.zeros((m, k, 0), dtype=np.float32)

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.cfg.subspace_codes] * self.cfg.subspaces

    def _fit(self, emb: np.ndarray) -> None:
        cfg = self.cfg
        m, k = cfg.subspaces, cfg.subspace_codes
        n, d = emb.shape
        W, c = np.eye(d), np.zeros(d)
        x = emb
        if cfg.pca_whiten and cfg.pca_dim <= 0:
            raise SidrecError("tokenizer.pca_whiten=true needs tokenizer.pca_dim > 0 (the PCA it whitens)")
        if cfg.pca_dim > 0:
            if cfg.pca_dim > d:
                raise SidrecError(f"tokenizer.pca_dim={cfg.pca_dim} is larger than the embedding dimension {d}")
            # eigen_power -1/2 whitens: every kept axis gets the same variance, so OPQ's subspaces split the content
            # evenly instead of spending most codes on the few directions of largest variance
            pca = faiss.PCAMatrix(d, cfg.pca_dim, -0.5 if cfg.pca_whiten else 0.0)
            pca.train(np.ascontiguousarray(x))
            ev = faiss.vector_to_array(pca.eigenvalues)[:cfg.pca_dim]
            # whitening divides each axis by sqrt(its eigenvalue): a (numerically) empty direction would blow up
            if cfg.pca_whiten and not ev[-1] > 1e-6 * ev[0]:
                raise SidrecError(f"tokenizer.pca_whiten: the embeddings have fewer than pca_dim={cfg.pca_dim} "
                                  "non-degenerate directions; lower tokenizer.pca_dim")
            W, c = _affine(pca, d)
            x = (x @ W.T + c).astype(np.float32)
        dx = x.shape[1]
        d_out = -(-dx // m) * m  # OPQ can pad the rotated space to a multiple of m
        if not self.rotate and dx % m:
            raise SidrecError(f"pq: dimension {dx} is not divisible by tokenizer.subspaces={m}; use kind=opq "
                              "(which pads) or another subspace count")
        if self.rotate:
            if n < dx:  # faiss's rotation fit corrupts memory (SIGABRT / SIGSEGV) with fewer points than dimensions
                raise SidrecError(f"opq: {n} items are fewer than the {dx} embedding dimensions the rotation is "
                                  f"learned in; set tokenizer.pca_dim <= {n} or use tokenizer.kind=pq")
            opq = faiss.OPQMatrix(dx, m, d_out)
            opq.niter = cfg.opq_iters
            inner = self._pq(d_out, m, k)  # the PQ OPQ alternates with (default: 8 bits, noisy warnings)
            opq.pq = inner
            opq.train(np.ascontiguousarray(x))
            Wr, cr = _affine(opq, dx)
            W, c = Wr @ W, Wr @ c + cr
            x = (emb.astype(np.float64) @ W.T + c).astype(np.float32)
        pq = self._pq(d_out, m, k)
        pq.train(np.ascontiguousarray(x))
        self.centroids = faiss.vector_to_array(pq.centroids).reshape(m, k, d_out // m).astype(np.float32)
        self.W, self.c = W, c
        self.W_inv = np.linalg.pinv(W)

    def _pq(self, d: int, m: int, k: int) -> Any:
        pq = faiss.ProductQuantizer(d, m, int(np.log2(k)))
        pq.cp.seed = self.seed
        pq.cp.niter = self.cfg.kmeans_iters
        pq.cp.min_points_per_centroid = 1  # small catalogues are fine; silences faiss's stderr warning
        return pq

    def _project(self, emb: np.ndarray) -> np.ndarray:
        return emb.astype(np.float64) @ self.W.T + self.c

    def _encode(self, emb: np.ndarray) -> np.ndarray:
        x = self._project(emb)
        m, _, ds = self.centroids.shape
        codes = np.empty((len(emb), m), dtype=np.int64)
        for j in range(m):  # per subspace (m = 32), each a batched nearest-centroid search over all items
            codes[:, j] = nearest(x[:, j * ds:(j + 1) * ds], self.centroids[j])
        return codes

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        m = self.centroids.shape[0]
        x = self.centroids[np.arange(m)[None, :], codes].reshape(len(codes), -1).astype(np.float64)
        return ((x - self.c) @ self.W_inv.T).astype(np.float32)

    def _state(self) -> dict[str, Any]:
        return {"W": self.W, "c": self.c, "W_inv": self.W_inv, "centroids": self.centroids}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.W = tensors["W"].numpy()
        self.c = tensors["c"].numpy()
        self.W_inv = tensors["W_inv"].numpy()
        self.centroids = tensors["centroids"].numpy()


@register
class PQTokenizer(OPQTokenizer):
    """Plain product quantisation (no learned rotation); the ablation of OPQ."""

    kind = "pq"
    rotate = False
