"""DIGER: differentiable semantic IDs trained jointly with a TIGER recommender (METHODS §2, seed 001).

Two-stage pipelines fix the SIDs by reconstruction and never let the recommendation loss touch them. DIGER
keeps the RQ-VAE inside the training graph and re-derives the SID table from its weights as training goes.

**Forward reads the cached table, backward goes through soft assignments** (``forward: cached``, the
authors' training loop). The recommender's inputs and targets are the codes of the current deterministic
SID table (re-derived at every epoch start and evaluation), so it learns exactly the labels it is evaluated
with. The gradient of ``L_gen`` reaches the tokenizer through straight-through weights
``one_hot(cached) - sg(y) + y`` with ``y = softmax((logits + s * g) / tau)`` along the cached codes' residual
path: input code embeddings are ``w_l @ E_l`` and each target level's loss is ``-sum_k w_k log p_k`` (value:
the cross-entropy of the cached code). Noise therefore shapes only the backward probabilities and the
tokenizer's own VQ / reconstruction terms, whose codes are the noisy argmax. ``rec_to_tokenizer: false``
cuts that gradient, which is what the authors' public code does (its labels are detached, the tokenizer
learns from VQ + reconstruction only). The first implementation fed noisy one-hots as the recommender's
inputs *and* targets at every step; it lost (docs/diger.md) and was removed.

**Exploration and its decay.** Gumbel noise of scale ``s`` on the assignment logits during training (never
at inference), with the uncertainty decaying as training converges:

* **SDUD** -- ``s`` is a learned ``sigma`` (own learning rate); ``L_gen`` enters the loss as
  ``L_gen / (2 (sigma + lambda)^2) + log(sigma + lambda)``, whose optimum ``sigma = sqrt(L_gen) - lambda``
  shrinks as the recommendation loss falls;
* **FrqUD** -- an EMA (momentum 0.99) of each code's share of the batch items' noiseless assignments; only
  *hot* items get noise. ``frequd_level: first`` decides hot once per item from its first-level code and
  applies it to every level (the authors' sequence-level decision); ``each`` decides per level;
* both together (FrqUD gating with the SDUD scale).

``noise_unit: gap`` measures the noise in units of each level's median top-1/top-2 logit gap (measured on
the catalogue at every re-derivation), because raw Gumbel(1) on ``-||r - c||^2`` resamples deep levels whose
gaps are tiny almost uniformly; ``logit`` (the authors') adds it to the raw logits.

**Reconstruction.** ``recon: latent`` (the authors') reconstructs the encoder's latent from the quantised
one, ``||z_q - z||^2``; the decoder is unused and frozen. ``input`` decodes to the item embedding.

The collision code (TIGER's 4th position) is not learned: it comes from the deterministic SID table the
recipe re-derives (with collision resolution). The total loss is
``L_gen (weighted by SDUD when on) + vq_weight * L_vq + recon_weight * L_recon``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sidrec import precision
from sidrec.errors import SidrecError
from sidrec.methods.diger.config import DIGERConfig
from sidrec.methods.tiger.model import TIGER
from sidrec.sid.rqvae import RQVAE, perturb


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
        if cfg.recon == "latent":  # the decoder is not in the loss: keep it out of the optimiser too
            for p in rqvae.decoder.parameters():
                p.requires_grad_(False)
        # the cached SID table (levels only; the recipe installs every re-derivation) and, for
        # noise_unit=gap, each level's median top-1/top-2 logit gap on the catalogue
        with torch.no_grad():
            start, _ = rqvae.quantizer.assign(self.latents if self.latents is not None else rqvae.encoder(self.features))
        self.register_buffer("table", start.long(), persistent=False)
        self.register_buffer("gap", torch.ones(self.levels), persistent=False)
        self.sigma = nn.Parameter(torch.tensor(float(cfg.noise_scale))) if cfg.decay in ("sdud", "both") else None
        for level, k in enumerate(rqvae.quantizer.sizes):  # FrqUD usage shares, start uniform
            self.register_buffer(f"usage_{level}", torch.full((k,), 1.0 / k))
        self.last: dict[str, Any] = {}  # the latest step's loss parts (for logs; tensors or floats)

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

    def noise_gate(self, nearest: torch.Tensor) -> torch.Tensor | None:
        """(n, L) bool: which items get noise at which level, from their noiseless codes (n, L); None = all.

        ``frequd_level=first`` gives every level the first level's decision (an item is hot or not as a whole);
        ``each`` decides per level.
        """
        hot = self.hot_codes()
        if hot is None:
            return None
        if self.cfg.frequd_level == "first":
            return hot[0].to(nearest.device)[nearest[:, 0]].unsqueeze(1).expand(-1, self.levels)
        return torch.stack([h.to(nearest.device)[nearest[:, lv]] for lv, h in enumerate(hot)], 1)

    def level_scale(self) -> torch.Tensor | None:
        return self.gap if self.cfg.noise_unit == "gap" else None  # on the device: no host read per step

    def step_noise_scale(self) -> float | torch.Tensor:
        """The noise scale of a training step: a learned sigma stays a device tensor (no host read per step)."""
        if self.cfg.noise != "none" and self.sigma is not None:
            return self.sigma.detach().abs()
        return self.noise_scale()

    @torch.no_grad()
    def diagnose(self, generator: torch.Generator | None = None) -> dict[str, list[float]]:
        """Per level, on the whole catalogue along the noiseless path: the median top-1/top-2 logit gap and the
        share of items whose code one draw of the training noise (scale, unit and FrqUD gate as in training)
        would flip. Also installs the gaps that ``noise_unit=gap`` measures noise in."""
        q = self.rqvae.quantizer
        z = self.latents if self.latents is not None else self.rqvae.encoder(self.features)
        codes, logits = q.assign(z.float())
        gaps = []
        for lg in logits:
            top = lg.topk(2, dim=1).values
            gaps.append(float((top[:, 0] - top[:, 1]).median()))
        self.gap.copy_(torch.tensor(gaps).clamp(min=1e-6))
        gate, s = self.noise_gate(codes), self.noise_scale()
        noise = self.cfg.noise if self.cfg.noise != "none" else "gumbel"
        flips = [float((perturb(lg, lv, s, noise, generator, gate, self.level_scale()).argmax(1) != codes[:, lv])
                       .float().mean()) if s > 0 else 0.0 for lv, lg in enumerate(logits)]
        return {"logit_gap": gaps, "flip_rate": flips}

    # ------------------------------------------------------------------ assignments
    def assign(self, items: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor | list]:
        """SIDs of ``items`` (n,) for the recommender, their straight-through weights, VQ and recon losses.

        The codes are the cached table's, the weights carry the (perturbed) soft assignment backward (the
        first implementation fed the noisy argmax itself as inputs and targets: measured worse, docs/diger.md);
        the VQ and reconstruction terms use the noisy codes. Runs in float32 whatever the surrounding autocast: the
        nearest-code decisions and the usage counts must not depend on bf16 rounding.
        """
        cfg = self.cfg
        q = self.rqvae.quantizer
        with precision.fp32(items.device):
            x = self.features[items]
            z = self.latents[items] if self.latents is not None else self.rqvae.encoder(x)
            with torch.no_grad():
                near, _ = q.assign(z)
            gate = self.noise_gate(near)
            noise = cfg.noise if cfg.noise != "none" else "gumbel"
            est = "soft" if cfg.noise == "none" else "gumbel"
            scale = self.step_noise_scale()
            out = q(z, estimator=est, tau=cfg.tau, noise_scale=scale, generator=generator, noise=noise,
                    gate=gate, level_scale=self.level_scale())
            recon = (F.mse_loss(out.quantized, z) if cfg.recon == "latent"
                     else F.mse_loss(self.rqvae.decoder(out.quantized), x))
            codes = self.table[items]
            if cfg.rec_to_tokenizer:
                weights = q.soft_along(z, codes, cfg.tau, scale if est == "gumbel" else 0.0, generator, noise,
                                       gate=gate, level_scale=self.level_scale())
            else:
                weights = [F.one_hot(codes[:, lv], k).float() for lv, k in enumerate(q.sizes)]
        if self.training:
            with torch.no_grad():
                m = cfg.usage_momentum
                for level, u in enumerate(self.usage()):
                    idx = near[:, level]  # counted by index_add: a fixed output size (bincount's reads the max back)
                    share = u.new_zeros(len(u)).index_add_(0, idx, torch.ones_like(idx, dtype=u.dtype)) / max(1, len(items))
                    u.mul_(m).add_(share, alpha=1 - m)
        return {"codes": codes, "weights": weights, "vq": out.loss, "recon": recon, "noisy_codes": out.codes}

    def _vectors(self, codes: torch.Tensor, weights: list[torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """(n, L, d) input embeddings: straight-through mixtures for the learned levels, lookup for the last."""
        emb = self.tiger.code_emb.weight
        offs = self.tiger.offsets
        parts = []
        for level, w in enumerate(weights):
            lo = self.tiger.starts[level]
            parts.append(w @ emb[lo:lo + w.shape[1]])
        parts.append(emb[self.collision[items] + offs[self.levels]])
        return torch.stack(parts, 1)

    def forward(self, history: torch.Tensor, users: torch.Tensor | None, target: torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Joint loss for history item indices (B, T) (-1 = padding) and target items (B,).

        ``target=None`` (``tiger.arch=decoder``): ``history`` is a window of items and every item after the
        first is a target, each read and predicted through the same straight-through assignment, so one causal
        pass per window trains all of them (TIGER's :meth:`~sidrec.methods.tiger.model.TIGER.forward_sequence`).
        """
        b, t = history.shape
        flat = history.reshape(-1) if target is None else torch.cat([history.reshape(-1), target])
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
        if target is None:  # every window item is a target: its weights (zero rows for padding, never targets)
            tw: list[torch.Tensor | None] = [(w[safe] * (idx >= 0).unsqueeze(1).to(w.dtype)).view(b, t, -1)
                                             for w in a["weights"]]
            tw.append(None)
            gen = self.tiger(hist_codes, users, None, hist_emb, None, tw)
        else:
            tgt_codes, tgt_emb = codes_flat[n_hist:], vec_flat[n_hist:]
            tgt_rows = inv[-b:]  # targets are the last b entries of ``flat`` and never padding
            tw = [w[tgt_rows] for w in a["weights"]]
            tw.append(None)
            gen = self.tiger(hist_codes, users, tgt_codes, hist_emb, tgt_emb, tw)
        if self.sigma is not None:
            s = self.sigma.abs() + self.cfg.sdud_lambda
            gen_term = gen / (2 * s * s) + torch.log(s)
        else:
            gen_term = gen
        loss = gen_term + self.cfg.vq_weight * a["vq"] + self.cfg.recon_weight * a["recon"]
        # kept on the device (read as floats only when logged, once per epoch: no host read per step)
        self.last = {"gen": gen.detach(), "vq": a["vq"].detach(), "recon": a["recon"].detach(),
                     "sigma": self.step_noise_scale()}
        return loss
