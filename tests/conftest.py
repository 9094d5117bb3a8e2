"""Shared fixtures. Real-data tests skip with a reason when ../shared/data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SIDREC_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """The suite's item vectors and precision timing in a cache of its own (``$SIDREC_CACHE``): a test never reads a
    vector cached by an earlier version of the code or by the user's runs, and never writes into the user's cache."""
    old = os.environ.get("SIDREC_CACHE")
    os.environ["SIDREC_CACHE"] = str(tmp_path_factory.mktemp("sidrec-cache"))
    yield
    if old is None:
        os.environ.pop("SIDREC_CACHE", None)
    else:
        os.environ["SIDREC_CACHE"] = old


def shared_data(name: str) -> Path:
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent")
    return p


@pytest.fixture(scope="session")
def tiny_synthetic():
    from sidrec.data.synthetic import generate

    return generate(n_users=400, n_items=120, seed=3, n_topics=8)


@pytest.fixture
def one_thread():
    """Tiny ops run faster on one intra-op thread, and far faster on a loaded machine (no spinning workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FakeClock:
    """A clock that moves only when the test moves it (:meth:`advance`), for everything that reads
    :func:`sidrec.clock.now` (the ``train.max_minutes`` budget: the command's start, the steps, the probe, the
    validations). A monkeypatched training step or evaluation advances it by the seconds it stands for instead of
    sleeping, so a wall-clock test gets the same numbers on an idle laptop and on a loaded CI runner, and the
    real work in between costs no budget at all.

    It starts far from the real clock (1000 s): code that mixed it with ``time.time()`` would read a gap of
    decades and fail loudly instead of drifting by a few seconds."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock never goes back ({seconds} s)")
        self.t += seconds


@pytest.fixture
def fake_clock():
    """:class:`FakeClock` installed as sidrec's clock for the test (the real clock is back after it)."""
    from sidrec import clock

    fake = FakeClock()
    with clock.using(fake):
        yield fake
