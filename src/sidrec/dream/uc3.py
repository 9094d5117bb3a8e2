"""UC3: the frozen backbone votes between an item's candidate SIDs using the contexts it was bought in.

Why the backbone: it is the component that must eventually *generate* the cold item's SID. A candidate that
the trained model already finds likely after the histories of the item's real buyers is one it will
produce at inference; asking the model itself is cheaper and more faithful than any proxy.

For each training interaction of a cold item (a user history followed by the item) and each candidate SID
``k``: ``NLL_k`` = teacher-forced negative log-likelihood of the SID under the frozen model. Per context,
``p = softmax(-NLL / tau_c)`` and the context's confidence ``omega = 1 - H(p) / log K``; the item's vote for
candidate ``k`` is ``sum(omega * p_k) / (sum(omega) + eps)``. The item switches to the winner only when it has
at least ``min_support`` contexts and the top-2 margin is at least ``min_margin``; otherwise it keeps
candidate 0: CART's best SID Phi_R. The backbone is the bridge model trained on the CART table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sidrec.device import to_device
from sidrec.methods.tiger.model import TIGER
from sidrec.progress import track


def level_log_probs(model: TIGER, memory: torch.Tensor, valid: torch.Tensor, sids: torch.Tensor) -> list[torch.Tensor]:
    """Teacher-forced log-softmax per SID position, list of (N, K_l), for SIDs (N, L) after encoder rows (N, ...)."""
    h = model.decode(memory, valid, sids[:, :-1])
    return [model.level_logits(h[:, lv], lv).float().log_softmax(-1) for lv in range(model.length)]


def sid_nll(model: TIGER, history: torch.Tensor, users: torch.Tensor | None, sids: torch.Tensor,
            reduce: str = "sum") -> torch.Tensor:
    """NLL (B, H) of H hypotheses (B, H, L) per user given history SIDs (B, T, L); +inf for -1 hypotheses.

    ``reduce``: ``sum`` over SID positions (the sequence's NLL) or ``mean`` (the paper's eq. 13: a per-position
    average, so a vote over candidates is not L times sharper than the per-token confidence).
    The history is encoded once per user and shared by its hypotheses (:meth:`TIGER.decode_hypotheses`).
    """
    memory, valid = model.encode(history, users)
    return sid_nll_from_memory(model, memory, valid, sids, reduce)


def hypothesis_log_probs(model: TIGER, memory: torch.Tensor, valid: torch.Tensor, sids: torch.Tensor
                         ) -> list[torch.Tensor]:
    """Teacher-forced log-softmax per SID position, list of (B, H, K_l), for H hypotheses (B, H, L) per encoded
    row (-1 hypotheses are read as code 0; callers mask them). The history is shared by its hypotheses
    (:meth:`TIGER.decode_hypotheses`)."""
    h = model.decode_hypotheses(memory, valid, sids.clamp(min=0)[..., :-1])  # (B, H, L, d)
    return [model.level_logits(h[:, :, lv], lv).float().log_softmax(-1) for lv in range(model.length)]


def sid_nll_from_memory(model: TIGER, memory: torch.Tensor, valid: torch.Tensor, sids: torch.Tensor,
                        reduce: str = "sum") -> torch.Tensor:
    """:func:`sid_nll` for an encoder output computed once and reused."""
    return nll_from_log_probs(hypothesis_log_probs(model, memory, valid, sids), sids, reduce)


def nll_from_log_probs(log_probs: list[torch.Tensor], sids: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """NLL (B, H) of hypotheses (B, H, L) from their :func:`hypothesis_log_probs` (CPDE also reads those for its
    KL term, so they are computed once); +inf for -1 hypotheses."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    safe = sids.clamp(min=0)
    per = -torch.stack([lp.gather(2, safe[:, :, lv:lv + 1]).squeeze(2) for lv, lp in enumerate(log_probs)], 2)
    nll = per.sum(2) if reduce == "sum" else per.mean(2)
    return torch.where((sids >= 0).all(2), nll, torch.full_like(nll, float("inf")))


@dataclass
class UC3Decision:
    """Votes, support and the switch decision per cold item."""

    votes: np.ndarray  # (n, C) vote per candidate (0 for invalid candidates or items without contexts)
    support: np.ndarray  # (n,) number of contexts
    margin: np.ndarray  # (n,) top-1 minus top-2 vote
    winner: np.ndarray  # (n,) index of the top-voted candidate
    switch: np.ndarray  # (n,) True when the gates pass and the winner is not candidate 0
    chosen: np.ndarray  # (n,) the candidate each item ends with

    @property
    def switch_rate(self) -> float:
        return float(self.switch.mean()) if len(self.switch) else 0.0


def uc3_decide(nll: np.ndarray | torch.Tensor, ctx_item: np.ndarray, n: int, tau: float = 1.0,
               min_support: int = 3, min_margin: float = 0.05, eps: float = 1e-8) -> UC3Decision:
    """Aggregate per-context NLLs (n_ctx, C) of candidates into votes and gated switches for ``n`` items."""
    nll_t = torch.as_tensor(np.asarray(nll), dtype=torch.float64)
    ctx = torch.as_tensor(np.asarray(ctx_item), dtype=torch.long)
    c = nll_t.shape[1] if nll_t.dim() == 2 else 1
    logits = (-nll_t / tau).masked_fill(~torch.isfinite(nll_t), float("-inf"))
    p = logits.softmax(1).nan_to_num(0.0)
    n_valid = torch.isfinite(nll_t).sum(1)
    ent = -(p * p.clamp(min=1e-300).log()).sum(1)
    omega = torch.where(n_valid > 1, 1 - ent / n_valid.clamp(min=2).double().log(), torch.zeros_like(ent))
    num = torch.zeros(n, c, dtype=torch.float64).index_add_(0, ctx, omega.unsqueeze(1) * p)
    den = torch.zeros(n, dtype=torch.float64).index_add_(0, ctx, omega)
    votes = num / (den.unsqueeze(1) + eps)
    support = torch.bincount(ctx, minlength=n)
    top = votes.topk(min(2, c), dim=1)
    winner = top.indices[:, 0]
    margin = top.values[:, 0] - (top.values[:, 1] if c > 1 else 0.0)
    switch = (support >= min_support) & (margin >= min_margin) & (winner != 0)
    chosen = torch.where(switch, winner, torch.zeros_like(winner))
    return UC3Decision(votes.numpy(), support.numpy(), margin.numpy(), winner.numpy(), switch.numpy(), chosen.numpy())


def uc3_vote(task: Any, samples: dict[str, np.ndarray], ctx_rows: np.ndarray, ctx_item: np.ndarray, users: np.ndarray,
         cands: np.ndarray, dcfg: Any, progress: bool = True) -> UC3Decision:
    """UC3 decision over candidate SIDs (n, C, L): the task's frozen model scores them in each context, batched.

    ``ctx_rows`` are prefix samples (histories read through the task's installed SID table) whose target is
    item ``ctx_item`` (an index into ``cands``); ``users`` maps a sample's sequence to its user index.
    """
    from sidrec.data.batches import sample_histories

    model = task.model
    model.eval()
    nlls = []
    dev = task.device
    cands_t = torch.from_numpy(cands).to(dev)
    with torch.no_grad():
        for s in track(range(0, len(ctx_rows), dcfg.uc3_batch), "UC3 scoring", enabled=progress):
            r = ctx_rows[s:s + dcfg.uc3_batch]
            hist = to_device(torch.from_numpy(sample_histories(samples, r)), dev)
            u = to_device(torch.from_numpy(users[samples["user"][r]]), dev)
            pick = to_device(torch.from_numpy(np.asarray(ctx_item[s:s + len(r)])), dev)
            nlls.append(sid_nll(model, task.codes_of(hist), task._users(u), cands_t[pick], "mean"))
    nll = torch.cat(nlls).cpu().numpy() if nlls else np.zeros((0, cands.shape[1]))
    return uc3_decide(nll, ctx_item, len(cands), dcfg.uc3_tau, dcfg.uc3_min_support, dcfg.uc3_min_margin)


__all__ = ["UC3Decision", "hypothesis_log_probs", "level_log_probs", "nll_from_log_probs", "sid_nll",
           "sid_nll_from_memory", "uc3_decide", "uc3_vote"]
