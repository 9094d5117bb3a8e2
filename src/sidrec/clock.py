"""The one time source of the wall-clock budget (``train.max_minutes``).

Why: what the budget does -- stop within one step of the cap, reserve the evaluations that follow the training
steps, fit their cost on a probe before training, rescale it by what each validation really took -- is a function
of the seconds it reads. Every such read goes through :func:`now`, so a test can drive them with a clock it
advances itself (``fake_clock`` in ``tests/conftest.py``: a slow training step is ``clock.advance(0.05)``, not a
real sleep), and the suite checks that behaviour exactly, whatever the machine's speed or load. Outside tests the
source is ``time.time``, as it always was; the real-time behaviour is measured by ``benchmarks/cap_probe.py``.

Only the budget's machinery reads this clock (the trainer and the ``train`` command's start, see
:mod:`sidrec.pipeline`); timings that are only reported (the SID stage's ``fit_s``, DREAM's stage timings, the
progress bars' elapsed columns) keep reading real time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

_source: Callable[[], float] = time.time


def now() -> float:
    """Seconds from the current source: ``time.time()`` unless a test replaced it (:func:`using`)."""
    return _source()


@contextlib.contextmanager
def using(source: Callable[[], float]) -> Iterator[None]:
    """Read ``source`` instead of the real clock inside the block (tests: a clock the test advances itself);
    the previous source is back when the block ends, also on an exception."""
    global _source
    previous = _source
    _source = source
    try:
        yield
    finally:
        _source = previous
