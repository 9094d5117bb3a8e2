"""The ``sasrec`` config section."""

from __future__ import annotations

import typing
from dataclasses import dataclass


@dataclass
class SASRecConfig:
    """ID-based causal Transformer baseline (full-softmax cross-entropy, tied output embeddings)."""

    d_model: int = 64  # width of the item embeddings and of every Transformer layer
    n_layers: int = 2  # causal self-attention blocks
    n_heads: int = 2  # attention heads per block (d_model must divide by it)
    ffn_dim: int = 256  # inner width of each block's feed-forward layer
    dropout: float = 0.3  # dropout on the residual branches (and inside the sublayers, see inner_dropout)
    emb_dropout: float = 0.3  # dropout on the input item + position embeddings
    # the item embeddings and the content vectors (``features``): none (free ids); init (the free table starts
    # as the vectors' PCA to d_model); add (id + a learned projection of the fixed vectors, so an item seen
    # rarely or never still has an embedding where its content is)
    item_content: typing.Literal["none", "init", "add"] = "none"
    # Training choices of the SASRec line of peers (TV-Rec, BSARec, FMLP-Rec: one code base), each a setting so
    # that the gap to them can be taken apart one factor at a time (issue 57; docs/lab/peers.md, "Training: theirs
    # vs sidrec's"). The defaults are sidrec's own and change no recorded number.
    # training rows: users (each user's most recent max_len + 1 training items as one row, every position a
    # target, users of similar length batched together) or prefixes (every prefix of that window its own sample,
    # only its last position a target, samples shuffled uniformly into batches of train.batch_size: the peers'
    # RecDataset; the same targets, on Beauty 46x the padded positions computed per epoch and 2.9x the steps)
    train_rows: typing.Literal["users", "prefixes"] = "users"
    # weight initialisation: scaled (embeddings N(0, 1/d), torch's default for the linear layers; a unit-variance
    # start trained markedly worse) or normal (every linear and embedding weight N(0, 0.02), biases 0: BERT's, the
    # peers'); item_content=init then scales the content PCA to the same std
    init: typing.Literal["scaled", "normal"] = "scaled"
    # layer norm: pre (x + f(LN(x)) in every block, one LN after the last) or post (LN(x + f(x)) in every block,
    # the embeddings layer-normed before their dropout, no final LN: the original SASRec's and the peers' layout)
    norm: typing.Literal["pre", "post"] = "pre"
    # dropout inside the sublayers (on the attention weights and after the feed-forward's GELU) besides the
    # residual branches and the embeddings; false: the residual branches and the embeddings only, as the peers'
    # blocks (their feed-forward has no inner dropout, TV-Rec has no attention)
    inner_dropout: bool = True
    # position embeddings: learned (one per distance from the most recent item) or none (TV-Rec's filters carry
    # the order; a causal Transformer without them still sees which items came before)
    positions: typing.Literal["learned", "none"] = "learned"
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"d_model": "> 0", "n_layers": "> 0", "n_heads": "> 0",
        "ffn_dim": "> 0", "dropout": "in [0, 1)", "emb_dropout": "in [0, 1)"}
