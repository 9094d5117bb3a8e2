"""One folder per method: ``config.py`` (its config section; imports nothing from sidrec), ``model.py``
(the network, read like the paper's method section) and ``task.py`` (batches, loss, scoring for the trainer).
:mod:`sidrec.methods.registry` maps a method name to its task builder. See docs/architecture.md.
"""
