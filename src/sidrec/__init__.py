"""sidrec: generative recommendation with semantic IDs.

The package is organised along the flow of data: raw files -> :mod:`sidrec.data` (canonical Dataset and
leave-one-out splits) -> :mod:`sidrec.features` (item vectors) -> :mod:`sidrec.sid` (semantic IDs) ->
:mod:`sidrec.models` -> :mod:`sidrec.decoding` -> :mod:`sidrec.eval`.
"""

__version__ = "0.1.0"
