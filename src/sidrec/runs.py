"""The run directory: everything one run produces lands in one folder.

Layout: ``config.yaml`` (resolved), ``log.jsonl`` (losses and validation metrics per epoch),
``checkpoints/`` (``last.*`` for resume, ``best.safetensors`` = the one tested), ``metrics.json``,
``report.md`` and method-specific artefacts (SID table, tokenizer state, plots).

Why :func:`claim_run_dir` guards the folder: a run directory is the only record of hours of training. A re-run
with a typo in one setting must not replace its ``config.yaml`` (after which the old weights no longer match
the config that describes them), and a run that fails while its model is being built must leave the folder as
it was. So nothing in the folder changes until the config is valid and the model is built; an existing run
with other settings is replaced only with ``--overwrite``, and ``--resume`` continues a run only with its own
settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidrec.config import FILE_RELATIVE_KEYS, Config, load_config, save_config
from sidrec.errors import SidrecError
from sidrec.io import check_writable

# settings that change how a run is watched, not what it computes: they may differ on --resume / re-runs
# (where it computes is one of them: a run started on a GPU may continue on a CPU and the reverse)
FREE_SETTINGS = frozenset({"run_dir", "train.progress", "train.threads", "train.tensorboard", "train.max_minutes",
                           "train.device", "train.compile", "tokenizer.device"})
# what a folder holds once training has started (a folder with only a SID table is a tokenizer stage)
RESULT_FILES = ("metrics.json", "log.jsonl", "checkpoints")
# a fitted tokenizer stage (sidrec.sid.pipeline + the recipe's record of what it was fitted from)
TOKENIZER_STAGE = ("sid_table.source.json", "sid_table.parquet", "sid_table.items.parquet", "tokenizer",
                   "tokenizer_report.json", "tokenizer_usage.png")


def default_run_dir(cfg: Config, dataset_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset_name}-{cfg.method}-{stamp}"


def prepare_run_dir(cfg: Config, dataset_name: str) -> Path:
    """Create the run directory (idempotent) and save the resolved config (no checks; see claim_run_dir)."""
    run = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg, dataset_name)
    run.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run)
    save_config(cfg, run / "config.yaml")
    return run


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(cfg: Config) -> dict[str, Any]:
    """Every setting of ``cfg`` as dotted keys."""
    d = dataclasses.asdict(cfg)
    tok = d.get("tokenizer")
    if isinstance(tok, dict) and tok.get("seed") is None:
        tok["seed"] = d.get("seed")  # an unset tokenizer seed is the run's seed (run_tokenize fills it in)
    return _flat(d)


def settings_diff(old: Config, new: Config) -> list[str]:
    """``key: old -> new`` for every setting that changes what a run computes."""
    a, b = settings(old), settings(new)
    for key in (f"{sec}.{k}" for sec, k in FILE_RELATIVE_KEYS):  # 'x' and '/cwd/x' are the same setting
        for s in (a, b):
            if isinstance(s.get(key), str) and s[key] not in ("", "synthetic"):
                s[key] = os.path.abspath(s[key])
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in FREE_SETTINGS and a.get(k) != b.get(k)]


def _describe(diff: list[str]) -> str:
    return "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")


def _is_run_dir(run: Path) -> bool:
    return (run / "config.yaml").is_file()


def _has_results(run: Path) -> bool:
    return any((run / f).exists() for f in RESULT_FILES)


# run directory -> the open descriptor whose flock marks it as in use by this process (see lock_run_dir)
_LOCKS: dict[str, int] = {}


def lock_run_dir(run: Path) -> None:
    """Mark ``run`` (an existing folder) as in use by this process until :func:`release_run_dir` or exit.

    Why: two ``sidrec train`` into one folder used to both run, logging every epoch twice and ending with one
    run's config beside the other's weights. The lock is an flock on the folder itself (no lock file is left
    behind), released by the kernel when the process dies, so a killed run never blocks its ``--resume``.
    """
    import fcntl

    key = str(run.resolve())
    if key in _LOCKS:
        return
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SidrecError(f"{run} is in use by another sidrec process (a run training or being written there); "
                          "wait for it to finish or choose another run_dir") from None
    _LOCKS[key] = fd


def release_run_dir(run: Path) -> None:
    fd = _LOCKS.pop(str(Path(run).resolve()), None)
    if fd is not None:
        os.close(fd)


def check_run_dir(cfg: Config, run: Path, resume: bool = False, overwrite: bool = False) -> bool:
    """Refuse a run directory this run may not use; returns True when an existing run will be replaced."""
    if resume and overwrite:
        raise SidrecError("--resume and --overwrite contradict each other (continue the run, or replace it)")
    check_writable(run, "run directory")
    if run.is_dir() and str(run.resolve()) not in _LOCKS:  # fail before any work when another process holds it
        lock_run_dir(run)
        release_run_dir(run)
    if resume:
        if not _is_run_dir(run):
            raise SidrecError(f"--resume: {run} is not a run directory (no config.yaml); nothing to resume")
        diff = settings_diff(load_config([run / "config.yaml"]), cfg)
        if diff:
            raise SidrecError(f"--resume: settings differ from {run / 'config.yaml'} ({_describe(diff)}); resume with "
                              "the run's own settings, or start it over with --overwrite")
        return False
    if not run.exists() or not any(run.iterdir()):
        return False
    if not _is_run_dir(run):
        if {p.name for p in run.iterdir()} <= set(TOKENIZER_STAGE):
            return False  # a tokenizer stage copied in (benchmarks share one SID table between variants)
        raise SidrecError(f"{run} exists and is not a sidrec run directory (no config.yaml); choose another run_dir")
    if not _has_results(run):
        return False  # a tokenizer stage: its SID table is checked against these settings when reused
    try:
        diff = settings_diff(load_config([run / "config.yaml"]), cfg)
    except SidrecError as exc:
        diff = [f"its config.yaml does not load ({exc})"]
    if diff and not overwrite:
        raise SidrecError(f"{run} already holds a run with other settings ({_describe(diff)}); pass --overwrite to "
                          "replace it, --resume to continue it with its own settings, or choose another run_dir")
    return bool(diff)  # the same settings retrain in place (reusing the SID table); other settings replace the run


# settings a fitted SID table depends on (sidrec.methods.tiger.task.sid_source records them with the table)
_SID_PREFIXES = ("data.", "features.", "tokenizer.", "seed")


def _same_sid_settings(old_run: Path, cfg: Config) -> bool:
    try:
        diff = settings_diff(load_config([old_run / "config.yaml"]), cfg)
    except SidrecError:
        return False
    return not any(d.startswith(_SID_PREFIXES) for d in diff)


def copy_tokenizer_stage(old: Path, new: Path) -> None:
    """Copy a replaced run's fitted tokenizer stage into the new folder, when it records what it was fitted from.

    Fitting RQ-VAE takes minutes; the recipe reuses the table only if ``sid_table.source.json`` matches the new
    settings (and refits otherwise), so carrying it over is safe. A table without that record is not carried.
    """
    if not all((old / name).exists() for name in TOKENIZER_STAGE[:2]):
        return
    new.mkdir(parents=True, exist_ok=True)  # a fresh run folder: the stage is what it starts from
    for name in TOKENIZER_STAGE:
        src = old / name
        if src.is_dir():
            shutil.copytree(src, new / name)
        elif src.exists():
            shutil.copy2(src, new / name)


@contextlib.contextmanager
def claim_run_dir(cfg: Config, dataset_name: str, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """The run directory for ``cfg``, usable inside the block (build the model there), committed after it.

    Inside the block the folder exists; a replaced run (``--overwrite``) waits in a hidden sibling. If the block
    fails, a folder this call created is removed and a replaced run is put back, byte for byte. On success the
    resolved config is written (only now; a resumed run keeps its own) and the replaced run is deleted.
    """
    run = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg, dataset_name)
    cfg.run_dir = str(run)
    replace = check_run_dir(cfg, run, resume, overwrite)
    backup: Path | None = None
    if run.is_dir():
        lock_run_dir(run)  # held from here to the end of training (pipeline.train releases it)
    if replace and run.exists():
        backup = run.with_name(f".{run.name}.replaced-{os.getpid()}")
        release_run_dir(run)
        run.rename(backup)
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        lock_run_dir(run)
    except SidrecError:  # another process created this new folder at the same moment: it is theirs
        if backup is not None and not run.exists():
            backup.rename(run)
        raise
    if backup is not None and _same_sid_settings(backup, cfg):
        copy_tokenizer_stage(backup, run)
    try:
        yield run
    except BaseException:
        release_run_dir(run)
        if created:
            shutil.rmtree(run, ignore_errors=True)
        if backup is not None:
            backup.rename(run)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    if not resume:  # a resumed run keeps its own config.yaml (same settings; the folder may have moved)
        save_config(cfg, run / "config.yaml")
