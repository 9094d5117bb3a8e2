"""TIGER recipe: item features -> semantic IDs -> encoder-decoder trained on every history prefix ->
trie-constrained beam search -> top-K items -> Evaluator.

Semantic IDs come from the shared tokenizer stage (``tokenizer`` config section; the TIGER configs pick
RQ-VAE 3 x 256 plus the collision code). The SID table is written to the run directory and reused when it
is there, so ``--resume`` and ``sidrec evaluate RUN`` never refit the tokenizer (a refit could change the
SIDs under trained weights); a table fitted under other data / features / tokenizer settings is refused.

Training samples (prefix augmentation, decisive for TIGER's quality): for a training sequence
``i_1..i_n`` every ``(i_1..i_{t-1}) -> i_t`` for t = 2..n is a sample, history truncated to the most recent
``data.max_len`` items. Samples are grouped by history length (``bucketed_batches``) so a batch is padded
only to its own longest history.

Evaluation and checkpoint selection use the real inference procedure: constrained beam search of width
``tiger.beam`` returning distinct items. A beam of width W yields at most W items, so metrics at K > W
(Recall@50 with the default beam 20) are computed on the W-item list (they equal the @W numbers); set
``tiger.beam`` >= max(eval.ks) for exact large-K metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec import precision
from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import EvalSet, LeaveOneOut
from sidrec.decoding.beam import beam_search, compact, sequence_log_probs
from sidrec.decoding.trie import SIDCodes, SIDTrie
from sidrec.errors import SidrecError
from sidrec.io import write_json
from sidrec.models.tiger import TIGER, TIGERConfig
from sidrec.recipes._eval import EvaluatorsMixin, GroundedMixin
from sidrec.recipes.sasrec import NextItemBatches, bucketed_batches

SID_TABLE_FILE = "sid_table.parquet"  # written by the shared tokenizer stage (sidrec.sid.pipeline)
SID_SOURCE_FILE = "sid_table.source.json"  # what the run's SID table was fitted from (checked on reuse)


# ---------------------------------------------------------------------------------------------- SIDs
def sid_source(cfg: Config, dataset: Dataset) -> dict[str, Any]:
    """Everything the SIDs depend on: dataset identity, feature settings and tokenizer settings."""
    tok = dataclasses.asdict(cfg.section("tokenizer"))  # type: ignore[attr-defined]
    tok.pop("progress", None)
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
    an older record may hold the same file as a relative path) and every tokenizer / feature setting the record
    predates filled in with its default (a setting added later, at its default, fits the same SIDs, so an
    existing table must not be refused for lacking it)."""
    defaults = {"tokenizer": dataclasses.asdict(type(cfg.section("tokenizer"))()),  # type: ignore[attr-defined]
                "features": dataclasses.asdict(type(cfg.features)())}
    out = dict(source)
    for name, default in defaults.items():
        out[name] = {**default, **source.get(name, {})}
    feats = out["features"]
    if feats.get("npy_path"):
        feats["npy_path"] = os.path.abspath(feats["npy_path"])
    return out


def semantic_ids(cfg: Config, dataset: Dataset, run_dir: Path) -> SIDCodes:
    """The run's SIDs: reuse the run directory's table when present, else fit the configured tokenizer.

    The table is reused only if it was fitted from the same data, features and tokenizer settings (recorded
    in ``sid_table.source.json``): training into an existing run directory with a changed tokenizer must not
    silently keep the old SIDs. A table without that record (e.g. from ``sidrec tokenize``) is trusted.
    """
    from sidrec.sid.pipeline import run_tokenize
    from sidrec.sid.table import SIDTable

    run = Path(run_dir)
    path, stamp = run / SID_TABLE_FILE, run / SID_SOURCE_FILE
    source = json.loads(json.dumps(sid_source(cfg, dataset)))  # normalised like the stored copy
    if path.exists():
        if stamp.exists() and _comparable(json.loads(stamp.read_text()), cfg) != _comparable(source, cfg):
            raise SidrecError(f"{path} was fitted with other data / features / tokenizer settings than this config "
                              f"(see {stamp}); use a new run_dir or delete the SID table to refit it")
        table = SIDTable.load(path)
        if not stamp.exists():
            write_json(stamp, source)
    else:
        table = run_tokenize(cfg, dataset, _features(cfg, dataset), run)
        write_json(stamp, source)
    return SIDCodes.from_table(table)


def _features(cfg: Config, dataset: Dataset) -> np.ndarray:
    from sidrec.features import item_features

    return item_features(cfg.features, dataset, progress=cfg.train.progress)


# ---------------------------------------------------------------------------------------------- samples
def prefix_samples(train: list[np.ndarray], max_len: int) -> dict[str, np.ndarray]:
    """Every prefix of every training sequence as a (history, next item) sample, as flat index arrays.

    Returns ``flat`` (all training items concatenated), and per sample ``user``, ``end`` (index in ``flat``
    of the target; the history is ``flat[end - hist_len:end]``) and ``hist_len`` (<= max_len).
    """
    lens = np.array([len(s) for s in train], dtype=np.int64)
    flat = np.concatenate(train).astype(np.int64) if len(train) else np.zeros(0, dtype=np.int64)
    starts = np.cumsum(lens) - lens
    per = np.maximum(lens - 1, 0)  # samples per user
    user = np.repeat(np.arange(len(train)), per)
    first = np.cumsum(per) - per  # index of each user's first sample
    t = np.arange(int(per.sum())) - np.repeat(first, per) + 1  # position of the target in its sequence, >= 1
    return {"flat": flat, "user": user, "end": starts[user] + t, "hist_len": np.minimum(t, max_len)}


def sample_histories(samples: dict[str, np.ndarray], rows: np.ndarray, width: int | None = None) -> np.ndarray:
    """Left-padded (-1) histories (len(rows), width) of prefix samples ``rows``; width defaults to the longest."""
    hl = samples["hist_len"][rows]
    t = int(hl.max()) if width is None else width
    end = samples["end"][rows]
    pos = end[:, None] - t + np.arange(t)[None, :]
    return np.where(pos >= (end - hl)[:, None], samples["flat"][np.maximum(pos, 0)], -1)


class TIGERTask(GroundedMixin, EvaluatorsMixin):
    """The TIGER :class:`~sidrec.training.trainer.Task`: model, prefix batches, beam-search evaluation."""

    scoring = "beam"  # content grounding: the beam's items + the content top-N, rescored (sidrec.fusion)

    def __init__(self, cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> None:
        self.cfg = cfg
        self.tcfg: TIGERConfig = cfg.section("tiger")
        self.split = split
        sids = semantic_ids(cfg, dataset, run_dir)
        if len(sids.primary) != split.n_items:
            raise SidrecError(f"the SID table has {len(sids.primary)} items, the dataset {split.n_items}; "
                              f"delete {Path(run_dir) / SID_TABLE_FILE} to refit")
        self.use_sids(sids)
        self.model: nn.Module = TIGER(self.sids.sizes, cfg.data.max_len, self.tcfg)
        self.samples = prefix_samples(split.train, cfg.data.max_len)
        self.windows = NextItemBatches(split.train, cfg.data.max_len, cfg.train.batch_size, cfg.seed, all_windows=True)
        self.beam_width = self.tcfg.beam
        self.eval_batch_users = max(1, self.tcfg.eval_batch_users)

    @property
    def sequence_training(self) -> bool:
        """``arch=decoder`` trains on whole windows of each history (one pass per user) instead of prefixes."""
        return self.tcfg.arch == "decoder"

    def use_sids(self, sids: SIDCodes | Any, source: str = "SID table") -> None:
        """Install the SIDs (a :class:`SIDCodes` or a ``SIDTable``) that histories are read as and beams decode to.

        One entry point for every table swap (DIGER's re-derived tables, DREAM's stage tables, a catalogue
        extended by ``sidrec add-items``): a table must keep the model's codebooks and cover the dataset's items.
        """
        codes = sids if isinstance(sids, SIDCodes) else SIDCodes.from_table(sids)
        if hasattr(self, "sids"):
            if list(codes.sizes) != list(self.sids.sizes):
                raise SidrecError(f"{source}: codebook sizes {list(codes.sizes)} differ from the run's "
                                  f"{list(self.sids.sizes)}")
            if len(codes.primary) < self.split.n_items:
                raise SidrecError(f"{source}: {len(codes.primary)} items, fewer than the run's {self.split.n_items}")
        self.sids = codes
        self.trie = SIDTrie.from_codes(codes)

    # -------------------------------------------------------------------------------- training
    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        if self.sequence_training:
            return self.windows(epoch)
        s = self.samples
        rng = np.random.default_rng([self.cfg.seed, epoch])
        out = []
        for idx in bucketed_batches(s["hist_len"], self.cfg.train.batch_size, rng):
            out.append({"history": torch.from_numpy(sample_histories(s, idx)),
                        "user": torch.from_numpy(s["user"][idx]), "target": torch.from_numpy(s["flat"][s["end"][idx]])})
        return out

    def codes_of(self, items: torch.Tensor) -> torch.Tensor:
        """Primary SIDs (..., L) of item indices (...); -1 items give all -1 codes."""
        codes = self.sids.primary[items.clamp(min=0)]
        return codes.masked_fill((items < 0).unsqueeze(-1), -1)

    def _users(self, users: torch.Tensor) -> torch.Tensor | None:
        return users if self.tcfg.user_buckets > 0 else None

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "window" in batch:
            # target=None: the window's every item is a target; scaled so every item weighs the same across
            # length-grouped batches (see NextItemBatches)
            return model(self.codes_of(batch["window"]), self._users(batch["user"]), None) * batch["scale"]
        return model(self.codes_of(batch["history"]), self._users(batch["user"]), self.codes_of(batch["target"]))

    # -------------------------------------------------------------------------------- inference
    def decode(self, model: nn.Module, es: EvalSet, k: int, exclude_history: bool = False,
               beam: int | None = None, keep_targets: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` distinct items (n, k) and their SID log-probabilities by constrained beam search.

        ``exclude_history`` drops items of the user's history from the beam's list (the list gets shorter;
        the search itself is not changed). With ``keep_targets`` the evaluation target is never dropped, as
        in :meth:`sidrec.eval.evaluator.Evaluator.evaluate_scores`.
        """
        core = model.module if hasattr(model, "module") else model
        core.eval()
        beam = beam or self.tcfg.beam
        n = len(es)
        items = torch.full((n, k), -1, dtype=torch.long)
        scores = torch.full((n, k), float("-inf"))
        bs = max(1, self.tcfg.eval_batch_users)
        order = es.length_order()  # the encoder input is padded only to each batch's longest history
        for s in range(0, n, bs):
            rows = order[s:s + bs]
            hist = es.padded_histories(rows, pad=-1)
            users = torch.from_numpy(es.users[rows]).long()
            with precision.autocast(self.cfg.train.bf16):
                res = beam_search(core, (self.codes_of(hist), self._users(users)), self.trie, beam, beam)
            it, sc = res.items, res.scores
            if exclude_history:
                if keep_targets:
                    tgt = torch.from_numpy(es.targets[rows]).view(-1, 1)
                    hist = hist.masked_fill(hist == tgt, -1)
                seen = ((it.unsqueeze(2) == hist.unsqueeze(1)) & (hist >= 0).unsqueeze(1)).any(2)
                it, sc = compact(it, sc, (it >= 0) & ~seen, beam)
            it, sc = compact(it, sc, it >= 0, k)
            idx = torch.from_numpy(rows)
            items[idx], scores[idx] = it, sc
        return items, scores

    def _decoder(self, model: nn.Module) -> nn.Module:
        """The step decoder that ``decode`` searches with (DIGER's wraps it)."""
        core = model.module if hasattr(model, "module") else model
        return core

    def candidate_log_probs(self, model: nn.Module, es: EvalSet, rows: np.ndarray, items: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (B, C) of each candidate item's primary SID for users ``rows`` of ``es``
        (teacher forced, batched over users x candidates; -1 candidates give -inf). The beam search's score
        of a SID is the same quantity, so beam items and content candidates are ranked on one scale."""
        core = self._decoder(model)
        core.eval()
        hist = es.padded_histories(rows, pad=-1)
        users = torch.from_numpy(es.users[rows]).long()
        with precision.autocast(self.cfg.train.bf16):
            return sequence_log_probs(core, (self.codes_of(hist), self._users(users)), self.codes_of(items))


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> TIGERTask:
    return TIGERTask(cfg, dataset, split, Path(run_dir))


__all__ = ["TIGERTask", "build", "prefix_samples", "sample_histories", "semantic_ids", "sid_source"]
