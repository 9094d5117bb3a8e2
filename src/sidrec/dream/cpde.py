"""CPDE: a dynamic beam of weighted SID hypotheses per cold item, learned by LoRA adapters.

Why several hypotheses: committing a cold item to one SID before it has enough feedback is the mistake
DREAM exists to avoid. Each cold item keeps ``B`` SIDs with weights; training raises the likelihood of all
of them in proportion to their weights (``L_soft``), and the weights follow which SID the model finds
easiest to produce in the item's real contexts.

Why LoRA: the backbone already serves warm items well. Rank-``r`` adapters (peft) on the attention query and
value projections carry what cold samples teach: for a cold sample every adapted layer computes
``sg(W0 x) + B A x`` and nothing reaches the base weights (eq. 18); warm samples train base weights and
adapters. A KL term keeps the cold SID
positions near a frozen reference copy and an entropy-gated distillation term keeps warm predictions near it
too. After training the adapters are merged into the weights (one plain TIGER for deployment).

Loss per step: ``lambda_soft * L_soft + lambda_kl * KL(p_theta || p_ref) + lambda_kd * L_KD`` where
``L_soft = sum_b w_b NLL(SID_b | history)`` over a batch of cold samples, the KL is taken at the SID
positions of the item's current best hypothesis, and ``L_KD = sum_l g_l KL(p_ref || p_theta)`` over a batch
of warm samples with gate ``g_l = 1 - H(p_ref,l) / log K_l`` (confident teacher positions count most).
Not in the paper, off by default: ``+ lambda_warm * NLL(own SID)`` on the warm samples (warm samples already
train the full weights; the term over-trained them). After ``warmup_epochs``, every ``update_every`` steps each
item's hypotheses are re-scored by their recent mean NLL and the weights move toward the evidence, gated by
the confidence of the best hypothesis (:func:`update_weights`); only items seen since the last update are updated.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from sidrec.data.batches import sample_histories
from sidrec.device import to_device
from sidrec.dream.config import DREAMConfig
from sidrec.dream.uc3 import hypothesis_log_probs, level_log_probs, nll_from_log_probs
from sidrec.methods.tiger.model import TIGER
from sidrec.progress import track


@dataclass
class CPDEResult:
    """The merged model, final hypothesis weights and the weight history (mean weight per slot, per update)."""

    model: TIGER
    weights: np.ndarray  # (n_cold, B)
    weight_history: list[list[float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    lambda_kd: float = 0.0  # the distillation weight used (resolved when the config says 'auto')
    lambda_warm: float = 0.0  # the warm-NLL weight used


def add_lora(model: TIGER, rank: int, alpha: float) -> torch.nn.Module:
    """A peft LoRA wrapper around a copy of ``model`` (q and v projections only; base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    conf = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none")
    return get_peft_model(copy.deepcopy(model), conf)


@contextlib.contextmanager
def base_output_stopped(peft_model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every LoRA-adapted layer computes ``sg(W0 x) + B A x`` (eq. 18 for cold samples) and
    the base weights are frozen: what a cold sample teaches reaches the adapters only, and no gradient is
    computed for a base weight at all (it would only be thrown away)."""
    handles = [m.base_layer.register_forward_hook(lambda _m, _i, out: out.detach())
               for m in peft_model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    base = [p for n, p in peft_model.named_parameters() if "lora_" not in n and p.requires_grad]
    for p in base:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p in base:
            p.requires_grad_(True)


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def train_cpde(base: TIGER, codes_of: Callable[[torch.Tensor], torch.Tensor], samples: dict[str, np.ndarray],
               cold_index: np.ndarray, hyps: np.ndarray, alpha: np.ndarray, cfg: DREAMConfig,
               users_fn: Callable[[torch.Tensor], torch.Tensor | None], seed: int = 0,
               progress: bool = True) -> CPDEResult:
    """Fine-tune LoRA adapters on cold samples with weighted hypotheses; returns the merged model.

    ``samples``: prefix samples (``flat``, ``user``, ``end``, ``hist_len``); ``cold_index`` (n_items,) maps an
    item to its row in ``hyps`` (n_cold, B, L) or -1 for warm items; ``alpha`` (n_cold, B) initial weights
    (0 for invalid hypotheses). ``codes_of`` maps item indices to history SIDs, ``users_fn`` user indices to
    the model's user input (or None).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    peft_model = add_lora(base, cfg.lora_rank, cfg.lora_alpha)
    model: TIGER = peft_model.base_model.model  # the TIGER with LoRA layers injected
    model.train()
    for n, p_ in peft_model.named_parameters():  # eq. 18: warm samples train the base weights too; cold samples
        if "lora_" not in n:                      # only the adapters (below)
            p_.requires_grad_(True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.cpde_lr)
    def stop() -> contextlib.AbstractContextManager:
        return base_output_stopped(peft_model)

    dev = next(model.parameters()).device  # the backbone's device (the run's train.device)
    hyps_t = torch.as_tensor(hyps, dtype=torch.long).to(dev)
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32).to(dev)
    w = alpha_t.clone()
    valid_h = (hyps_t >= 0).all(2)
    tgt = samples["flat"][samples["end"]]
    ci = cold_index[tgt]
    has_valid = valid_h.any(1).cpu().numpy()
    cold_rows = np.flatnonzero((ci >= 0) & has_valid[np.maximum(ci, 0)])  # items with at least one valid SID
    warm_rows = np.flatnonzero(ci < 0)
    nll_sum = torch.zeros_like(w)
    nll_cnt = torch.zeros_like(w)
    history: list[list[float]] = [w.sum(0).div(max(1, len(w))).tolist()]
    losses: list[dict[str, float]] = []
    bs = cfg.cpde_batch_size
    n_warm = max(1, int(round(bs * cfg.cpde_warm_ratio))) if len(warm_rows) else 0
    steps = max(1, math.ceil(len(cold_rows) / bs))
    ratio = len(warm_rows) / max(1, len(cold_rows))
    lambda_kd = cfg.lambda_kd if cfg.lambda_kd >= 0 else ratio
    lambda_warm = cfg.lambda_warm
    step = 0

    def batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        hist = to_device(torch.from_numpy(sample_histories(samples, rows)), dev)
        return codes_of(hist), users_fn(to_device(torch.from_numpy(samples["user"][rows]), dev))

    for epoch in range(cfg.cpde_epochs):
        order = rng.permutation(cold_rows)
        sums = torch.zeros(5, dtype=torch.float64, device=dev)  # read once per epoch (no per-step host sync)
        for s in track(range(steps), f"CPDE epoch {epoch + 1}/{cfg.cpde_epochs}", enabled=progress):
            rows = order[s * bs:(s + 1) * bs]
            if len(rows) == 0:
                continue
            hist, users = batch(rows)
            item = to_device(torch.from_numpy(ci[tgt[rows]]), dev)
            ar = torch.arange(len(rows), device=dev)
            h = hyps_t[item]  # (b, B, L)
            opt.zero_grad(set_to_none=True)
            with stop():  # cold samples: the adapters learn, the base weights do not (paper: eq. 18)
                mem, val = model.encode(hist, users)
                lps = hypothesis_log_probs(model, mem, val, h)  # per level (b, B, K): one decoding for both terms
                nll = nll_from_log_probs(lps, h, "mean")  # (b, B), inf for invalid
                wb = w[item] * valid_h[item]
                wb = wb / wb.sum(1, keepdim=True).clamp(min=1e-8)
                soft = (wb * nll.nan_to_num(posinf=0.0)).sum(1).mean()
                # KL to the reference at the SID positions of the current best hypothesis
                bi = (w[item] * valid_h[item]).argmax(1)
                best = h[ar, bi]
                lp = [x[ar, bi] for x in lps]
                with torch.no_grad():
                    rmem, rval = ref.encode(hist, users)
                    lp_ref = level_log_probs(ref, rmem, rval, best)
                kl = torch.stack([_kl(a, b).mean() for a, b in zip(lp, lp_ref, strict=True)]).mean()
                (cfg.lambda_soft * soft + cfg.lambda_kl * kl).backward()
            kd = torch.zeros((), device=dev)
            warm_nll = torch.zeros((), device=dev)
            if n_warm:
                wr = rng.choice(warm_rows, n_warm, replace=len(warm_rows) < n_warm)
                whist, wusers = batch(wr)
                wt = codes_of(to_device(torch.from_numpy(tgt[wr]), dev))
                wmem, wval = model.encode(whist, wusers)
                wlp = level_log_probs(model, wmem, wval, wt)
                with torch.no_grad():
                    rm, rv = ref.encode(whist, wusers)
                    wlp_ref = level_log_probs(ref, rm, rv, wt)
                terms = []
                for a, b in zip(wlp, wlp_ref, strict=True):
                    gate = 1 - (-(b.exp() * b).sum(-1)) / math.log(b.shape[-1]) if cfg.kd_gate else 1.0
                    terms.append((gate * _kl(b, a)).mean())
                kd = torch.stack(terms).mean()
                warm_nll = -torch.stack([a.gather(1, wt[:, i:i + 1]).mean() for i, a in enumerate(wlp)]).sum()
            warm_loss = lambda_kd * kd + lambda_warm * warm_nll
            if warm_loss.requires_grad:
                warm_loss.backward()
            opt.step()
            loss = cfg.lambda_soft * soft.detach() + cfg.lambda_kl * kl.detach() + warm_loss.detach()
            with torch.no_grad():
                fin = torch.isfinite(nll)
                nll_sum.index_put_((item,), torch.where(fin, nll, torch.zeros_like(nll)).detach(), accumulate=True)
                nll_cnt.index_put_((item,), fin.float(), accumulate=True)
            step += 1
            if epoch >= cfg.cpde_warmup_epochs and step % cfg.cpde_update_every == 0:
                w = update_weights(w, alpha_t, nll_sum, nll_cnt, valid_h, cfg.update_keep,
                                   cfg.update_delta)
                nll_sum.zero_()
                nll_cnt.zero_()
                history.append(w.sum(0).div(max(1, len(w))).tolist())
            sums += torch.stack([loss, soft.detach(), kl.detach(), kd.detach(), warm_nll.detach()]).double()
        names = ["loss", "soft", "kl", "kd", "warm_nll"]
        losses.append(dict(zip(names, (sums / steps).tolist(), strict=True), epoch=epoch + 1))
    merged = peft_model.merge_and_unload()
    merged.eval()
    return CPDEResult(merged, w.cpu().numpy(), history, losses, lambda_kd, lambda_warm)


def update_weights(w: torch.Tensor, alpha: torch.Tensor, nll_sum: torch.Tensor, nll_cnt: torch.Tensor,
                   valid: torch.Tensor, keep: float, delta: float | None = None) -> torch.Tensor:
    """One periodic update: items whose every valid hypothesis was scored since the last update move their
    weights; the others keep theirs. Rows stay normalised.

    ``delta=None`` (the first design): toward ``alpha + softmax(-mean NLL)``. With ``delta`` (paper, eq. 21-22
    as we read them; the exact constants are not published): the target is ``softmax(log alpha_b + score_b)``
    with ``score_b = -mean NLL_b`` (the prior of CART and the backbone's recent evidence), the step is
    ``keep * w + (1 - keep) * target``, and it is applied in proportion to the confidence gate
    ``sigmoid(-NLL_best + delta)``: an item whose best hypothesis the model still finds unlikely keeps its weights.
    """
    seen = ((nll_cnt > 0) | ~valid).all(1) & (nll_cnt.sum(1) > 0)
    mean = nll_sum / nll_cnt.clamp(min=1)
    if delta is None:
        score = (-mean).masked_fill(~valid, float("-inf")).softmax(1).nan_to_num(0.0)
        new = keep * w + (1 - keep) * (alpha + score)
    else:
        logit = (alpha.clamp(min=1e-12).log() - mean).masked_fill(~valid, float("-inf"))
        target = logit.softmax(1).nan_to_num(0.0)
        best = mean.masked_fill(~valid, float("inf")).min(1).values
        gate = torch.sigmoid(-best + delta).unsqueeze(1)
        new = w + gate * (keep * w + (1 - keep) * target - w)
    new = new * valid
    new = new / new.sum(1, keepdim=True).clamp(min=1e-8)
    return torch.where(seen.unsqueeze(1), new, w)


__all__ = ["CPDEResult", "add_lora", "base_output_stopped", "train_cpde", "update_weights"]
