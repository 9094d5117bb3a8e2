"""A run's semantic-ID stage: the SID table in the run folder, fitted once and reused.

Every SID method (TIGER, DIGER, ACERec, DREAM's stages) reads its SIDs through :func:`semantic_ids`: the
table in the run directory is reused when it is there, so ``--resume`` and ``sidrec evaluate RUN`` never refit
the tokenizer (a refit could change the SIDs under trained weights); a table fitted under other data /
features / tokenizer settings is refused.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.decoding.trie import SIDCodes
from sidrec.errors import SidrecError
from sidrec.io import write_json
from sidrec.sid.pipeline import SID_TABLE_FILE

# Set while a finished run is rebuilt (evaluate, recommend, fuse, dream): its SID table must be there; fitting a
# new one would write into the run (a feature cache, a table) and then fail on the weights.
READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("sidrec_sid_stage_read_only", default=False)

__all__ = ["SID_SOURCE_FILE", "SID_TABLE_FILE", "run_features", "semantic_ids", "sid_source"]




SID_SOURCE_FILE = "sid_table.source.json"  # what the run's SID table was fitted from (checked on reuse)


def sid_source(cfg: Config, dataset: Dataset) -> dict[str, Any]:
    """Everything the SIDs depend on: dataset identity, feature settings and tokenizer settings."""
    tok = dataclasses.asdict(cfg.tokenizer)  # type: ignore[attr-defined]
    for k in ("progress", "device"):  # where the tokenizer is fitted is not what it fits
        tok.pop(k, None)
    if tok.get("seed") is None:
        tok["seed"] = cfg.seed
    feats = dataclasses.asdict(cfg.features)
    for k in ("batch_size", "cache_dir", "min_text_coverage"):  # none of them changes the vectors
        feats.pop(k, None)
    data = {"name": dataset.name, "n_items": dataset.n_items, "kcore": cfg.data.kcore}
    if cfg.data.path == "synthetic":
        data.update(users=cfg.data.synthetic_users, items=cfg.data.synthetic_items, seed=cfg.data.synthetic_seed)
    return {"data": data, "features": feats, "tokenizer": tok}


def _comparable(source: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """A SID source record in today's terms: its npy path made absolute (config paths became file-relative, so
    an older record may hold the same file as a relative path), every tokenizer / feature setting the record
    predates filled in with its default (a setting added later, at its default, fits the same SIDs, so an
    existing table must not be refused for lacking it) and settings that no longer exist left out."""
    defaults = {"tokenizer": dataclasses.asdict(type(cfg.tokenizer)()),
                "features": dataclasses.asdict(type(cfg.features)())}
    out = dict(source)
    for name, default in defaults.items():
        # settings added since take their default; settings removed since (e.g. the RQ-VAE's lr_schedule, whose
        # kept value is what the code does now) are not compared
        out[name] = {k: v for k, v in {**default, **source.get(name, {})}.items() if k in default}
    for rec in (out["tokenizer"],):
        rec.pop("device", None)  # records written before the device was left out of them
        rec.pop("progress", None)
    feats = out["features"]
    if feats.get("npy_path"):
        feats["npy_path"] = os.path.abspath(feats["npy_path"])
    return out


def _read_stamp(stamp: Path) -> dict[str, Any]:
    """The record of what a run's SID table was fitted from; one cut short or edited is one line naming it."""
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise SidrecError(f"{stamp}{line}: not the record of the SID table's source that sidrec writes (cut short or "
                          "edited?); restore it, or delete it to trust the table as it is") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, {}), dict) for k in ("tokenizer", "features")):
        raise SidrecError(f"{stamp}: not the record of the SID table's source that sidrec writes (a JSON object with "
                          "'tokenizer' and 'features' sections); restore it, or delete it to trust the table as it is")
    return data


def semantic_ids(cfg: Config, dataset: Dataset, run_dir: Path) -> SIDCodes:
    """The run's SIDs: reuse the run directory's table when present, else fit the configured tokenizer.

    The table is reused only if it was fitted from the same data, features and tokenizer settings (recorded
    in ``sid_table.source.json``): training into an existing run directory with a changed tokenizer must not
    silently keep the old SIDs. A table without that record (e.g. from ``sidrec tokenize``) is trusted.
    """
    from sidrec.sid.pipeline import preflight, run_tokenize
    from sidrec.sid.table import SIDTable

    run = Path(run_dir)
    path, stamp = run / SID_TABLE_FILE, run / SID_SOURCE_FILE
    source = json.loads(json.dumps(sid_source(cfg, dataset)))  # normalised like the stored copy
    if path.exists():
        if stamp.exists() and _comparable(_read_stamp(stamp), cfg) != _comparable(source, cfg):
            raise SidrecError(f"{path} was fitted with other data / features / tokenizer settings than this config "
                              f"(see {stamp}); use a new run_dir or delete the SID table to refit it")
        table = SIDTable.load(path)
        if not stamp.exists():
            write_json(stamp, source)
    else:
        if READ_ONLY.get():
            raise SidrecError(f"{run}: no {SID_TABLE_FILE}, which a '{cfg.method}' run has; was its config.yaml "
                              "changed to another method?")
        preflight(cfg.tokenizer, dataset.n_items)
        table = run_tokenize(cfg, dataset, run_features(cfg, dataset), run)
        write_json(stamp, source)
    sids = SIDCodes.from_table(table)
    if len(sids.primary) != dataset.n_items:
        raise SidrecError(f"the SID table has {len(sids.primary)} items, the dataset {dataset.n_items}; "
                          f"delete {path} to refit")
    return sids


def run_features(cfg: Config, dataset: Dataset) -> np.ndarray:
    from sidrec.features import item_features

    return item_features(cfg.features, dataset, progress=cfg.train.progress)

