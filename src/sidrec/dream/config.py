"""The ``dream`` config section (stage 1 settings nest under ``dream.cart``)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field


@dataclass
class CARTConfig:
    """Stage-1 settings (the paper's values where it gives them; the CPU batch is larger than its 64)."""

    epochs: int = 12  # passes over the training interactions while CART learns
    batch_size: int = 256  # interactions per CART step
    lr: float = 1e-3  # CART's learning rate
    weight_decay: float = 0.0  # CART's weight decay
    logit_scale: float = 10.0  # tau_s of the logits -tau_s ||r - c||^2 / s_l
    tau_start: float = 1.0  # Gumbel-softmax temperature, annealed exponentially ...
    tau_end: float = 0.1  # ... to this value at the last step
    nce_temperature: float = 0.1  # temperature of the InfoNCE loss L_NCE
    queue_size: int = 8192  # past keys per SID position kept as InfoNCE negatives (a FIFO queue)
    momentum: float = 0.995  # EMA of the key encoder
    hard_negatives: int = 8  # counterfactual negatives per item
    history: int = 10  # items of context for the calibration click model
    w_cal: float = 1.0  # weight of L_cal: a click model must tell the real next item from the quantised target
    w_div: float = 0.1  # weight of L_div: keeps every level's codebook in use
    w_anchor: float = 0.5  # weight of L_anc: keeps warm items on their base codes, which the backbone knows
    candidates: int = 8  # size of the candidate pool per item
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"epochs": "> 0", "batch_size": "> 0", "lr": "> 0",
        "weight_decay": "in [0, 1]", "logit_scale": "> 0", "tau_start": "> 0", "tau_end": "> 0",
        "nce_temperature": "> 0", "queue_size": "> 0", "momentum": "in [0, 1)", "hard_negatives": ">= 0",
        "history": "> 0", "w_cal": ">= 0", "w_div": ">= 0", "w_anchor": ">= 0", "candidates": "> 0"}


@dataclass
class DREAMConfig:
    """DREAM's stages. The CPDE loss weights (lambda_*) are not published; see docs/dream.md for the choice."""

    cart: CARTConfig = field(default_factory=CARTConfig)
    # As the paper: CART re-tokenizes every item (warm items take its top-1 SID Phi_R), a bridge TIGER is trained
    # on that table, UC3 / CPDE run on the bridge with the mean NLL over SID positions and fall back to Phi_R.
    bridge_max_minutes: float = 0.0  # training budget of the bridge TIGER (0 = the run's own train.max_minutes)
    # counterfactual negatives: family (closest TF-IDF within the product family: near-duplicates, often the same
    # intent) | family_far (least similar within the family) | none. With CART in the embedding space family_far
    # won on Toys validation (CART only: cold N@10 .0034 vs .0019); the best measured configuration is the base
    # space with family (cold .0039, warm .0402), the default pair (the base space with family_far is unmeasured)
    negatives: typing.Literal["family", "family_far", "none"] = "family"
    family_field: str = ""  # item field whose last value names the product family ("" = categories/attributes)
    rewrite_command: str = ""  # optional shell command: item texts on stdin, one rewritten query per line out
    uc3_tau: float = 1.0  # tau_c of the per-context softmax over candidates
    uc3_min_support: int = 3  # contexts an item needs before its SID may switch
    uc3_min_margin: float = 0.05  # top-2 vote margin needed to switch
    uc3_batch: int = 256  # contexts scored together
    hypotheses: int = 4  # B weighted SIDs per cold item
    lora_rank: int = 4  # CPDE: rank of the LoRA adapters on the attention query and value projections
    lora_alpha: float = 8.0  # CPDE: LoRA scaling (the update is B A x times lora_alpha / lora_rank)
    cpde_epochs: int = 2  # chosen on Beauty validation (docs/dream.md); the paper-like run used 4
    cpde_warmup_epochs: int = 1  # hypothesis weights stay fixed for these epochs
    cpde_update_every: int = 50  # steps between weight updates
    cpde_lr: float = 3e-4  # CPDE's learning rate
    cpde_batch_size: int = 256  # cold samples per CPDE step
    cpde_warm_ratio: float = 1.0  # warm (distillation) samples per cold sample
    update_keep: float = 0.7  # w <- keep * w + (1 - keep) * (alpha + score), then renormalised
    update_delta: float = 2.0  # paper: confidence gate sigmoid(-NLL_best + delta) on each update (mean NLL, nats)
    lambda_soft: float = 0.3  # chosen on Beauty validation from {1, 0.3} (docs/dream.md)
    lambda_kl: float = 0.1  # weight of the KL to the frozen reference at the cold items' SID positions
    lambda_kd: float = -1.0  # < 0: the warm / cold ratio of training samples (warm mass as in the real data)
    # NLL of warm samples' own SIDs (not in the paper; 0 = off): warm samples already train the full bridge weights,
    # and the term only over-trained it (Beauty: valid warm N@10 .0449 -> .0464 without it, docs/dream.md)
    lambda_warm: float = 0.0
    kd_gate: bool = True  # weight warm positions by the teacher's confidence (1 - H / log K)
    eval_beam: int = 50  # beam width for the stage table (>= 50 so Recall@50 is exact)
    eval_users: int = 0  # 0 = all users of the split
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"bridge_max_minutes": ">= 0", "uc3_tau": "> 0",
        "uc3_min_support": ">= 0", "uc3_min_margin": ">= 0", "uc3_batch": "> 0", "hypotheses": "> 0",
        "lora_rank": "> 0", "lora_alpha": "> 0", "cpde_epochs": ">= 0", "cpde_warmup_epochs": ">= 0",
        "cpde_update_every": "> 0", "cpde_lr": "in (0, 10]", "cpde_batch_size": "> 0", "cpde_warm_ratio": ">= 0",
        "update_keep": "in [0, 1]", "lambda_soft": ">= 0", "lambda_kl": ">= 0", "lambda_warm": ">= 0",
        "eval_beam": "> 0", "eval_users": ">= 0"}


