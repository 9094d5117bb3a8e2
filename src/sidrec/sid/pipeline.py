"""The tokenizer stage shared by every SID method: embeddings -> codes -> unique SIDs -> SIDTable + report.

``sidrec tokenize`` runs it on its own; the TIGER / DIGER / DREAM recipes call :func:`run_tokenize` when the
run directory has no SID table yet, so every method gets the same collision handling and the same
diagnostics. Files written into the run directory (each atomically; the table last, so its presence means
the stage finished): ``tokenizer/`` (state), ``tokenizer_report.json``, ``tokenizer_usage.png`` and
``sid_table.parquet``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError
from sidrec.io import write_json
from sidrec.sid import diagnostics
from sidrec.sid.base import Tokenizer, build_tokenizer, check_input
from sidrec.sid.collisions import resolve
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.rqkmeans import row_keys
from sidrec.sid.table import SIDTable

SID_TABLE_FILE = "sid_table.parquet"
TOKENIZER_DIR = "tokenizer"
REPORT_FILE = "tokenizer_report.json"
PLOT_FILE = "tokenizer_usage.png"


@dataclass
class TokenizeResult:
    tokenizer: Tokenizer
    table: SIDTable
    report: dict[str, Any]
    codes: np.ndarray  # unresolved codes (n_items, L)


def resolve_codes(tok: Tokenizer, emb: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Unique SIDs for ``codes`` per the tokenizer's collision settings (content-based, order-independent)."""
    cfg = tok.cfg
    recon = tok.decode(codes)
    dist = ((emb.astype(np.float64) - recon) ** 2).sum(1)
    extra, sizes = resolve(codes, dist, row_keys(emb), mode=cfg.collisions,
                           append=cfg.appends_code(False), codebook=cfg.collision_codebook)
    return extra, tok.codebook_sizes + sizes


def tokenize(cfg: TokenizerConfig, embeddings: np.ndarray, item_ids: list[str] | None = None) -> TokenizeResult:
    """Fit a tokenizer of ``cfg.kind`` on the catalogue and build its SID table and diagnostics report."""
    emb = check_input(embeddings, source="item embeddings")
    tok = build_tokenizer(cfg)
    t0 = time.time()
    tok.fit(emb)
    fit_s = time.time() - t0
    codes = tok.encode(emb)
    resolved, sizes = resolve_codes(tok, emb, codes)
    rep = diagnostics.report(codes, tok.codebook_sizes, resolved, emb, tok.decode(codes), cfg.collapse_threshold)
    rep.update({"kind": tok.kind, "codebook_sizes": tok.codebook_sizes, "sid_sizes": sizes, "fit_s": fit_s,
                "wall_s": time.time() - t0, "dim": int(emb.shape[1])})
    return TokenizeResult(tok, SIDTable.from_codes(resolved, sizes, item_ids), rep, codes)


def preflight(tcfg: TokenizerConfig, n_items: int) -> None:
    """Refuse settings that cannot fit this catalogue (a codebook larger than it, a device that is not there)
    before the item vectors are computed and cached: a failing command leaves nothing behind."""
    tok = build_tokenizer(tcfg)  # checks the kind, the collision policy and (RQ-VAE) the device
    smallest = min(tok.codebook_sizes)
    if n_items < smallest:
        raise SidrecError(f"{tok.kind}: {n_items} items are fewer than the {smallest} codes of a codebook; "
                          "use smaller tokenizer.codebook_sizes / subspace_codes or more items")


def run_tokenize(cfg: Config, dataset: Dataset, features: np.ndarray, run_dir: str | Path) -> SIDTable:
    """Tokenize ``dataset``'s items with ``cfg.tokenizer`` and write the stage's files into ``run_dir``."""
    tcfg: TokenizerConfig = cfg.tokenizer
    if tcfg.seed is None:  # an unset tokenizer seed is the run's (a copy: the run's config is not rewritten)
        tcfg = dataclasses.replace(tcfg, seed=cfg.seed)
    if tcfg.device == "auto":  # the run's device (train.device), unless the tokenizer names its own
        tcfg = dataclasses.replace(tcfg, device=cfg.train.device)
    run = Path(run_dir)
    from sidrec.progress import note

    note(f"fitting the {tcfg.kind} tokenizer on {len(features):,} items", len(features))
    res = tokenize(tcfg, features, dataset.item_ids)
    res.report["dataset"] = dataset.name
    res.tokenizer.save(run / TOKENIZER_DIR)
    write_json(run / REPORT_FILE, res.report)
    diagnostics.plot_usage(res.codes, res.tokenizer.codebook_sizes, run / PLOT_FILE,
                           f"{dataset.name}: {tcfg.kind} code usage, log(1 + items)")
    res.table.save(run / SID_TABLE_FILE)
    return res.table
