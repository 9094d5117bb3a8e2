"""DIGER: differentiable semantic IDs trained jointly with a TIGER recommender (METHODS §2, seed 001).

Two-stage pipelines fix the SIDs by reconstruction and never let the recommendation loss touch them. DIGER
keeps the RQ-VAE inside the training graph: for the items of every batch (history and target) the SIDs are
re-derived through the residual quantiser, and the recommender consumes them through *straight-through
one-hots* -- the forward value is the hard code (so the recommender sees ordinary SIDs), the backward path is
the soft assignment ``softmax((logits + s * g) / tau)``, so every codeword receives gradient from ``L_gen``:

* input code embeddings: ``w_l @ E_l`` (``E_l`` = the TIGER embedding rows of level l);
* targets: ``-sum_k w_k log p_k`` per level (value = the cross-entropy of the hard code).

Naive joint training (no noise) lets the recommendation loss drag all items onto the few codes the model
already predicts well: the codebook collapses. DIGER's fix is exploration: Gumbel noise of scale ``s`` on the
assignment logits during training (never at inference), with the uncertainty *decaying* as training
converges:

* **SDUD** -- ``s`` is a learned ``sigma`` (own learning rate); ``L_gen`` enters the loss as
  ``L_gen / (2 (sigma + lambda)^2) + log(sigma + lambda)``, whose optimum ``sigma = sqrt(L_gen) - lambda``
  shrinks as the recommendation loss falls;
* **FrqUD** -- an EMA (momentum 0.99) of each code's share of the batch items' noiseless assignments; only
  items whose noiseless code is *hot* (share > ``hot_ratio / K``) get noise, so crowded codes shed items while
  rare codes keep theirs;
* both together (FrqUD gating with the SDUD scale).

The collision code (TIGER's 4th position) is not learned: it comes from the deterministic SID table the
recipe re-derives (with collision resolution) at every epoch and evaluation.
The total loss is ``L_gen (weighted by SDUD when on) + vq_weight * L_vq + recon_weight * L_recon``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models.tiger import TIGER
from sidrec.sid.rqvae import NOISES, RQVAE

DECAYS = ("none", "sdud", "frqud", "both")


@dataclass
class DIGERConfig:
    """The ``diger`` config section (paper values as defaults; every ablation is a value here)."""

    noise: str = "gumbel"  # gumbel | gaussian | none (plain straight-through through the softmax)
    decay: str = "both"  # none | sdud | frqud | both (both: chosen on Beauty validation, docs/diger.md)
    tau: float = 2.0  # softmax temperature of the soft assignment
    noise_scale: float = 1.0  # fixed noise scale s (decay none / frqud); SDUD's initial sigma
    sdud_lambda: float = 1.7
    sdud_lr: float = 1e-3
    hot_ratio: float = 1.5  # FrqUD: a code is hot when its usage share exceeds hot_ratio / K
    usage_momentum: float = 0.99
    tokenizer_lr: float = 1e-5  # codebooks (and the RQ-VAE MLPs when not frozen); recommender: train.lr
    freeze_encoder: bool = True
    vq_weight: float = 1.0
    recon_weight: float = 1.0

    def check(self) -> None:
        if self.noise not in (*NOISES, "none"):
            raise SidrecError(f"diger.noise must be one of gumbel, gaussian, none; got '{self.noise}'")
        if self.decay not in DECAYS:
            raise SidrecError(f"diger.decay must be one of {', '.join(DECAYS)}; got '{self.decay}'")
        if not self.tau > 0 or self.noise_scale < 0 or self.hot_ratio <= 0 or not 0 <= self.usage_momentum < 1:
            raise SidrecError("diger.tau and diger.hot_ratio must be > 0, diger.noise_scale >= 0, "
                              "diger.usage_momentum in [0, 1)")
        if self.sdud_lambda <= 0 or self.sdud_lr <= 0 or self.tokenizer_lr < 0:
            raise SidrecError("diger.sdud_lambda and diger.sdud_lr must be > 0, diger.tokenizer_lr >= 0")


class DIGER(nn.Module):
    """A TIGER recommender and an RQ-VAE whose quantiser assigns the SIDs of each batch's items.

    ``features`` are the tokenizer's normalised inputs for every item (n_items, d_in); ``collision`` the
    current disambiguation code of each item (updated by the recipe when it re-derives the SID table).
    """

    def __init__(self, tiger: TIGER, rqvae: RQVAE, features: torch.Tensor, collision: torch.Tensor,
                 cfg: DIGERConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.tiger = tiger
        self.rqvae = rqvae
        self.levels = rqvae.quantizer.n_levels
        if tiger.length != self.levels + 1:
            raise SidrecError(f"DIGER needs SIDs of the tokenizer's {self.levels} levels plus the collision code; "
                              f"the recommender has {tiger.length} positions")
        if cfg.freeze_encoder:
            for p in rqvae.encoder.parameters():
                p.requires_grad_(False)
        self.register_buffer("features", features.float(), persistent=False)
        if cfg.freeze_encoder:  # a frozen encoder's latents never change: compute them once, not per batch
            with torch.no_grad():
                self.register_buffer("latents", rqvae.encoder(self.features), persistent=False)
        else:
            self.latents = None
        self.register_buffer("collision", collision.long(), persistent=False)
        self.sigma = nn.Parameter(torch.tensor(float(cfg.noise_scale))) if cfg.decay in ("sdud", "both") else None
        for level, k in enumerate(rqvae.quantizer.sizes):  # FrqUD usage shares, start uniform
            self.register_buffer(f"usage_{level}", torch.full((k,), 1.0 / k))
        self.last: dict[str, float] = {}  # the latest step's loss parts (for logs)

    # ------------------------------------------------------------------ exploration settings
    def noise_scale(self) -> float:
        if self.cfg.noise == "none":
            return 0.0
        return float(self.sigma.detach().abs()) if self.sigma is not None else self.cfg.noise_scale

    def usage(self) -> list[torch.Tensor]:
        return [getattr(self, f"usage_{level}") for level in range(self.levels)]

    def hot_codes(self) -> list[torch.Tensor] | None:
        """FrqUD's per-level hot-code masks, or None when noise is not frequency-gated."""
        if self.cfg.decay not in ("frqud", "both"):
            return None
        return [u > self.cfg.hot_ratio / len(u) for u in self.usage()]

    # ------------------------------------------------------------------ assignments
    def assign(self, items: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor | list]:
        """Differentiable SIDs of ``items`` (n,): hard codes, straight-through weights, VQ and recon losses.

        Runs in float32 whatever the surrounding autocast: the nearest-code decisions and the usage counts
        must not depend on bf16 rounding.
        """
        cfg = self.cfg
        with torch.autocast(items.device.type, enabled=False):
            x = self.features[items]
            z = self.latents[items] if self.latents is not None else self.rqvae.encoder(x)
            est = "soft" if cfg.noise == "none" else "gumbel"
            out = self.rqvae.quantizer(z, estimator=est, tau=cfg.tau, noise_scale=self.noise_scale(),
                                       generator=generator, noise=cfg.noise if cfg.noise != "none" else "gumbel",
                                       hot=self.hot_codes())
            recon = F.mse_loss(self.rqvae.decoder(out.quantized), x)
        if self.training:
            with torch.no_grad():
                m = cfg.usage_momentum
                for level, u in enumerate(self.usage()):
                    share = torch.bincount(out.nearest[:, level], minlength=len(u)).float() / max(1, len(items))
                    u.mul_(m).add_(share, alpha=1 - m)
        return {"codes": out.codes, "weights": out.weights, "vq": out.loss, "recon": recon}

    def _vectors(self, codes: torch.Tensor, weights: list[torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """(n, L, d) input embeddings: straight-through mixtures for the learned levels, lookup for the last."""
        emb = self.tiger.code_emb.weight
        offs = self.tiger.offsets
        parts = []
        for level, w in enumerate(weights):
            lo = int(offs[level])
            parts.append(w @ emb[lo:lo + w.shape[1]])
        parts.append(emb[self.collision[items] + offs[self.levels]])
        return torch.stack(parts, 1)

    def forward(self, history: torch.Tensor, users: torch.Tensor | None, target: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Joint loss for history item indices (B, T) (-1 = padding) and target items (B,)."""
        b, t = history.shape
        flat = torch.cat([history.reshape(-1), target])
        valid = flat >= 0
        uniq, inv = torch.unique(flat[valid], return_inverse=True)
        a = self.assign(uniq, generator)
        full = torch.cat([a["codes"], self.collision[uniq].unsqueeze(1)], 1)  # (n, L)
        vec = self._vectors(a["codes"], a["weights"], uniq)  # (n, L, d)
        d = vec.shape[-1]
        idx = torch.full_like(flat, -1)
        idx[valid] = inv
        safe = idx.clamp(min=0)
        codes_flat = full[safe].masked_fill((idx < 0).unsqueeze(1), -1)
        vec_flat = vec[safe] * (idx >= 0).unsqueeze(1).unsqueeze(2).to(vec.dtype)
        n_hist = b * t
        hist_codes = codes_flat[:n_hist].view(b, t, -1)
        hist_emb = vec_flat[:n_hist].view(b, t, -1, d)
        tgt_codes, tgt_emb = codes_flat[n_hist:], vec_flat[n_hist:]
        tgt_rows = inv[-b:]  # targets are the last b entries of ``flat`` and never padding
        tw: list[torch.Tensor | None] = [w[tgt_rows] for w in a["weights"]]
        tw.append(None)
        gen = self.tiger(hist_codes, users, tgt_codes, hist_emb, tgt_emb, tw)
        if self.sigma is not None:
            s = self.sigma.abs() + self.cfg.sdud_lambda
            gen_term = gen / (2 * s * s) + torch.log(s)
        else:
            gen_term = gen
        loss = gen_term + self.cfg.vq_weight * a["vq"] + self.cfg.recon_weight * a["recon"]
        self.last = {"gen": float(gen.detach()), "vq": float(a["vq"].detach()), "recon": float(a["recon"].detach()),
                     "sigma": self.noise_scale()}
        return loss
