"""RQ-VAE: TIGER's learned residual quantiser (Rajput et al., NeurIPS 2023).

An MLP encoder maps an item embedding to a small latent (``latent_dim``); a residual quantiser picks one
code per level (level l quantises what levels 1..l-1 left over); an MLP decoder reconstructs the embedding
from the sum of the chosen codewords. Training minimises reconstruction MSE plus the VQ loss
``sum_l ||sg(r_l) - c_l||^2 + beta * ||r_l - sg(c_l)||^2`` (codebook + commitment terms; both, like the
reconstruction term, are per-element means so their weights do not depend on the widths).

Why learned rather than RQ-KMeans: the encoder can bend the space so that the residual levels carry
information the decoder actually needs, which is what TIGER's semantic IDs are. The two classic failure
modes of training it are handled explicitly:

* *codebook collapse* (a few codes take every item): each level's codebook is initialised by k-means on the
  first minibatch's residuals (faiss, seeded), and a code unused for ``dead_code_steps`` consecutive steps
  is re-seeded to a random residual of the current batch (its optimiser moments are reset as well);
* *non-reproducible codes*: training is seeded (``torch.random.fork_rng``, so the caller's global RNG is
  left untouched; a private ``torch.Generator`` drives shuffling, Gumbel noise and restarts), and encoding is
  a deterministic nearest-code search run in float64 over fixed-size chunks, so encoding one new item gives
  the same code as encoding it together with the whole catalogue, and the fitted items' codes are exactly
  what :meth:`encode` returns.

:class:`ResidualQuantizer` is self-contained and public because DIGER trains it jointly with the
recommender. Its gradient estimator is an option of the one quantiser: ``ste`` (straight-through),
``gumbel`` (hard Gumbel-max forward, straight-through soft assignment backward, noise only in training
mode) and ``soft`` (the same without noise). :meth:`ResidualQuantizer.assign` exposes the per-level logits
(negative squared distances) that soft assignments are built from.

Inputs are centred and divided by one global scale (stored with the state) so the reconstruction loss is
O(1) whatever the embedding's norm; the relative variance of the dimensions is kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.progress import make_progress
from sidrec.sid.base import Tokenizer, check_input, register
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.rqkmeans import nearest

ESTIMATORS = ("ste", "gumbel", "soft")
NOISES = ("gumbel", "gaussian")
_CHUNK = 4096


class QuantizerOutput(NamedTuple):
    """What :meth:`ResidualQuantizer.forward` returns."""

    quantized: torch.Tensor  # (n, D) decoder input: value = sum of the chosen codewords
    codes: torch.Tensor  # (n, L) int64
    loss: torch.Tensor  # scalar VQ loss (codebook + beta * commitment, summed over levels)
    logits: list[torch.Tensor]  # per level (n, K_l): -||r_l - c_k||^2, before any noise (carry gradients)
    residuals: list[torch.Tensor]  # per level (n, D): the residual r_l that level quantised (detached)
    weights: list[torch.Tensor]  # per level (n, K_l): one-hot of the chosen code; gumbel / soft: straight-through
    nearest: torch.Tensor  # (n, L) noiseless argmax code of each level's residual (what FrqUD counts)


def _check_estimator(estimator: str, tau: float, noise_scale: float) -> None:
    if estimator not in ESTIMATORS:
        raise SidrecError(f"tokenizer.estimator must be one of {', '.join(ESTIMATORS)}, got '{estimator}'")
    if not tau > 0:
        raise SidrecError(f"tokenizer.tau must be > 0, got {tau}")
    if not noise_scale >= 0:
        raise SidrecError(f"tokenizer.noise_scale must be >= 0, got {noise_scale}")


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples of ``shape`` on ``like``'s device and dtype."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    return -torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - 1e-7)))


def sample_noise(kind: str, shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) or standard normal samples (DIGER's ablation swaps the distribution, nothing else)."""
    if kind == "gumbel":
        return gumbel_noise(shape, generator, like)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    raise SidrecError(f"noise must be one of {', '.join(NOISES)}, got '{kind}'")


def perturb(logits: torch.Tensor, level: int, scale: float | torch.Tensor, noise: str, generator: torch.Generator | None,
            gate: torch.Tensor | None = None, level_scale: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` (n, K) of ``level`` plus ``scale`` times Gumbel / Gaussian noise, multiplied by
    ``level_scale[level]`` (noise in units of that level's logit gap) and kept only on the rows ``gate``
    (n, L) bool marks at that level (DIGER's FrqUD). The one noise rule of every noisy assignment."""
    eps = scale * sample_noise(noise, logits.shape, generator, logits)
    if level_scale is not None:  # floats, or a device tensor (no host read per step)
        eps = eps * level_scale[level]
    if gate is not None:
        eps = eps * gate[:, level].unsqueeze(1).to(eps.dtype)
    return logits + eps


class ResidualQuantizer(nn.Module):
    """``len(sizes)`` codebooks of shape (K_l, dim); level l quantises the residual left by levels < l.

    ``forward`` picks one code per level and returns the quantised latent, the codes and the VQ loss; how the
    gradient reaches the encoder and the codebooks depends on ``estimator``:

    * ``ste``: hard nearest code; straight-through on the residuals, i.e. per level ``r + sg(c - r)`` along
      ``r_{l+1} = r_l - q_l``, which sums to ``z + sg(sum_l c_l - z)``. Codebooks learn from the VQ loss.
    * ``gumbel``: logits ``-||r - c_k||^2``; code = argmax(logits + s * g) with g ~ Gumbel(0, 1) in training
      mode only; backward through the soft assignment y = softmax((logits + s * g) / tau) via
      ``(one_hot - sg(y) + y) @ codebook`` (value: the chosen codeword).
    * ``soft``: as ``gumbel`` without noise.

    In eval mode every estimator picks the nearest code per level (deterministic). Residuals passed to the
    next level use the chosen codeword detached, so each level's commitment term pulls the encoder output
    (not the codewords of earlier levels).
    """

    def __init__(self, sizes: Sequence[int], dim: int, beta: float = 0.25, estimator: str = "ste", tau: float = 1.0,
                 noise_scale: float = 1.0) -> None:
        super().__init__()
        if not sizes or any(int(k) < 2 for k in sizes):
            raise SidrecError(f"codebook sizes must be a non-empty list of values >= 2, got {list(sizes)}")
        if dim < 1:
            raise SidrecError(f"tokenizer.latent_dim must be >= 1, got {dim}")
        _check_estimator(estimator, tau, noise_scale)
        self.sizes = [int(k) for k in sizes]
        self.dim = int(dim)
        self.beta = float(beta)
        self.estimator = estimator
        self.tau = float(tau)
        self.noise_scale = float(noise_scale)
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(k, dim)) for k in self.sizes])
        for level, k in enumerate(self.sizes):  # steps since each code was last chosen (training only, not saved)
            self.register_buffer(f"unused_{level}", torch.zeros(k, dtype=torch.long), persistent=False)

    @property
    def n_levels(self) -> int:
        return len(self.sizes)

    def distances(self, r: torch.Tensor, level: int) -> torch.Tensor:
        """(n, K_l) squared L2 distances from residuals ``r`` to level ``level``'s codewords."""
        c = self.codebooks[level]
        return (r * r).sum(1, keepdim=True) - 2.0 * r @ c.t() + (c * c).sum(1)[None, :]

    def forward(self, z: torch.Tensor, estimator: str | None = None, tau: float | None = None,
                noise_scale: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
                noise: str = "gumbel", gate: torch.Tensor | None = None,
                level_scale: Sequence[float] | torch.Tensor | None = None) -> QuantizerOutput:
        """Quantise ``z`` (n, dim). ``noise`` picks the perturbation of ``gumbel`` (Gumbel or Gaussian);
        ``gate`` (n, L) bool restricts it per level to the marked rows (DIGER's FrqUD): the other rows take
        their nearest code, with the plain softmax as backward path; ``level_scale`` multiplies the noise of
        each level (see :func:`perturb`)."""
        est = self.estimator if estimator is None else estimator
        t = self.tau if tau is None else float(tau)
        # a learned scale arrives as a 0-dim device tensor (DIGER's SDUD sigma): used as it is, never read back
        s = self.noise_scale if noise_scale is None else noise_scale
        learned = isinstance(s, torch.Tensor)
        _check_estimator(est, t, 0.0 if learned else float(s))
        noisy_mode = est == "gumbel" and self.training and (learned or s > 0)
        r = z
        quantized = torch.zeros_like(z)
        loss = z.new_zeros(())
        codes, logits_all, residuals, weights, nearest_codes = [], [], [], [], []
        for level, book in enumerate(self.codebooks):
            logits = -self.distances(r, level)
            near = logits.detach().argmax(1)
            scores = perturb(logits, level, s, noise, generator, gate, level_scale) if noisy_mode else logits
            k = scores.detach().argmax(1)
            c = book[k]
            loss = loss + F.mse_loss(c, r.detach()) + self.beta * F.mse_loss(r, c.detach())
            one_hot = F.one_hot(k, book.shape[0]).to(z.dtype)
            if est == "ste":
                q = c.detach()  # the straight-through identity is added once, below
                w = one_hot
            else:
                y = torch.softmax(scores / t, dim=1)
                w = one_hot - y.detach() + y
                q = w @ book
            quantized = quantized + q
            codes.append(k)
            nearest_codes.append(near)
            logits_all.append(logits)
            residuals.append(r.detach())
            weights.append(w)
            r = r - c.detach()
        if est == "ste":
            quantized = z + (quantized - z).detach()
        return QuantizerOutput(quantized, torch.stack(codes, 1), loss, logits_all, residuals, weights,
                               torch.stack(nearest_codes, 1))

    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Nearest code per level (n, L) and the per-level logits ``-||r_l - c_k||^2`` (with gradients).

        Residuals follow the hard nearest codes; ``softmax(logits / tau)`` is the soft assignment DIGER uses.
        """
        r = z
        codes, logits_all = [], []
        for level, book in enumerate(self.codebooks):
            logits = -self.distances(r, level)
            k = logits.argmax(1)
            codes.append(k)
            logits_all.append(logits)
            r = r - book[k].detach()
        return torch.stack(codes, 1), logits_all

    def soft_along(self, z: torch.Tensor, codes: torch.Tensor, tau: float, noise_scale: float | torch.Tensor = 0.0,
                   generator: torch.Generator | None = None, noise: str = "gumbel",
                   gate: torch.Tensor | None = None, level_scale: Sequence[float] | torch.Tensor | None = None
                   ) -> list[torch.Tensor]:
        """Straight-through weights of *given* codes (n, L): per level ``one_hot(codes) - sg(y) + y`` with
        ``y = softmax((logits + noise) / tau)`` along the residual path those codes define.

        This is DIGER's cached-hard path: the forward value is exactly the given (cached, deterministic)
        code, so the recommender reads and predicts the SID table it is evaluated with, while the backward
        pass reaches the codebooks (and a trainable encoder) through the perturbed soft assignment. Noise is
        added in training mode only, by :func:`perturb`.
        """
        r = z
        out = []
        for level, book in enumerate(self.codebooks):
            logits = -self.distances(r, level)
            if self.training and (isinstance(noise_scale, torch.Tensor) or noise_scale > 0):
                logits = perturb(logits, level, noise_scale, noise, generator, gate, level_scale)
            y = torch.softmax(logits / tau, dim=1)
            k = codes[:, level]
            out.append(F.one_hot(k, book.shape[0]).to(y.dtype) - y.detach() + y)
            r = r - book[k].detach()
        return out

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the codewords named by ``codes`` (n, L) -> (n, D)."""
        out = self.codebooks[0][codes[:, 0]]
        for level in range(1, self.n_levels):
            out = out + self.codebooks[level][codes[:, level]]
        return out

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, seed: int = 0, niter: int = 25) -> None:
        """Set each level's codebook to k-means centroids of that level's residuals of ``z`` (faiss, seeded)."""
        r = z.detach().to("cpu", torch.float32).numpy().copy()
        rng = np.random.default_rng(seed)
        for level, book in enumerate(self.codebooks):
            k = book.shape[0]
            if len(r) >= k:
                km = faiss.Kmeans(self.dim, k, niter=niter, seed=seed * 1009 + level, verbose=False,
                                  min_points_per_centroid=1, max_points_per_centroid=256)
                km.train(np.ascontiguousarray(r))
                cents = np.asarray(km.centroids, dtype=np.float32).copy()
            else:  # fewer residuals than codes: random residuals, slightly jittered so no two coincide
                cents = r[rng.integers(0, len(r), k)] + 1e-3 * rng.standard_normal((k, self.dim)).astype(np.float32)
            book.data.copy_(torch.from_numpy(cents).to(book))
            r = r - cents[nearest(r, cents)]
            getattr(self, f"unused_{level}").zero_()

    @torch.no_grad()
    def restart_dead_codes(self, codes: torch.Tensor, residuals: list[torch.Tensor], dead_after: int,
                           generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Count a step of code usage; re-seed codes unused for ``dead_after`` steps to random batch residuals.

        ``codes`` / ``residuals`` are a training step's :class:`QuantizerOutput` fields. Returns the indices
        re-seeded per level (so an optimiser's moments for those rows can be reset). ``dead_after <= 0``
        disables restarts.
        """
        out = []
        for level, book in enumerate(self.codebooks):
            unused = getattr(self, f"unused_{level}")
            k = book.shape[0]
            used = torch.bincount(codes[:, level], minlength=k) > 0
            unused.add_(1).masked_fill_(used, 0)
            if dead_after <= 0:
                out.append(unused.new_zeros(0))
                continue
            dead = torch.nonzero(unused >= dead_after).squeeze(1)
            if dead.numel():
                r = residuals[level]
                if dead.numel() <= len(r):
                    pick = torch.randperm(len(r), generator=generator, device=r.device)[:dead.numel()]
                else:
                    pick = torch.randint(len(r), (dead.numel(),), generator=generator, device=r.device)
                book.data[dead] = r[pick].to(book)
                unused[dead] = 0
            out.append(dead)
        return out


@torch.no_grad()
def sinkhorn_codes(quantizer: ResidualQuantizer, z: torch.Tensor, epsilon: float, iters: int = 50) -> torch.Tensor:
    """Balanced residual codes (n, L) of the whole set ``z``: per level, the distances to the codewords are
    rescaled to [-1, 1], turned into a transport plan ``exp(-d / epsilon)`` whose rows and columns are
    alternately normalised ``iters`` times (Sinkhorn-Knopp, in log space so a small ``epsilon`` cannot
    overflow), and each item takes its plan's best code; the next level quantises the residual left by it.

    Why: nearest-code assignment lets a few codewords take most items; the plan's column constraint spreads
    items over the codebook at equal transport cost, which is how DIGER's authors derive SIDs
    (``sk_epsilons`` .003, 50 iterations). The result depends on the whole set, so it is a catalogue-level
    derivation (the SID table), not a per-item encoder.
    """
    if not epsilon > 0 or iters < 1:
        raise SidrecError(f"Sinkhorn needs epsilon > 0 and iters >= 1, got {epsilon} and {iters}")
    r = z
    codes = []
    for level, book in enumerate(quantizer.codebooks):
        d = quantizer.distances(r, level)
        mid = (d.max() + d.min()) / 2
        amp = (d.max() - mid).clamp(min=1e-12)
        log_q = -((d - mid) / amp) / epsilon
        for _ in range(iters):
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)
        k = log_q.argmax(1)
        codes.append(k)
        r = r - book[k]
    return torch.stack(codes, 1)


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``dims`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP -> :class:`ResidualQuantizer` -> decoder MLP (the encoder's widths mirrored)."""

    def __init__(self, d_in: int, hidden_dims: Sequence[int], latent_dim: int, sizes: Sequence[int],
                 beta: float = 0.25, estimator: str = "ste", tau: float = 1.0, noise_scale: float = 1.0) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden_dims]
        self.encoder = mlp([d_in, *hidden, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), d_in])
        self.quantizer = ResidualQuantizer(sizes, latent_dim, beta, estimator, tau, noise_scale)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, QuantizerOutput]:
        out = self.quantizer(self.encoder(x), generator=generator)
        return self.decoder(out.quantized), out


@register
class RQVAETokenizer(Tokenizer):
    """TIGER's RQ-VAE over ``tokenizer.levels`` levels with ``tokenizer.codebook_sizes`` codes each."""

    kind = "rqvae"

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        self._sizes = cfg.sizes()
        _check_estimator(cfg.estimator, cfg.tau, cfg.noise_scale)
        if cfg.latent_dim < 1:
            raise SidrecError(f"tokenizer.latent_dim must be >= 1, got {cfg.latent_dim}")
        if cfg.epochs < 1:
            raise SidrecError(f"tokenizer.epochs must be >= 1, got {cfg.epochs}")
        if cfg.batch_size < 1:
            raise SidrecError(f"tokenizer.batch_size must be >= 1, got {cfg.batch_size}")
        if any(int(h) < 1 for h in cfg.hidden_dims):
            raise SidrecError(f"tokenizer.hidden_dims must all be >= 1, got {cfg.hidden_dims}")
        if not cfg.lr > 0 or cfg.weight_decay < 0 or cfg.beta < 0:
            raise SidrecError(f"tokenizer.lr must be > 0 and weight_decay, beta >= 0 (got {cfg.lr}, "
                              f"{cfg.weight_decay}, {cfg.beta})")
        if cfg.dead_code_steps < 0:
            raise SidrecError(f"tokenizer.dead_code_steps must be >= 0, got {cfg.dead_code_steps}")
        from sidrec.device import resolve

        self.device = resolve(cfg.device, "tokenizer.device")
        self.model: RQVAE | None = None
        self._model64: RQVAE | None = None
        self._mean = torch.zeros(0)
        self._scale = torch.ones(1)
        self.history: dict[str, Any] = {}

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self._sizes)

    def _build(self, d_in: int) -> RQVAE:
        c = self.cfg
        return RQVAE(d_in, c.hidden_dims, c.latent_dim, self._sizes, c.beta, c.estimator, c.tau, c.noise_scale)

    # ------------------------------------------------------------------ training
    def _fit(self, emb: np.ndarray) -> None:
        cfg, dev = self.cfg, self.device
        n, d = emb.shape
        mean = emb.astype(np.float64).mean(0)
        scale = float(np.sqrt(emb.astype(np.float64).var(0).mean()))
        scale = scale if scale > 1e-12 else 1.0
        self._mean = torch.from_numpy(mean.astype(np.float32))
        self._scale = torch.tensor([scale], dtype=torch.float32)
        x = torch.from_numpy(((emb - mean) / scale).astype(np.float32)).to(dev)
        n_batches = max(1, math.ceil(n / cfg.batch_size))  # near-equal batches: no tiny last batch
        fork = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        t0 = time.time()
        restarts = 0
        steps = 0
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(self.seed)
            model = self._build(d).to(dev)
            gen = torch.Generator(device=dev)
            gen.manual_seed(self.seed)
            books = list(model.quantizer.codebooks)
            nets = [p for name, p in model.named_parameters() if not name.startswith("quantizer.")]
            # no weight decay on codewords: shrinking them towards 0 would bias the quantiser, not regularise it
            opt = torch.optim.AdamW([{"params": nets, "weight_decay": cfg.weight_decay},
                                     {"params": books, "weight_decay": 0.0}], lr=cfg.lr)
            # a constant rate: a cosine decay to 5% reconstructed worse on Beauty at 300 epochs (relative error
            # .338 vs .317): codes re-seeded late by the dead-code restarts could no longer move (docs/tokenizers.md)
            model.train()
            initialised = not cfg.kmeans_init
            rec_sum = vq_sum = torch.zeros((), device=dev)
            with make_progress(cfg.progress) as prog:
                task = prog.add_task("rqvae", total=cfg.epochs, info="")
                for _ in range(cfg.epochs):
                    perm = torch.randperm(n, generator=gen, device=dev)
                    rec_sum = vq_sum = torch.zeros((), device=dev)
                    for idx in torch.tensor_split(perm, n_batches):
                        xb = x[idx]
                        if not initialised:
                            with torch.no_grad():
                                model.quantizer.kmeans_init(model.encoder(xb), self.seed, cfg.kmeans_iters)
                            initialised = True
                        recon, out = model(xb, generator=gen)
                        rec = F.mse_loss(recon, xb)
                        loss = rec + out.loss
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        steps += 1
                        rec_sum = rec_sum + rec.detach()
                        vq_sum = vq_sum + out.loss.detach()
                        dead = model.quantizer.restart_dead_codes(out.codes, out.residuals, cfg.dead_code_steps, gen)
                        for book, rows in zip(books, dead, strict=True):
                            if rows.numel():
                                restarts += int(rows.numel())
                                state = opt.state.get(book, {})
                                for key in ("exp_avg", "exp_avg_sq"):
                                    if key in state:
                                        state[key][rows] = 0
                    prog.update(task, advance=1, info=f"recon {rec_sum.item() / n_batches:.4f} "
                                                      f"vq {vq_sum.item() / n_batches:.4f}")
        model.eval()
        self.model = model.cpu()
        self._model64 = None
        self.history = {"epochs": int(cfg.epochs), "steps": steps, "dead_code_restarts": restarts,
                        "final_recon_mse": float(rec_sum.item() / n_batches),
                        "final_vq_loss": float(vq_sum.item() / n_batches), "train_s": round(time.time() - t0, 3)}

    # ------------------------------------------------------------------ encode / decode
    def _float64(self) -> RQVAE:
        """A float64 eval-mode copy of the model for exact, batch-size-independent encoding."""
        if self._model64 is None:
            assert self.model is not None
            self._model64 = copy.deepcopy(self.model).double().eval()
        return self._model64

    @torch.no_grad()
    def _latents64(self, emb: np.ndarray) -> torch.Tensor:
        """Encoder latents (n, latent_dim) in float64, in fixed-size chunks (what the quantiser assigns)."""
        m = self._float64()
        mean, scale = self._mean.double(), self._scale.double()
        return torch.cat([m.encoder((torch.from_numpy(emb[s:s + _CHUNK]).double() - mean) / scale)
                          for s in range(0, len(emb), _CHUNK)])

    @torch.no_grad()
    def _encode(self, emb: np.ndarray) -> np.ndarray:
        m = self._float64()
        lat = self._latents64(emb)
        out = np.empty((len(emb), len(self._sizes)), dtype=np.int64)
        for s in range(0, len(emb), _CHUNK):
            out[s:s + _CHUNK] = m.quantizer.assign(lat[s:s + _CHUNK])[0].numpy()
        return out

    @torch.no_grad()
    def residual_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Encoder latents (n, latent_dim) and the quantiser's codebooks: nearest-codeword assignment of the
        latents, level by level, reproduces :meth:`encode`."""
        self._require_fitted()
        emb = check_input(embeddings, self.dim, source=f"{self.kind} embeddings")
        lat = self._latents64(emb)
        return lat.float().numpy(), [c.detach().float().numpy().copy() for c in self._float64().quantizer.codebooks]

    @torch.no_grad()
    def _decode(self, codes: np.ndarray) -> np.ndarray:
        m = self._float64()
        mean, scale = self._mean.double(), self._scale.double()
        out = np.empty((len(codes), self.dim or 0), dtype=np.float32)
        for s in range(0, len(codes), _CHUNK):
            z = m.quantizer.lookup(torch.from_numpy(codes[s:s + _CHUNK]))
            out[s:s + _CHUNK] = (m.decoder(z) * scale + mean).numpy()
        return out

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        assert self.model is not None
        state: dict[str, Any] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state["input.mean"] = self._mean
        state["input.scale"] = self._scale
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        model = self._build(int(self.dim or 0))
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(weights, strict=True)
            self._mean = tensors["input.mean"].float()
            self._scale = tensors["input.scale"].float()
        except (RuntimeError, KeyError) as exc:
            raise SidrecError(f"saved rqvae state does not match its settings: {str(exc).splitlines()[0]}") from None
        model.eval()
        self.model = model
        self._model64 = None
        self.history = dict(extra.get("history", {}))

    def _meta(self) -> dict[str, Any]:
        return {"history": self.history}
