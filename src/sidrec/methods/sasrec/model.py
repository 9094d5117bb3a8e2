"""SASRec: a causal Transformer over item ids, trained with full-softmax cross-entropy.

Why this baseline is the strong version: TIGER's table reports SASRec trained with sampled binary
cross-entropy. Trained with cross-entropy over the *whole catalogue* at every position and tied input /
output embeddings it is far stronger, and every semantic-ID method in this library is judged against it.
Initialisation matters: embeddings start at std d^-0.5 (a unit-variance start trained markedly worse).

Training choices of the SASRec-line peers (``sasrec.init``, ``norm``, ``inner_dropout``, ``positions``; the rows of
``sasrec.train_rows`` are cut in :class:`sidrec.data.batches.NextItemBatches`) are settings of this one model, so
each can be measured alone (issue 57); the defaults are the model every recorded number was trained with.

Item index ``i`` is embedded as token ``i + 1``; token 0 is padding. Sequences are left-padded so the most
recent item is always in the last column.

Content in the embeddings (``sasrec.item_content``): an item that is rare in training gets almost no
gradient except as a negative of the full softmax, so its free embedding says nothing and its logit is low
for every user (cold targets rank badly). ``init`` starts the table at the content vectors' PCA; ``add``
embeds item i as ``e_i = id_i + W c_i`` with c_i its fixed, normalised content vector and W learned and
shared by all items, so a cold item sits where its content puts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.config import SASRecConfig
from sidrec.models.layers import Block, causal_padding_mask
from sidrec.models.losses import full_softmax_ce

NORMAL_INIT_STD = 0.02  # sasrec.init=normal: BERT's std, the peers' initializer_range


class SASRec(nn.Module):
    def __init__(self, n_items: int, max_len: int, cfg: SASRecConfig, content: torch.Tensor | None = None) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_items = n_items
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d) if cfg.positions == "learned" else None
        # post-LN: the embeddings are layer-normed before their dropout and the blocks end in their own LN
        self.emb_ln: nn.Module = nn.LayerNorm(d) if cfg.norm == "post" else nn.Identity()
        self.emb_drop = nn.Dropout(cfg.emb_dropout)
        inner = None if cfg.inner_dropout else 0.0
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, post_norm=cfg.norm == "post",
                                          attn_dropout=inner, ffn_dropout=inner) for _ in range(cfg.n_layers))
        self.ln: nn.Module = nn.LayerNorm(d) if cfg.norm == "pre" else nn.Identity()
        # the std of the embeddings' start, which the content PCA (item_content=init) is scaled to as well
        self.init_std = d**-0.5 if cfg.init == "scaled" else NORMAL_INIT_STD
        if cfg.init == "normal":
            for m in self.modules():
                if isinstance(m, nn.Linear | nn.Embedding):
                    nn.init.normal_(m.weight, std=NORMAL_INIT_STD)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        else:
            nn.init.normal_(self.item_emb.weight, std=self.init_std)
            if self.pos_emb is not None:
                nn.init.normal_(self.pos_emb.weight, std=self.init_std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.content_proj: nn.Linear | None = None
        if cfg.item_content != "none":
            if content is None or content.shape[0] != n_items:
                raise ValueError(f"sasrec.item_content={cfg.item_content} needs one content vector per item")
            c = F.normalize(content.float(), dim=1)
            if cfg.item_content == "init":
                with torch.no_grad():
                    self.item_emb.weight[1:] = content_pca(c, d, self.init_std)
            else:
                # fixed (not a parameter, not saved: rebuilt from the run's features cache)
                self.register_buffer("content", c, persistent=False)
                self.content_proj = nn.Linear(c.shape[1], d, bias=False)
                nn.init.normal_(self.content_proj.weight, std=self.init_std)

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, d) the item embeddings, row 0 the padding (input and tied output alike)."""
        w = self.item_emb.weight
        if self.content_proj is None:
            return w
        return w + F.pad(self.content_proj(self.content), (0, 0, 1, 0))

    def encode(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) left-padded item indices (-1 = pad) -> (B, T, d) hidden states (``table``: the
        :meth:`item_table` when the caller has it already)."""
        table = self.item_table() if table is None else table
        valid = seq >= 0
        t = seq.shape[1]
        x = F.embedding(seq + 1, table)
        if self.pos_emb is not None:
            # positions count back from the most recent item, so they mean the same in every batch width
            pos = torch.arange(t - 1, -1, -1, device=seq.device).clamp(max=self.max_len - 1)
            x = x + self.pos_emb(pos).unsqueeze(0)
        x = self.emb_drop(self.emb_ln(x)) * valid.unsqueeze(-1)
        mask = causal_padding_mask(valid)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        return self.ln(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_table()[1:].t()

    def forward(self, seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all non-padded positions (every position predicts its next item)."""
        table = self.item_table()  # once per step: with item_content=add it is a product over the catalogue
        keep = target >= 0
        return full_softmax_ce(self.encode(seq, table)[keep], table[1:], target[keep])

    @torch.no_grad()
    def score(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores of every catalogue item as the next item after each (left-padded) history."""
        return self.logits(self.encode(seq)[:, -1])


def content_pca(c: torch.Tensor, d: int, std: float | None = None) -> torch.Tensor:
    """(n, d) the top-d principal components of the vectors ``c``, each scaled to ``std`` (default d^-0.5: the
    table's own initialisation scale), so the content-initialised table trains like a random one."""
    x = c - c.mean(0, keepdim=True)
    k = min(d, *x.shape)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    z = u[:, :k] * s[:k]
    z = z / z.std(0, keepdim=True).clamp(min=1e-12) * (d**-0.5 if std is None else std)
    return F.pad(z, (0, d - k))
