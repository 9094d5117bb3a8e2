"""DIGER: TIGER with differentiable semantic IDs."""
