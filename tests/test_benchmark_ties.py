"""The benchmarks refuse model rows whose top-10 lists are ordered by the evaluator's tie-break."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import check_ties  # noqa: E402


def _rec(method: str, tied: float) -> dict:
    return {"dataset": "toys", "method": method, "variant": "v", "split": "test", "subset": "all",
            "metrics": {"ndcg@10": 0.01, "tied@10": tied}}


def test_rows_above_one_percent_fail_and_are_named():
    check_ties([_rec("tiger", 0.009), _rec("popularity", 0.5), {**_rec("sasrec", 0.0), "metrics": {}}])
    with pytest.raises(SystemExit, match=r"toys acerec \[v\] test/all: tied@10 0\.750"):
        check_ties([_rec("tiger", 0.0), _rec("acerec", 0.75)])
