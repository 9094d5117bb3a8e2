"""CART: DREAM's intent-aware tokenizer (stage 1), which proposes behaviour-aligned candidate SIDs.

Why: a cold item's static SID was fitted from its text alone, before anyone bought it, and the backbone
almost never generates it. CART re-learns an item -> code mapping in which items bought in the same
contexts land on the same codes, while staying anchored to the base SIDs (the frozen backbone speaks their
language). It then lists, per item, the few most likely code sequences; the next stages choose between them.

Model (the DREAM paper's stage 1; docs/dream.md):

* item vector ``z_i = W e_i + r_i`` in the base quantiser's own space (the paper's "codebooks initialised from
  Phi_0"): ``e_i`` the quantiser's latent of the item, ``W = I`` at the start, ``r_i`` a per-item collaborative
  residual (zero at the start, so an item with no interactions keeps its content view);
* the levels form the base quantiser's residual tree: level ``l`` reads ``r_{i,l} = z_i - sum_{m<l} c_{m,k_m}``
  with logits ``-tau_s ||r_{i,l} - c_{l,k}||^2 / s_l`` (``s_l`` the base path's mean squared error at level ``l``)
  against codebooks that start as the quantiser's own, so step 0 *is* the static table; candidates come from a
  beam search over prefixes. (The first cut learned ``W`` from the text embedding with cosine logits and
  per-level queries independent of the parents; it reproduced the static SIDs for 1.3% of Toys items and lost
  on validation, docs/dream.md; it was removed in the renovation of 2026-12-06.)
* Gumbel-softmax with an exponentially annealed temperature, straight-through (hard codes forward, soft
  gradients backward); the quantised item vector is the sum of the chosen codewords.

Losses: ``L = L_NCE + w_cal * L_cal + w_div * L_div + w_anc * L_anc``.

* ``L_NCE`` (eq. 6): per SID position ``l``, InfoNCE between the item's quantised
  codeword and the momentum (EMA) key encoder's query of the **same** item at that position, against a FIFO
  queue of past keys of that position and the item's counterfactual hard negatives; averaged over positions.
  The item is drawn per training interaction, so the codes are shaped where purchases happen, and the hard
  negatives push apart items of the same family with another intent (the first implementation contrasted with
  the item bought *before*, a co-occurrence objective that pulled cold items onto crowded popular prefixes);
* ``L_cal``: a small target-attention click model (attention features ``[z_j; z*; z_j - z*; z_j * z*]``) must
  tell the real next item from a random one, given the user's recent history, from the *quantised* target;
* ``L_div``: ``1 - H(mean assignment) / log K`` per level (keeps the codebooks in use);
* ``L_anc``: cross-entropy of the logits to the base codes (keeps warm items where the backbone knows them).

Candidates: ``q(s|i) = mean_l log softmax(l_{i,l})[s_l]``; the top-``n`` code sequences (a width-``n`` beam
over prefixes) form the candidate pool, the best is the refined SID.

Counterfactual hard negatives come from a pluggable generator (:func:`family_negatives` by default: items
of the same product family that are textually close but never bought together with the item; see its
docstring for the optional rewrite hook).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidrec.device import to_device
from sidrec.dream.config import CARTConfig
from sidrec.errors import SidrecError
from sidrec.progress import track


class CART(nn.Module):
    """Item vectors, per-level distance logits and Gumbel straight-through codes (see the module docstring)."""

    def __init__(self, emb: torch.Tensor, base_codes: torch.Tensor, sizes: list[int], cfg: CARTConfig,
                 codebooks: list[torch.Tensor] | None = None) -> None:
        """``emb``: the base quantiser's input space (e.g. the RQ-VAE latents); ``codebooks``: its per-level
        codebooks, one (K_l, dim) each."""
        super().__init__()
        n, d = emb.shape
        if codebooks is None or [len(c) for c in codebooks] != [int(s) for s in sizes] or any(
                c.shape[1] != d for c in codebooks):
            raise SidrecError("CART needs the base quantiser's codebooks, one (K_l, dim) per level")
        self.cfg = cfg
        self.sizes = [int(s) for s in sizes]
        self.register_buffer("emb", emb.float(), persistent=False)
        self.proj = nn.Linear(d, d)
        self.residual = nn.Embedding(n, d)
        nn.init.zeros_(self.residual.weight)
        self.codebooks = nn.ParameterList(nn.Parameter(torch.randn(k, d) * d**-0.5) for k in self.sizes)
        self.register_buffer("dist_scale", torch.ones(len(self.sizes)), persistent=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(d))
            self.proj.bias.zero_()
            for book, c in zip(self.codebooks, codebooks, strict=True):
                book.copy_(torch.as_tensor(c, dtype=torch.float32))
            # s_l: the mean squared quantisation error at level l along the base path, so tau_s means the
            # same sharpness at every level although deeper residuals are smaller
            r = self.item_vectors(torch.arange(n))
            for lv, book in enumerate(self.codebooks):
                err = (r - book[base_codes[:, lv]]).pow(2).sum(-1)
                self.dist_scale[lv] = err.mean().clamp(min=1e-8)
                r = r - book[base_codes[:, lv]]
        # the calibration click model (target attention over the history, then a scorer)
        self.att = nn.Sequential(nn.Linear(4 * d, 32), nn.ReLU(), nn.Linear(32, 1))
        self.click = nn.Sequential(nn.Linear(3 * d, 32), nn.ReLU(), nn.Linear(32, 1))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``z_i`` (..., d) for item indices (...)."""
        return self.proj(self.emb[items]) + self.residual(items)

    def queries(self, items: torch.Tensor) -> torch.Tensor:
        """Unit queries (L, ..., d) of item indices (...): what each SID position looks for (the residual along
        the item's deterministic path)."""
        z = self.item_vectors(items)
        return torch.stack([F.normalize(r, dim=-1) for r in self.walk(z, None)[2]])

    def level_logits(self, r: torch.Tensor, level: int) -> torch.Tensor:
        """Logits (..., K_l) of residuals (..., d) against level ``level``'s codebook: scaled negative squared
        distances, whose argmax is the base quantiser's nearest-codeword rule."""
        book = self.codebooks[level]
        d2 = (r * r).sum(-1, keepdim=True) - 2.0 * r @ book.T + (book * book).sum(-1)
        return -self.cfg.logit_scale * d2 / self.dist_scale[level]

    def walk(self, z: torch.Tensor, tau: float | None, codes: torch.Tensor | None = None
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per level logits, one-hot codes and the residual read, plus the quantised vector.

        Codes are Gumbel-softmax straight-through at ``tau``, the argmax (``tau=None``), or given (``codes``
        (..., L): teacher forcing along the base path, for the anchor loss).
        """
        r = z
        out = torch.zeros_like(z)
        logits, onehots, residuals = [], [], []
        for lv, book in enumerate(self.codebooks):
            lg = self.level_logits(r, lv)
            if codes is not None:
                oh = F.one_hot(codes[..., lv], lg.shape[-1]).to(lg.dtype)
            elif tau is None:
                oh = F.one_hot(lg.argmax(-1), lg.shape[-1]).to(lg.dtype)
            else:
                oh = F.gumbel_softmax(lg, tau=tau, hard=True)
            cw = oh @ book
            logits.append(lg)
            onehots.append(oh)
            residuals.append(r)
            r = r - cw
            out = out + cw
        return logits, onehots, residuals, out

    def path(self, z: torch.Tensor, tau: float | None, codes: torch.Tensor | None = None
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per-level logits, one-hot codes and the quantised vector of item vectors ``z`` (``tau`` / ``codes`` as
        in :meth:`walk`)."""
        logits, onehots, _, out = self.walk(z, tau, codes)
        return logits, onehots, out

    def quantised(self, items: torch.Tensor) -> torch.Tensor:
        """The deterministic quantised vector of item indices (...) -> (..., d)."""
        return self.path(self.item_vectors(items), None)[2]

    def click_logit(self, hist: torch.Tensor, hist_valid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Target-attention click score (B,) of target vectors (B, d) given history vectors (B, T, d)."""
        t = target.unsqueeze(1).expand_as(hist)
        a = self.att(torch.cat([hist, t, hist - t, hist * t], -1)).squeeze(-1)
        a = a.masked_fill(~hist_valid, float("-inf")).softmax(-1).nan_to_num(0.0)
        u = (a.unsqueeze(-1) * hist).sum(1)
        return self.click(torch.cat([u, target, u * target], -1)).squeeze(-1)


@dataclass
class CARTResult:
    """Candidate pool and diagnostics of a trained CART."""

    candidates: np.ndarray  # (n_items, C, L) code sequences, best first
    scores: np.ndarray  # (n_items, C) q(s|i), mean per-level log-probability
    history: list[dict[str, float]]  # per-epoch losses


def _pairs_and_contexts(train: list[np.ndarray], history: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (previous items, next item) of the training sequences: histories (P, H) left-padded with -1."""
    from sidrec.data.batches import prefix_samples, sample_histories

    s = prefix_samples(train, history)
    if len(s["end"]) == 0:
        raise SidrecError("CART needs training sequences with at least two items")
    return sample_histories(s, np.arange(len(s["end"])), history), s["flat"][s["end"]]


def train_cart(emb: np.ndarray, base_codes: np.ndarray, sizes: list[int], train: list[np.ndarray],
               negatives: np.ndarray, cfg: CARTConfig, seed: int = 0, progress: bool = True,
               codebooks: list[np.ndarray] | None = None, device: torch.device | str = "cpu"
               ) -> tuple[CART, CARTResult]:
    """Fit CART on the training sequences (on ``device``); returns the model and each item's candidate SIDs.

    ``base_codes`` (n_items, L) are the static SIDs without the collision code; ``negatives`` (n_items, H)
    the counterfactual hard negatives (-1 = none); ``codebooks`` the base quantiser's (``space: base``, where
    ``emb`` is that quantiser's input space).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(emb)
    dev = torch.device(device)
    base = torch.as_tensor(base_codes, dtype=torch.long)
    model = CART(torch.as_tensor(emb), base, sizes, cfg,
                 None if codebooks is None else [torch.as_tensor(c) for c in codebooks]).to(dev)
    base = base.to(dev)
    key = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hist_np, tgt_np = _pairs_and_contexts(train, cfg.history)
    negs = torch.as_tensor(negatives, dtype=torch.long).to(dev)
    levels = len(sizes)
    queue = F.normalize(torch.randn(levels, cfg.queue_size, model.codebooks[0].shape[1]), dim=-1).to(dev)
    qptr = 0
    steps_per_epoch = max(1, math.ceil(len(tgt_np) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    log: list[dict[str, float]] = []
    step = 0
    start_equal = _share_on_base(model, base)
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(tgt_np))
        sums = torch.zeros(5, dtype=torch.float64, device=dev)  # read once per epoch (no per-step host sync)
        for s in track(range(steps_per_epoch), f"CART epoch {epoch + 1}/{cfg.epochs}", enabled=progress):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            hist = to_device(torch.from_numpy(hist_np[idx]), dev)
            items = to_device(torch.from_numpy(tgt_np[idx]), dev)
            tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (step / max(1, total - 1))
            z = model.item_vectors(items)
            lg, onehots, zq_sum = model.path(z, tau)
            # L_anc reads the logits along the base tree (residual levels depend on the parents)
            anchor_logits = model.path(z, None, base[items])[0]
            zq = F.normalize(zq_sum, dim=-1)
            hn = negs[items]
            hn_valid = hn >= 0
            # online: the chosen (unit) codeword per position; keys: the momentum encoder's queries of the same
            # item and of its hard negatives per position
            cw = torch.stack([oh @ F.normalize(c, dim=-1) for oh, c in zip(onehots, model.codebooks, strict=True)])
            with torch.no_grad():
                k_pos = key.queries(items)  # (L, B, d)
                k_hn = key.queries(hn.clamp(min=0))  # (L, B, H, d)
            nce = info_nce(cw, k_pos, queue, k_hn, hn_valid, cfg.nce_temperature)
            # calibration: real next item vs a random item, from the quantised target
            hv = hist >= 0
            hz = model.item_vectors(hist.clamp(min=0))
            rand = to_device(torch.from_numpy(rng.integers(0, n, len(items))), dev)
            zq_r = F.normalize(model.path(model.item_vectors(rand), tau)[2], dim=-1)
            logit = torch.cat([model.click_logit(hz, hv, zq), model.click_logit(hz, hv, zq_r)])
            label = torch.cat([torch.ones(len(items), device=dev), torch.zeros(len(items), device=dev)])
            cal = F.binary_cross_entropy_with_logits(logit, label)
            div = torch.stack([1 - _entropy(x.softmax(-1).mean(0)) / math.log(x.shape[-1]) for x in lg]).mean()
            anc = torch.stack([F.cross_entropy(x, base[items, lv]) for lv, x in enumerate(anchor_logits)]).mean()
            loss = nce + cfg.w_cal * cal + cfg.w_div * div + cfg.w_anchor * anc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pk, pq in zip(key.parameters(), model.parameters(), strict=True):
                    pk.mul_(cfg.momentum).add_(pq.detach(), alpha=1 - cfg.momentum)
                m = k_pos.shape[1]
                ptr = (qptr + torch.arange(m, device=dev)) % cfg.queue_size
                queue[:, ptr] = k_pos
                qptr = int((qptr + m) % cfg.queue_size)
            sums += torch.stack([loss, nce, cal, div, anc]).detach().double()
            step += 1
        mean = (sums / steps_per_epoch).tolist()
        log.append(dict(zip(["loss", "nce", "cal", "div", "anchor"], mean, strict=True), epoch=epoch + 1,
                        equal_base=_share_on_base(model, base)))
        if epoch == 0:
            log[0]["equal_base_start"] = start_equal
    cands, scores = candidate_sids(model, cfg.candidates)
    return model, CARTResult(cands, scores, log)


@torch.no_grad()
def _share_on_base(model: CART, base: torch.Tensor, chunk: int = 4096) -> float:
    """Share of items whose deterministic CART codes equal their static ones (all levels): how far CART has
    moved from the table it is anchored to (at step 0 it should be ~1)."""
    same = 0
    for s in range(0, len(base), chunk):
        items = torch.arange(s, min(len(base), s + chunk), device=base.device)
        codes = torch.stack([oh.argmax(-1) for oh in model.path(model.item_vectors(items), None)[1]], -1)
        same += int((codes == base[items]).all(-1).sum())
    return same / max(1, len(base))


def info_nce(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, k_hard: torch.Tensor, hard_valid: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """InfoNCE averaged over positions: queries (P, B, d) against their positive keys (P, B, d), the position's
    queue (P, Q, d) and per-row hard negatives (P, B, H, d) (``hard_valid`` (B, H) masks missing ones)."""
    pos = (q * k_pos).sum(-1, keepdim=True)  # (P, B, 1)
    neg_q = torch.einsum("pbd,pqd->pbq", q, queue)
    neg_h = torch.einsum("pbd,pbhd->pbh", q, k_hard).masked_fill(~hard_valid, float("-inf"))
    logits = torch.cat([pos, neg_q, neg_h], -1) / temperature
    target = torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * (p + 1e-12).log()).sum(-1)


@torch.no_grad()
def candidate_sids(model: CART, n: int, items: torch.Tensor | None = None,
                   chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``n`` code sequences per item by ``q(s|i)`` (mean per-level log-probability), best first.

    A width-``n`` beam over prefixes of the residual tree (:func:`_residual_beam`), batched over items.
    """
    model.eval()
    idx = torch.arange(len(model.emb), device=model.emb.device) if items is None else items.to(model.emb.device)
    out_c, out_s = [], []
    for s in range(0, len(idx), chunk):
        c, sc = _residual_beam(model, model.item_vectors(idx[s:s + chunk]), n)
        out_c.append(c)
        out_s.append(sc)
    model.train()
    return torch.cat(out_c).cpu().numpy(), torch.cat(out_s).cpu().numpy()


def _residual_beam(model: CART, z: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``n`` code sequences of residual levels by a width-``n`` beam search over prefixes (each level's
    logits depend on the chosen parents, so the search keeps every beam's residual); scores are mean
    per-level log-probabilities, best first."""
    b = len(z)
    r = z.unsqueeze(1)  # (b, beams, d)
    score = torch.zeros(b, 1, device=z.device)
    seqs = torch.zeros(b, 1, 0, dtype=torch.long, device=z.device)
    for lv, book in enumerate(model.codebooks):
        lp, code = model.level_logits(r, lv).log_softmax(-1).topk(min(n, book.shape[0]), dim=-1)  # (b, m, n)
        cand = (score.unsqueeze(2) + lp).view(b, -1)
        score, flat = cand.topk(min(n, cand.shape[1]), dim=1)
        parent = flat // lp.shape[2]
        c = code.view(b, -1).gather(1, flat)
        seqs = torch.cat([seqs.gather(1, parent.unsqueeze(2).expand(-1, -1, seqs.shape[2])), c.unsqueeze(2)], 2)
        r = r.gather(1, parent.unsqueeze(2).expand(-1, -1, r.shape[2])) - book[c]
    return seqs, score / len(model.codebooks)


# ------------------------------------------------------------------------------------ counterfactual negatives
NegativeGenerator = Callable[..., np.ndarray]


def family_negatives(docs: list[str], family: list[str], train: list[np.ndarray], k: int = 8,
                     rewrite: Callable[[list[str]], list[str]] | None = None, chunk: int = 1024,
                     closest: bool = True) -> np.ndarray:
    """Counterfactual hard negatives without a language model: (n_items, k) item indices, -1 padded.

    For each item: items of the same product ``family`` (e.g. the leaf category) that are closest to it by
    TF-IDF cosine but never appear in a training history together with it -- same kind of product, another
    purchase intent. ``rewrite`` is the paper's hook: a function mapping each item's text to a rewritten query
    (e.g. a language model that flips the purchase intent); the rewritten texts are then used as retrieval
    queries against the real items' texts, under the same family and co-occurrence filters.

    ``closest=False`` takes the family's *least* similar items instead: without a language model to flip the
    intent, the closest same-family texts are mostly near-duplicates bought for the same purpose
    (substitutes), which an intent-contrastive loss should not push away; the far end of the family is the
    same kind of product for another purpose (``dream.negatives=family_far``).
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(docs)
    if len(family) != n:
        raise SidrecError(f"family_negatives: {len(family)} family labels for {n} items")
    vec = TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    x = vec.fit_transform(docs)
    queries = x if rewrite is None else vec.transform(rewrite(list(docs)))
    fam = np.unique(np.asarray(family), return_inverse=True)[1].reshape(-1)
    rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(train) if len(s)]) if train else np.zeros(0)
    cols = np.concatenate([s for s in train if len(s)]) if train else np.zeros(0)
    ui = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(train), n))
    co = (ui.T @ ui).tocsr()  # items ever in one history together
    out = np.full((n, k), -1, dtype=np.int64)
    fam_t = torch.from_numpy(fam)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        sim = torch.from_numpy((queries[s:e] @ x.T).toarray().astype(np.float32))
        ok = fam_t[s:e].unsqueeze(1) == fam_t.unsqueeze(0)
        blk = co[s:e].tocoo()
        ok[torch.from_numpy(blk.row.astype(np.int64)), torch.from_numpy(blk.col.astype(np.int64))] = False
        ok[torch.arange(e - s), torch.arange(s, e)] = False
        sim = sim if closest else -sim
        sim = sim.masked_fill(~ok, float("-inf"))
        v, i = sim.topk(min(k, n), dim=1)
        i = torch.where(torch.isfinite(v), i, torch.full_like(i, -1))
        out[s:e, :i.shape[1]] = i.numpy()
    return out


__all__ = ["CART", "CARTConfig", "CARTResult", "candidate_sids", "family_negatives", "info_nce", "train_cart"]
