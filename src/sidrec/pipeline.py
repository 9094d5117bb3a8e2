"""End-to-end jobs behind the CLI: train, evaluate, recommend.

Each job reads a resolved :class:`Config`, so ``sidrec train`` and ``sidrec evaluate RUN`` rebuild exactly
the same dataset split and model from the ``config.yaml`` saved in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sidrec.training.distributed as D
from sidrec import clock, fusion
from sidrec import device as devices
from sidrec.config import Config, describe_path, load_config, only_overrides
from sidrec.data.dataset import Dataset
from sidrec.data.formats import load_dataset
from sidrec.data.protocol import LeaveOneOut
from sidrec.errors import SidrecError
from sidrec.eval.evaluator import Evaluator, excludes, popularity_scores
from sidrec.io import write_json, write_text
from sidrec.methods.registry import get_builder
from sidrec.runs import check_run_dir, claim_run_dir, lock_run_dir, release_run_dir
from sidrec.training import Trainer
from sidrec.training.state import STATE_FILE


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_from_config(cfg: Config) -> Dataset:
    d = cfg.data
    kwargs: dict[str, Any] = {}
    if d.path != "synthetic" and not Path(d.path).exists():
        raise SidrecError(f"data.path {describe_path(d.path)}: not found")
    if d.path == "synthetic":
        kwargs = {"n_users": d.synthetic_users, "n_items": d.synthetic_items, "seed": d.synthetic_seed}
    ds = load_dataset(d.path, d.format, d.name, d.kcore, **kwargs)
    if d.name:
        ds.name = d.name
    return ds


def popularity_metrics(cfg: Config, split: LeaveOneOut, which: str = "test") -> dict[str, dict[str, Any]]:
    ev = Evaluator(split.split(which), split.item_freq, cfg.eval.ks, cfg.data.cold_threshold, cfg.eval.buckets)
    m, _ = ev.evaluate_scores(popularity_scores(split.item_freq), cfg.eval.batch_size, excludes(cfg))
    return m


def check_trainable(ds: Dataset, split: LeaveOneOut) -> None:
    """Refuse a dataset leave-one-out cannot train and evaluate on (one user, no user with 3+ items)."""
    if len(split.test) < 2:
        raise SidrecError(f"dataset '{ds.name}' ({ds.source or 'synthetic'}): {ds.n_users} users, of which "
                          f"{len(split.test)} have the 3+ interactions leave-one-out needs for a validation and a "
                          "test target; training needs at least 2 such users")


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data``; writes the run directory; returns metrics.

    The run directory is claimed (checked, and an ``overwrite``-n run moved aside) only after the dataset
    loaded, and its ``config.yaml`` is written only after the model and trainer were built: a run that fails
    before training starts leaves an existing run directory as it was (see :mod:`sidrec.runs`).
    """
    t0 = clock.now()  # train.max_minutes counts from here (the trainer's clock: tests drive it, see sidrec.clock)
    if resume and not cfg.run_dir:
        raise SidrecError("--resume needs the run directory (run_dir=PATH or --run-dir PATH)")
    builder = get_builder(cfg.method)
    if cfg.run_dir and D.is_main():
        check_run_dir(cfg, Path(cfg.run_dir), resume, overwrite)  # fail before the dataset is read
    dev = devices.resolve(cfg.train.device)  # a GPU asked for and absent fails now, before any work
    devices.prepare(dev)
    seed_everything(cfg.seed)
    if cfg.train.threads > 0:
        try:
            torch.set_num_threads(cfg.train.threads)
        except (ValueError, RuntimeError, OverflowError):  # beyond a C int: torch's "Overflow when unpacking long"
            raise SidrecError(f"config key 'train.threads': torch cannot run {cfg.train.threads} threads (this machine "
                              f"has {os.cpu_count()} cores)") from None
    ds = dataset_from_config(cfg)
    if ds.unmatched_items and D.is_main():
        from sidrec.data.formats import unmatched_message

        print(f"sidrec: warning: {unmatched_message(ds)}", file=sys.stderr)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    check_trainable(ds, split)
    fresh = not (cfg.run_dir and Path(cfg.run_dir).exists())  # this call creates the folder
    claim = claim_run_dir(cfg, ds.name, resume, overwrite) if D.is_main() else contextlib.nullcontext(Path(cfg.run_dir))
    with claim as run:
        task = builder(cfg, ds, split, run)
        attach_grounding(task, cfg, ds, split)
        task.to(dev)  # the one placement point: model, tables, content vectors
        seed_everything(cfg.seed)  # model init above may consume randomness differently per recipe
        trainer = (Trainer(task, cfg.train, run, cfg.seed, select_metric=cfg.train.select_metric,
                           also_protocol=cfg.eval.also_protocol) if task.trainable else None)
        if trainer is not None:  # train.max_minutes bounds the whole command, from its start
            trainer.started, trainer.test = t0, cfg.eval.test
    try:
        if trainer is not None:
            try:
                summary = trainer.fit(resume=resume)
            except SidrecError:
                # a run that failed before its first end-of-epoch checkpoint (diverged at epoch 1) holds nothing
                # to resume or evaluate: a folder this call created goes, as if it had never been asked for
                if fresh and D.is_main() and not (run / "checkpoints" / STATE_FILE).exists():
                    release_run_dir(run)
                    shutil.rmtree(run, ignore_errors=True)
                raise
            trainer.load_best()
        else:  # nothing to train (the content ranker): the run is its evaluation
            summary = {"epochs": 0, "best_epoch": 0, "best_valid": None, "train_s": 0.0}
        out: dict[str, Any] = {"summary": summary}
        if D.is_main():
            out = fusion.final_evaluation(task, run, summary, cfg.eval.test)
        D.barrier()
        if D.is_main():
            if cfg.eval.test:  # a model-selection run (eval.test=false) reads no test metric at all
                out["popularity_test"] = popularity_metrics(cfg, split)
            out["dataset"] = ds.stats()
            out["protocol"] = cfg.eval.protocol
            out["wall_s"] = clock.now() - t0
            write_json(run / "metrics.json", out)
            plot_training_curve(run)
            write_text(run / "report.md", render_report(cfg, out, plots=sorted(p.name for p in run.glob("*.png"))))
            if trainer is not None and trainer.shadow is not None:
                out["also"] = _also_protocol(cfg, task, trainer, run, summary, ds, split, t0)
    finally:
        release_run_dir(run)
    D.shutdown()
    return out


def _also_protocol(cfg: Config, task: Any, trainer: Trainer, run: Path, summary: dict[str, Any], ds: Dataset,
                   split: LeaveOneOut, t0: float) -> dict[str, Any]:
    """``eval.also_protocol``: the other protocol's row from the same training, as a complete run folder
    ``RUN/<protocol>/`` (its config says that protocol; ``sidrec evaluate``, ``fuse`` and ``recommend`` read it like
    any run). Its checkpoint is the one its own validation chose, its fusion is chosen on its own validation, and
    its test is read once -- nothing of the run's own protocol enters it."""
    import copy

    from sidrec.config import save_config
    from sidrec.eval.evaluator import protocol_of
    from sidrec.runs import copy_tokenizer_stage

    proto = cfg.eval.also_protocol
    sub = run / proto
    sub_cfg = copy.deepcopy(cfg)
    sub_cfg.eval.protocol, sub_cfg.eval.also_protocol, sub_cfg.run_dir = proto, "none", str(sub)
    if sub.exists():  # an earlier, interrupted final evaluation: this one replaces it whole
        shutil.rmtree(sub)
    copy_tokenizer_stage(run, sub)  # a SID model's table travels with it (load_run reads it from the folder)
    (sub / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trainer.ckpt_dir / trainer.best_file(proto), sub / "checkpoints" / "best.safetensors")
    if (run / "log.jsonl").exists():
        shutil.copyfile(run / "log.jsonl", sub / "log.jsonl")
    trainer.load_best(proto)
    task.fusion = fusion.Fusion()  # the run's own choice is not this protocol's
    also = summary["also"]
    sub_summary = {**{k: v for k, v in summary.items() if k != "also"}, "best_epoch": also["best_epoch"],
                   "best_valid": also["best_valid"], "trained_with": cfg.eval.protocol}
    with protocol_of(task.cfg, proto):
        out = fusion.final_evaluation(task, sub, sub_summary, cfg.eval.test)
        if cfg.eval.test:
            out["popularity_test"] = popularity_metrics(sub_cfg, split)
    out["dataset"] = ds.stats()
    out["protocol"] = proto
    out["wall_s"] = clock.now() - t0
    write_json(sub / "metrics.json", out)
    save_config(sub_cfg, sub / "config.yaml")  # last: a folder without it is not a run (an interrupted copy)
    write_text(sub / "report.md", render_report(sub_cfg, out, plots=[]))
    return out


def attach_grounding(task: Any, cfg: Config, ds: Dataset, split: LeaveOneOut) -> None:
    """Give a task the run's content grounding (:mod:`sidrec.fusion`), the one place every method gets it."""
    if task.groundable and fusion.content_available(cfg, ds):
        task._grounding_factory = lambda: fusion.grounding_for(cfg, ds, split)


def _check_complete(path: Path) -> None:
    """A run's ``config.yaml`` is written whole (every section); one cut short (a copy interrupted, a disk that
    filled) would load with defaults for the missing sections and then blame the weights: name the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return  # load_config reports it
    # the sections every sidrec version wrote, in this order, first (later sections came with later versions)
    if not isinstance(data, dict) or "base" in data:
        return
    missing = [k for k in ("method", "seed", "data", "features", "train", "eval") if k not in data]
    if missing:
        raise SidrecError(f"{path}: incomplete run config (no '{missing[0]}' section; {len(missing)} missing): the "
                          "file was cut short or edited; restore it or retrain")


def load_run(run_dir: str | Path, weights: str | Path | None = None, overrides: list[str] | None = None
             ) -> tuple[Config, Dataset, LeaveOneOut, Any]:
    """Rebuild config, data split and task of a finished run, with its best weights (or ``weights``) loaded and
    the fusion it chose (``fusion.json``) installed. ``overrides`` (settings that do not change the model, e.g.
    DREAM's evaluation beam) are applied to the config the task is built with, so nothing rewrites it later."""
    run = Path(run_dir)
    if not (run / "config.yaml").exists():
        raise SidrecError(f"{run}: not a run directory (no config.yaml)")
    _check_complete(run / "config.yaml")
    cfg = load_config([run / "config.yaml"], list(overrides or []))
    cfg.run_dir = str(run)
    ds = dataset_from_config(cfg)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    from sidrec.sid.stage import READ_ONLY

    token = READ_ONLY.set(True)  # a finished run's SIDs are read, never fitted again
    try:
        task = get_builder(cfg.method)(cfg, ds, split, run)
    finally:
        READ_ONLY.reset(token)
    attach_grounding(task, cfg, ds, split)
    fusion.load_fusion(task, run)
    if not task.trainable:
        return cfg, ds, split, _placed(task, cfg)
    best = Path(weights) if weights is not None else run / "checkpoints" / "best.safetensors"
    if not best.exists():
        raise SidrecError(f"{weights}: weights file not found" if weights is not None
                          else f"{run}: no trained weights (checkpoints/best.safetensors)")
    if not best.is_file():
        raise SidrecError(f"{best}: expected a weights file, found a {'folder' if best.is_dir() else 'special file'}")
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(task.model, str(best))
    except (SafetensorError, RuntimeError) as exc:
        raise SidrecError(f"{best}: not weights of the model config.yaml describes (was config.yaml changed?) "
                          f"({str(exc).splitlines()[0][:200]})") from None
    from sidrec.training.trainer import nonfinite_parameters

    bad = nonfinite_parameters(task.model)
    if bad:
        raise SidrecError(f"{best}: the weights of a diverged model ({bad}); retrain with a lower train.lr")
    task.model.eval()
    return cfg, ds, split, _placed(task, cfg)


def _placed(task: Any, cfg: Config) -> Any:
    """A rebuilt task on the run's device (the CPU when the run trained on a GPU this machine lacks)."""
    dev = devices.for_rebuild(cfg.train.device)
    devices.prepare(dev)
    return task.to(dev)


def evaluate(run_dir: str | Path, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    """Metrics of a finished run's ranking (fused with content when its ``fusion.json`` chose a lambda > 0)."""
    cfg, ds, split, task = load_run(run_dir)
    from sidrec.progress import note

    out = {}
    for s in splits:
        n = fusion.split_users(task, s)
        note(f"evaluating {s} ({n:,} users, full catalogue)", n)
        out[s] = task.evaluate(task.model, s)
    return out


def fuse(run_dir: str | Path, overrides: list[str] | None = None, test: bool | None = None) -> dict[str, Any]:
    """Choose the content fusion of a finished run on validation (no retraining) and re-evaluate it.

    For runs trained before grounding existed, or to choose again over another grid or query
    (``overrides``: ``fusion.*`` and ``content.*`` settings only; the query is kept in ``fusion.json``):
    writes ``fusion.json`` and updates ``metrics.json`` (``valid`` / ``test`` fused, ``model_only`` alone).
    ``test``: whether test is scored (default: the run's ``eval.test``); ``True`` is the single test read of a
    model-selection run trained with ``eval.test=false``, once its setting was chosen on validation.
    """
    run = Path(run_dir)
    only_overrides("fuse", overrides, ("fusion.", "content."))
    _run_metrics(run)  # a damaged metrics.json fails now, before the fusion is chosen
    cfg, ds, split, task = load_run(run)
    if overrides:
        new = load_config([run / "config.yaml"], list(overrides))
        cfg.fusion, cfg.content = new.fusion, new.content
        task.__dict__.pop("_grounding", None)
        if "_grounding_factory" not in task.__dict__:
            attach_grounding(task, cfg, ds, split)
    if task.grounding is None:
        raise SidrecError(f"{run}: method '{cfg.method}' has no content fusion to choose (fusion.lambdas is [0] or "
                          "the method is the content ranker itself)")
    task.fusion = fusion.Fusion()
    lock_run_dir(run)  # it rewrites the run's metrics: not while another process trains there
    try:
        old = _run_metrics(run)
        out = {**old, **fusion.final_evaluation(task, run, old.get("summary", {}),
                                                cfg.eval.test if test is None else test), "protocol": cfg.eval.protocol}
        write_json(run / "metrics.json", out)
        write_text(run / "report.md", render_report(cfg, out, plots=sorted(p.name for p in run.glob("*.png"))))
    finally:
        release_run_dir(run)
    return out


def _run_metrics(run: Path) -> dict[str, Any]:
    """A run's ``metrics.json`` (``{}`` when it has none); one cut short, edited into something else or not UTF-8
    is one line naming it: fuse merges its new metrics into it, so it must be read whole."""
    path = run / "metrics.json"
    if not path.exists():
        return {}
    hint = "restore it, or delete it to have fuse write a new one"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SidrecError(f"{path}:{exc.lineno}: not complete JSON ({exc.msg}; the file was cut short or edited); "
                          f"{hint}") from None
    except UnicodeDecodeError as exc:
        raise SidrecError(f"{path}: not UTF-8 text at byte {exc.start}; {hint}") from None
    if not isinstance(data, dict):
        raise SidrecError(f"{path}: expected the JSON object 'sidrec train' writes, got a {type(data).__name__}; {hint}")
    return data


def item_indices(ds: Dataset, histories: list[list[str]], skip_unknown: bool = False,
                 item_ids: list[str] | None = None, index: Mapping[str, int] | None = None) -> list[np.ndarray]:
    """Item indices of histories given as original item ids (in time order).

    An id the run does not know is one line naming it (and how many others), unless ``skip_unknown`` drops it: a
    recommendation silently made from part of what was asked for looks like an answer to the whole question.
    ``index`` (original id -> index, as :func:`id_index` builds it) is for callers that ask many times (a loaded
    :class:`sidrec.api.Recommender`, the server): building it costs 5 ms per call on a 12k-item catalogue, more
    than the model's own forward pass.
    """
    if index is None:
        index = id_index(item_ids if item_ids is not None else ds.item_ids)
    out = []
    for n, h in enumerate(histories):
        unknown = [str(x) for x in h if str(x) not in index]
        if unknown and not skip_unknown:
            more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
            where = f"history {n + 1}: " if len(histories) > 1 else ""
            raise SidrecError(f"{where}unknown item id '{unknown[0]}'{more} (not in dataset '{ds.name}'); "
                              "--skip-unknown / skip_unknown=True leaves unknown ids out")
        out.append(np.array([index[str(x)] for x in h if str(x) in index], dtype=np.int64))
    return out


def id_index(ids: Sequence[Any]) -> dict[str, int]:
    """Original id (as a string) -> its index, for :func:`item_indices` / :func:`user_indices`."""
    return {str(x): i for i, x in enumerate(ids)}


def user_indices(ds: Dataset, users: list[str], index: Mapping[str, int] | None = None) -> np.ndarray:
    """Dataset indices of original user ids; an unknown one is one line naming it (``index``: see
    :func:`item_indices`)."""
    if index is None:
        index = id_index(ds.user_ids)
    missing = [u for u in users if str(u) not in index]
    if missing:
        raise SidrecError(f"unknown user '{missing[0]}' in dataset '{ds.name}'")
    return np.array([index[str(u)] for u in users], dtype=np.int64)


def recommend_histories(task: Any, cfg: Config, histories: list[np.ndarray], item_ids: list[str], k: int,
                        exclude_history: bool = True, users: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
    """Top-``k`` (original item id, score) per history of item indices, batched through the task's own ranking
    (the run's fusion included), every method alike.

    ``users``: the dataset's user indices of the histories (TIGER's hashed user token); histories of no known user
    (a live session) are read with the token of user index -1, the same for every anonymous session.
    """
    from sidrec.data.protocol import EvalSet

    if k <= 0:
        raise SidrecError(f"k must be positive, got {k}")
    hs = [h[-cfg.data.max_len:] for h in histories]
    us = np.full(len(hs), -1, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    es = EvalSet("recommend", us, hs, np.zeros(len(hs), dtype=np.int64), [np.asarray(h) for h in histories])
    items, scores = task.recommend(es, k, exclude_history)
    return [[(item_ids[i], float(s)) for i, s in zip(row_i, row_s, strict=True) if i >= 0 and np.isfinite(s)]
            for row_i, row_s in zip(items, scores, strict=True)]


def recommend(run_dir: str | Path, user: str | None = None, k: int = 10, sid_table: str | Path | None = None,
              weights: str | Path | None = None, exclude_history: bool = True,
              histories: list[list[str]] | None = None, skip_unknown: bool = False
              ) -> list[list[tuple[str, float]]]:
    """Top-k original item ids for a user of the dataset (by original id, from their whole history) or for each
    of ``histories`` (lists of original item ids, e.g. live sessions in no dataset); one list per history.

    Items of the history are left out unless ``exclude_history`` is False (a recommendation of what one owns is
    rarely wanted); evaluation is not affected (``eval.protocol`` of the run decides there).

    ``sid_table`` (SID-based runs) decodes over another table of the same codebooks, e.g. one extended with
    new items by ``sidrec add-items`` or a DREAM stage table; item ids then come from that table.
    """
    return recommend_in_context(run_dir, user, k, sid_table, weights, exclude_history, histories, skip_unknown)[0]


def recommend_in_context(run_dir: str | Path, user: str | None = None, k: int = 10,
                         sid_table: str | Path | None = None, weights: str | Path | None = None,
                         exclude_history: bool = True, histories: list[list[str]] | None = None,
                         skip_unknown: bool = False) -> tuple[list[list[tuple[str, float]]], list[list[str]], Any, Any]:
    """:func:`recommend`, plus what a reader of the lists needs: the histories read (original ids, unknown ones
    left out), the dataset (item text) and the task (what the scores are; :func:`sidrec.show.score_name`)."""
    if (user is None) == (histories is None):
        raise SidrecError("recommend needs a user (--user) or histories (--history / --sessions), not both")
    cfg, ds, split, task = load_run(run_dir, weights)
    item_ids = ds.item_ids
    if sid_table is not None:
        from sidrec.sid.table import SIDTable

        if not task.reads_sids:
            raise SidrecError(f"--sid-table needs a SID-based run (this one is '{cfg.method}')")
        table = SIDTable.load(sid_table)
        task.use_sids(table, source=str(sid_table))
        if table.n_items != split.n_items:  # items added after training have no vector in the run's content index
            task.fusion = fusion.Fusion()
        item_ids = table.item_ids or [str(i) for i in range(table.n_items)]
    if user is not None:
        u = user_indices(ds, [user])
        seq = ds.sequence(int(u[0]))
        lists = recommend_histories(task, cfg, [seq], item_ids, k, exclude_history, u)
        return lists, [[ds.item_ids[int(i)] for i in seq]], ds, task
    assert histories is not None
    idx = item_indices(ds, histories, skip_unknown, item_ids)
    lists = recommend_histories(task, cfg, idx, item_ids, k, exclude_history)
    return lists, [[item_ids[int(i)] for i in h] for h in idx], ds, task


TIED_WARN = 0.01  # a run whose top-10 has more tied slots than this says so in its report


def _cell(r: dict[str, Any], name: str, k: int) -> str:
    """A metric for a table; n/a where the ranked list was shorter than K (a beam narrower than K)."""
    v = r.get(f"{name}@{k}")
    return "n/a" if v is None else f"{v:.4f}"


PROTOCOL_LINE = {"exclude": "the user's history items are removed from every ranking",
                 "keep": "the user's history items are ranked like any other item"}


def render_report(cfg: Config, out: dict[str, Any], plots: list[str] | None = None) -> str:
    """A short human-readable summary of a run (also printed by the CLI); ``plots`` are PNG names in the run
    directory, linked so the report shows the run's diagnostics (tokenizer usage, DIGER's SID dynamics)."""
    ks = cfg.eval.ks
    lines = [f"# {cfg.method} on {out.get('dataset', {}).get('name', cfg.data.path)}", ""]
    s = out.get("summary", {})
    lines.append(f"Protocol: {PROTOCOL_LINE[cfg.eval.protocol]} (eval.protocol: {cfg.eval.protocol}); early "
                 "stopping and the fusion were chosen on it.")
    lines.append(f"Epochs {s.get('epochs')}, best epoch {s.get('best_epoch')}, "
                 f"train {s.get('train_s', 0):.0f}s, total {out.get('wall_s', 0):.0f}s.")
    from sidrec.io import cache_root, features_cache

    lines.append(f"Caches: item vectors in {features_cache(cfg.features.cache_dir)}, the precision timing in "
                 f"{cache_root() / 'precision.json'} ($SIDREC_CACHE moves both).")
    f = out.get("fusion")
    if f:
        mo = out.get("model_only", {}).get("valid", {}).get("all", {})
        grouped = ", cold items grouped" if f.get("grouped") else ""
        lines.append(f"Content fusion (chosen on validation NDCG@10): {fusion.fusion_from_record(f).name()}{grouped}"
                     f"; validation NDCG@10 {mo.get('ndcg@10', float('nan')):.4f} for the model "
                     f"alone, {out.get('valid', {}).get('all', {}).get('ndcg@10', float('nan')):.4f} fused; query: the "
                     f"last {f.get('content', {}).get('query_items', '?')} items, decay "
                     f"{f.get('content', {}).get('decay', '?')}.")
        floor = f.get("cold_floor")
        if floor:
            lines.append(f"Cold floor: the content ranker's validation NDCG@10 on cold targets is "
                         f"{floor['content_valid_cold']:.4f}; the fused ranking {'reaches' if floor['met'] else 'misses'} "
                         "it on validation.")
        if f.get("at_grid_edge"):
            lines.append(f"Warning: the chosen lambda is the largest of the grid ({f.get('grid_max'):g}) after "
                         "extending it; the best may lie beyond (fusion.extend, fusion.lambdas).")
    lines += ["", "| split | subset | users | " + " | ".join(f"R@{k} | N@{k}" for k in ks) + " |",
              "|---|---|---|" + "---|---|" * len(ks)]
    rows = [("valid", out.get("valid", {})), ("test", out.get("test", {}))]
    if fusion.is_fused(f):
        rows += [(f"{s} (model alone)", out.get("model_only", {}).get(s, {})) for s in ("valid", "test")]
    rows.append(("test (popularity)", out.get("popularity_test", {})))
    tied = [(name, sub, r["tied@10"]) for name, m in rows[:-1] for sub, r in m.items()
            if isinstance(r, dict) and r.get("tied@10", 0.0) > TIED_WARN]
    for name, m in rows:
        for sub in ("all", "warm", "cold"):
            if sub in m:
                r = m[sub]
                vals = " | ".join(f"{_cell(r, 'recall', k)} | {_cell(r, 'ndcg', k)}" for k in ks)
                lines.append(f"| {name} | {sub} | {r['n_users']} | {vals} |")
    if tied:  # after the table: a line between its header and its rows would end it (Markdown)
        lines.append("")
        lines += [f"Warning: {name} / {sub}: {share:.1%} of the top-10 slots are ties (> {TIED_WARN:.0%}); their "
                  "order is the item index, not the model." for name, sub, share in tied]
    if plots:
        lines += ["", "## Plots", ""]
        for p in plots:  # a paragraph each: one line per image would run them together into one paragraph
            lines += [f"![{Path(p).stem}]({p})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


CURVE_FILE = "training_curve.png"


def plot_training_curve(run: Path) -> Path | None:
    """Loss and validation NDCG@10 per epoch, from ``log.jsonl``, as ``training_curve.png`` (linked by report.md).

    Why: whether a run stopped too early, too late or diverged is read off a curve at a glance, not off a JSON log.
    None when the run has no epochs (the content ranker) or its log holds none of these numbers.
    """
    log = run / "log.jsonl"
    if not log.is_file():
        return None
    per_epoch: dict[int, dict[str, Any]] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            per_epoch[rec["epoch"]] = rec  # a resumed run logs an epoch again: the last record counts
    epochs = sorted(per_epoch)
    loss = [per_epoch[e].get("loss") for e in epochs]
    ndcg = [per_epoch[e].get("valid_ndcg@10") for e in epochs]
    if not epochs or all(v is None for v in loss + ndcg):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sidrec.io import atomic_path

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for a, ys, name in ((ax[0], loss, "training loss"), (ax[1], ndcg, "validation NDCG@10")):
        pts = [(e, y) for e, y in zip(epochs, ys, strict=True) if isinstance(y, int | float)]
        if pts:
            a.plot([e for e, _ in pts], [y for _, y in pts], marker="o", ms=3)
        a.set_title(name)
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.tight_layout()
    dest = run / CURVE_FILE
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return dest
