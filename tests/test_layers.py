"""The shared attention layer's identity-value option (used by ACERec's `atm_values: codes`)."""

from __future__ import annotations

import pytest
import torch

from sidrec.models.layers import MultiHeadAttention


def test_identity_values_return_a_convex_combination_of_each_heads_slice() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, identity_values=True)
    q, mem = torch.randn(3, 2, 16), torch.randn(3, 5, 16)
    out = attn(q, memory=mem)
    # every output coordinate is a weighted mean of the same coordinate over the memory tokens
    assert (out <= mem.max(1, keepdim=True).values + 1e-6).all()
    assert (out >= mem.min(1, keepdim=True).values - 1e-6).all()
    same = torch.randn(3, 1, 16).expand(3, 5, 16)  # identical tokens: the read-out is that token
    torch.testing.assert_close(attn(q, memory=same), same[:, :2])
    assert not hasattr(attn, "v_proj") and not hasattr(attn, "o_proj")


def test_projected_values_are_not_confined_to_the_memory() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4)
    same = torch.randn(3, 1, 16).expand(3, 5, 16)
    assert not torch.allclose(attn(torch.randn(3, 2, 16), memory=same), same[:, :2])


def test_identity_values_need_the_heads_to_tile_the_model_width() -> None:
    with pytest.raises(ValueError, match="identity values"):
        MultiHeadAttention(16, 4, head_dim=8, identity_values=True)
