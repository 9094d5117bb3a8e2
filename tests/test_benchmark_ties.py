"""The benchmarks refuse model rows ordered by the evaluator's tie-break, and label reused runs with their origin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import check_ties  # noqa: E402


def _rec(method: str, tied: float) -> dict:
    return {"dataset": "toys", "method": method, "variant": "v", "split": "test", "subset": "all",
            "protocol": "exclude", "metrics": {"ndcg@10": 0.01, "tied@10": tied}}


def test_a_ranking_row_without_its_protocol_is_refused(tmp_path, monkeypatch):
    """Issue 56: no record of a method's ranking is saved without saying how history items were ranked."""
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    bare = {k: v for k, v in _rec("sasrec", 0.0).items() if k != "protocol"}
    with pytest.raises(SystemExit, match=r"(?s)without a protocol.*toys sasrec \[v\]"):
        _common.save("sasrec", [bare])
    assert not (tmp_path / "sasrec.json").exists()
    _common.save("sasrec", [{**bare, "protocol": "keep"}, _rec("sasrec", 0.0)])  # both protocols, two rows
    assert len(__import__("json").loads((tmp_path / "sasrec.json").read_text())) == 2


def test_rows_above_one_percent_fail_and_are_named():
    check_ties([_rec("tiger", 0.009), _rec("popularity", 0.5), {**_rec("sasrec", 0.0), "metrics": {}}])
    with pytest.raises(SystemExit, match=r"toys acerec \[v\] test/all: tied@10 0\.750"):
        check_ties([_rec("tiger", 0.0), _rec("acerec", 0.75)])


def test_reused_runs_keep_the_machine_and_date_they_were_measured_on(tmp_path, monkeypatch):
    import json

    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    earlier = {**_rec("diger", 0.0), "machine": "AVX2 box", "command": "python x.py", "date": "2026-01-01"}
    (tmp_path / "diger.json").write_text(json.dumps([earlier]))
    now = {**_rec("diger", 0.0), "machine": "AVX512 box", "command": "python x.py --reuse", "date": "2026-12-03"}
    new = {**_rec("diger", 0.0), "variant": "w", "machine": "AVX512 box", "command": "c", "date": "2026-12-03"}
    _common.save("diger", [now, new], reused=True)
    out = {r["variant"]: r for r in json.loads((tmp_path / "diger.json").read_text())}
    out = [out["v"], out["w"]]
    assert (out[0]["machine"], out[0]["date"], out[0]["command"]) == ("AVX2 box", "2026-01-01", "python x.py")
    assert (out[1]["machine"], out[1]["date"]) == ("AVX512 box", "2026-12-03")  # never recorded: today's
