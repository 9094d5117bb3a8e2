"""DREAM: cold-start refinement of semantic IDs on top of a trained TIGER run (docs/dream.md).

Stage 1 (:mod:`sidrec.dream.cart`) proposes candidate SIDs, stage 2 (:mod:`sidrec.dream.uc3`) lets the frozen
backbone vote between them, stage 3 (:mod:`sidrec.dream.cpde`) keeps several weighted hypotheses per cold item
while LoRA adapters learn them; :mod:`sidrec.dream.pipeline` runs the stages and evaluates each one.
"""

from sidrec.dream.config import DREAMConfig

__all__ = ["DREAMConfig"]
