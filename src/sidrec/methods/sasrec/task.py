"""SASRec task: length-bucketed batches of users, every position predicts its next item (or, with
``sasrec.train_rows: prefixes``, random batches of prefixes, each predicting the item after it)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sidrec.config import Config
from sidrec.data.batches import NextItemBatches, PrefixBatches
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import LeaveOneOut
from sidrec.device import to_device
from sidrec.methods.sasrec.model import SASRec
from sidrec.training.task import Task


class SASRecTask(Task):
    scoring = "dense"
    logits_unnormalised = True  # fusion adds lambda x similarity to log-softmax(logits)

    def __init__(self, cfg: Config, split: LeaveOneOut, content: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.split = split
        self.model: nn.Module = SASRec(split.n_items, cfg.data.max_len, cfg.sasrec, content)
        rows = PrefixBatches if cfg.sasrec.train_rows == "prefixes" else NextItemBatches
        self.batches = rows(split.train, cfg.data.max_len, cfg.train.batch_size, cfg.seed)
        self.eval_batch_size = cfg.eval.batch_size

    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        return self.batches(epoch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["seq"], batch["target"])

    def model_scores(self, model: nn.Module, hist: torch.Tensor) -> torch.Tensor:
        """(B, n_items) logits after left-padded histories, read out in fp32.

        Why fp32: under bf16 autocast the logits themselves are bf16 (8 bits of mantissa), and SASRec's
        top-10 had 23% of its slots tied; the Transformer may run in bf16, the ranking never does.
        """
        core = model.module if hasattr(model, "module") else model
        if core.training:  # eval() walks every module: 0.4 ms of a served request when called each time
            core.eval()
        with torch.no_grad():
            with self.autocast():
                h = core.encode(to_device(hist, self.device))[:, -1]
            return core.logits(h.float())  # outside autocast: an fp32 product with the fp32 item table


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> SASRecTask:
    content = None
    if cfg.sasrec.item_content != "none":  # the same vectors (and cache) as the SID tokenizers and the fusion
        from sidrec.features import item_features

        content = torch.from_numpy(item_features(cfg.features, dataset, progress=cfg.train.progress))
    return SASRecTask(cfg, split, content)
