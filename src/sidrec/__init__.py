"""sidrec: generative recommendation with semantic IDs.

The package is organised along the flow of data: raw files -> :mod:`sidrec.data` (canonical Dataset and
leave-one-out splits) -> :mod:`sidrec.features` (item vectors) -> :mod:`sidrec.sid` (semantic IDs) ->
:mod:`sidrec.models` -> :mod:`sidrec.decoding` -> :mod:`sidrec.eval`. The Python API (``sidrec.train``,
``sidrec.load``, ``Recommender.recommend``) is :mod:`sidrec.api`; docs/api.md.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Recommender", "Run", "load", "train"]


def __getattr__(name: str) -> Any:
    """The Python API (:mod:`sidrec.api`), imported on first use: ``import sidrec`` (and the config loader, which
    lives in this package) stays free of torch until a model is asked for."""
    if name in __all__:
        from sidrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'sidrec' has no attribute '{name}'")
