"""The ``sasrec`` config section."""

from __future__ import annotations

import typing
from dataclasses import dataclass


@dataclass
class SASRecConfig:
    """ID-based causal Transformer baseline (full-softmax cross-entropy, tied output embeddings)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.3
    emb_dropout: float = 0.3
    # the item embeddings and the content vectors (``features``): none (free ids); init (the free table starts
    # as the vectors' PCA to d_model); add (id + a learned projection of the fixed vectors, so an item seen
    # rarely or never still has an embedding where its content is)
    item_content: typing.Literal["none", "init", "add"] = "none"
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"d_model": "> 0", "n_layers": "> 0", "n_heads": "> 0",
        "ffn_dim": "> 0", "dropout": "in [0, 1)", "emb_dropout": "in [0, 1)"}
