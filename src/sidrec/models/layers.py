"""Shared Transformer building blocks on top of ``torch.nn.functional.scaled_dot_product_attention``.

Pre-LayerNorm blocks (more stable for the small, shallow models used here; ``Block(post_norm=True)`` is the
post-LN layout, for SASRec's ``sasrec.norm: post``). The attention mask follows
SDPA's boolean convention: ``True`` = may attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with separate q/k/v projections (named so LoRA can target q and v).

    ``identity_values``: no value or output projection, so each head returns a convex combination of its own
    slice of the value vectors. Why: ACERec's merger can then build latents that are weighted averages of an
    item's code tokens (``acerec.atm_values: codes``), which keep the item where learned projections lose it.
    ``cosine_scale`` > 0: the logits are the cosine of each head's query and key times this scale instead of
    q.k / sqrt(head_dim). Why: bounded logits cannot grow until the softmax is one-hot (ACERec's merger otherwise
    collapses onto a few subspaces within ~100 steps; ``acerec.atm_cosine_scale``).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None, dropout: float = 0.0,
                 identity_values: bool = False, cosine_scale: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim or d_model // n_heads
        inner = self.n_heads * self.head_dim
        if identity_values and inner != d_model:
            raise ValueError(f"identity values need n_heads x head_dim = d_model, got {inner} != {d_model}")
        self.identity_values = identity_values
        self.cosine_scale = cosine_scale
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner)
        if not identity_values:
            self.v_proj = nn.Linear(d_model, inner)
            self.o_proj = nn.Linear(inner, d_model)
        self.dropout = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, heads x head_dim) -> (B, heads, T, head_dim), the layout :meth:`attend` takes."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def values(self, kv: torch.Tensor) -> torch.Tensor:
        """The value vectors of ``kv`` (B, S, d) before the head split: projected, or ``kv`` itself."""
        return kv if self.identity_values else self.v_proj(kv)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        k, v = self.project_kv(x if memory is None else memory)
        return self.attend(x, k, v, mask=mask, is_causal=is_causal)

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, S, head_dim) of ``kv``: computed once and cached by incremental decoders."""
        return self.split_heads(self.k_proj(kv)), self.split_heads(self.values(kv))

    def weights(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """The attention weights (B, heads, T, S) of queries from ``x`` over ``kv`` (no mask): for diagnostics,
        e.g. how peaked ACERec's merger attention has become (``benchmarks/acerec_summary.py``)."""
        q, k, scale = self._logit_terms(self.split_heads(self.q_proj(x)), self.split_heads(self.k_proj(kv)))
        return torch.softmax(q @ k.transpose(-1, -2) * (scale or self.head_dim**-0.5), -1)

    def _logit_terms(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Queries, keys and the logit scale (None: SDPA's 1 / sqrt(head_dim)), the one place the logits are set."""
        if self.cosine_scale > 0:
            return F.normalize(q, dim=-1), F.normalize(k, dim=-1), self.cosine_scale
        return q, k, None

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Queries from ``x`` (B, T, d) over precomputed keys / values (B, heads, S, head_dim)."""
        q, k, scale = self._logit_terms(self.split_heads(self.q_proj(x)), k)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None, scale=scale,
        )
        b, h, t, d = out.shape
        out = out.transpose(1, 2).reshape(b, t, h * d)
        return out if self.identity_values else self.o_proj(out)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Transformer block: self-attention, optional cross-attention, feed-forward.

    Pre-LN by default (``x + f(LN(x))``). ``post_norm``: ``LN(x + f(x))`` after each sublayer, the original
    Transformer's and the SASRec-line peers' layout (``sasrec.norm: post``), for measuring what the layout is worth.
    ``attn_dropout`` / ``ffn_dropout`` (None: ``dropout``) set the dropout on the attention weights and after the
    feed-forward's activation apart from the one on the residual branches (``sasrec.inner_dropout``).
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, head_dim: int | None = None,
                 cross: bool = False, post_norm: bool = False, attn_dropout: float | None = None,
                 ffn_dropout: float | None = None) -> None:
        super().__init__()
        attn_p = dropout if attn_dropout is None else attn_dropout
        self.post_norm = post_norm
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, head_dim, attn_p)
        self.cross = MultiHeadAttention(d_model, n_heads, head_dim, attn_p) if cross else None
        self.ln_cross = nn.LayerNorm(d_model) if cross else None
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout if ffn_dropout is None else ffn_dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.post_norm:
            x = self.ln1(x + self.drop(self.attn(x, mask=mask, is_causal=is_causal)))
            if self.cross is not None and self.ln_cross is not None and memory is not None:
                x = self.ln_cross(x + self.drop(self.cross(x, memory=memory, mask=memory_mask)))
            return self.ln2(x + self.drop(self.ffn(x)))
        x = x + self.drop(self.attn(self.ln1(x), mask=mask, is_causal=is_causal))
        if self.cross is not None and memory is not None:
            x = x + self.drop(self.cross(self.ln_cross(x), memory=memory, mask=memory_mask))
        return x + self.drop(self.ffn(self.ln2(x)))

    def step(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
             memory_mask: torch.Tensor | None = None,
             cache: tuple[torch.Tensor, torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Incremental causal decoding for ``G`` hypotheses that share one memory row (beam search).

        ``x`` is (B, G, t, d): the newest ``t`` decoder positions of G hypotheses per memory row. With a
        ``cache`` (keys / values of earlier positions, (B*G, heads, t0, head_dim)) only ``t == 1`` new
        position is allowed; without one the ``t`` positions attend causally among themselves. Cross-attention
        reads precomputed memory keys / values (B, heads, S, head_dim) with the G*t queries of a row folded
        into one query axis, so the memory is never copied per hypothesis. Returns the new states and the
        self-attention keys / values including the new positions (the cache for the next step).
        """
        b, g, t, d = x.shape
        if self.post_norm:
            raise ValueError("Block.step decodes pre-LN blocks only (post_norm is a SASRec training setting)")
        if cache is not None and t != 1:
            raise ValueError("Block.step with a cache decodes one new position at a time")
        h = self.ln1(x).reshape(b * g, t, d)
        k, v = self.attn.project_kv(h)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        a = self.attn.attend(h, k, v, is_causal=cache is None and t > 1)
        x = x + self.drop(a.view(b, g, t, d))
        if self.cross is not None and memory_kv is not None:
            c = self.cross.attend(self.ln_cross(x).reshape(b, g * t, d), memory_kv[0], memory_kv[1], mask=memory_mask)
            x = x + self.drop(c.view(b, g, t, d))
        return x + self.drop(self.ffn(self.ln2(x))), (k, v)


def causal_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) validity -> (B, T, T) mask: causal, no attention to padding, pads attend to themselves.

    Letting a padded query attend to itself keeps SDPA from producing NaN rows (softmax over nothing);
    those positions are never read.
    """
    t = valid.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()
    mask = causal.unsqueeze(0) & valid.unsqueeze(1)
    eye = torch.eye(t, dtype=torch.bool, device=valid.device).unsqueeze(0)
    return mask | eye
