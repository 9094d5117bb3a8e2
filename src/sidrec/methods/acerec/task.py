"""ACERec recipe: item features -> long OPQ semantic IDs -> ATM + intent-token Transformer trained on every
position of each user sequence -> holistic scoring of the full catalogue -> Evaluator.

SIDs come from the shared tokenizer stage (:func:`sidrec.methods.tiger.task.semantic_ids`: same run-directory
reuse and staleness check as TIGER). The configs set ``tokenizer.kind: opq`` with ``subspaces`` x
``subspace_codes`` (paper 32 x 256). ACERec needs the tokenizer's *raw* m codes: when two items share all
m codes the shared stage appends a disambiguation code (``extra_code: if_needed``), which ACERec models as one
more subspace with its own codebook size (``acerec.collision_code: true``, the default), so items with identical
content codes can still be told apart (the synthetic data needs it: with attribute features, groups of up to 11
items there share brand and category, hence identical features and OPQ codes). With ``collision_code: false``
the model reads the first m columns only; a table where that leaves items sharing every code is refused
(:func:`refuse_structural_ties`).

Training batches are SASRec-style: each user's most recent ``max_len + 1`` training items, left-padded and
grouped by length (:func:`~sidrec.methods.sasrec.task.bucketed_batches`); the state after item t is trained to
predict item t+1, for every t in one forward pass. Evaluation runs the real inference procedure: one forward
pass per user, (m, K) log-probabilities, gather-and-sum over all items (:class:`HolisticScorer`), ranked by
the shared Evaluator -- full-catalogue and exact, so no invalid IDs can be produced.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sidrec.config import Config
from sidrec.data.batches import NextItemBatches
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import LeaveOneOut
from sidrec.decoding.holistic import HolisticScorer
from sidrec.decoding.trie import SIDCodes
from sidrec.device import to_device
from sidrec.errors import SidrecError
from sidrec.methods.acerec.model import ACERec, ACERecConfig
from sidrec.sid.config import RQ_KINDS, TokenizerConfig
from sidrec.sid.stage import semantic_ids
from sidrec.training.task import Task


def raw_codes(sids: SIDCodes, tok: TokenizerConfig, collision_code: bool = False) -> tuple[torch.Tensor, list[int]]:
    """The tokenizer's own codes (n_items, m) and their codebook sizes, without the appended collision code
    unless ``collision_code`` (then it is one more column; a table without one is used as it is)."""
    m = tok.levels if tok.kind in RQ_KINDS else tok.subspaces
    if len(sids.sizes) < m:
        raise SidrecError(f"the SID table has {len(sids.sizes)} codes per item, tokenizer.kind={tok.kind} gives {m}")
    n = len(sids.sizes) if collision_code else m
    return sids.primary[:, :n].clone(), [int(s) for s in sids.sizes[:n]]


def refuse_structural_ties(codes: torch.Tensor, collision_code: bool) -> None:
    """Stop (one line) when items share every code the model reads: holistic scoring sums per-code
    log-probabilities, so such items get the same score for every user -- ties no training can break (63% of
    the top-10 slots of a 2,420-item shop with 3-code IDs and the collision code ignored, issue #27)."""
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    shared = int((counts[inverse] > 1).sum())
    if shared == 0:
        return
    fix = ("use a tokenizer with more codes per item (tokenizer.kind=opq, tokenizer.subspaces=32)" if collision_code
           else "set acerec.collision_code=true (the appended collision code becomes one more subspace)")
    raise SidrecError(f"acerec: {shared} of {codes.shape[0]} items share all {codes.shape[1]} "
                      f"codes the model reads with another item, so they would tie in every ranking; {fix}")


class ACERecTask(Task):
    scoring = "dense"  # holistic: every item's summed code log-probabilities
    """The ACERec :class:`~sidrec.training.trainer.Task`: model, sequence batches, holistic evaluation."""

    def __init__(self, cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> None:
        self.cfg = cfg
        self.acfg: ACERecConfig = cfg.acerec
        self.split = split
        sids = semantic_ids(cfg, dataset, run_dir)
        codes, K = raw_codes(sids, cfg.tokenizer, self.acfg.collision_code)  # type: ignore[attr-defined]
        refuse_structural_ties(codes, self.acfg.collision_code)
        self.model: nn.Module = ACERec(codes, K, cfg.data.max_len, self.acfg, split.item_freq)
        self.scorer = HolisticScorer(codes, self.acfg.eval_chunk)
        self.batches = NextItemBatches(split.train, cfg.data.max_len, cfg.train.batch_size, cfg.seed)
        self.eval_batch_size = max(1, self.acfg.eval_batch_users)

    # -------------------------------------------------------------------------------- training
    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        return self.batches(epoch)

    def place(self, device: torch.device) -> None:
        self.scorer.to(device)

    def item_codes(self) -> torch.Tensor:
        return self.scorer.codes_t.t()

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["seq"], batch["target"])

    # -------------------------------------------------------------------------------- inference
    def _core(self, model: nn.Module) -> ACERec:
        core = model.module if hasattr(model, "module") else model
        if core.training:  # eval() walks every module, a cost per served request when called each time
            core.eval()
        return core  # type: ignore[return-value]

    def log_probs(self, model: nn.Module, hist: torch.Tensor,
                  items: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, m, K) per-subspace log-probabilities of the next item after left-padded histories (B, T).

        ``items``: the catalogue's merged tokens (:meth:`item_table`), computed once per evaluation pass.
        """
        with torch.no_grad(), self.autocast():
            return self._core(model).log_probs(to_device(hist, self.device), items).float()

    def item_table(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The catalogue's summaries and latents, rebuilt only when the weights changed since the last call.

        Why cached: a server answering one user at a time must not re-merge 12k items per request; the key is
        the parameters' in-place version counters, which every optimiser step and weight load bumps.
        """
        core = self._core(model)
        key = (id(core), self.cfg.train.bf16, str(self.device), *(p._version for p in core.parameters()))
        cached = self.__dict__.get("_item_table")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad(), self.autocast():
            table = core.item_table()
        self.__dict__["_item_table"] = (key, table)
        return table

    def model_scores(self, model: nn.Module, hist: torch.Tensor) -> torch.Tensor:
        """(B, n_items) holistic scores (fp32) after left-padded histories; the catalogue table is cached."""
        return self.scorer.scores(self.log_probs(model, hist, self.item_table(model)))


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> ACERecTask:
    return ACERecTask(cfg, dataset, split, Path(run_dir))


__all__ = ["ACERecTask", "build", "raw_codes"]
