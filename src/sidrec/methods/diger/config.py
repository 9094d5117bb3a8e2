"""The ``diger`` config section."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from sidrec.errors import SidrecError

NOISES = ("gumbel", "gaussian")
DECAYS = ("none", "sdud", "frqud", "both")


@dataclass
class DIGERConfig:
    """The ``diger`` config section (paper values as defaults; every ablation is a value here)."""

    # the noise of the soft code assignment: gumbel (the paper's) or gaussian; none: plain straight-through through
    # the softmax
    noise: typing.Literal["gumbel", "gaussian", "none"] = "gumbel"
    # how the assignment noise is decayed: sdud (a learned scale sigma weighs the generation loss), frqud (only items
    # on hot codes get noise, see hot_ratio), both, or none (fixed noise_scale); both: chosen on Beauty validation
    # (docs/diger.md)
    decay: typing.Literal["none", "sdud", "frqud", "both"] = "both"
    tau: float = 2.0  # softmax temperature of the soft assignment
    noise_scale: float = 1.0  # fixed noise scale s (decay none / frqud); SDUD's initial sigma
    sdud_lambda: float = 1.7  # SDUD: the floor added to the learned |sigma| (generation loss / 2 s^2 + log s)
    sdud_lr: float = 1e-3  # SDUD: learning rate of the learned noise scale sigma
    hot_ratio: float = 1.5  # FrqUD: a code is hot when its usage share exceeds hot_ratio / K
    usage_momentum: float = 0.99  # FrqUD: EMA momentum of each code's usage share, updated every training step
    tokenizer_lr: float = 1e-5  # codebooks (and the RQ-VAE MLPs when not frozen); recommender: train.lr
    freeze_encoder: bool = True  # keep the RQ-VAE encoder fixed (only the codebooks learn); latents computed once
    vq_weight: float = 1.0  # weight of the RQ-VAE's quantisation (codebook + commitment) loss in the joint loss
    recon_weight: float = 1.0  # weight of the reconstruction loss (see diger.recon) in the joint loss
    rec_to_tokenizer: bool = True  # L_gen reaches the tokenizer (false: the authors' public code, labels detached)
    # first: hot decided from the level-1 code, for all levels; each: per level
    frequd_level: typing.Literal["first", "each"] = "first"
    # logit: noise on raw logits (authors'); gap: in units of each level's logit gap
    noise_unit: typing.Literal["logit", "gap"] = "logit"
    # SID table derivation: sinkhorn (balanced, authors') or argmin (nearest code)
    derive: typing.Literal["sinkhorn", "argmin"] = "sinkhorn"
    sinkhorn_epsilon: float = 0.003  # derive=sinkhorn: entropy regularisation (smaller: closer to the nearest code)
    sinkhorn_iters: int = 50  # derive=sinkhorn: Sinkhorn iterations per level
    # latent: ||z_q - z||^2, decoder frozen (authors'); input: decode to the embedding
    recon: typing.Literal["latent", "input"] = "latent"
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"noise": ">= 0", "decay": ">= 0", "tau": "> 0", "noise_scale": ">= 0",
        "sdud_lambda": "> 0", "sdud_lr": "in (0, 10]", "hot_ratio": "> 0", "usage_momentum": "in [0, 1)",
        "tokenizer_lr": "in [0, 10]", "freeze_encoder": ">= 0", "vq_weight": ">= 0", "recon_weight": ">= 0",
        "rec_to_tokenizer": ">= 0", "frequd_level": ">= 0", "noise_unit": ">= 0", "derive": ">= 0",
        "sinkhorn_epsilon": "> 0", "sinkhorn_iters": "> 0", "recon": ">= 0"}

    def check(self) -> None:
        """The choices of a DIGERConfig built in code, read from the fields' own ``Literal`` types (a config file
        is checked when it is read, by the same types and the value rules of ``sidrec.config``)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else ()
            if allowed and getattr(self, f.name) not in allowed:
                raise SidrecError(f"diger.{f.name} must be one of {', '.join(allowed)}; got '{getattr(self, f.name)}'")
