"""Config sections of the method recipes, registered when :mod:`sidrec.recipes` is imported.

Why here and not in each recipe: ``load_config`` must accept ``tiger.*`` (and ``tokenizer.*``) keys as soon
as the pipeline is imported, before any recipe has been built. This module only imports the small config
dataclasses, not the recipes themselves.
"""

from __future__ import annotations

from sidrec.config import _EXTRA_SECTIONS, register_section
from sidrec.dream.config import DREAMConfig
from sidrec.models.acerec import ACERecConfig
from sidrec.models.diger import DIGERConfig
from sidrec.models.tiger import TIGERConfig
from sidrec.sid.config import TokenizerConfig

register_section("tiger", TIGERConfig)
register_section("acerec", ACERecConfig)
register_section("diger", DIGERConfig)
register_section("dream", DREAMConfig)
if "tokenizer" not in _EXTRA_SECTIONS:  # the tokenizer package may register its own section first
    register_section("tokenizer", TokenizerConfig)
