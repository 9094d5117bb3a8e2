"""The content ranker: cosine of item vectors, no training."""
