"""The ``tiger`` config section (also the backbone of DIGER and DREAM's stage models)."""

from __future__ import annotations

import typing
from dataclasses import dataclass


@dataclass
class TIGERConfig:
    """The ``tiger`` config section: model shape (paper defaults) and decoding."""

    d_model: int = 128  # width of the code embeddings and of the residual stream
    encoder_layers: int = 4  # arch=encdec: blocks reading the history's codes
    decoder_layers: int = 4  # arch=encdec: blocks generating the next item's codes
    n_heads: int = 6  # attention heads per layer
    head_dim: int = 64  # width of each head (n_heads x head_dim need not equal d_model, as in T5)
    ffn_dim: int = 1024  # inner width of each feed-forward layer
    dropout: float = 0.1  # dropout throughout the Transformer
    user_buckets: int = 2000  # hashed user token; 0 = no user token
    beam: int = 20  # beam width of the constrained search (returns at most this many items)
    eval_batch_users: int = 256  # users decoded together (each with `beam` hypotheses)
    kv_cache: bool = True  # decoder self-attention cache; false = recompute the <= L-token prefix each step
    arch: typing.Literal["encdec", "decoder"] = "encdec"  # paper encoder-decoder, or one causal stack (see module doc)
    layers: int = 0  # arch=decoder: causal blocks (0 = encoder_layers + decoder_layers, the encdec's depth)
    tie_head: bool = False  # code logits = state . code embedding (no separate output layer), as DIGER's authors
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"d_model": "> 0", "encoder_layers": "> 0", "decoder_layers": "> 0",
        "n_heads": "> 0", "head_dim": "> 0", "ffn_dim": "> 0", "dropout": "in [0, 1)", "user_buckets": ">= 0",
        "beam": "> 0", "eval_batch_users": "> 0", "layers": ">= 0"}
