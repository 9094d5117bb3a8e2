"""Item embeddings -> semantic IDs: the tokenizer protocol, the SID table, collisions and diagnostics.

Tokenizer kinds live in their own modules (``rqkmeans``, ``rqvae``, ``opq``) and register themselves;
:func:`build_tokenizer` imports them on demand so ``import sidrec.sid`` stays cheap.
"""

from sidrec.sid.base import Tokenizer, build_tokenizer, load_tokenizer
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.table import SIDTable

__all__ = ["SIDTable", "Tokenizer", "TokenizerConfig", "build_tokenizer", "load_tokenizer"]
