"""The ``acerec`` config section."""

from __future__ import annotations

import typing
from dataclasses import dataclass

MERGES = ("atm", "mean", "mlp")


@dataclass
class ACERecConfig:
    """The ``acerec`` config section (paper values in comments; defaults sized for a CPU)."""

    d_model: int = 128  # paper 448
    n_latents: int = 4  # k latent tokens per item (compression r = m / k)
    n_layers: int = 2  # Transformer blocks over the latent tokens
    n_heads: int = 4  # attention heads per block
    ffn_dim: int = 0  # 0 = the paper's ratio, 1024 / 448 = 2.29 x d_model (rounded to 16); paper 1024 at d 448
    dropout: float = 0.2  # everywhere (RPG's split, .5 on inputs and attention, 0 elsewhere, lost: docs/acerec.md)
    gamma: float = 0.03  # MTP temperature (cosine logits / gamma)
    isa_weight: float = 0.1  # lambda, paper {0.1, 0.15, 0.2}
    isa_tau: float = 0.07  # temperature of ISA's contrastive loss (similarities / isa_tau)
    pop_beta: float = 0.02  # popularity correction of ISA's in-batch negatives
    recon_weight: float = 0.0  # alpha, paper {0.03, 0.05}; 0 = off
    merge: typing.Literal["atm", "mean", "mlp"] = "atm"  # how m code embeddings become k latents
    # what the ATM's attention reads out of the item's codes: projected: the paper's block (value and output
    # projections, query residual, MLP, LayerNorm) | codes: the code tokens themselves, so every latent is a
    # learned convex combination of the item's codes (no projection, residual or MLP that can drop the item;
    # AttentiveTokenMerger, issue 46)
    atm_values: typing.Literal["projected", "codes"] = "projected"
    # 0: the paper's dot-product attention in the ATM | > 0: cosine(query, key) x this scale, so the weights over
    # the item's subspaces cannot become one-hot (they do within ~100 steps otherwise; issue 46, docs/acerec.md)
    atm_cosine_scale: float = 0.0
    # the item summary s_i (intent token input, ATM queries, ISA target) from the mean of its code tokens:
    # ln: LN(mean) | residual: LN(mean + MLP(mean)), the MLP's output layer 0 at init, which collapses to a
    # vector shared by every item (ACERec.summarise; issue 46, docs/acerec.md)
    summary: typing.Literal["ln", "residual"] = "ln"
    intent_token: bool = True  # false: predict from the mean of the block's latent states
    isa: bool = True  # false: MTP (+ recon) only
    collision_code: bool = True  # also model the tokenizer's appended disambiguation code as one more subspace
    eval_chunk: int = 4096  # items per holistic-scoring chunk (bounds memory: users x chunk scores)
    eval_batch_users: int = 256  # users scored together
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"d_model": "> 0", "n_latents": "> 0", "n_layers": "> 0",
        "n_heads": "> 0", "ffn_dim": ">= 0", "dropout": "in [0, 1)", "gamma": "> 0", "isa_weight": ">= 0",
        "isa_tau": "> 0", "pop_beta": ">= 0", "recon_weight": ">= 0", "atm_cosine_scale": ">= 0", "eval_chunk": "> 0",
        "eval_batch_users": "> 0"}
