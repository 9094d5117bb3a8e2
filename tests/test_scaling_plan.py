"""benchmarks/scaling.py (issue 62): the job list, the skip / resume decisions, the chunk's budget gate and the
trend fit, on synthetic records and folders (seconds; nothing is trained)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scaling  # noqa: E402


@pytest.fixture
def study(tmp_path, monkeypatch):
    """The study's folders and results file in tmp_path."""
    import _common

    monkeypatch.setattr(scaling, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(scaling, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    return tmp_path


def _finish(run: Path, wall: float = 60.0) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"wall_s": wall}))


def _record(job: scaling.Job, n10: float, params: int, fused: bool = False, subset: str = "all",
            wall: float = 600.0) -> dict:
    return {"dataset": "beauty-2k", "method": job.method + ("+content" if fused else ""), "variant": job.variant,
            "split": "test", "subset": subset, "protocol": "exclude", "metrics": {"ndcg@10": n10}, "wall_s": wall,
            "seed": job.seed, "pair": job.pair, "arm": job.arm, "size": job.size, "params": params}


def test_every_pair_has_three_sizes_two_seeds_at_the_largest_and_bridges_after_their_static_run():
    all_jobs = scaling.jobs()
    assert len({j.id for j in all_jobs}) == len(all_jobs)
    for pair in ("acerec", "diger", "dream", "sasrec"):
        mine = [j for j in all_jobs if j.pair == pair]
        assert len({j.size for j in mine}) >= 3
        largest = scaling.SIZES[pair][-1][0]
        for arm in {j.arm for j in mine}:
            assert {j.seed for j in mine if j.arm == arm and j.size == largest} >= {42, 43}
    order = [j.id for j in all_jobs]
    for j in all_jobs:
        if j.base is not None:
            assert order.index(j.base.id) < order.index(j.id)
            assert j.run == scaling.RUNS / j.base.id / "dream" / "bridge"
    # each ratio names arms that exist and a subset the records have
    for specs in scaling.RATIOS.values():
        for method, baseline, subset in specs:
            assert method in scaling.ARMS and baseline in scaling.ARMS and subset in ("all", "cold")


def test_select_by_pattern_and_an_unknown_pattern_is_one_clear_error():
    picked = scaling.select(scaling.jobs(), ["*-s43"])
    assert picked and all(j.seed == 43 for j in picked)
    with pytest.raises(SystemExit, match="no job matches"):
        scaling.select(scaling.jobs(), ["nothing-*"])


def test_a_job_is_fresh_then_resumed_then_recorded_then_skipped(study):
    job = scaling.Job("acerec", "rpg", "d32", 42)  # the first of its seed: it fits the SIDs the others copy
    assert scaling.state(job, []) == "fresh"
    (job.run / "checkpoints").mkdir(parents=True)
    (job.run / "checkpoints" / "last.state.safetensors").write_bytes(b"x")
    assert scaling.state(job, []) == "resume"
    _finish(job.run)
    assert scaling.state(job, []) == "record"  # trained, not yet in scaling.json
    assert scaling.state(job, [_record(job, .05, 1000)]) == "done"
    other_seed = scaling.Job("acerec", "rpg", "d128", 43)
    assert scaling.state(other_seed, [_record(job, .05, 1000)]) == "fresh"


def test_a_bridge_waits_for_its_static_run(study):
    bridge = scaling.Job("dream", "cart", "L1", 42)
    assert scaling.state(bridge, []) == "waiting"
    _finish(scaling.RUNS / bridge.base.id)
    assert scaling.state(bridge, []) == "fresh"


def test_later_sizes_wait_for_and_copy_the_tokenizer_stage_their_seed_fits_once(study):
    first, later = scaling.Job("diger", "tiger", "L1", 42), scaling.Job("diger", "diger", "L4", 42)
    assert scaling.stage_source(later) is None
    assert scaling.stage_fitter(later) == first and scaling.stage_fitter(first) is None
    assert scaling.state(later, []) == "waiting" and scaling.state(first, []) == "fresh"
    first.run.mkdir(parents=True)
    for f in ("sid_table.parquet", "sid_table.source.json"):
        (first.run / f).write_text("x")
    assert scaling.stage_source(later) == first.run
    assert scaling.state(later, []) == "fresh"  # the stage exists while its fitter still trains
    assert scaling.stage_fitter(scaling.Job("sasrec", "sasrec", "d128", 43)) is None  # no SIDs to share
    assert scaling.stage_source(scaling.Job("diger", "diger", "L4", 43)) is None  # another seed fits its own
    assert scaling.first_of_group(first) and not scaling.first_of_group(later)


def test_two_chunks_never_take_the_same_job(study):
    job = scaling.Job("sasrec", "sasrec", "d32", 42)
    held = scaling.claim(job)
    assert held is not None
    with held:
        assert scaling.claim(job) is None  # another chunk skips it
        assert scaling.claim(scaling.Job("sasrec", "sasrec", "d64", 42)) is not None
    again = scaling.claim(job)
    assert again is not None
    with again:
        pass


def test_the_chunk_starts_jobs_while_their_estimates_fit_and_always_the_first():
    jobs = scaling.jobs()[:4]
    plan = scaling.plan_chunk([(jobs[0], 600.0), (jobs[1], 1200.0), (jobs[2], 2400.0), (jobs[3], 10.0)], 3600, 99)
    assert plan == jobs[:2]  # 600 + 1200 fit in 3600, + 2400 does not; the gate keeps the order
    assert scaling.plan_chunk([(jobs[0], 9000.0), (jobs[1], 10.0)], 3600, 99) == [jobs[0]]
    assert scaling.plan_chunk([(j, 1.0) for j in jobs], 3600, 2) == jobs[:2]
    assert scaling.plan_chunk([(jobs[0], None), (jobs[1], None)], 3600, 99) == [jobs[0]]


def test_run_skips_finished_jobs_and_stops_at_the_budget(study, monkeypatch, capsys):
    """The chunk starts children only for unfinished jobs, in order, and not one whose estimate exceeds the rest."""
    done, nxt = scaling.Job("sasrec", "sasrec", "d32", 42), scaling.Job("acerec", "rpg", "d32", 42)
    big = scaling.Job("diger", "tiger", "L1", 42)
    _finish(done.run)
    scaling.save(scaling.NAME, [_record(done, .05, 1000)])
    started: list[str] = []
    estimates = {nxt.id: 60.0, big.id: 10 * 3600.0}

    class FakeChild:
        def __init__(self, cmd, **_):
            started.append(cmd[cmd.index("job") + 1])

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(scaling.subprocess, "Popen", FakeChild)
    monkeypatch.setattr(scaling, "ensure_data", lambda: None)
    monkeypatch.setattr(scaling, "estimate_s", lambda job, records, first=True: estimates.get(job.id, 60.0))
    args = argparse.Namespace(only=[done.id, nxt.id, big.id], budget_min=30.0, max_jobs=99, hard_stop=True)
    scaling.cmd_run(args)
    assert started == [nxt.id]
    assert scaling.read_ledger()[nxt.id] >= 0.0
    assert f"stop: {big.id} needs" in capsys.readouterr().out


def test_estimates_come_from_calibration_then_from_finished_jobs(study):
    cal = [{"kind": "calibration", "pair": "sasrec", "arm": "sasrec", "size": s, "method": "sasrec", "variant": f"c{s}",
            "seed": None, "split": "-", "subset": "-", "wall_s": 1.0,
            "metrics": {"setup_s": 10.0, "stage_copied": 0.0, "epoch_s": e, "valid_s": 2.0, "eval_every": 1.0,
                        "final_s": 50.0}} for s, e in (("d32", 4.0), ("d128", 16.0))]
    job = scaling.Job("sasrec", "sasrec", "d32", 42)
    e = scaling.EPOCHS[("sasrec", "sasrec")]
    assert scaling.estimate_s(job, cal) == pytest.approx(scaling.OVERHEAD_S + e * 6.0 + 50.0 + 10.0)
    mid = scaling.estimate_s(scaling.Job("sasrec", "sasrec", "d64", 42), cal)  # geometric mean of its neighbours
    assert scaling.estimate_s(job, cal) < mid < scaling.estimate_s(scaling.Job("sasrec", "sasrec", "d128", 42), cal)
    assert scaling.estimate_s(job, cal + [_record(job, .05, 1000, wall=123.0)]) == 123.0


def test_the_trend_fit_recovers_a_known_slope_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    params = [2e5, 2e5, 6e5, 6e5, 2e6, 2e6]
    slope = 0.3  # ln(ratio) per decade of parameters
    pts = [(p, math.exp(-0.8 + slope * math.log10(p) + rng.normal(0, .01))) for p in params]
    tr = scaling.fit_trend(pts)
    assert tr.b == pytest.approx(slope, abs=0.03)
    assert tr.b_lo < slope < tr.b_hi
    assert tr.verdict == "grows with size"
    r, lo, hi = tr.at(math.log10(8e6))  # a projection within the measured span beyond the largest size
    assert lo < math.exp(-0.8 + slope * math.log10(8e6)) < hi and lo < r < hi
    assert tr.projection_supported(math.log10(8e6))[0]
    ok, why = tr.projection_supported(math.log10(2e9))
    assert not ok and "decades" in why
    flat = scaling.fit_trend([(p, math.exp(rng.normal(0, .05))) for p in params])
    assert flat.verdict.startswith("cannot tell")
    down = scaling.fit_trend([(p, math.exp(1.0 - 0.5 * math.log10(p))) for p in params[:3]] + [(2e6, 0.04)])
    assert down.b < 0
    three = scaling.fit_trend(pts[:3])
    assert not three.projection_supported(math.log10(2e6))[0]  # 3 points: 1 df, no projection claimed


def test_ratios_pair_method_and_baseline_runs_of_the_same_size_and_seed():
    recs = []
    for size, p in (("d32", 1e5), ("d64", 3e5), ("d128", 1e6)):
        for seed in ((42, 43) if size == "d128" else (42,)):
            full, rpg = scaling.Job("acerec", "full", size, seed), scaling.Job("acerec", "rpg", size, seed)
            recs += [_record(full, .02 * (1 + (size == "d128")), int(p)), _record(rpg, .04, int(p * .9)),
                     _record(full, .05, int(p), fused=True), _record(rpg, .05, int(p * .9), fused=True)]
    recs.append(_record(scaling.Job("acerec", "full", "d32", 44), .9, 1))  # no baseline for it: not a point
    pts = scaling.ratio_points(recs, ("acerec", "full"), ("acerec", "rpg"), "all", False)
    assert [(p["size"], p["seed"]) for p in pts] == [("d32", 42), ("d64", 42), ("d128", 42), ("d128", 43)]
    assert [round(p["ratio"], 3) for p in pts] == [.5, .5, 1.0, 1.0]
    assert pts[0]["params"] == 1e5  # the method's count by default, the x arm's when named
    x = scaling.ratio_points(recs, ("acerec", "full"), ("acerec", "rpg"), "all", False, ("acerec", "rpg"))
    assert x[0]["params"] == int(1e5 * .9)
    assert all(p["ratio"] == 1.0 for p in scaling.ratio_points(recs, ("acerec", "full"), ("acerec", "rpg"), "all", True))
    tr = scaling.fit_trend([(p["params"], p["ratio"]) for p in pts])
    assert tr.b > 0
