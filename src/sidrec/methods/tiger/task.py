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
(Recall@50 with the default beam 20) are not reported for the model alone (n/a: they would copy the @W
numbers; :func:`sidrec.fusion.drop_beyond`); set ``tiger.beam`` >= max(eval.ks) to measure them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec.config import Config
from sidrec.data.batches import NextItemBatches, bucketed_batches, prefix_samples, sample_histories
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import EvalSet, LeaveOneOut
from sidrec.decoding.beam import beam_search, compact, sequence_log_probs
from sidrec.decoding.trie import SIDCodes, SIDTrie
from sidrec.device import to_device
from sidrec.errors import SidrecError
from sidrec.methods.tiger.model import TIGER, TIGERConfig
from sidrec.sid.stage import semantic_ids
from sidrec.training.task import Task


class TIGERTask(Task):
    reads_sids = True
    """The TIGER :class:`~sidrec.training.trainer.Task`: model, prefix batches, beam-search evaluation."""

    scoring = "beam"  # content grounding: the beam's items + the content top-N, rescored (sidrec.fusion)

    def __init__(self, cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> None:
        self.cfg = cfg
        self.tcfg: TIGERConfig = cfg.tiger
        self.split = split
        sids = semantic_ids(cfg, dataset, run_dir)
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
        self.trie = SIDTrie.from_codes(codes).to(self.device)
        self.sids = codes.to(self.device)

    def place(self, device: torch.device) -> None:
        self.sids, self.trie = self.sids.to(device), self.trie.to(device)

    def item_codes(self) -> torch.Tensor:
        return self.sids.primary

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
               beam: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` distinct items (n, k) and their SID log-probabilities by constrained beam search.

        ``exclude_history`` (``eval.protocol: exclude``) removes every item of the user's history inside the
        search (:func:`sidrec.decoding.beam.beam_search`'s ``banned``), so the list keeps its width.
        """
        core = model.module if hasattr(model, "module") else model
        core.eval()
        beam = beam or self.tcfg.beam
        n = len(es)
        items = torch.full((n, k), -1, dtype=torch.long)
        scores = torch.full((n, k), float("-inf"))
        bs = max(1, self.tcfg.eval_batch_users)
        order = es.length_order()  # the encoder input is padded only to each batch's longest history
        dev = self.device
        for s in range(0, n, bs):  # searched on the model's device; one host copy per batch of users
            rows = order[s:s + bs]
            hist = to_device(es.padded_histories(rows, pad=-1), dev)
            users = to_device(torch.from_numpy(es.users[rows]).long(), dev)
            with self.autocast():
                banned = to_device(es.padded_seen(rows, pad=-1), dev) if exclude_history else None
                res = beam_search(core, (self.codes_of(hist), self._users(users)), self.trie, beam, beam, banned=banned)
            it, sc = compact(res.items, res.scores, res.items >= 0, k)
            idx = torch.from_numpy(rows)
            items[idx], scores[idx] = it.cpu(), sc.cpu()
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
        hist = to_device(es.padded_histories(rows, pad=-1), self.device)
        users = to_device(torch.from_numpy(es.users[rows]).long(), self.device)
        with self.autocast():
            return sequence_log_probs(core, (self.codes_of(hist), self._users(users)),
                                      self.codes_of(to_device(items, self.device)))


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> TIGERTask:
    return TIGERTask(cfg, dataset, split, Path(run_dir))


__all__ = ["TIGERTask", "build"]
