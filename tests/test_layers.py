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


def _weights(attn: MultiHeadAttention, q: torch.Tensor, n: int, size: float) -> torch.Tensor:
    """Attention weights over ``n`` one-hot memory tokens of norm ``size``, read out through identity values."""
    mem = torch.eye(attn.n_heads * attn.head_dim)[:n].unsqueeze(0) * size
    return attn(q, memory=mem)[..., :n] / size


def test_cosine_logits_bound_how_peaked_the_weights_can_get() -> None:
    torch.manual_seed(0)
    q = torch.randn(1, 3, 16) * 100
    dot = MultiHeadAttention(16, 1, identity_values=True)
    w = _weights(dot, q, 8, 100.0)
    assert w.max() > 0.99  # large inputs make dot-product attention one-hot
    cos = MultiHeadAttention(16, 1, identity_values=True, cosine_scale=1.0)
    w = _weights(cos, q, 8, 100.0)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 3))
    assert (w.max(-1).values / w.min(-1).values <= torch.e**2 + 1e-4).all()  # logits in [-1, 1]


@pytest.mark.parametrize("cosine_scale", [0.0, 2.0])
def test_the_diagnostic_weights_are_the_ones_the_layer_uses(cosine_scale: float) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, identity_values=True, cosine_scale=cosine_scale)
    q, mem = torch.randn(3, 2, 16), torch.randn(3, 5, 16)
    w = attn.weights(q, mem)  # (3, heads, 2, 5)
    expect = (w @ attn.split_heads(mem)).transpose(1, 2).reshape(3, 2, 16)
    torch.testing.assert_close(attn(q, memory=mem), expect)
