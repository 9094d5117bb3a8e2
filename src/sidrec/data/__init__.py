"""Datasets: format readers, the canonical :class:`Dataset`, leave-one-out protocol, synthetic default."""

from sidrec.data.dataset import Dataset
from sidrec.data.protocol import EvalSet, LeaveOneOut

__all__ = ["Dataset", "EvalSet", "LeaveOneOut"]
