"""Trainer: exact resume, early stopping, and a tiny SASRec that must beat popularity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sidrec.config import load_config
from sidrec.errors import SidrecError
from sidrec.methods.sasrec.task import SASRecTask
from sidrec.models.losses import full_softmax_ce
from sidrec.pipeline import train

TINY = ["data.path=synthetic", "data.synthetic_users=400", "data.synthetic_items=120", "data.max_len=10",
        "sasrec.d_model=16", "sasrec.ffn_dim=32", "sasrec.n_layers=1", "train.batch_size=64",
        "train.lr=5e-3", "train.progress=false", "train.warmup_steps=5"]


def test_fused_softmax_ce_matches_pytorch():
    torch.manual_seed(0)
    h = torch.randn(130, 8, requires_grad=True)
    w = torch.randn(257, 8, requires_grad=True)
    t = torch.randint(0, 257, (130,))
    ref = F.cross_entropy(h @ w.t() * 0.7, t)
    g_ref = torch.autograd.grad(ref, [h, w])
    out = full_softmax_ce(h, w, t, scale=0.7)
    g = torch.autograd.grad(out, [h, w])
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g[0], g_ref[0], atol=1e-6) and torch.allclose(g[1], g_ref[1], atol=1e-6)


def _die_in_epoch_3(monkeypatch):
    """Make training raise as if killed when epoch 3 starts; returns the original batch method to restore."""
    original = SASRecTask.train_batches

    def dies_in_epoch_3(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch)

    monkeypatch.setattr(SASRecTask, "train_batches", dies_in_epoch_3)
    return original


def test_resume_gives_identical_metrics(tmp_path, monkeypatch):
    full = load_config(None, TINY + ["train.epochs=4", f"run_dir={tmp_path / 'full'}"])
    ref = train(full)

    cfg = load_config(None, TINY + ["train.epochs=4", f"run_dir={tmp_path / 'killed'}"])
    original = _die_in_epoch_3(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(SASRecTask, "train_batches", original)
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # two epochs finished before the kill
    resumed = train(load_config([tmp_path / "killed" / "config.yaml"]), resume=True)
    assert resumed["test"]["all"] == ref["test"]["all"]
    losses = [json.loads(x)["loss"] for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(x)["loss"] for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert losses == ref_losses


def test_a_run_selecting_both_protocols_resumes_to_the_same_two_selections(tmp_path, monkeypatch):
    """``eval.also_protocol``: the second selection (its best, best epoch, patience) is part of the resume state, so
    a run killed mid-way ends with the same keep-protocol folder as one that never stopped."""
    both = TINY + ["train.epochs=4", "eval.protocol=exclude", "eval.also_protocol=keep"]
    ref = train(load_config(None, both + [f"run_dir={tmp_path / 'full'}"]))
    original = _die_in_epoch_3(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, both + [f"run_dir={tmp_path / 'killed'}"]))
    monkeypatch.setattr(SASRecTask, "train_batches", original)
    resumed = train(load_config([tmp_path / "killed" / "config.yaml"]), resume=True)
    assert resumed["also"]["summary"]["best_epoch"] == ref["also"]["summary"]["best_epoch"]
    assert resumed["also"]["test"]["all"] == ref["also"]["test"]["all"]
    assert json.loads((tmp_path / "killed" / "keep" / "metrics.json").read_text())["protocol"] == "keep"
    # a state that selects a second protocol does not resume as a run that selects one
    with pytest.raises(SidrecError, match="also_protocol"):
        train(load_config([tmp_path / "killed" / "config.yaml"], ["eval.also_protocol=none"]), resume=True)


def test_same_seed_same_numbers_and_early_stopping(tmp_path):
    a = train(load_config(None, TINY + ["train.epochs=3", f"run_dir={tmp_path / 'a'}"]))
    b = train(load_config(None, TINY + ["train.epochs=3", f"run_dir={tmp_path / 'b'}"]))
    assert a["test"]["all"] == b["test"]["all"]
    # patience 1 with a learning rate of ~0 stops after two epochs without improvement
    c = train(load_config(None, TINY + ["train.epochs=20", "train.patience=1", "train.lr=1e-12",
                                        f"run_dir={tmp_path / 'c'}"]))
    assert c["summary"]["epochs"] < 20


def test_tiny_sasrec_beats_popularity(tmp_path):
    cfg = load_config(None, TINY + ["train.epochs=25", f"run_dir={tmp_path}"])
    res = train(cfg)
    ours, pop = res["test"]["all"]["ndcg@10"], res["popularity_test"]["all"]["ndcg@10"]
    assert ours > 2 * pop, (ours, pop)
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "config.yaml").exists()
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()


def timed_calls(monkeypatch, owner, name: str) -> list[float]:
    """Patch ``owner.name`` to record the seconds of each call on sidrec's clock (under ``fake_clock``: the
    seconds the test's slow steps and passes advanced it by); returns the list it appends to."""
    from sidrec import clock

    seconds: list[float] = []
    real = getattr(owner, name)

    def timed(*a, **k):
        t = clock.now()
        out = real(*a, **k)
        seconds.append(clock.now() - t)
        return out

    monkeypatch.setattr(owner, name, timed)
    return seconds


def test_max_minutes_bounds_the_whole_command_within_one_evaluation(tmp_path, monkeypatch, fake_clock):
    """``train.max_minutes`` is the whole ``train`` command's budget: set-up, training, the validation at the cap,
    the fusion choice and the test evaluation end within one evaluation of the cap, because the training steps
    stop early enough for what follows them (measured per user before training and at every validation).

    On a controlled clock (``fake_clock``): the set-up costs 5 s, a training step 0.1 s and a scoring batch
    0.15 s (evaluation as costly as training, as for a beam-search model); nothing else costs time, so the
    command's length is exact on any machine. Without counting the set-up, the run ends ~5 s late (more than one
    pass); without the reserve, a whole fusion choice and test late; without the cap, after 500 epochs."""
    from sidrec import fusion, pipeline

    original_loss, original_scores = SASRecTask.loss, SASRecTask.model_scores
    original_dataset = pipeline.dataset_from_config
    setup_s = 5.0

    def slow_dataset(cfg):  # the command's set-up (data, SIDs, model) counts against the cap
        fake_clock.advance(setup_s)
        return original_dataset(cfg)

    def slow_loss(self, model, batch):
        fake_clock.advance(0.1)
        return original_loss(self, model, batch)

    def slow_scores(self, model, hist):
        fake_clock.advance(0.15)
        return original_scores(self, model, hist)

    monkeypatch.setattr(pipeline, "dataset_from_config", slow_dataset)
    monkeypatch.setattr(SASRecTask, "loss", slow_loss)
    monkeypatch.setattr(SASRecTask, "model_scores", slow_scores)
    passes = timed_calls(monkeypatch, fusion, "evaluate_dense")
    cap_s = 25.0  # ~10 s of it for training, beside the set-up, the probe and the evaluation passes after it
    cfg = load_config(None, TINY + ["train.epochs=500", f"train.max_minutes={cap_s / 60}", "train.batch_size=8",
                                    "eval.batch_size=32", "train.eval_users=64", "features.kind=attributes",
                                    f"run_dir={tmp_path}"])
    t0 = fake_clock.now()
    res = train(cfg)
    wall = fake_clock.now() - t0
    one = max(passes)  # the longest single evaluation pass (a full validation or test split)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert res["summary"]["epochs"] < 500 and res["summary"]["best_epoch"] >= 1 and "fusion" in res and "test" in res
    assert cap_s - one <= wall <= cap_s + one, (wall, cap_s, one, passes)
    assert res["wall_s"] == wall  # the command's own record reads the same clock
    assert log[-1]["stopped"] == "max_minutes"


def test_padded_positions_counts_each_length_ordered_batch_at_its_longest_history():
    from sidrec.data.protocol import EvalSet

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, 103)
    es = EvalSet("valid", np.arange(103), [np.arange(n) for n in lengths], np.zeros(103, dtype=np.int64))
    order = es.length_order()
    for batch in (1, 7, 32, 103, 500):
        brute = sum(len(order[s:s + batch]) * max(lengths[order[s:s + batch]])
                    for s in range(0, 103, batch))
        assert es.padded_positions(batch) == brute


def test_pass_cost_fit_recovers_both_terms_and_never_predicts_below_its_sample():
    from sidrec.training.trainer import fit_pass_cost

    a, b = fit_pass_cost(128, 6400, 128 * 0.02 + 6400 * 0.001, 384, 128 * 0.02 + 384 * 0.001)
    assert a == pytest.approx(0.02) and b == pytest.approx(0.001)
    # noise that would make the per-user term negative: the random sample's time is still predicted in full
    a, b = fit_pass_cost(128, 6400, 5.0, 384, 0.1)
    assert a >= 0 and b >= 0 and a * 128 + b * 6400 >= 5.0 - 1e-9
    assert fit_pass_cost(10, 50, 1.0, 50, 0.5) == (0.1, 0.0)  # no padding difference: all per user


def test_max_minutes_predicts_evaluation_cost_from_padding_not_from_one_padded_sample(tmp_path, monkeypatch,
                                                                                     fake_clock):
    """An evaluation pass costs per padded history position (batches in length order, each padded to its
    longest history). The cap's probe before training must not read the cost per user of one random sample
    evaluated as a single batch (every user padded to the longest: here 3x the positions per user of the whole
    split, on Amazon 6x, which reserved a 10-minute cap's whole budget for DIGER): the prediction of each
    validation pass must match what it then takes. On a controlled clock (``fake_clock``) a scoring batch costs
    exactly 0.2 ms per padded position, so the ratios below are the model's alone (the per-user rule: ~0.4)."""
    from sidrec.training.trainer import Trainer

    original_scores = SASRecTask.model_scores

    def position_scores(self, model, hist):  # evaluation cost proportional to the padded positions
        fake_clock.advance(2e-4 * hist.numel())
        return original_scores(self, model, hist)

    speeds: list[float] = []
    original_validate = Trainer._validate

    def validate(self, record):
        out = original_validate(self, record)
        speeds.append(self.eval_speed)  # this pass's time over its prediction
        return out

    monkeypatch.setattr(SASRecTask, "model_scores", position_scores)
    monkeypatch.setattr(Trainer, "_validate", validate)
    cfg = load_config(None, TINY + ["data.max_len=50", "train.epochs=3", "train.max_minutes=5", "eval.batch_size=128",
                                    "features.kind=attributes", f"run_dir={tmp_path}"])
    train(cfg)
    assert len(speeds) == 3 and all(s == pytest.approx(1.0, abs=0.05) for s in speeds), speeds


def test_max_minutes_stops_within_one_step_and_keeps_an_evaluated_checkpoint(tmp_path, monkeypatch, fake_clock):
    """The wall-clock cap is checked at every step; the capped run is evaluated and checkpointed, and the
    learning-rate schedule was sized to the budget (it decays although train.epochs is far away).

    On a controlled clock (``fake_clock``): a training step costs 0.05 s and a scoring batch 0.13 s, nothing else
    costs time, so the step the cap ends is known exactly: the first one after which the time spent plus the
    evaluations reserved for after the steps passes the cap."""
    from sidrec.training.trainer import Trainer

    step_s = 0.05
    original_loss, original_scores = SASRecTask.loss, SASRecTask.model_scores

    def slow_loss(self, model, batch):
        fake_clock.advance(step_s)
        return original_loss(self, model, batch)

    def slow_scores(self, model, hist):
        fake_clock.advance(0.13)
        return original_scores(self, model, hist)

    checks: list[tuple[float, float]] = []  # (clock, seconds reserved) at each step's check of the cap
    original_reserve = Trainer._reserve_s

    def reserve(self):
        checks.append((fake_clock.now(), original_reserve(self)))
        return checks[-1][1]

    monkeypatch.setattr(SASRecTask, "loss", slow_loss)
    monkeypatch.setattr(SASRecTask, "model_scores", slow_scores)
    monkeypatch.setattr(Trainer, "_reserve_s", reserve)
    cap_s = 6.0
    cfg = load_config(None, TINY + ["train.epochs=500", f"train.max_minutes={cap_s / 60}", "train.batch_size=4",
                                    "features.kind=attributes", f"run_dir={tmp_path}"])  # no text encoder to load
    t0 = fake_clock.now()
    res = train(cfg)
    assert res["summary"]["epochs"] < 500
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["stopped"] == "max_minutes" and "valid_ndcg@10" in log[-1]  # evaluated at the cap
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()
    # an epoch is 100 steps (5 s): the cap ended the first one
    assert log[-1]["partial_epoch_batches"] == log[-1]["step"] == len(checks) < 100
    # checked at every step: each step but the last left the time spent + the reserve within the cap, the last
    # one passed it by less than one step
    used = [t - t0 + r for t, r in checks]
    assert all(u <= cap_s for u in used[:-1]) and cap_s < used[-1] <= cap_s + step_s, used[-3:]
    # the schedule's horizon was the budget (the steps that fit), not 500 epochs: it ends where the cap did
    assert log[-1]["schedule_total_steps"] <= log[-1]["step"] + 2, log
    # and the evaluations after the steps were reserved: the command, not only its training, ended by the cap
    assert fake_clock.now() - t0 <= cap_s


def test_resume_state_without_optimizer_is_one_line_error(tmp_path):
    from sidrec.errors import SidrecError
    from sidrec.training.state import STATE_FILE, load_state, save_state

    train(load_config(None, TINY + ["train.epochs=1", f"run_dir={tmp_path}"]))
    st = load_state(tmp_path / "checkpoints" / STATE_FILE)
    del st["optimizer"]
    save_state(tmp_path / "checkpoints" / STATE_FILE, st)
    with pytest.raises(SidrecError, match="incomplete resume state .no 'optimizer'"):
        train(load_config([tmp_path / "config.yaml"]), resume=True)


def test_selection_run_never_computes_test(tmp_path, monkeypatch):
    """eval.test=false: a model-selection run reads validation only (the evaluator is never asked for test)."""
    asked: list[str] = []
    original = SASRecTask.evaluate

    def spy(self, model, split, max_users=0):
        asked.append(split)
        return original(self, model, split, max_users)

    monkeypatch.setattr(SASRecTask, "evaluate", spy)
    res = train(load_config(None, TINY + ["train.epochs=1", "eval.test=false", f"run_dir={tmp_path}"]))
    assert "test" not in asked and "valid" in asked
    assert "test" not in res and "popularity_test" not in res and "valid" in res
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert "test" not in saved and "valid" in saved
    assert "wall_s" in saved and "dataset" in saved and (tmp_path / "report.md").exists()  # the rest of the run as usual


def test_diverged_weights_never_become_best(tmp_path, monkeypatch):
    """Weights that turn non-finite in an epoch's last step stop the run before that epoch is evaluated and
    kept as best.safetensors (it evaluated to NaN scores, which once ranked every target first)."""
    original = SASRecTask.loss

    def poisons_at_epoch_2(self, model, batch):
        loss = original(self, model, batch)
        per_epoch = self.__dict__.setdefault("_per_epoch", len(self.train_batches(0)))
        calls = self.__dict__.get("_calls", 0)
        if calls == 2 * per_epoch - 1:  # the last step of epoch 2: a finite loss, NaN gradients
            p = next(model.parameters())
            handle = p.register_hook(lambda g: torch.full_like(g, float("nan")))
            self._handle = handle
        self._calls = calls + 1
        return loss

    monkeypatch.setattr(SASRecTask, "loss", poisons_at_epoch_2)
    cfg = load_config(None, TINY + ["train.epochs=3", f"run_dir={tmp_path / 'r'}"])
    from sidrec.errors import SidrecError

    with pytest.raises(SidrecError, match="diverged at epoch 2"):
        train(cfg)
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "r" / "checkpoints" / "best.safetensors"))
    assert all(torch.isfinite(v).all() for v in best.values())
    assert len((tmp_path / "r" / "log.jsonl").read_text().splitlines()) == 1


def test_a_run_diverged_in_its_first_epoch_leaves_no_folder(tmp_path, monkeypatch):
    """Nothing to resume or evaluate: the folder the command created is removed (an existing one is kept)."""
    from sidrec.errors import SidrecError

    original = SASRecTask.loss

    def nan_loss(self, model, batch):
        return original(self, model, batch) * float("nan")

    monkeypatch.setattr(SASRecTask, "loss", nan_loss)
    with pytest.raises(SidrecError, match="diverged at epoch 1"):
        train(load_config(None, TINY + ["train.epochs=2", f"run_dir={tmp_path / 'new'}"]))
    assert not (tmp_path / "new").exists()


def test_infinite_numbers_are_refused():
    from sidrec.errors import SidrecError

    for ov in ("train.lr=inf", "train.weight_decay=.inf", "train.lr=nan"):
        with pytest.raises(SidrecError, match="finite number"):
            load_config(None, [ov])


def test_a_run_directory_in_use_is_refused_and_left_alone(tmp_path):
    """A second `sidrec train` into a folder another process is training in stops at once with one line
    (it used to run too: every epoch logged twice, one run's config beside the other's weights)."""
    import fcntl
    import os

    from sidrec.errors import SidrecError

    run = tmp_path / "r"
    train(load_config(None, TINY + ["train.epochs=1", f"run_dir={run}"]))
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    fd = os.open(run, os.O_RDONLY)  # what a running `sidrec train` holds
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        for extra in ([], ["--overwrite"]):
            cfg = load_config(None, TINY + ["train.epochs=2", f"run_dir={run}"])
            with pytest.raises(SidrecError, match="in use by another sidrec process"):
                train(cfg, overwrite=bool(extra))
        assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    finally:
        os.close(fd)
    train(load_config(None, TINY + ["train.epochs=2", f"run_dir={run}"]), overwrite=True)  # free again


def test_a_planted_log_symlink_is_never_written_through(tmp_path):
    """A re-run into a folder whose log.jsonl is a symlink to a file outside it replaces the link itself."""
    run = tmp_path / "r"
    cfg = load_config(None, TINY + ["train.epochs=1", f"run_dir={run}"])
    train(cfg)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(outside)
    train(load_config(None, TINY + ["train.epochs=1", f"run_dir={run}"]))
    assert outside.read_text() == "keep me\n"
    assert not (run / "log.jsonl").is_symlink() and len((run / "log.jsonl").read_text().splitlines()) == 1


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, monkeypatch):
    """ENOSPC while the second epoch's checkpoint is written: a SidrecError naming the file, no temporary
    file left, and the first epoch's checkpoint intact for --resume."""
    import errno

    import sidrec.training.trainer as T
    from sidrec.errors import SidrecError

    calls = {"n": 0}
    real = T.save_model

    def fills_the_disk(model, path):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote last + best; epoch 2's first write fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, path)

    monkeypatch.setattr(T, "save_model", fills_the_disk)
    run = tmp_path / "r"
    with pytest.raises(SidrecError, match="safetensors: cannot be written .No space left"):
        train(load_config(None, TINY + ["train.epochs=3", f"run_dir={run}"]))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(T, "save_model", real)
    res = train(load_config([run / "config.yaml"]), resume=True)
    assert res["summary"]["epochs"] == 3


def test_plateau_schedule_cuts_the_rate_after_flat_validations_and_resumes_with_the_cut(tmp_path, monkeypatch):
    """train.schedule=plateau (issue #27, item 7): the peak rate after the warm-up, halved after every
    plateau_patience validations without improvement, never below min_lr_ratio; a resumed run keeps its cuts."""
    flat = TINY + ["train.schedule=plateau", "train.plateau_patience=1", "train.lr=1e-9", "train.min_lr_ratio=0.2",
                   "train.epochs=5", "train.patience=10"]  # at ~0 rate validation never improves after epoch 1
    train(load_config(None, flat + [f"run_dir={tmp_path / 'full'}"]))
    rows = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    cuts = [r.get("lr_cut_to") for r in rows]
    assert cuts[0] is None and cuts[1:] == pytest.approx([5e-10, 2.5e-10, 2e-10, 2e-10], rel=1e-6)
    assert [r["lr"] for r in rows[2:]] == pytest.approx([5e-10, 2.5e-10, 2e-10], rel=1e-6)  # the next epoch's rate
    # killed after epoch 2 (one cut made), resumed: the same rates and losses as the uninterrupted run
    original = _die_in_epoch_3(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, flat + [f"run_dir={tmp_path / 'killed'}"]))
    monkeypatch.setattr(SASRecTask, "train_batches", original)
    train(load_config([tmp_path / "killed" / "config.yaml"]), resume=True)
    again = [json.loads(x) for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [(r["lr"], r["loss"], r.get("lr_cut_to")) for r in again] == [
        (r["lr"], r["loss"], r.get("lr_cut_to")) for r in rows]
