"""Method recipes: each builds a :class:`~sidrec.training.Task` (model + batches + evaluation) for a method.

A recipe is registered by name; ``sidrec train method=NAME`` looks it up. Adding a method touches its
own recipe module and model file, nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import sidrec.recipes._sections  # noqa: F401 - registers the methods' config sections before configs load
from sidrec.errors import SidrecError

# method name -> "module:function" building the task: f(cfg, dataset, split, run_dir) -> Task
RECIPES: dict[str, str] = {
    "acerec": "sidrec.recipes.acerec:build",
    "content": "sidrec.recipes.content:build",
    "diger": "sidrec.recipes.diger:build",
    "sasrec": "sidrec.recipes.sasrec:build",
    "tiger": "sidrec.recipes.tiger:build",
}


def register(name: str, target: str) -> None:
    RECIPES[name] = target


def get_builder(method: str) -> Callable[..., Any]:
    if method not in RECIPES:
        import difflib

        close = difflib.get_close_matches(method, list(RECIPES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SidrecError(f"unknown method '{method}' (known: {', '.join(sorted(RECIPES))}){hint}")
    mod, fn = RECIPES[method].split(":")
    return getattr(importlib.import_module(mod), fn)
