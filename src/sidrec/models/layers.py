"""Shared Transformer building blocks on top of ``torch.nn.functional.scaled_dot_product_attention``.

Pre-LayerNorm blocks (more stable for the small, shallow models used here). The attention mask follows
SDPA's boolean convention: ``True`` = may attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with separate q/k/v projections (named so LoRA can target q and v)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim or d_model // n_heads
        inner = self.n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner)
        self.v_proj = nn.Linear(d_model, inner)
        self.o_proj = nn.Linear(inner, d_model)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        kv = x if memory is None else memory
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        b, h, t, d = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * d))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LN Transformer block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, head_dim: int | None = None,
                 cross: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, head_dim, dropout)
        self.cross = MultiHeadAttention(d_model, n_heads, head_dim, dropout) if cross else None
        self.ln_cross = nn.LayerNorm(d_model) if cross else None
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask=mask, is_causal=is_causal))
        if self.cross is not None and memory is not None:
            x = x + self.drop(self.cross(self.ln_cross(x), memory=memory, mask=memory_mask))
        return x + self.drop(self.ffn(self.ln2(x)))


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
