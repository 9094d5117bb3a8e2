"""One trainer for every model (see :mod:`sidrec.training.trainer`)."""

from sidrec.training.trainer import Task, Trainer

__all__ = ["Task", "Trainer"]
