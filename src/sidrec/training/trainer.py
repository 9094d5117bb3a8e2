"""The shared trainer: AdamW, warm-up + cosine, clipping, bf16 autocast, early stopping, checkpoints,
exact resume, progress bars, ``log.jsonl``, optional TensorBoard, and DDP under ``torchrun``.

A model plugs in through a :class:`Task`: it produces the epoch's batches (deterministically from the
epoch number), computes the loss of one batch by calling the model's ``forward`` (so DDP can hook the
gradients), and evaluates a split with the model's *real* inference procedure (beam search, holistic
scoring, full softmax...). Early stopping watches a validation metric (``train.select_metric``, NDCG@10 by
default); the best checkpoint is the one tested.

Exact resume: batch order depends only on (seed, epoch); the torch RNG state (dropout) is saved with each
end-of-epoch checkpoint together with optimizer and scheduler state, so a run killed mid-way and resumed
with ``--resume`` produces the same numbers as one that never stopped.

Every second the wall-clock budget (``train.max_minutes``) reads -- the steps' time, the probe, the validations --
comes from :func:`sidrec.clock.now` (``time.time`` in production), so the tests drive the budget with a clock they
advance themselves and check it exactly on any machine.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

import sidrec.training.distributed as D
from sidrec import clock, precision
from sidrec.config import TrainConfig
from sidrec.device import tf32, to_device
from sidrec.errors import SidrecError
from sidrec.eval.evaluator import protocol_of
from sidrec.io import append_line, atomic_path, write_text
from sidrec.progress import make_progress
from sidrec.training.state import LEGACY_STATE_FILE, STATE_FILE, load_state, require, save_state
from sidrec.training.task import Task

Metrics = dict[str, dict[str, Any]]
SYNC_EVERY = 50  # training steps between reads of the running loss (a host sync on a GPU)


def nonfinite_parameters(model: nn.Module) -> str:
    """'' when every weight is finite, else a short description (how many tensors, the first name).

    Why: a diverged model evaluates to NaN scores; it must never become ``best.safetensors``.
    """
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    return f"{len(bad)} weight tensors hold NaN or inf, first '{bad[0]}'" if bad else ""


def fit_pass_cost(users: int, positions_a: int, seconds_a: float, positions_b: int, seconds_b: float
                  ) -> tuple[float, float]:
    """Seconds per user and per padded history position of an evaluation procedure, from two samples of the same
    ``users`` with different padding (a random one, and the shortest histories). Never below what sample a took:
    noise that makes one term negative moves its share to the other."""
    users = max(1, users)
    if positions_a <= positions_b:  # no padding difference to read: everything per user
        return seconds_a / users, 0.0
    per_pos = max(0.0, (seconds_a - seconds_b) / (positions_a - positions_b))
    per_user = max(0.0, (seconds_b - per_pos * positions_b) / users)
    if per_user * users + per_pos * positions_a < seconds_a:
        per_pos = (seconds_a - per_user * users) / positions_a
    return per_user, per_pos


def probe_pass_costs(task: Task, users: int = 128) -> list[tuple[float, float]]:
    """The cost of the evaluations a capped command ends with, fitted on validation users before training: a
    validation pass, the choice of lambda and lambda_cold (a beam model also scores the content candidates: ~4
    beam passes on TIGER) and the fused test, as (seconds per user, seconds per padded history position) each.

    Why two terms: batches in length order are padded to their longest history, and Amazon histories are mostly
    short. One random sample evaluated as one batch pads every user to the longest history (6x the positions per
    user of a whole split); its cost per user (DIGER, 2,000 items: 98 ms against 36 ms on the 2,000-user
    validation) reserved a 10-minute cap's whole budget. So each procedure is timed on ``users`` random users and
    on the ``users`` with the shortest histories, and :func:`fit_pass_cost` reads the two terms from both. Without
    content fusion the final evaluation is a validation pass on each split."""
    from sidrec.fusion import Fusion, has_grounding
    from sidrec.fusion import choose as choose_fusion
    from sidrec.fusion import evaluate as evaluate_fused

    model = task.model
    grounded = has_grounding(task)
    # one-time costs out of the timings: a model's per-weights tables (ACERec's merged catalogue) are built on its
    # first pass, the content index on the first fused one
    task.evaluate(model, "valid", 8)
    if grounded:
        evaluate_fused(task, model, "valid", [Fusion(1.0, 1.0)], max_users=8)
    samples = []
    for shortest in (False, True):
        t0 = clock.now()
        task.evaluate(model, "valid", users, shortest)
        seconds = [clock.now() - t0]
        if grounded:
            t0 = clock.now()
            choose_fusion(task, model, max_users=users, shortest=shortest)
            t1 = clock.now()
            evaluate_fused(task, model, "valid", [Fusion(), Fusion(1.0, 1.0)], max_users=users, shortest=shortest)
            seconds += [t1 - t0, clock.now() - t1]
        es = task.eval_subset("valid", users, shortest).eval_set
        samples.append((len(es), es.padded_positions(task.eval_batch), seconds))
    (n, p_a, t_a), (_, p_b, t_b) = samples
    cost = [fit_pass_cost(n, p_a, ta, p_b, tb) for ta, tb in zip(t_a, t_b, strict=True)]
    return cost if grounded else cost * 3


def predict_pass_s(task: Task, cost: tuple[float, float], es: Any) -> float:
    """Predicted seconds of one evaluation procedure of ``cost`` (:func:`probe_pass_costs`) on eval set ``es``."""
    per_user, per_position = cost
    return per_user * len(es) + per_position * es.padded_positions(task.eval_batch)


def lr_lambda(warmup: int, total: int, min_ratio: float, cosine: bool = True) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to ``min_ratio`` of the peak learning rate (``cosine``), or the peak rate
    after the warm-up (the plateau schedule, whose cuts the trainer multiplies in)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if not cosine:
            return 1.0
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _restore_groups(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Check saved optimizer groups against the run's own and give JSON-decoded values back their types
    (``betas`` is a tuple in the optimizer, a list after JSON)."""
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise ValueError("optimizer state has no param_groups/state")
    if len(groups) != len(current["param_groups"]):
        raise ValueError(f"{len(groups)} parameter groups saved, the run has {len(current['param_groups'])}")
    for g, cur in zip(groups, current["param_groups"], strict=True):
        if not isinstance(g, dict) or list(g.get("params", [])) != list(cur["params"]):
            raise ValueError("parameter groups differ from the run's")
        for k, v in cur.items():
            if isinstance(v, tuple) and isinstance(g.get(k), list):
                g[k] = tuple(g[k])


class Trainer:
    def __init__(self, task: Task, cfg: TrainConfig, run_dir: str | Path, seed: int = 0,
                 select_metric: str = "ndcg@10", also_protocol: str = "none") -> None:
        self.task = task
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.seed = seed
        self.select_metric = select_metric
        self.device = task.device  # placed once by the pipeline (Task.to, from train.device)
        self.distributed = D.init(self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        groups = task.param_groups(cfg.weight_decay, cfg.lr)  # parts that learn at different rates (DIGER)
        if groups is None:
            params = [p for p in task.model.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr)
        n0 = max(1, len(task.train_batches(0)) // D.world_size())
        self.total_steps = max(1, n0 * cfg.epochs)
        self.lr_scale = 1.0  # schedule plateau: the product of the cuts so far
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.model: nn.Module = task.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(task.model, device_ids=ids)
        if cfg.compile:  # the forward the loss calls is compiled; weights and checkpoints stay task.model's
            self.model = torch.compile(self.model, dynamic=True)
        self.epoch = 0
        self.batch = 0  # batches of the current epoch already trained (> 0 only after a wall-clock stop)
        self.step = 0
        self.elapsed_s = 0.0  # wall-clock seconds trained so far (carried across --resume)
        self.capped = False  # the run ended at train.max_minutes
        self.budget_sized = False  # the schedule's horizon was fitted to train.max_minutes
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        # eval.also_protocol: the other protocol's own early stopping from the same training (its best checkpoint is
        # checkpoints/best.<protocol>.safetensors); each selection freezes when its own patience is spent, so each
        # equals what a run of its protocol alone would have chosen
        self.shadow: dict[str, Any] | None = None
        if also_protocol != "none":
            self.shadow = {"protocol": also_protocol, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0}
        self.tb = None
        # train.max_minutes bounds the whole command: the pipeline sets when the command began (its set-up counts),
        # and the training steps stop early enough for the evaluations that follow them (see _reserve_s)
        self.started: float | None = None
        self.test = True  # the command evaluates test after training (eval.test); the pipeline sets it
        # the cost of the evaluations after the training steps, per procedure (validation pass, fusion choice,
        # test) as seconds per user and per padded history position, fitted by the probe before training; the
        # latest validation's measured / predicted time scales them (a machine that slows down mid-run)
        self.eval_cost: list[tuple[float, float]] = []
        self.eval_speed = 1.0

    def _lr_factor(self, step: int) -> float:
        # reads self.total_steps at every call, so sizing the schedule to the budget takes effect at once
        cosine = self.cfg.schedule == "cosine"
        return lr_lambda(self.cfg.warmup_steps, self.total_steps, self.cfg.min_lr_ratio, cosine)(step) * self.lr_scale

    def _size_schedule_to_budget(self, spent_s: float, steps_done: int, left_s: float, steps_per_epoch: int) -> None:
        """Fit the cosine horizon to the steps that ``train.max_minutes`` allows, re-estimated at every step.

        Why: with a cap and ``epochs: 200`` the learning rate would still be near its peak when the cap ends
        the run, and a model that never anneals loses much of its quality. The time per step so far (training
        and the evaluations between epochs, so their cost is amortised) gives how many more steps fit in what
        is left of the budget; the horizon becomes the steps done plus those, at most ``train.epochs`` epochs.
        Re-estimating keeps the schedule ending at the cap when the machine slows down or speeds up mid-run;
        the first few steps are not trusted. The horizon is saved with the state, so a resumed run continues
        from it; like the cap itself, it depends on the machine's speed. Steps that read no time at all (a
        coarse clock, or a test's clock that only evaluations advance) give no estimate yet.
        """
        if steps_done < 3 or spent_s <= 0:
            return
        more = int(max(0.0, left_s) / (spent_s / steps_done))
        self.total_steps = max(1, min(self.cfg.epochs * steps_per_epoch, self.step + more))
        self.budget_sized = True

    # ------------------------------------------------------------------ checkpoints
    def _save_state(self) -> None:
        """End-of-epoch state for exact resume: weights as safetensors, the rest as safetensors + JSON (no pickle,
        so a run directory from someone else cannot run code on ``--resume``). On a GPU the CUDA RNG of every
        rank is kept (row r for rank r), so dropout continues as it would have on each."""
        cuda_rng = D.gather_cuda_rng(self.device)  # a collective: every rank takes part
        if not D.is_main():
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.ckpt_dir / "last.safetensors") as tmp:
            save_model(self.task.model, str(tmp))
        state = {
            "epoch": self.epoch, "step": self.step, "best": float(self.best), "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "batch": self.batch, "total_steps": self.total_steps,
            "elapsed_s": float(self.elapsed_s), "capped": self.capped, "budget_sized": self.budget_sized,
            "lr_scale": float(self.lr_scale), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
        }
        if self.shadow is not None:
            state["shadow"] = {**self.shadow, "best": float(self.shadow["best"])}
        if cuda_rng is not None:
            state["cuda_rng"] = cuda_rng
        save_state(self.ckpt_dir / STATE_FILE, state)

    def _save_best(self, protocol: str | None = None) -> None:
        """The best weights so far: ``best.safetensors`` for the run's protocol, ``best.<protocol>.safetensors`` for
        ``eval.also_protocol``'s selection."""
        if D.is_main():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.ckpt_dir / self.best_file(protocol)) as tmp:
                save_model(self.task.model, str(tmp))

    @staticmethod
    def best_file(protocol: str | None = None) -> str:
        return "best.safetensors" if protocol is None else f"best.{protocol}.safetensors"

    def resume(self) -> bool:
        """Restore the last end-of-epoch checkpoint; returns False when there is none.

        Every field is checked before any of it is applied, so a truncated, foreign or incomplete state is a
        one-line error and leaves the trainer untouched.
        """
        st_path = self.ckpt_dir / STATE_FILE
        if not st_path.exists():
            legacy = self.ckpt_dir / LEGACY_STATE_FILE
            if legacy.exists():
                raise SidrecError(f"{legacy}: refused: a pickled resume state from the first sidrec release is never "
                                  "loaded (unpickling can run code); delete it and retrain, or resume from a newer run")
            return False
        st = load_state(st_path)
        epoch = require(st, st_path, "epoch", int)
        step = require(st, st_path, "step", int)
        best = float(require(st, st_path, "best", (int, float)))
        best_epoch = require(st, st_path, "best_epoch", int)
        bad_epochs = require(st, st_path, "bad_epochs", int)
        # wall-clock budget fields (absent in states written before the cap was checked per step)
        batch = int(st.get("batch", 0))
        total_steps = int(st.get("total_steps", self.total_steps))
        elapsed_s = float(st.get("elapsed_s", 0.0))
        budget_sized, capped = bool(st.get("budget_sized", False)), bool(st.get("capped", False))
        lr_scale = float(st.get("lr_scale", 1.0))  # absent in states written before the plateau schedule
        shadow = self._shadow_from(st.get("shadow"), st_path)
        if batch < 0 or total_steps < 1 or elapsed_s < 0 or not 0 < lr_scale <= 1:
            raise SidrecError(f"{st_path}: inconsistent resume state (batch {batch}, total_steps {total_steps})")
        opt_state = require(st, st_path, "optimizer", dict)
        sched_state = require(st, st_path, "scheduler", dict)
        torch_rng = require(st, st_path, "torch_rng", torch.Tensor)
        numpy_rng = require(st, st_path, "numpy_rng", tuple)
        if min(epoch, step, bad_epochs) < 0 or best_epoch < -1 or epoch > self.cfg.epochs:
            raise SidrecError(f"{st_path}: inconsistent resume state (epoch {epoch}, step {step}, "
                              f"bad_epochs {bad_epochs}; this run has {self.cfg.epochs} epochs)")
        if torch_rng.dtype != torch.uint8 or torch_rng.shape != torch.get_rng_state().shape:
            raise SidrecError(f"{st_path}: resume state field 'torch_rng' is not a torch RNG state")
        weights = self.ckpt_dir / "last.safetensors"
        if not weights.exists():
            raise SidrecError(f"{weights}: missing (the resume state has no weights beside it)")
        from safetensors import SafetensorError

        snapshot = ({k: v.clone() for k, v in self.task.model.state_dict().items()},
                    self.opt.state_dict(), self.sched.state_dict(), torch.get_rng_state(), np.random.get_state())
        try:
            load_model(self.task.model, str(weights))
            _restore_groups(opt_state, self.opt.state_dict())
            self.opt.load_state_dict(opt_state)
            self.sched.load_state_dict(sched_state)
            torch.set_rng_state(torch_rng)
            np.random.set_state(numpy_rng)
            D.set_cuda_rng(st.get("cuda_rng"), self.device)
        except (SafetensorError, RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.task.model.load_state_dict(snapshot[0])
            self.opt.load_state_dict(snapshot[1])
            self.sched.load_state_dict(snapshot[2])
            torch.set_rng_state(snapshot[3])
            np.random.set_state(snapshot[4])
            raise SidrecError(f"{st_path}: resume state does not fit this run's model and optimizer "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        self.epoch, self.step = epoch, step
        self.best, self.best_epoch, self.bad_epochs = best, best_epoch, bad_epochs
        self.batch, self.total_steps, self.budget_sized = batch, total_steps, budget_sized
        self.lr_scale = lr_scale
        self.shadow = shadow
        # a run that ended at its cap continues when resumed (the user asked for more): the cap restarts
        self.capped = False
        self.elapsed_s = 0.0 if capped else elapsed_s
        log = self.run_dir / "log.jsonl"
        if log.exists() and D.is_main():  # drop entries written after the checkpoint we resume from
            keep = []
            for ln in log.read_text().splitlines():
                try:
                    if ln and json.loads(ln).get("epoch", 0) <= self.epoch:
                        keep.append(ln)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut by the kill that stopped the run
            with atomic_path(log) as tmp:
                tmp.write_text("".join(k + "\n" for k in keep))
        return True

    def _shadow_from(self, saved: Any, st_path: Path) -> dict[str, Any] | None:
        """The other protocol's selection from a resume state, checked against the run's ``eval.also_protocol``."""
        if self.shadow is None:
            if saved is not None:
                raise SidrecError(f"{st_path}: the state selects a second protocol ('{saved.get('protocol')}'), this "
                                  "run does not (eval.also_protocol: none); resume with the same settings")
            return None
        if not isinstance(saved, dict) or saved.get("protocol") != self.shadow["protocol"]:
            raise SidrecError(f"{st_path}: the state has no selection for eval.also_protocol "
                              f"'{self.shadow['protocol']}'; resume with the settings the run was trained with")
        try:
            out = {"protocol": saved["protocol"], "best": float(saved["best"]), "best_epoch": int(saved["best_epoch"]),
                   "bad_epochs": int(saved["bad_epochs"])}
        except (KeyError, TypeError, ValueError) as exc:
            raise SidrecError(f"{st_path}: resume state field 'shadow' is damaged ({exc})") from None
        return out

    def _spent(self) -> bool:
        """Whether every selection (the run's protocol, and ``eval.also_protocol``'s) has spent its patience."""
        p = self.cfg.patience
        return self.bad_epochs >= p and (self.shadow is None or self.shadow["bad_epochs"] >= p)

    def _log(self, record: dict[str, Any]) -> None:
        if not D.is_main():
            return
        append_line(self.run_dir / "log.jsonl", json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, record.get("epoch", 0))

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until the epoch budget, early stopping or the wall-clock budget; returns a summary."""
        cfg = self.cfg
        self._open(resume)
        start = clock.now() - self.elapsed_s  # a resumed run continues its wall-clock budget
        if self.started is not None:  # this command's set-up (data, SIDs, model) counts against the cap too
            start -= max(0.0, clock.now() - self.started)
        if cfg.max_minutes > 0 and D.is_main():
            self._probe_evaluation()
        stop = self._spent() or self.capped
        session = (clock.now(), self.step)  # speed is measured on this process's own steps
        with make_progress(cfg.progress and D.is_main()) as prog:
            ep_task = prog.add_task("epochs", total=cfg.epochs, completed=self.epoch, info="")
            while self.epoch < cfg.epochs and not stop:
                t0 = clock.now()
                loss, parts, n_batches, capped = self._train_epoch(prog, start, session)
                finished = self.batch >= n_batches
                if finished:
                    self.epoch, self.batch = self.epoch + 1, 0
                record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "loss": loss,
                                          "lr": self.sched.get_last_lr()[0], "epoch_s": clock.now() - t0}
                record.update({f"loss_{name}": v for name, v in parts.items()})
                if not finished:
                    record["partial_epoch_batches"] = self.batch
                # evaluate on schedule, at the last epoch, and always when the budget ends the run, so nothing
                # trained is thrown away
                if (finished and self.epoch % cfg.eval_every == 0) or self.epoch == cfg.epochs or capped:
                    stop = self._validate(record)
                if capped:
                    stop = self.capped = True
                    record["stopped"] = "max_minutes"
                if cfg.max_minutes > 0:
                    record["schedule_total_steps"] = self.total_steps
                self.elapsed_s = clock.now() - start
                self._log(record)
                self._epoch_line(record)
                self._save_state()
                D.barrier()
                prog.update(ep_task, completed=self.epoch,
                            info=f"loss {record['loss']:.4f} best {self.select_metric} {self.best:.4f}")
        if self.tb is not None:
            self.tb.close()
        out = {"epochs": self.epoch, "best_epoch": self.best_epoch, "best_valid": self.best,
               "train_s": clock.now() - start}
        if self.shadow is not None:
            out["also"] = {"protocol": self.shadow["protocol"], "best_epoch": self.shadow["best_epoch"],
                           "best_valid": self.shadow["best"]}
        return out

    def _open(self, resume: bool) -> None:
        """Restore the last checkpoint (``resume``) or start a fresh log; open TensorBoard when asked."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.resume():
                raise SidrecError(f"{self.ckpt_dir}: nothing to resume (no last checkpoint)")
        elif D.is_main():
            write_text(self.run_dir / "log.jsonl", "")  # replaces a symlink planted there, never its target
        if self.cfg.tensorboard and D.is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SidrecError("train.tensorboard=true needs the 'tensorboard' package") from None
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _train_epoch(self, prog: Any, start: float, session: tuple[float, int]
                     ) -> tuple[float, dict[str, float], int, bool]:
        """The current epoch's remaining batches (a resumed run continues mid-epoch); returns the mean loss,
        the model's loss parts (epoch means), the epoch's number of batches, and whether the wall-clock budget
        stopped it (checked at every step: the run ends within one step of the cap)."""
        cfg = self.cfg
        budget_s = cfg.max_minutes * 60
        batches = self.task.train_batches(self.epoch)
        if self.distributed:
            per = len(batches) // D.world_size()
            batches = batches[D.rank()::D.world_size()][:per]
        self.model.train()
        b_task = prog.add_task(f"epoch {self.epoch + 1}", total=len(batches), completed=self.batch, info="")
        # the loss and its parts are summed on the device and read back every SYNC_EVERY steps (and at the end),
        # so a GPU step never waits for the host; a NaN loss is caught at the next read
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        parts_t: dict[str, torch.Tensor] = {}  # a model's unweighted loss terms (``loss_parts``)
        n = 0
        capped = False
        first = self.batch
        with tf32(self.device):
            for i, batch in enumerate(batches[self.batch:]):
                batch = to_device(batch, self.device)
                with precision.autocast(cfg.bf16, self.device):
                    loss = self.task.loss(self.model, batch)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.task.model.parameters(), cfg.grad_clip)
                self.opt.step()
                self.sched.step()
                self.step += 1
                self.batch += 1
                total += loss.detach().double()
                n += 1
                for name, v in (getattr(self.task.model, "loss_parts", None) or {}).items():
                    v = torch.as_tensor(v).detach().double()
                    parts_t[name] = parts_t[name] + v.to(parts_t[name].device) if name in parts_t else v
                if n % SYNC_EVERY == 0 or n == 1 or first + i + 1 == len(batches):
                    prog.update(b_task, completed=self.batch, info=f"loss {self._finite_mean(total, n):.4f}")
                if budget_s > 0:
                    now = clock.now()
                    left = budget_s - (now - start) - self._reserve_s()
                    if left < 0:
                        capped = bool(D.broadcast_flags(1.0)[0])
                        break
                    self._size_schedule_to_budget(now - session[0], self.step - session[1], left, len(batches))
        mean = self._finite_mean(total, n)
        parts = {k: float(v) / max(1, n) for k, v in parts_t.items()}
        prog.remove_task(b_task)
        bad = nonfinite_parameters(self.task.model)
        if bad:  # the last step of the epoch can diverge without a NaN loss being seen
            raise SidrecError(f"training diverged at epoch {self.epoch + 1} ({bad}); the checkpoints keep "
                              "the last finite epoch; lower train.lr or set train.bf16=false")
        return mean, parts, len(batches), capped

    def _finite_mean(self, total: torch.Tensor, n: int) -> float:
        """The running mean loss read back from the device; a NaN or infinite one stops the run in one line."""
        mean = float(total) / max(1, n)
        if n and not math.isfinite(mean):
            raise SidrecError(f"training diverged at epoch {self.epoch + 1} (loss={mean}); "
                              "lower train.lr or set train.bf16=false")
        return mean

    def _probe_evaluation(self, users: int = 128) -> None:
        """The evaluations after the training steps, timed before them (:func:`probe_pass_costs`), so the cap
        reserves them from the first step on."""
        if not self.eval_cost:
            self.eval_cost = probe_pass_costs(self.task, users)
            self.task.model.train()

    def _predicted_s(self) -> tuple[float, float]:
        """(the validation pass at ``eval_users``, every pass after the training steps), predicted once per run."""
        if "_predicted" not in self.__dict__:
            valid_pass = predict_pass_s(self.task, self.eval_cost[0],
                                        self.task.eval_subset("valid", self.cfg.eval_users).eval_set)
            after = valid_pass + predict_pass_s(self.task, self.eval_cost[1], self.task.evaluator("valid").eval_set)
            if self.test:
                after += predict_pass_s(self.task, self.eval_cost[2], self.task.evaluator("test").eval_set)
            self._predicted = (valid_pass, after)
        return self._predicted

    def _reserve_s(self) -> float:
        """Seconds the command still needs after the training steps: the validation at the cap (``eval_users``)
        and the final evaluation (the fusion choice on all validation users and the test split once, when
        grounded) at the probe's costs (:meth:`_probe_evaluation`), scaled by the latest validation's speed."""
        if self.cfg.max_minutes <= 0 or not self.eval_cost:
            return 0.0
        return self.eval_speed * self._predicted_s()[1]

    def _validate(self, record: dict[str, Any]) -> bool:
        """Validation on rank 0 (its metrics into ``record``), the best checkpoint kept, the early-stopping
        decision shared with every rank; returns whether to stop."""
        improved = s_improved = 0.0
        cfg = self.cfg
        sh = self.shadow
        live = self.bad_epochs < cfg.patience  # a selection whose patience is spent is frozen (eval.also_protocol)
        if D.is_main():
            self.model.eval()
            if live:
                t0 = clock.now()
                m = self.task.evaluate(self.task.model, "valid", self.cfg.eval_users)
                if self.eval_cost:  # the cap's prediction, corrected by what this pass really took
                    self.eval_speed = (clock.now() - t0) / max(1e-9, self._predicted_s()[0])
                score = m["all"][self.select_metric]
                record.update({f"valid_{k}": v for k, v in m["all"].items() if k not in ("n_users", "n_repeat")})
                if score > self.best:
                    self.best, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                    improved = 1.0
                else:
                    self.bad_epochs += 1
            if sh is not None and sh["bad_epochs"] < cfg.patience:
                with protocol_of(self.task.cfg, sh["protocol"]):
                    m = self.task.evaluate(self.task.model, "valid", self.cfg.eval_users)
                score = m["all"][self.select_metric]
                record.update({f"valid_{sh['protocol']}_{k}": v for k, v in m["all"].items()
                               if k not in ("n_users", "n_repeat")})
                if score > sh["best"]:
                    sh["best"], sh["best_epoch"], sh["bad_epochs"] = score, self.epoch, 0
                    s_improved = 1.0
                else:
                    sh["bad_epochs"] += 1
        flags = D.broadcast_flags(improved, self.bad_epochs, s_improved, sh["bad_epochs"] if sh is not None else 0)
        improved, self.bad_epochs = flags[0], int(flags[1])
        if improved:
            self._save_best()
        if sh is not None:
            sh["bad_epochs"] = int(flags[3])
            if flags[2]:
                self._save_best(sh["protocol"])
        if cfg.schedule == "plateau" and self.bad_epochs and self.bad_epochs % cfg.plateau_patience == 0:
            self.lr_scale = max(cfg.min_lr_ratio, self.lr_scale * cfg.plateau_factor)
            factor = self._lr_factor(self.sched.last_epoch)  # the rates follow the cut now, not at the next step
            for group, base in zip(self.opt.param_groups, self.sched.base_lrs, strict=True):
                group["lr"] = base * factor
            record["lr_cut_to"] = self.opt.param_groups[0]["lr"]
        return self._spent()

    def _epoch_line(self, record: dict[str, Any]) -> None:
        """No bar outside a terminal (nohup, CI, a pipe): one line per epoch on stderr instead of silence."""
        if self.cfg.progress and D.is_main() and not sys.stderr.isatty():
            v = record.get(f"valid_{self.select_metric}")
            print(f"epoch {self.epoch}/{self.cfg.epochs}: loss {record['loss']:.4f}"
                  + (f", valid {self.select_metric} {v:.4f}" if v is not None else "")
                  + f", best {self.best:.4f} (epoch {self.best_epoch})" + self._shadow_note(record)
                  + f", {self.elapsed_s / 60:.1f} min", file=sys.stderr, flush=True)

    def _shadow_note(self, record: dict[str, Any]) -> str:
        if self.shadow is None:
            return ""
        sh = self.shadow
        v = record.get(f"valid_{sh['protocol']}_{self.select_metric}")
        return (f"; {sh['protocol']}: " + (f"{v:.4f}, " if v is not None else "")
                + f"best {sh['best']:.4f} (epoch {sh['best_epoch']})")

    def load_best(self, protocol: str | None = None) -> None:
        best = self.ckpt_dir / self.best_file(protocol)
        if best.exists():
            load_model(self.task.model, str(best))
