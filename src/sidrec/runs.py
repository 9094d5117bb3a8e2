"""The run directory: everything one run produces lands in one folder.

Layout: ``config.yaml`` (resolved), ``log.jsonl`` (losses and validation metrics per epoch),
``checkpoints/`` (``last.*`` for resume, ``best.safetensors`` = the one tested), ``metrics.json``,
``report.md`` and method-specific artefacts (SID table, tokenizer state, plots).
"""

from __future__ import annotations

import time
from pathlib import Path

from sidrec.config import Config, save_config


def default_run_dir(cfg: Config, dataset_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset_name}-{cfg.method}-{stamp}"


def prepare_run_dir(cfg: Config, dataset_name: str) -> Path:
    """Create the run directory (idempotent, so ``--resume`` reuses it) and save the resolved config."""
    run = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg, dataset_name)
    run.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run)
    save_config(cfg, run / "config.yaml")
    return run
