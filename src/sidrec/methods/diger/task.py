"""DIGER recipe: a pretrained RQ-VAE (the shared tokenizer stage) + a TIGER recommender, trained jointly.

Everything TIGER does (prefix samples, length-bucketed batches, constrained beam search, distinct items) is
inherited from :class:`~sidrec.methods.tiger.task.TIGERTask`; what changes:

* the model is :class:`~sidrec.methods.diger.model.DIGER` (TIGER + the RQ-VAE loaded from the run's ``tokenizer/``),
  and training batches' SIDs are re-derived through the quantiser at every step;
* three optimiser groups (:meth:`DIGERTask.param_groups`): the recommender at ``train.lr``, the tokenizer at
  ``diger.tokenizer_lr`` (the encoder is frozen by default) and SDUD's sigma at ``diger.sdud_lr``;
* the SID table is a function of the weights: before every epoch and every evaluation it is re-derived
  deterministically (float64; Sinkhorn-balanced or nearest codes per ``diger.derive``; the shared
  content-ordered collision resolution) and installed as the recommender's cached table, which is also
  how ``sidrec evaluate`` / ``recommend`` reproduce it from a checkpoint; the evaluated table is written to
  ``sid_table.diger.parquet`` (the last write is the best checkpoint's, by the final evaluation);
* diagnostics per re-derivation go to ``diger_log.jsonl`` (utilisation per level, SID drift from the
  starting table, collision rate, noise scale, per-level median top-1/top-2 logit gap and the share of
  codes one draw of the training noise flips) and ``diger_training.png``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec.config import Config
from sidrec.data.dataset import Dataset
from sidrec.data.protocol import EvalSet, LeaveOneOut
from sidrec.errors import SidrecError
from sidrec.io import atomic_path
from sidrec.methods.diger.model import DIGER, DIGERConfig
from sidrec.methods.tiger.task import TIGERTask
from sidrec.sid.collisions import collision_stats
from sidrec.sid.diagnostics import plot_usage_panels
from sidrec.sid.pipeline import TOKENIZER_DIR, resolve_codes
from sidrec.sid.rqvae import RQVAETokenizer, sinkhorn_codes
from sidrec.sid.stage import run_features
from sidrec.sid.table import SIDTable
from sidrec.training.state import STATE_FILE

DIGER_TABLE_FILE = "sid_table.diger.parquet"
DIGER_LOG_FILE = "diger_log.jsonl"
DIGER_PLOT_FILE = "diger_training.png"
DIGER_USAGE_FILE = "diger_usage.png"  # code usage heat maps: start vs the last re-derivation


class DIGERTask(TIGERTask):
    """TIGER's task with a tokenizer in the training graph."""

    def __init__(self, cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> None:
        tok_cfg = cfg.tokenizer
        if tok_cfg.kind != "rqvae":
            raise SidrecError(f"method=diger trains an RQ-VAE jointly; set tokenizer.kind=rqvae (got '{tok_cfg.kind}')")
        super().__init__(cfg, dataset, split, run_dir)
        self.run_dir = Path(run_dir)
        self.dcfg: DIGERConfig = cfg.diger
        self.dcfg.check()
        self.tokenizer = RQVAETokenizer.load(self.run_dir / TOKENIZER_DIR)
        assert self.tokenizer.model is not None
        self.emb = run_features(cfg, dataset).astype(np.float32)
        x = (torch.from_numpy(self.emb) - self.tokenizer._mean) / self.tokenizer._scale
        self.item_ids = dataset.item_ids
        rqvae = copy.deepcopy(self.tokenizer.model).float().train()
        self.model = DIGER(self.model, rqvae, x, self.sids.primary[:, -1].clone(), self.dcfg)
        # the SIDs DIGER starts from: the pretrained tokenizer's table under DIGER's derivation (equal to the
        # two-stage table with derive=argmin; Sinkhorn rebalances it before any joint training)
        self.start_codes = torch.from_numpy(self.derive_table()[1]).clone()
        self.generator: torch.Generator | None = torch.Generator().manual_seed(cfg.seed)
        self._log_index = 0
        log = self.run_dir / DIGER_LOG_FILE
        ckpt = self.run_dir / "checkpoints"
        if not (ckpt / STATE_FILE).exists() and log.exists():
            log.unlink()  # a fresh run (nothing to resume or evaluate): start the SID log afresh

    def place(self, device: torch.device) -> None:
        super().place(device)
        if self.generator is None or self.generator.device != device:  # the noise is drawn where the latents are
            # (the meta device of the shape tests has no generator: the global RNG there)
            self.generator = None if device.type == "meta" else torch.Generator(device).manual_seed(self.cfg.seed)

    # -------------------------------------------------------------------------------- optimiser
    def param_groups(self, weight_decay: float, lr: float) -> list[dict[str, Any]]:
        """Recommender at ``lr`` (decay on matrices), tokenizer at ``diger.tokenizer_lr``, sigma at its own."""
        m: DIGER = self.model  # type: ignore[assignment]
        rec = [p for p in m.tiger.parameters() if p.requires_grad]
        tok = [p for p in m.rqvae.parameters() if p.requires_grad]
        groups = [{"params": [p for p in rec if p.dim() >= 2], "weight_decay": weight_decay, "lr": lr},
                  {"params": [p for p in rec if p.dim() < 2], "weight_decay": 0.0, "lr": lr},
                  {"params": tok, "weight_decay": 0.0, "lr": self.dcfg.tokenizer_lr}]
        if m.sigma is not None:
            groups.append({"params": [m.sigma], "weight_decay": 0.0, "lr": self.dcfg.sdud_lr})
        return [g for g in groups if g["params"]]

    # -------------------------------------------------------------------------------- SIDs from weights
    @staticmethod
    def _core(model: nn.Module) -> DIGER:
        return model.module if hasattr(model, "module") else model  # type: ignore[return-value]

    @torch.no_grad()
    def derive_table(self, model: nn.Module | None = None) -> tuple[SIDTable, np.ndarray]:
        """The deterministic SID table of the current tokenizer weights (and the unresolved codes).

        Re-derivation is skipped when the tokenizer weights equal those of the last derivation: the trainer
        asks for epoch-0 batches twice, and an evaluation is followed by an epoch start with the same weights.
        """
        core = self._core(model or self.model)
        weights = [p.detach().clone() for p in core.rqvae.parameters()]
        last = self.__dict__.get("_derived")
        if last is not None and all(torch.equal(a, b) for a, b in zip(last[0], weights, strict=True)):
            return last[1], last[2]
        self.tokenizer.model = copy.deepcopy(core.rqvae).float().eval().cpu()  # derived on the host, in float64
        self.tokenizer._model64 = None
        if self.dcfg.derive == "sinkhorn":  # balanced over the catalogue, in float64 like encode()
            m64 = self.tokenizer._float64()
            x = (torch.from_numpy(self.emb).double() - self.tokenizer._mean.double()) / self.tokenizer._scale.double()
            codes = sinkhorn_codes(m64.quantizer, m64.encoder(x), self.dcfg.sinkhorn_epsilon,
                                   self.dcfg.sinkhorn_iters).numpy()
        else:
            codes = self.tokenizer.encode(self.emb)
        resolved, sizes = resolve_codes(self.tokenizer, self.emb, codes)
        table = SIDTable.from_codes(resolved, sizes, self.item_ids)
        self._derived = (weights, table, codes)
        return table, codes

    def refresh(self, model: nn.Module | None = None, when: str = "") -> SIDTable:
        """Re-derive the SID table, install it for decoding and training, and log SID diagnostics."""
        core = self._core(model or self.model)
        table, codes = self.derive_table(core)
        self.use_sids(table)
        core.collision.copy_(self.sids.primary[:, -1])
        core.table.copy_(self.sids.primary[:, :-1])
        diag = core.diagnose(torch.Generator(self.device).manual_seed(self.cfg.seed + self._log_index))
        sizes = core.rqvae.quantizer.sizes
        util = [float(np.unique(codes[:, lv]).size / k) for lv, k in enumerate(sizes)]
        drift = float((torch.from_numpy(codes) != self.start_codes).any(1).float().mean())
        rec = {"index": self._log_index, "when": when, "utilization": util, "sid_drift": drift,
               "collision_rate": collision_stats(codes).rate, "noise_scale": core.noise_scale(), **diag,
               "time": time.time(), **{f"last_{k}": float(v) for k, v in core.last.items()}}
        self._log_index += 1
        with open(self.run_dir / DIGER_LOG_FILE, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        return table

    # -------------------------------------------------------------------------------- training
    def train_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        self.refresh(when=f"epoch {epoch} start")
        return super().train_batches(epoch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "window" in batch:  # arch=decoder: every item of the window is a target (as TIGER's windows)
            return model(batch["window"], self._users(batch["user"]), None, self.generator) * batch["scale"]
        return model(batch["history"], self._users(batch["user"]), batch["target"], self.generator)

    # -------------------------------------------------------------------------------- inference
    def decode(self, model: nn.Module, es: EvalSet, k: int, exclude_history: bool = False,
               beam: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return super().decode(self._core(model).tiger, es, k, exclude_history, beam)

    def _decoder(self, model: nn.Module) -> nn.Module:
        return self._core(model).tiger

    def evaluate(self, model: nn.Module, split: str, max_users: int = 0, shortest: bool = False
                 ) -> dict[str, dict[str, Any]]:
        table = self.refresh(model, when=f"evaluate {split}")
        table.save(self.run_dir / DIGER_TABLE_FILE)
        self.plot()
        return super().evaluate(model, split, max_users, shortest)

    def recommend(self, eval_set: EvalSet, k: int, exclude_history: bool | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        self.refresh(when="recommend")
        return super().recommend(eval_set, k, exclude_history)

    def plot(self) -> None:
        """Utilisation, SID drift, collision rate and noise scale over training (``diger_training.png``),
        and per-level usage heat maps of the starting and the current SIDs (``diger_usage.png``)."""
        if "_derived" in self.__dict__:
            sizes = list(self._core(self.model).rqvae.quantizer.sizes)
            plot_usage_panels({"code usage at the start (two-stage SIDs), log(1 + items)": self.start_codes.numpy(),
                               "code usage after joint training, log(1 + items)": self._derived[2]},
                              sizes, self.run_dir / DIGER_USAGE_FILE)
        path = self.run_dir / DIGER_LOG_FILE
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if r["when"].startswith("epoch")]
        if len(rows) < 2:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = np.arange(len(rows))
        fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
        for lv in range(len(rows[0]["utilization"])):
            ax[0].plot(x, [r["utilization"][lv] for r in rows], label=f"level {lv + 1}")
        ax[0].set_title("code utilisation")
        ax[0].legend()
        ax[1].plot(x, [r["sid_drift"] for r in rows], label="SID drift")
        ax[1].plot(x, [r["collision_rate"] for r in rows], label="collision rate")
        ax[1].set_title("SIDs vs the start")
        ax[1].legend()
        ax[2].plot(x, [r["noise_scale"] for r in rows])
        ax[2].set_title("noise scale")
        for a in ax:
            a.set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(self.run_dir / DIGER_PLOT_FILE) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def build(cfg: Config, dataset: Dataset, split: LeaveOneOut, run_dir: Path) -> DIGERTask:
    return DIGERTask(cfg, dataset, split, Path(run_dir))


__all__ = ["DIGERTask", "build"]
