"""Method name -> the function that builds its task: ``f(cfg, dataset, split, run_dir) -> Task``.

Names only (``"module:function"`` strings): checking a config's ``method`` imports no method code (and no
torch). Adding a method is one line here and a folder ``methods/<name>/`` (docs/architecture.md).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from sidrec.errors import SidrecError

METHODS: dict[str, str] = {
    "acerec": "sidrec.methods.acerec.task:build",
    "content": "sidrec.methods.content.task:build",
    "diger": "sidrec.methods.diger.task:build",
    "sasrec": "sidrec.methods.sasrec.task:build",
    "tiger": "sidrec.methods.tiger.task:build",
}


def check_method(method: str, prefix: str = "") -> None:
    """One line naming the known methods (and the closest one) when ``method`` is not one of them."""
    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SidrecError(f"{prefix}unknown method '{method}' (known: {', '.join(sorted(METHODS))}){hint}")


def get_builder(method: str) -> Callable[..., Any]:
    """The task builder of ``method`` (its module is imported now)."""
    check_method(method)
    mod, fn = METHODS[method].split(":")
    return getattr(importlib.import_module(mod), fn)
