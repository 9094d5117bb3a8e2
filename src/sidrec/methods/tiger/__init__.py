"""TIGER: semantic IDs + a generative Transformer + constrained beam search."""
