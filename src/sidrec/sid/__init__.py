"""Item embeddings -> semantic IDs: the tokenizer protocol (``base``), the SID table (``table``), collisions and
diagnostics; the tokenizer kinds live in their own modules (``rqkmeans``, ``rqvae``, ``opq``) and register
themselves. Import the module you need: this package imports nothing, so reading a config (which needs only
``sid.config``) never loads torch.
"""
