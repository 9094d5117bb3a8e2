"""Content grounding: every model's ranking uses the items' content.

Why: a zero-training ranker -- the cosine of each item's text vector to the user's last item -- is level with a
converged SASRec on Beauty and far above every semantic-ID model on cold items; a trained model's scores forget
the content that its IDs were built from. One mechanism, shared by every method, puts it back (late fusion):

    s_lam(i)   = log p_model(i | u) + lam * sim(u, i)
    final(u, i) = s_lam(i)                                                      for a warm item
    final(u, i) = s_lamc(i) - LSE_cold(s_lamc) + LSE_cold(s_lam) + cold_lift    for a cold item (grouped)

``sim`` is :class:`ContentIndex`'s cosine of item i to the user's query (the last item, or a recency-weighted
mean of the last n); an item is cold with <= ``data.cold_threshold`` training interactions. Cold items are ranked
as a group (issue 58): among themselves by the content-heavy ``s_lamc``, and the group gets the mass the lam-fused
model gives to cold items for this user times ``exp(cold_lift)`` -- a per-user gate, the model's own confidence
that the next item is cold, corrected once for its popularity bias (:meth:`Grounding.fuse` says why). lam,
lam_cold and cold_lift are chosen on validation after training (:func:`choose`), each grid a pass over the
validation users, no retraining; lam_cold and cold_lift keep the cold targets at or above the content ranker's
(``fusion.cold_floor``). The choice is stored in the run (``fusion.json``) and used by ``evaluate``,
``recommend`` and the server; all three zero is the model's own ranking, computed by the model's own path
(exactly today's numbers). A ``fusion.json`` from before issue 58 names the additive form
``log p + lambda_i * sim`` (lambda_i = lambda_cold for a cold item) and is read back as such.

Two kinds of model plug in (a task's ``scoring`` attribute):

- ``dense`` (SASRec, ACERec, the content ranker itself): ``task.model_scores(model, hist)`` gives every catalogue
  item's score; SASRec's logits are log-softmax-normalised first (``task.logits_unnormalised``), so lambda is on
  the same scale (nats) for every method;
- ``beam`` (TIGER, DIGER, DREAM's stage models): the beam search returns W items; the content top-N
  (``fusion.candidates``) joins them; every content candidate gets its exact log-likelihood under the model
  (teacher-forced over its SID, :func:`sidrec.decoding.beam.sequence_log_probs`), beam items keep their beam
  score (the same quantity); items outside the candidates rank below them. ``content@10`` reports the share of
  the final top-10 slots filled by content candidates the beam did not find.

The fusion and the content ranker have no rule of their own for the user's history: every item, a history
item included, is scored by the formula above. What happens to history items is the run's protocol
(``eval.protocol``), applied by the evaluator, the beam search and ``recommend`` alike: ``exclude`` removes
them from every ranking; ``keep`` ranks them like any item (a history item then gets ``lambda * sim`` like any
other, its own cosine to the query included).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sidrec.config import ContentConfig, FusionConfig
from sidrec.data.protocol import EvalSet
from sidrec.decoding.beam import repeated
from sidrec.device import to_device
from sidrec.errors import SidrecError
from sidrec.eval.evaluator import TIE_K, Evaluator, excludes, finite_scores, mask_history
from sidrec.io import write_json

FUSION_FILE = "fusion.json"


class ContentIndex:
    """Item vectors (L2-normalised) and the user's query built from their most recent items.

    Exact equal similarities (items with identical text) are broken by training frequency, the more popular
    first, then by index: the tie key ``1e-10 * log1p(freq) / log1p(max freq)`` (in float64) is below the gap
    between any two distinct fp32 cosines above 0.02, so it decides only exact ties.
    """

    def __init__(self, vectors: np.ndarray, item_freq: np.ndarray, cfg: ContentConfig) -> None:
        v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        if v.dim() != 2 or len(v) != len(item_freq):
            raise SidrecError(f"item vectors of shape {tuple(v.shape)} do not fit a catalogue of {len(item_freq)} items")
        self.vectors = F.normalize(v, dim=1)
        self.cfg = cfg
        self.n_items = len(v)
        f = np.log1p(np.asarray(item_freq, dtype=np.float64))
        self.tie = torch.from_numpy(1e-10 * f / max(float(f.max()), 1e-12))
        self._faiss: Any = None

    def to(self, device: torch.device) -> ContentIndex:
        """The vectors and tie keys on ``device`` (the faiss index of :meth:`search` stays on the CPU)."""
        self.vectors, self.tie = self.vectors.to(device), self.tie.to(device)
        return self

    def query(self, hist: torch.Tensor) -> torch.Tensor:
        """Query vectors (B, d) of left-padded histories (B, T).

        The last ``content.query_items`` items, the item k steps back weighted ``content.decay ** k``; an empty
        history gives a zero query (every similarity 0).
        """
        n = max(1, min(self.cfg.query_items, hist.shape[1]))
        items = hist[:, -n:]
        valid = items >= 0
        w = self.cfg.decay ** torch.arange(n - 1, -1, -1, dtype=torch.float32, device=hist.device)
        w = w.view(1, -1) * valid
        q = (w.unsqueeze(-1) * self.vectors[items.clamp(min=0)]).sum(1)
        return F.normalize(q, dim=1)

    def similarity(self, hist: torch.Tensor) -> torch.Tensor:
        """(B, n_items) fp32 cosine of every item to each row's query."""
        return self.query(hist) @ self.vectors.t()

    def scores(self, hist: torch.Tensor) -> torch.Tensor:
        """(B, n_items) the content ranker's float64 scores: cosine + tie key."""
        return self.ranker_scores(self.similarity(hist))

    def ranker_scores(self, sim: torch.Tensor) -> torch.Tensor:
        """The content ranker's float64 scores from similarities (a beam model's fusion needs both per batch)."""
        return sim.double() + self.tie

    # ------------------------------------------------------------------ top-K search (recommend)
    def _index(self) -> Any:
        """The faiss inner-product index: exact (flat), or IVF for catalogues of ~1M+ items."""
        if self._faiss is None:
            import faiss

            x = self.vectors.cpu().numpy()
            d = x.shape[1]
            if self.cfg.index == "ivf":
                nlist = self.cfg.nlist or max(1, int(4 * math.sqrt(self.n_items)))
                nlist = min(nlist, self.n_items)
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(x)
                index.nprobe = min(self.cfg.nprobe, nlist)
            else:
                index = faiss.IndexFlatIP(d)
            index.add(x)
            self._faiss = index
        return self._faiss

    def search(self, hist: torch.Tensor, k: int, exclude: torch.Tensor | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items (B, k; -1 padded) and their scores by faiss, ``exclude`` items (B, T; -1 pad: the
        history under ``eval.protocol: exclude``) left out; ties broken as in :meth:`scores`."""
        q = self.query(hist).cpu()  # faiss searches on the host
        drop = torch.full((len(q), 0), -1, dtype=torch.long) if exclude is None else exclude.cpu()
        # room for the dropped items and for exact ties at the edge of the list
        kk = min(self.n_items, k + drop.shape[1] + 16)
        sims, idx = self._index().search(q.numpy(), kk)
        idx_t = torch.from_numpy(idx.astype(np.int64))
        s = torch.from_numpy(sims.astype(np.float32)).double() + self.tie.cpu()[idx_t.clamp(min=0)]
        bad = (idx_t < 0) | (idx_t.unsqueeze(2) == drop.unsqueeze(1)).any(2)
        s = s.masked_fill(bad, float("-inf"))
        v, order = s.sort(dim=1, descending=True, stable=True)
        items = idx_t.gather(1, order)[:, :k]
        v = v[:, :k]
        return np.where(np.isfinite(v.numpy()), items.numpy(), -1), v.numpy()


@dataclass(frozen=True)
class Fusion:
    """One fusion setting (all zeros = the model alone).

    ``lam`` weighs the similarity of warm items (and of every item while ``grouped`` is off), ``lam_cold`` that of
    cold items. ``grouped`` (every choice since issue 58) ranks the cold items as a group: among themselves by
    ``log p + lam_cold * sim + cold_freq * log(1 + training interactions)``, and the group as a whole gets the
    probability mass the lambda-fused model gives to cold items for this user, times ``exp(cold_lift)``; see
    :meth:`Grounding.fuse`. ``grouped`` off is the additive
    formula (``log p + lambda_i * sim``) of the runs chosen before it, read back from their ``fusion.json``.
    """

    lam: float = 0.0
    lam_cold: float = 0.0
    cold_lift: float = 0.0
    grouped: bool = False
    cold_freq: float = 0.0

    @property
    def off(self) -> bool:
        return self.lam == 0 and self.lam_cold == 0 and self.cold_lift == 0 and self.cold_freq == 0

    def name(self) -> str:
        if self.off:
            return "model alone"
        out = f"lambda {self.lam:g}, cold {self.lam_cold:g}"
        if self.grouped:
            out += f", cold lift {self.cold_lift:g}" + (f", cold freq {self.cold_freq:g}" if self.cold_freq else "")
        return out

    def record(self) -> dict[str, Any]:
        """The setting as ``fusion.json`` keeps it (read back by :func:`load_fusion`)."""
        return {"lambda": self.lam, "lambda_cold": self.lam_cold, "cold_lift": self.cold_lift, "grouped": self.grouped,
                "cold_freq": self.cold_freq}


NEG_INF = float("-inf")


def _group_lse(x: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """(B, 1) log-sum-exp of each row's entries where ``member``; -inf for a row without any."""
    return x.masked_fill(~member, NEG_INF).logsumexp(1, keepdim=True)


class Grounding:
    """The shared mechanism: a content index, which items are cold, and the fusion settings' arithmetic."""

    def __init__(self, index: ContentIndex, item_freq: np.ndarray, cold_threshold: int, cfg: FusionConfig) -> None:
        self.index = index
        self.cfg = cfg
        self.cold = torch.from_numpy(np.asarray(item_freq) <= cold_threshold)
        # log(1 + training interactions): the cold group's frequency term (Fusion.cold_freq)
        self.log_freq = torch.from_numpy(np.log1p(np.asarray(item_freq, dtype=np.float64)).astype(np.float32))

    def to(self, device: torch.device) -> Grounding:
        self.index.to(device)
        self.cold, self.log_freq = self.cold.to(device), self.log_freq.to(device)
        return self

    def weights(self, f: Fusion) -> torch.Tensor:
        """(n_items,) the lambda of every item under setting ``f``."""
        lam = torch.full_like(self.cold, float(f.lam), dtype=torch.float32)
        return lam.masked_fill(self.cold, float(f.lam_cold))

    def dense(self, logp: torch.Tensor, sim: torch.Tensor, f: Fusion) -> torch.Tensor:
        """Fused (B, n_items) scores from model log-probabilities and similarities (``-inf``: not rankable)."""
        return self.fuse(logp, sim, self.cold.view(1, -1), f, self.log_freq.view(1, -1))

    @staticmethod
    def fuse(logp: torch.Tensor, sim: torch.Tensor, cold: torch.Tensor, f: Fusion,
             log_freq: torch.Tensor | None = None) -> torch.Tensor:
        """Fused scores of (B, C) entries (the catalogue, or a beam model's candidates), ``cold`` and ``log_freq``
        (each entry's log(1 + training interactions), needed when ``f.cold_freq`` is not 0) broadcastable to
        (B, C); ``-inf`` in ``logp`` marks an entry that cannot be ranked (a history item under ``exclude``, a
        padding slot) and keeps it out of the group masses.

        Why grouped: with one additive weight per item a cold item must out-score the warm items on the model's
        scale, where SASRec's popularity bias puts it far below; any lambda_cold large enough to lift the cold
        targets lifts every cold item for every user, and a warm-dominated validation metric then keeps it small
        (issue 58: Beauty cold N@10 .0288 fused against .0536 for the content ranker). Grouped, the two questions
        are separated: *which* cold items (``log p + lam_cold * sim``, the content leads) and *how much* of the
        list they get (the lambda-fused model's own mass on cold items, a per-user gate, lifted by ``cold_lift``
        nats to undo the model's popularity bias). It is the mixture ``(1 - g_u) p(i | warm) + g_u p(i | cold)``
        with ``logit g_u = log P_model(cold | u) - log P_model(warm | u) + cold_lift``; warm items keep their
        fused score, so ``lam_cold = lam`` and ``cold_lift = 0`` is the additive fusion with lambda again.

        ``cold_freq`` (issue 58, Toys) reorders the cold items among themselves by their training interactions
        (the group's mass does not change): the model's ``log p`` ranks a cold item with 5 training interactions far
        above one with 0, while on the 5-core Amazon data the next item is *more* often a rarely trained cold item
        (every item has >= 5 interactions, so the fewer fall in training, the more are still to come: Toys
        validation targets per item 2.1 at 0 training interactions, 0.72 at 5); a negative ``cold_freq`` undoes
        that bias of the model, as far as validation says it should.
        """
        cold = cold.expand_as(logp)
        # one weight for every item (lambda_cold = lambda, most runs): the same numbers without the per-item select
        warm_fused = logp + f.lam * sim
        fused = warm_fused if f.lam_cold == f.lam else logp + torch.where(cold, f.lam_cold, f.lam) * sim
        if not f.grouped:
            return fused
        if f.cold_freq:
            if log_freq is None:
                raise ValueError("a cold_freq fusion needs the entries' log(1 + training interactions)")
            fused = torch.where(cold, fused + f.cold_freq * log_freq, fused)
        ok = torch.isfinite(logp)
        # log P(cold | u) under the lambda-fused model, minus the log-normaliser of the cold group's own scores
        shift = _group_lse(warm_fused, cold & ok) - _group_lse(fused, cold & ok) + f.cold_lift
        shift = torch.nan_to_num(shift, nan=0.0, posinf=0.0, neginf=0.0)  # a row without a rankable cold item
        return torch.where(cold, fused + shift, fused)


def has_grounding(task: Any) -> bool:
    """Whether a task is grounded, without building its grounding (which reads the item vectors)."""
    d = vars(task)
    return d.get("_grounding") is not None or ("_grounding" not in d and d.get("_grounding_factory") is not None)


def content_available(cfg: Any, dataset: Any) -> bool:
    """Whether a run can be grounded, checked before training (cheaply: no vectors are computed).

    ``fusion.lambdas: [0]`` turns grounding off; with ``features.kind: auto`` a dataset without item text or
    attributes trains ungrounded (its report says so); a named vector file that is missing fails now, not
    after training.
    """
    if not any(v > 0 for v in cfg.fusion.lambdas):
        return False
    f = cfg.features
    if f.kind == "npy" or (f.kind == "auto" and f.npy_path):
        from pathlib import Path

        if not Path(f.npy_path).exists():
            from sidrec.config import describe_path

            raise SidrecError(f"features.npy_path {describe_path(f.npy_path)}: embeddings file not found (content "
                              "grounding needs the item vectors; fusion.lambdas=[0] turns it off)")
        return True
    if f.kind == "auto":
        from sidrec.features.core import ATTRIBUTE_FIELDS, has_text

        return has_text(dataset) or any(a in dataset.items for a in ATTRIBUTE_FIELDS)
    return True


def grounding_for(cfg: Any, dataset: Any, split: Any) -> Grounding | None:
    """The run's grounding, or None when fusion is off (``fusion.lambdas: [0]``).

    The item vectors are the run's ``features`` (the same cache as the SID tokenizers); a dataset without item
    content cannot be grounded, and says so in one line (set ``fusion.lambdas=[0]`` to train without it).
    """
    if not any(v > 0 for v in cfg.fusion.lambdas):
        return None
    from sidrec.features import item_features

    try:
        vectors = item_features(cfg.features, dataset, progress=cfg.train.progress)
    except SidrecError as exc:
        raise SidrecError(f"{exc} (content grounding needs item vectors; fusion.lambdas=[0] turns it off)") from None
    index = ContentIndex(vectors, split.item_freq, cfg.content)
    return Grounding(index, split.item_freq, cfg.data.cold_threshold, cfg.fusion)


# ---------------------------------------------------------------------------------------------- evaluation
def _log_probs(task: Any, raw: torch.Tensor) -> torch.Tensor:
    """A dense task's raw scores as log-probabilities (fp32): SASRec's logits are log-softmax-normalised."""
    return raw.float().log_softmax(-1) if task.logits_unnormalised else raw.float()


def _fusable(task: Any, raw: torch.Tensor, es: EvalSet, rows: np.ndarray, exclude: bool) -> torch.Tensor:
    """The model's log-probabilities as the fusion reads them: a copy, the user's history at ``-inf`` under
    ``exclude``, so that the grouped fusion's cold and warm masses are over the items that can be recommended."""
    logp = _log_probs(task, raw)
    if logp is raw:  # a task whose scores are log-probabilities already: the mask below must not write into them
        logp = logp.clone()
    if exclude:
        mask_history(logp, to_device(es.padded_seen(rows, pad=-1), logp.device))
    return logp


def evaluate_dense(task: Any, model: Any, ev: Evaluator, settings: list[Fusion]) -> list[dict[str, Any]]:
    """Metrics of each setting for a dense-scoring task, in one pass over the users."""
    es = ev.eval_set
    need = any(not f.off for f in settings)
    g: Grounding | None = task.grounding if need else None  # built only when a fusion needs it
    if need and g is None:
        raise SidrecError("content fusion asked of a run without grounding (fusion.lambdas is [0])")

    exclude = excludes(task.cfg)

    def parts(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        hist = to_device(es.padded_histories(rows, pad=-1), task.device)
        raw = task.model_scores(model, hist)
        if not need:
            return raw, None, None
        assert g is not None
        return raw, _fusable(task, raw, es, rows, exclude), g.index.similarity(hist)

    def variant(f: Fusion) -> Any:
        if f.off:
            return lambda p: p[0]
        assert g is not None
        return lambda p: g.dense(p[1], p[2], f)

    res = ev.evaluate_scores_many(parts, [variant(f) for f in settings], task.eval_batch_size, exclude)
    return [m for m, _ in res]


@dataclass
class BeamCandidates:
    """Per user, the beam's items followed by the content candidates it missed, with their scores."""

    beam_items: torch.Tensor  # (n, W) the model's own list (-1 padded)
    beam_scores: torch.Tensor  # (n, W)
    items: torch.Tensor  # (n, C) beam items then content candidates, duplicates -1
    ll: torch.Tensor  # (n, C) log-likelihood of each candidate's SID under the model, -inf for -1
    sim: torch.Tensor  # (n, C) content similarity
    from_content: torch.Tensor  # (n, C) bool: a content candidate the beam did not return


def beam_candidates(task: Any, model: Any, es: EvalSet, content: bool,
                    exclude_history: bool | None = None) -> BeamCandidates:
    """The beam's lists, and with ``content`` the content top-N scored exactly by the model (batched); the
    user's history is left out of both when ``exclude_history`` (default: the run's ``eval.protocol``)."""
    beam = task.beam_width
    exclude = excludes(task.cfg) if exclude_history is None else exclude_history
    b_items, b_scores = task.decode(model, es, beam, exclude, beam=beam)
    n = len(es)
    if not content:
        empty = torch.zeros(n, 0)
        return BeamCandidates(b_items, b_scores, b_items, b_scores, empty, empty.bool())
    g: Grounding = task.grounding
    top_n = max(1, min(g.cfg.candidates, g.index.n_items))
    c = beam + top_n
    items = torch.full((n, c), -1, dtype=torch.long)
    ll = torch.full((n, c), float("-inf"))
    sim = torch.zeros(n, c)
    src = torch.zeros(n, c, dtype=torch.bool)
    order = es.length_order()
    bs = max(1, task.eval_batch_users)
    dev = task.device
    for s in range(0, n, bs):  # computed on the model's device, kept on the host (one copy per batch of users)
        rows = order[s:s + bs]
        hist = to_device(es.padded_histories(rows, pad=-1), dev)
        sim_all = g.index.similarity(hist)
        cs = g.index.ranker_scores(sim_all)
        if exclude:
            mask_history(cs, to_device(es.padded_seen(rows, pad=-1), dev))
        cv, ci = cs.topk(top_n, dim=1)
        ci = ci.masked_fill(~torch.isfinite(cv), -1)
        bi, bs_ = to_device(b_items[rows], dev), to_device(b_scores[rows], dev)
        it = torch.cat([bi, ci], 1)
        # an item the beam returned keeps the beam's score; only the candidates it missed are scored
        it = it.masked_fill(repeated(it), -1)
        new = it[:, beam:]
        cl = task.candidate_log_probs(model, es, rows, new)
        idx = torch.from_numpy(rows)
        items[idx] = it.cpu()
        ll[idx] = torch.cat([bs_, cl.float()], 1).masked_fill(it < 0, float("-inf")).cpu()
        sim[idx] = sim_all.gather(1, it.clamp(min=0)).cpu()
        src[idx] = torch.cat([torch.zeros_like(bi, dtype=torch.bool), new >= 0], 1).cpu()
    return BeamCandidates(b_items, b_scores, items, ll, sim, src)


def rank_candidates(g: Grounding | None, bc: BeamCandidates, f: Fusion, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` items, scores and the from-content flags under setting ``f`` (the beam's own list when off)."""
    if f.off:
        return bc.beam_items[:, :k], bc.beam_scores[:, :k], torch.zeros_like(bc.beam_items[:, :k], dtype=torch.bool)
    assert g is not None
    ll = bc.ll.masked_fill(bc.items < 0, NEG_INF)
    at = bc.items.clamp(min=0)
    fused = finite_scores(g.fuse(ll, bc.sim, g.cold.to(at.device)[at], f, g.log_freq.to(at.device)[at]))
    v, order = fused.sort(dim=1, descending=True, stable=True)
    it = bc.items.gather(1, order)[:, :k]
    v = v[:, :k]
    return it.masked_fill(~torch.isfinite(v), -1), v, bc.from_content.gather(1, order)[:, :k]


def evaluate_beam(task: Any, model: Any, ev: Evaluator, settings: list[Fusion],
                  cached: BeamCandidates | None = None) -> tuple[list[dict[str, Any]], BeamCandidates]:
    """Metrics of each setting for a beam-search task; the candidates are returned for reuse by a later grid."""
    need = any(not f.off for f in settings)
    if need and task.grounding is None:
        raise SidrecError("content fusion asked of a run without grounding (fusion.lambdas is [0])")
    bc = cached
    if bc is None or (need and bc.sim.shape[1] == 0):  # reuse a grid's candidates; fetch content ones if missing
        bc = beam_candidates(task, model, ev.eval_set, content=need)
    k = max(task.cfg.eval.ks)
    out = []
    for f in settings:
        it, sc, src = rank_candidates(None if f.off else task.grounding, bc, f, k)
        m, _ = ev.evaluate_topk(it.numpy(), sc.numpy(), extra={f"content@{TIE_K}": src[:, :TIE_K].float().mean(1).numpy()})
        out.append(drop_beyond(m, bc.beam_items.shape[1] if f.off else bc.items.shape[1]))
    return out, bc


def drop_beyond(metrics: dict[str, dict[str, Any]], width: int) -> dict[str, dict[str, Any]]:
    """Leave out Recall / NDCG at cut-offs K above the ranked list's ``width`` (a width-W beam returns at most W
    items): a K > W number would be a copy of the W-item list's, not a measurement at K. Reports print them as n/a
    (``tiger.beam`` >= K measures them)."""
    for sub in metrics.values():
        for key in [k for k in sub if k.startswith(("recall@", "ndcg@")) and int(k.split("@")[1]) > width]:
            del sub[key]
    return metrics


def evaluate(task: Any, model: Any, split: str, settings: list[Fusion], max_users: int = 0,
             shortest: bool = False) -> list[dict[str, Any]]:
    """Metrics of ``split`` under each fusion setting, with the task's real inference procedure (on the task's
    ``eval_subset(split, max_users, shortest)``)."""
    ev = task.eval_subset(split, max_users, shortest)
    if task.scoring == "beam":
        return evaluate_beam(task, model, ev, settings)[0]
    return evaluate_dense(task, model, ev, settings)


def content_floor(task: Any, ev: Evaluator) -> dict[str, dict[str, Any]]:
    """The content ranker's metrics on ``ev``'s users under the run's protocol: the cold-target floor that the
    choice of the cold settings keeps the fused ranking above (``fusion.cold_floor``)."""
    g: Grounding = task.grounding
    es = ev.eval_set

    def scores(rows: np.ndarray) -> torch.Tensor:
        return g.index.scores(to_device(es.padded_histories(rows, pad=-1), task.device))

    return ev.evaluate_scores(scores, task.eval_batch_size, excludes(task.cfg))[0]


def choose(task: Any, model: Any, metric: str = "ndcg@10", max_users: int = 0, shortest: bool = False
           ) -> dict[str, Any]:
    """Choose the fusion on the validation split (``max_users`` > 0: a fixed subset, as the trainer's timing probe
    runs it, see the task's ``eval_subset``); returns the record kept in ``fusion.json``. Four grids, each one
    pass over the validation users (the model's scores and the similarities computed once per pass):

    1. lambda (lambda_cold = lambda), on the all-user metric: the weight of the content for the model's own list;
    2. with ``fusion.cold``: lambda_cold of the grouped fusion (which cold items), then
    3. its ``cold_freq`` over ``fusion.cold_freqs`` (which cold items: rarely or often trained ones), then
    4. its ``cold_lift`` over ``fusion.cold_lifts`` (how much of the list the cold items get).

    Passes 2 to 4 take the best mean of the warm and the cold users' metric (``fusion.cold_objective:
    balanced``; ``all``: the all-user metric) among the settings whose cold-target metric reaches the content
    ranker's on the same users (``fusion.cold_floor``; any setting when none does), and before either, among the
    settings whose all-user metric is at least ``1 - fusion.cold_max_loss`` of the model alone's: the cold
    targets are not bought with the whole list (Beauty under ``keep``: a 14% validation loss for the floor,
    below SASRec alone on test). Why: a choice on the
    all-user metric, which warm targets dominate (~3/4 of the validation users), gives the cold targets away to
    the content ranker (issue 58), and the cold share is not a constant: it grows toward the end of the
    sequences (Beauty: 22% of the validation targets, 28% of the test targets), so each population counts as
    one, whatever its share.
    Ties go to the earlier setting (grids in increasing order, cold_freq's by size with 0 first), so a grid on
    which fusion never helps keeps the model alone.
    """
    g: Grounding = task.grounding
    lams = sorted({float(x) for x in g.cfg.lambdas} | {0.0})
    ev = task.eval_subset("valid", max_users, shortest)
    grid: list[dict[str, Any]] = []
    cached: BeamCandidates | None = None

    def run(settings: list[Fusion]) -> list[dict[str, Any]]:
        nonlocal cached
        if task.scoring == "beam":
            ms, cached = evaluate_beam(task, model, ev, settings, cached)
            return ms
        return evaluate_dense(task, model, ev, settings)

    def log(settings: list[Fusion], ms: list[dict[str, Any]]) -> None:
        grid.extend({**f.record(), "valid": m["all"][metric], "valid_cold": m["cold"][metric]}
                    for f, m in zip(settings, ms, strict=True))

    first = [Fusion(x, x) for x in lams]
    ms = run(first)
    # a best lambda at the grid's top edge: the grid goes on (x2) until the best is inside it or the extensions end
    for _ in range(g.cfg.extend):
        best_i = max(range(len(first)), key=lambda i: (ms[i]["all"][metric], -i))
        if best_i != len(first) - 1 or first[-1].lam <= 0:
            break
        more = [Fusion(2 * first[-1].lam, 2 * first[-1].lam)]
        first, ms = first + more, ms + run(more)
    log(first, ms)
    best_i = max(range(len(first)), key=lambda i: (ms[i]["all"][metric], -i))
    best, best_m = first[best_i], ms[best_i]
    model_alone = ms[0]
    lams = [f.lam for f in first]
    lifts = sorted({float(x) for x in g.cfg.cold_lifts} | {0.0})
    floor = content_floor(task, ev) if g.cfg.cold and g.cfg.cold_floor else None
    floor_cold = floor["cold"][metric] if floor is not None else float("-inf")

    # the all-user metric the cold passes must keep (fusion.cold_max_loss); the lambda pass's best keeps it always
    guard = (1 - g.cfg.cold_max_loss) * model_alone["all"][metric]

    def key(m: dict[str, Any]) -> tuple[bool, bool, float]:
        score = (m["warm"][metric] + m["cold"][metric]) / 2 if g.cfg.cold_objective == "balanced" else m["all"][metric]
        return m["all"][metric] >= guard, m["cold"][metric] >= floor_cold, score

    def consider(cands: list[Fusion]) -> None:
        nonlocal best, best_m
        # grouped with lambda_cold = lambda, no lift and no frequency term is the additive setting again
        done = {(x["lambda"], x["lambda_cold"], x["cold_lift"] if x["grouped"] or x["lambda"] == x["lambda_cold"] else None,
                 x.get("cold_freq", 0.0)) for x in grid}
        cands = [f for f in cands if (f.lam, f.lam_cold, f.cold_lift, f.cold_freq) not in done]
        out = run(cands)
        log(cands, out)
        for f, m in zip(cands, out, strict=True):
            if key(m) > key(best_m):
                best, best_m = f, m

    freqs = sorted({float(x) for x in g.cfg.cold_freqs} | {0.0}, key=abs)  # ties: the smaller term
    if g.cfg.cold and (best.lam > 0 or not key(best_m)[1]):
        consider([Fusion(best.lam, x, 0.0, True) for x in lams])
        if best.grouped:
            consider([Fusion(best.lam, best.lam_cold, 0.0, True, x) for x in freqs])
        consider([Fusion(best.lam, best.lam_cold, x, True, best.cold_freq) for x in lifts])
    top = max(lams)
    return {**best.record(), "metric": f"valid {metric}", "grid": grid,
            "protocol": task.cfg.eval.protocol, "grid_max": top, "cold_lift_max": max(lifts),
            "cold_freqs": [min(freqs), max(freqs)],
            # still at the edge after the extensions: said in the report and the records, not hidden
            "at_grid_edge": (top > 0 and (best.lam == top or best.lam_cold == top))
            or (best.grouped and best.cold_lift in (min(lifts), max(lifts)) and best.cold_lift != 0)
            or (best.cold_freq != 0 and best.cold_freq in (min(freqs), max(freqs))),
            "cold_floor": None if floor is None else {"content_valid_cold": floor_cold,
                                                      "content_valid": floor["all"][metric], "met": bool(key(best_m)[1]),
                                                      "max_loss": g.cfg.cold_max_loss},
            "valid": best_m, "valid_model": model_alone,
            "content": {"query_items": g.index.cfg.query_items, "decay": g.index.cfg.decay},
            "candidates": g.cfg.candidates if task.scoring == "beam" else None}


def stable_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of each row's stable descending sort (equal scores: the lower index first), without
    sorting whole rows.

    Why: on a 12k-item catalogue the full sort was the largest per-history cost of a served request after the
    item tables' products (1.2 ms of ~7). ``topk`` alone orders ties arbitrarily; so it takes every item scoring
    at least the row's k-th score (all tied ones included), and only those are put in the sort's order.
    """
    n = scores.shape[1]
    if k >= n:
        v, i = scores.sort(dim=1, descending=True, stable=True)
        return v[:, :k], i[:, :k]
    v, i = scores.topk(k, dim=1)
    m = int((scores >= v[:, -1:]).sum(1).max())  # the most items at or above a row's k-th score (ties make it > k)
    if m > k:
        v, i = scores.topk(m, dim=1)
    i, by_index = i.sort(dim=1)
    v, by_score = v.gather(1, by_index).sort(dim=1, descending=True, stable=True)
    return v[:, :k], i.gather(1, by_score)[:, :k]


_side = threading.local()


@contextmanager
def content_thread(executor: Executor | None) -> Iterator[None]:
    """Within the block, :func:`recommend` on this thread computes a dense model's content similarity on
    ``executor`` while the model scores (``sidrec serve``'s ``content_thread``). Thread-local, so a server's model
    thread and a Python caller of the same run never see each other's setting."""
    old = getattr(_side, "executor", None)
    _side.executor = executor
    try:
        yield
    finally:
        _side.executor = old


def recommend(task: Any, es: EvalSet, k: int, exclude_history: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items per user of ``es`` and their scores under the run's fusion setting (history items left
    out when ``exclude_history``; default: the run's ``eval.protocol``, as in evaluation)."""
    exclude = excludes(task.cfg) if exclude_history is None else exclude_history
    f: Fusion = task.fusion
    model = task.model
    if task.scoring == "beam":
        old = task.beam_width
        task.beam_width = max(k, old)
        try:
            bc = beam_candidates(task, model, es, content=not f.off, exclude_history=exclude)
        finally:
            task.beam_width = old
        it, sc, _ = rank_candidates(None if f.off else task.grounding, bc, f, k)
        return it.numpy(), sc.numpy()
    g = task.grounding if not f.off else None
    # a second thread for the content similarity while the model scores (the server's ``content_thread``): the
    # two products run on two cores at once; same operations, same numbers
    side = getattr(_side, "executor", None) if g is not None else None
    items, scores = [], []
    order = es.length_order()
    for s in range(0, len(es), task.eval_batch_size):
        rows = order[s:s + task.eval_batch_size]
        hist = to_device(es.padded_histories(rows, pad=-1), task.device)
        with torch.no_grad():
            sim = side.submit(g.index.similarity, hist) if side is not None else None
            sc = task.model_scores(model, hist)
            if not f.off:
                # the history is -inf in the fusion's log-probabilities already, and stays -inf through it
                sc = g.dense(_fusable(task, sc, es, rows, exclude),
                             sim.result() if sim is not None else g.index.similarity(hist), f)
            sc = finite_scores(sc)
        if exclude and f.off:
            mask_history(sc, to_device(es.padded_seen(rows, pad=-1), task.device))
        v, i = stable_top_k(sc, k)  # equal scores: the lower index first, as in evaluation
        items.append(i.masked_fill(~torch.isfinite(v), -1).cpu())
        scores.append(v.cpu())
    it, sc = torch.cat(items).numpy(), torch.cat(scores).numpy()
    out_i, out_s = np.empty_like(it), np.empty_like(sc)
    out_i[order], out_s[order] = it, sc
    return out_i, out_s


def final_evaluation(task: Any, run: Any, summary: dict[str, Any], test: bool = True) -> dict[str, Any]:
    """The run's closing numbers: choose the fusion on validation (when grounded), then evaluate test once.

    ``valid`` / ``test`` are the run's ranking (fused when a lambda > 0 won on validation); ``model_only``
    holds the model alone, ``fusion`` the choice and its grid; the choice is saved as ``fusion.json``, which
    ``evaluate`` and ``recommend`` read back.
    """
    from pathlib import Path

    from sidrec.progress import note

    model = task.model
    model.eval()
    out: dict[str, Any] = {"summary": summary}
    n_valid, n_test = split_users(task, "valid"), split_users(task, "test")
    if task.grounding is None:
        note(f"evaluating valid ({n_valid:,} users, full catalogue)", n_valid)
        out["valid"] = task.evaluate(model, "valid")
        if test:
            note(f"evaluating test ({n_test:,} users, full catalogue)", n_test)
            out["test"] = task.evaluate(model, "test")
        return out
    note(f"choosing the content fusion on valid ({n_valid:,} users; one evaluation per lambda of fusion.lambdas)",
         n_valid)
    rec = choose(task, model)
    task.fusion = fusion_from_record(rec)
    out["valid"], out["model_only"] = rec.pop("valid"), {"valid": rec.pop("valid_model")}
    out["fusion"] = rec
    write_json(Path(run) / FUSION_FILE, rec)
    if test:
        note(f"evaluating test ({n_test:,} users, full catalogue)", n_test)
        if task.fusion.off:
            out["test"] = out["model_only"]["test"] = evaluate(task, model, "test", [Fusion()])[0]
        else:
            out["model_only"]["test"], out["test"] = evaluate(task, model, "test", [Fusion(), task.fusion])
    return out


def split_users(task: Any, split: str) -> int:
    """How many users ``split`` evaluates (the size of a progress note)."""
    return len(task.eval_subset(split).eval_set)


def is_fused(rec: dict[str, Any] | None) -> bool:
    """Whether a run's ``fusion`` record changed its ranking (any weight or a cold lift)."""
    return bool(rec) and not fusion_from_record(rec).off  # type: ignore[arg-type]


def fusion_from_record(rec: dict[str, Any]) -> Fusion:
    """The setting a ``fusion.json`` record names; a record written before issue 58 (no ``grouped``) is the
    additive fusion it was chosen as."""
    return Fusion(float(rec["lambda"]), float(rec["lambda_cold"]), float(rec.get("cold_lift", 0.0)),
                  bool(rec.get("grouped", False)), float(rec.get("cold_freq", 0.0)))


def load_fusion(task: Any, run: Any) -> None:
    """Give a rebuilt task the fusion its run chose (``fusion.json``); none (the model alone) when absent."""
    import json
    from pathlib import Path

    path = Path(run) / FUSION_FILE
    if not path.exists() or not has_grounding(task):
        return
    try:
        rec = json.loads(path.read_text())
        f = fusion_from_record(rec)
        query = rec.get("content") or {}
        n, decay = int(query.get("query_items", task.cfg.content.query_items)), float(
            query.get("decay", task.cfg.content.decay))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SidrecError(f"{path}: not a fusion record ({type(exc).__name__}: {exc})") from None
    if not (math.isfinite(f.lam) and math.isfinite(f.lam_cold)) or min(f.lam, f.lam_cold) < 0:
        raise SidrecError(f"{path}: lambda and lambda_cold must be finite and >= 0, got {f.lam}, {f.lam_cold}")
    if not (math.isfinite(f.cold_lift) and math.isfinite(f.cold_freq)):
        raise SidrecError(f"{path}: cold_lift and cold_freq must be finite, got {f.cold_lift}, {f.cold_freq}")
    if n < 1 or not 0 <= decay <= 1:
        raise SidrecError(f"{path}: content query_items must be >= 1 and decay in [0, 1], got {n}, {decay}")
    # the query the fusion was chosen with (`sidrec fuse RUN content.query_items=3` may differ from config.yaml)
    task.cfg.content.query_items, task.cfg.content.decay = n, decay
    task.__dict__.pop("_grounding", None)
    task.fusion = f
