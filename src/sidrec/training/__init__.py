"""One trainer for every model (see :mod:`sidrec.training.trainer`)."""

from sidrec.training.task import Task
from sidrec.training.trainer import Trainer

__all__ = ["Task", "Trainer"]
