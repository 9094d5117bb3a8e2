"""The ``diger`` config section."""

from __future__ import annotations

from dataclasses import dataclass

from sidrec.errors import SidrecError

NOISES = ("gumbel", "gaussian")
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
    rec_to_tokenizer: bool = True  # L_gen reaches the tokenizer (false: the authors' public code, labels detached)
    frequd_level: str = "first"  # first: hot decided from the level-1 code, for all levels; each: per level
    noise_unit: str = "logit"  # logit: noise on raw logits (authors'); gap: in units of each level's logit gap
    derive: str = "sinkhorn"  # SID table derivation: sinkhorn (balanced, authors') or argmin (nearest code)
    sinkhorn_epsilon: float = 0.003
    sinkhorn_iters: int = 50
    recon: str = "latent"  # latent: ||z_q - z||^2, decoder frozen (authors'); input: decode to the embedding

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
        for key, value, allowed in (("frequd_level", self.frequd_level, ("first", "each")),
                                    ("noise_unit", self.noise_unit, ("logit", "gap")),
                                    ("derive", self.derive, ("sinkhorn", "argmin")),
                                    ("recon", self.recon, ("latent", "input"))):
            if value not in allowed:
                raise SidrecError(f"diger.{key} must be one of {', '.join(allowed)}; got '{value}'")
        if not self.sinkhorn_epsilon > 0 or self.sinkhorn_iters < 1:
            raise SidrecError("diger.sinkhorn_epsilon must be > 0 and diger.sinkhorn_iters >= 1")
