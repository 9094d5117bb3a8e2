"""Models: one readable file per model plus shared Transformer layers."""
