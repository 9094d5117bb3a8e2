"""Item content -> dense vectors: sentence embeddings of item text, or attribute ids via TF-IDF + SVD.

Both paths are cached by a content hash (the texts / attributes and every setting that changes the
result), so re-running an experiment never re-embeds, and a changed template never reuses stale vectors.
"""

from sidrec.features.core import check_embeddings, item_features, item_texts

__all__ = ["check_embeddings", "item_features", "item_texts"]
