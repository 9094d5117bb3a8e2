"""Run DREAM's three stages on a trained TIGER run and evaluate every stage on the same users.

Why on top of a finished run: DREAM refines early SID assignments *after* a backbone has been trained on
the static SIDs. As in the paper, CART re-tokenizes every item and a bridge TIGER is trained on that table
(``RUN/dream/bridge``); UC3 votes with it and CPDE adapts it. (The first design moved only cold items and
used the original model as the evaluator; it lost and was removed, docs/dream.md.) Results go to
``RUN/dream/``: one SID table per stage, the merged stage-3 weights, ``dream.json`` (diagnostics and the
stage table) and ``report.md``. The run's own files are never modified.

Stage table rows: ``static`` (the run as trained), ``cart`` (every item takes CART's best candidate Phi_R and
the row is the bridge TIGER trained on that table, the paper's "CART only"), ``uc3`` (the backbone's vote where its gates
pass; Compat-Top1 decoding), ``cpde-top1`` (LoRA-merged model, each cold item's highest-weight hypothesis)
and ``cpde-beam`` (same model, all hypotheses of a cold item registered in the trie: Beam-Aware decoding).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.config import Config, load_config
from sidrec.data.dataset import Dataset
from sidrec.dream.cart import CARTResult, family_negatives, train_cart
from sidrec.dream.config import DREAMConfig
from sidrec.dream.cpde import train_cpde
from sidrec.dream.sids import complete_candidates, table_with
from sidrec.dream.uc3 import uc3_vote
from sidrec.errors import SidrecError
from sidrec.fusion import Fusion
from sidrec.io import atomic_path, write_json, write_text
from sidrec.sid.table import SIDTable

DREAM_DIR = "dream"
# "static+content": the base TIGER grounded in content (its fusion.json: the beam + the content top-N rescored,
# + lambda x similarity; src/sidrec/fusion.py), the cold-start effect reached without new SIDs, beside DREAM's
STAGES = ("static", "cart", "uc3", "cpde-top1", "cpde-beam", "static+content")


def item_docs_and_families(ds: Dataset, template: str, family_field: str = "") -> tuple[list[str], list[str]]:
    """Per item a text document (for TF-IDF retrieval) and its product family (last value of a list field)."""
    from sidrec.features.core import ATTRIBUTE_FIELDS, has_text, item_texts

    if has_text(ds):
        docs = item_texts(ds, template)
    else:
        f = next((x for x in ATTRIBUTE_FIELDS if x in ds.items), None)
        if f is None:
            raise SidrecError(f"dataset '{ds.name}' has no text or attribute fields for counterfactual negatives")
        docs = [" ".join(f"a{v}" for v in (vals if isinstance(vals, list) else [vals]) if v) for vals in ds.items[f]]
    field = family_field or next((x for x in ("categories", *ATTRIBUTE_FIELDS) if x in ds.items), "")
    if field and field not in ds.items:
        raise SidrecError(f"dream.family_field: dataset '{ds.name}' has no item field '{field}' "
                          f"(fields: {', '.join(ds.items)})")
    fam = []
    for v in (ds.items[field] if field else [None] * ds.n_items):
        vals = v if isinstance(v, list) else ([v] if v else [])
        fam.append(str(vals[-1]) if vals else "")
    return docs, fam


def external_rewrite(command: str) -> Any:
    """The rewrite hook as a shell command: texts on stdin (one per line), rewritten queries on stdout."""

    def rewrite(texts: list[str]) -> list[str]:
        res = subprocess.run(shlex.split(command), input="\n".join(t.replace("\n", " ") for t in texts),
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SidrecError(f"dream.rewrite_command failed ({res.returncode}): {res.stderr.strip()[:200]}")
        out = res.stdout.splitlines()
        if len(out) != len(texts):
            raise SidrecError(f"dream.rewrite_command returned {len(out)} lines for {len(texts)} items")
        return out

    return rewrite


def _say(msg: str) -> None:
    """One line per finished stage on stderr (stages take minutes on the real datasets)."""
    print(f"[dream {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def evaluate_stage(task: Any, model: torch.nn.Module, table: SIDTable, split: str, max_users: int = 0) -> dict:
    """Metrics of ``model`` decoding over ``table`` (the table's primary SIDs also encode the histories)."""
    task.use_sids(table)
    return task.evaluate(model, split, max_users)


@dataclass
class _Job:
    """What every stage reads: the run, its settings, data, task and base SIDs, and the diagnostics written."""

    run: Path
    cfg: Config
    dcfg: DREAMConfig
    ds: Dataset
    split: Any
    task: Any
    base_table: SIDTable
    out_dir: Path
    progress: bool
    diag: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def base(self) -> np.ndarray:
        return self.base_table.primary.numpy()

    @property
    def sizes(self) -> list[int]:
        return self.base_table.sizes

    @property
    def cold(self) -> np.ndarray:
        return self.split.item_freq <= self.cfg.data.cold_threshold

    @property
    def cold_items(self) -> np.ndarray:
        return np.flatnonzero(self.cold)


def run_dream(run_dir: str | Path, overrides: list[str] | None = None, split: str | tuple[str, ...] = "test",
              stages: tuple[str, ...] = STAGES, progress: bool = True,
              allow_config_commands: bool = False) -> dict[str, Any]:
    """All stages on a finished TIGER run; returns (and writes to RUN/dream/dream.json) the stage table.

    ``split`` may name several splits (``("valid", "test")``): the stages are fitted once and evaluated on
    each, so settings can be chosen on validation and the chosen run's test numbers need no refit.
    ``stages`` / ``split`` of the result describe the first split; ``by_split`` holds all of them.

    ``dream.rewrite_command`` runs a program. A run directory may come from someone else, so a command read from
    its ``config.yaml`` is refused unless ``allow_config_commands``; one given in ``overrides`` (the user's own
    command line) runs.
    """
    splits = (split,) if isinstance(split, str) else tuple(split)
    for sp in splits:
        if sp not in ("valid", "test"):
            raise SidrecError(f"split must be 'valid' or 'test', got '{sp}'")
    t_start = time.time()
    job, base_fusion = _open(Path(run_dir), overrides, allow_config_commands, progress)
    static_model = job.task.model
    cart_table, cands, cand_scores = _stage_cart(job)
    _stage_bridge(job, cart_table)
    uc3 = _stage_uc3(job, cart_table, cands, cand_scores)
    cpde = _stage_cpde(job, uc3)
    tables = {"static": (static_model, job.base_table), "cart": (job.task.model, cart_table),
              "uc3": (job.task.model, uc3["table"]), "cpde-top1": (cpde["model"], cpde["top1"]),
              "cpde-beam": (cpde["model"], cpde["beam"]), "static+content": (static_model, job.base_table)}
    by_split = _evaluate_stages(job, tables, stages, splits, base_fusion)
    out = {"run": str(job.run), "split": splits[0], "stages": by_split[splits[0]], "by_split": by_split,
           "diagnostics": job.diag, "timings": job.timings, "wall_s": time.time() - t_start,
           "config": dataclasses.asdict(job.dcfg)}
    write_json(job.out_dir / "dream.json", out)
    write_text(job.out_dir / "report.md", render(out))
    plot(out, job.out_dir / "cpde.png")
    return out


def run_cart_bridge(run_dir: str | Path, overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Stage 1 and the bridge only: CART's table (``RUN/dream/sid_table.cart.parquet``) and the bridge TIGER
    trained on it (``RUN/dream/bridge``, a complete run with its own fusion and test, alone and + content).

    Why: the paper's "CART only" row is the bridge, and a study that compares it with the static run as two runs
    under one protocol (``benchmarks/scaling.py``) needs neither UC3's vote nor CPDE's fine-tuning nor the stage
    table's beam-50 evaluations. The same caches as :func:`run_dream`: a finished CART fit for the same settings and
    base SIDs is reused, a finished bridge for the same table is reused, an interrupted one resumed. Writes
    ``RUN/dream/cart_bridge.json`` (the bridge's folder, CART's diagnostics and the time of each stage).
    """
    job, _ = _open(Path(run_dir), overrides, False, progress)
    cart_table, _, _ = _stage_cart(job)
    _stage_bridge(job, cart_table)
    out = {"run": str(job.run), "bridge": job.diag["bridge"]["dir"], "diagnostics": job.diag, "timings": job.timings}
    write_json(job.out_dir / "cart_bridge.json", out)
    return out


def _open(run: Path, overrides: list[str] | None, allow_config_commands: bool, progress: bool) -> tuple[_Job, Fusion]:
    """Check the request and load the run: its config with the dream overrides, data, task and base SID table."""
    from sidrec.config import only_overrides, parse_override
    from sidrec.pipeline import load_run

    # the stages read the dream section, the seed (CART) and the evaluation settings; the backbone is the run's own
    only_overrides("dream", overrides, ("dream.", "seed", "eval."))
    if not (run / "config.yaml").exists():
        raise SidrecError(f"{run}: not a run directory (no config.yaml)")
    cfg: Config = load_config([run / "config.yaml"], list(overrides or []))
    cfg.run_dir = str(run)
    dcfg: DREAMConfig = cfg.dream
    own = {parse_override(o)[0] for o in overrides or []}
    if dcfg.rewrite_command and "dream.rewrite_command" not in own and not allow_config_commands:
        raise SidrecError(f"{run / 'config.yaml'} sets dream.rewrite_command={dcfg.rewrite_command!r}; commands from a "
                          "run directory are not run: pass it on the command line (dream.rewrite_command=...), "
                          "clear it (dream.rewrite_command=), or add --allow-config-commands")
    if cfg.method != "tiger":
        raise SidrecError(f"{run}: DREAM refines a TIGER run (this one is '{cfg.method}')")
    # the task is built with the stage table's settings: the dream overrides, a beam wide enough for Recall@50
    ks = sorted(set(cfg.eval.ks) | {5, 10, 50})
    cfg, ds, split_obj, task = load_run(run, overrides=list(overrides or []) + [
        f"tiger.beam={max(dcfg.eval_beam, cfg.tiger.beam)}", f"eval.ks=[{', '.join(map(str, ks))}]"])
    dcfg = cfg.dream
    base_fusion, task.fusion = task.fusion, Fusion()  # the stages measure SID tables under the model alone
    out_dir = run / DREAM_DIR
    out_dir.mkdir(exist_ok=True)
    job = _Job(run, cfg, dcfg, ds, split_obj, task, SIDTable.load(run / "sid_table.parquet"), out_dir, progress)
    job.diag.update(cold_items=int(len(job.cold_items)), items=int(ds.n_items))
    return job, base_fusion


def _stage_cart(job: _Job) -> tuple[SIDTable, np.ndarray, np.ndarray]:
    """Stage 1: CART re-tokenizes every item (a finished fit with the same settings is reused); returns its
    table (every item at its best candidate Phi_R) and the cold items' candidate pools with their scores."""
    run, cfg, dcfg, ds, split_obj = job.run, job.cfg, job.dcfg, job.ds, job.split
    base, sizes, out_dir, cold, cold_items = job.base, job.sizes, job.out_dir, job.cold, job.cold_items
    diag, timings, progress = job.diag, job.timings, job.progress
    t0 = time.time()
    from sidrec.sid.stage import run_features

    # CART depends only on the data, the base SIDs and these settings: a finished fit is reused, so tuning the
    # later stages (dream.lambda_*, CPDE epochs) does not refit it
    cart_key = {"cart": dataclasses.asdict(dcfg.cart), "negatives": dcfg.negatives, "family": dcfg.family_field,
                "rewrite": dcfg.rewrite_command, "seed": cfg.seed, "cold_threshold": cfg.data.cold_threshold,
                "base": hashlib.sha256(base.tobytes()).hexdigest()}
    cache = out_dir / "cart_candidates.npz"
    cached = None
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == json.dumps(cart_key, sort_keys=True):
                cached = (z["candidates"], z["scores"], json.loads(str(z["history"])), float(z["negs"]))
    if cached is not None:
        cres = CARTResult(cached[0], cached[1], cached[2])
        diag["hard_negatives_per_item"] = cached[3]
        diag["cart_reused"] = True
    else:
        emb = run_features(cfg, ds).astype(np.float32)
        if dcfg.negatives in ("family", "family_far"):
            docs, fam = item_docs_and_families(ds, cfg.features.template, dcfg.family_field)
            rw = external_rewrite(dcfg.rewrite_command) if dcfg.rewrite_command else None
            negs = family_negatives(docs, fam, split_obj.train, dcfg.cart.hard_negatives, rewrite=rw,
                                    closest=dcfg.negatives == "family")
        elif dcfg.negatives == "none":
            negs = np.full((ds.n_items, 1), -1, dtype=np.int64)
        else:
            raise SidrecError(f"dream.negatives must be 'family', 'family_far' or 'none', got '{dcfg.negatives}'")
        diag["hard_negatives_per_item"] = float((negs >= 0).sum(1).mean())
        from sidrec.sid.base import load_tokenizer

        # CART starts at the static SIDs: the base quantiser's space and codebooks
        emb, books = load_tokenizer(run / "tokenizer").residual_space(emb)
        _, cres = train_cart(emb, base[:, :-1], sizes[:-1], split_obj.train, negs, dcfg.cart, cfg.seed, progress,
                             codebooks=books, device=job.task.device)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, candidates=cres.candidates, scores=cres.scores, key=json.dumps(cart_key, sort_keys=True),
                     history=json.dumps(cres.history), negs=diag["hard_negatives_per_item"])
    moved = np.arange(ds.n_items)  # CART re-tokenizes every item
    cands = complete_candidates(base, moved, cres.candidates[moved], sizes[-1])
    cand_scores = np.where((cands >= 0).all(2), cres.scores[moved], -np.inf)
    # stage-1 primary Phi_R: the best *valid* candidate (invalid ones sort last)
    order = np.argsort(-cand_scores, axis=1, kind="stable")
    cands = np.take_along_axis(cands, order[:, :, None], 1)
    cand_scores = np.take_along_axis(cand_scores, order, 1)
    cart_table = table_with(base, sizes, moved, cands[:, :1], item_ids=ds.item_ids)
    cart = cart_table.primary.numpy()
    changed = (cart != base).any(1)
    diag["cart_primary_changed"] = float(changed[cold_items].mean()) if len(cold_items) else 0.0
    diag["cart_warm_changed"] = float(changed[~cold].mean()) if (~cold).any() else 0.0
    pos = cart[:, :-1] != base[:, :-1]  # which content positions CART rewrote, per subset
    diag["cart_positions_changed"] = {name: pos[m].mean(0).tolist() if m.any() else [0.0] * pos.shape[1]
                                      for name, m in (("cold", cold), ("warm", ~cold))}
    # the paper's diagnostic: static SIDs that are not among CART's top-n candidates (content codes)
    outside = ~(cres.candidates == base[:, None, :-1]).all(2).any(1)
    diag["static_outside_topn"] = {"all": float(outside.mean()), "cold": float(outside[cold].mean()) if cold.any()
                                   else 0.0, "warm": float(outside[~cold].mean()) if (~cold).any() else 0.0}
    diag["cart_valid_candidates"] = float((cands >= 0).all(2).sum(1).mean()) if len(cands) else 0.0
    diag["cart_losses"] = cres.history
    cart_table.save(out_dir / "sid_table.cart.parquet")
    cands, cand_scores = cands[cold_items], cand_scores[cold_items]  # UC3 and CPDE work on the cold items' pools
    timings["cart_s"] = time.time() - t0
    _say(f"CART: {timings['cart_s']:.0f} s, primary SID changed for {diag['cart_primary_changed']:.1%} of "
         f"{len(cold_items)} cold items and {diag['cart_warm_changed']:.1%} of warm items")

    return cart_table, cands, cand_scores


def _stage_bridge(job: _Job, cart_table: SIDTable) -> None:
    """The bridge TIGER, trained on the CART table with the run's own settings, becomes the task's model."""
    t0 = time.time()
    job.task.model, job.diag["bridge"] = train_bridge(job.run, cart_table, job.out_dir, job.dcfg, job.progress)
    job.timings["bridge_s"] = time.time() - t0
    _say(f"bridge TIGER on the CART table: {job.timings['bridge_s']:.0f} s ({job.diag['bridge']['status']})")


def _stage_uc3(job: _Job, cart_table: SIDTable, cands: np.ndarray, cand_scores: np.ndarray) -> dict[str, Any]:
    """Stage 2: the bridge votes between each cold item's candidates in the contexts it was bought in."""
    cfg, dcfg, ds, split_obj, task = job.cfg, job.dcfg, job.ds, job.split, job.task
    sizes, out_dir, cold_items = job.sizes, job.out_dir, job.cold_items
    diag, timings, progress = job.diag, job.timings, job.progress
    start = cart_table.primary.numpy()  # the table UC3 / CPDE change only cold items of
    t0 = time.time()
    from sidrec.data.batches import prefix_samples

    task.use_sids(cart_table)  # histories are read with the stage-1 SIDs
    samples = prefix_samples(split_obj.train, cfg.data.max_len)
    cold_index = np.full(ds.n_items, -1, dtype=np.int64)
    cold_index[cold_items] = np.arange(len(cold_items))
    tgt = samples["flat"][samples["end"]]
    ctx_rows = np.flatnonzero(cold_index[tgt] >= 0)
    dec = uc3_vote(task, samples, ctx_rows, cold_index[tgt[ctx_rows]], np.arange(ds.n_users), cands, dcfg, progress)
    chosen = cands[np.arange(len(cold_items)), dec.chosen]
    uc3_table = table_with(start, sizes, cold_items, chosen[:, None], item_ids=ds.item_ids)
    uc3_table.save(out_dir / "sid_table.uc3.parquet")
    supported = dec.support >= dcfg.uc3_min_support
    n_cold = max(1, len(cold_items))
    diag.update(uc3_switch_rate=dec.switch_rate, uc3_contexts=int(len(ctx_rows)),
                uc3_items_with_support=float(supported.mean()) if len(cold_items) else 0.0,
                # why items kept candidate 0: too few contexts, a top-2 margin below the gate, or it won the vote
                uc3_fallback_support=float((~supported).sum() / n_cold),
                uc3_fallback_margin=float((supported & (dec.margin < dcfg.uc3_min_margin)).sum() / n_cold),
                uc3_kept_by_vote=float((supported & (dec.margin >= dcfg.uc3_min_margin) & (dec.winner == 0)).sum()
                                       / n_cold))
    timings["uc3_s"] = time.time() - t0
    _say(f"UC3: {timings['uc3_s']:.0f} s, {len(ctx_rows)} contexts, switch rate {dec.switch_rate:.1%}")

    return {"table": uc3_table, "decision": dec, "cands": cands, "cand_scores": cand_scores, "samples": samples,
            "cold_index": cold_index, "start": start}


def _stage_cpde(job: _Job, uc3: dict[str, Any]) -> dict[str, Any]:
    """Stage 3: LoRA adapters learn weighted hypotheses per cold item; the merged model and two tables (the
    top hypothesis; all hypotheses for beam-aware decoding)."""
    cfg, dcfg, ds, task = job.cfg, job.dcfg, job.ds, job.task
    sizes, out_dir, cold_items = job.sizes, job.out_dir, job.cold_items
    diag, timings, progress = job.diag, job.timings, job.progress
    cands, cand_scores, dec, samples, cold_index = (uc3[k] for k in ("cands", "cand_scores", "decision", "samples",
                                                                     "cold_index"))
    uc3_table, start, model = uc3["table"], uc3["start"], task.model  # the bridge, adapted by CPDE
    t0 = time.time()
    nb = min(dcfg.hypotheses, cands.shape[1])
    # hypotheses: the UC3 choice first, then the other candidates in CART order
    key = np.tile(np.arange(cands.shape[1]), (len(cold_items), 1))
    key[np.arange(len(cold_items)), dec.chosen] = -1
    rest = np.argsort(key, axis=1, kind="stable")[:, :nb]
    hyps = np.take_along_axis(cands, rest[:, :, None], 1)
    hs = np.take_along_axis(cand_scores, rest, 1)
    lv = len(sizes) - 1
    alpha = torch.from_numpy(hs * lv).float().softmax(1).nan_to_num(0.0).numpy()  # CART's joint probability
    task.use_sids(uc3_table)
    cres3 = train_cpde(model, task.codes_of, samples, cold_index, hyps, alpha, dcfg, task._users, cfg.seed, progress)
    w = cres3.weights
    top = np.argsort(-w, axis=1, kind="stable")
    top1 = np.take_along_axis(hyps, top[:, :1, None], 1)
    cpde_top1 = table_with(start, sizes, cold_items, top1, item_ids=ds.item_ids)
    ordered = np.take_along_axis(hyps, top[:, :, None], 1)
    ordered_w = np.take_along_axis(w, top, 1)
    ordered = np.where((ordered_w > 0)[:, :, None], ordered, -1)
    cpde_beam = table_with(start, sizes, cold_items, ordered, ordered_w, item_ids=ds.item_ids)
    cpde_beam.save(out_dir / "sid_table.cpde.parquet")
    from safetensors.torch import save_model

    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_model(cres3.model, str(tmp))
    diag.update(cpde_weight_history=cres3.weight_history, cpde_losses=cres3.losses,
                cpde_mean_weights=np.sort(w, 1)[:, ::-1].mean(0).tolist() if len(w) else [],
                cpde_top1_changed=float((top[:, 0] != 0).mean()) if len(w) else 0.0,
                lambda_kd=cres3.lambda_kd, lambda_warm=cres3.lambda_warm)
    timings["cpde_s"] = time.time() - t0
    _say(f"CPDE: {timings['cpde_s']:.0f} s, losses {cres3.losses[-1] if cres3.losses else {}}")

    return {"model": cres3.model, "top1": cpde_top1, "beam": cpde_beam}


def _evaluate_stages(job: _Job, tables: dict[str, tuple[Any, SIDTable]], stages: tuple[str, ...],
                     splits: tuple[str, ...], base_fusion: Fusion) -> dict[str, dict[str, Any]]:
    """Every requested stage on each split, the same users and beam for all (``static+content``: the base run under
    its own content fusion)."""
    task, dcfg, timings = job.task, job.dcfg, job.timings
    if base_fusion.off and "static+content" in stages:
        _say("static+content: skipped (the base run chose no content fusion: see its fusion.json / sidrec fuse)")
        stages = tuple(s for s in stages if s != "static+content")
    by_split: dict[str, dict[str, Any]] = {}
    for sp in splits:
        results: dict[str, Any] = {}
        for name in stages:
            t0 = time.time()
            m, tab = tables[name]
            task.fusion = base_fusion if name == "static+content" else Fusion()
            results[name] = evaluate_stage(task, m, tab, sp, dcfg.eval_users)
            task.fusion = Fusion()
            tkey = f"eval_{name}_s" if sp == splits[0] else f"eval_{name}_{sp}_s"
            timings[tkey] = time.time() - t0
            _say(f"{name} ({sp}): N@10 all {results[name]['all']['ndcg@10']:.4f} warm "
                 f"{results[name]['warm']['ndcg@10']:.4f} cold {results[name]['cold']['ndcg@10']:.4f} "
                 f"({timings[tkey]:.0f} s)")
        by_split[sp] = results
    return by_split


def train_bridge(run: Path, table: SIDTable, out_dir: Path, dcfg: DREAMConfig, progress: bool = True
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The bridge backbone: a TIGER with the run's own settings trained on the CART table (``RUN/dream/bridge``).

    Why: UC3 and CPDE ask a backbone which candidate SID it can generate; one trained on the static SIDs
    was trained *away* from every new path. The bridge has learned the refined table, and its stage row is
    the paper's "CART only". A finished bridge for the same table is reused, an interrupted one resumed.
    """
    import shutil

    from sidrec.pipeline import load_run, train

    bridge = out_dir / "bridge"
    stamp = out_dir / "bridge.json"
    digest = hashlib.sha256(table.primary.numpy().tobytes()).hexdigest()
    known = json.loads(stamp.read_text()).get("table") if stamp.exists() else None
    overrides = [f"run_dir={bridge}", f"train.progress={str(progress).lower()}"]
    if dcfg.bridge_max_minutes > 0:
        overrides.append(f"train.max_minutes={dcfg.bridge_max_minutes}")
    if known == digest and (bridge / "metrics.json").exists():
        status = "reused"
    else:
        resume = known == digest and (bridge / "config.yaml").exists()
        if not resume:
            shutil.rmtree(bridge, ignore_errors=True)
            bridge.mkdir(parents=True)
            table.save(bridge / "sid_table.parquet")
            if (run / "tokenizer").is_dir():
                shutil.copytree(run / "tokenizer", bridge / "tokenizer")
            write_json(stamp, {"table": digest})
        cfg = load_config([run / "config.yaml"], overrides)
        train(cfg, resume=resume)
        status = "resumed" if resume else "trained"
    _, _, _, btask = load_run(bridge)
    btask.fusion = Fusion()
    metrics = json.loads((bridge / "metrics.json").read_text())
    return btask.model, {"status": status, "dir": str(bridge), "epochs": metrics["summary"]["epochs"],
                         "train_s": metrics["summary"]["train_s"]}


def plot(out: dict[str, Any], path: Path) -> None:
    """CPDE's mean weight per hypothesis slot at each periodic update and its losses per epoch (``cpde.png``)."""
    d = out["diagnostics"]
    hist, losses = d.get("cpde_weight_history") or [], d.get("cpde_losses") or []
    if not hist or not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = np.asarray(hist, dtype=float)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for b in range(w.shape[1]):
        ax[0].plot(np.arange(len(w)), w[:, b], marker="o", label=f"slot {b + 1}" + (" (UC3's choice)" if b == 0 else ""))
    ax[0].set_title("mean weight per hypothesis slot")
    ax[0].set_xlabel("weight update (0 = initial)")
    ax[0].legend()
    ep = [r["epoch"] for r in losses]
    for k in ("soft", "kl", "kd", "warm_nll"):
        ax[1].plot(ep, [r.get(k, np.nan) for r in losses], marker="o", label=k)
    ax[1].set_title("CPDE losses")
    ax[1].set_xlabel("epoch")
    ax[1].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def render(out: dict[str, Any]) -> str:
    """The stage table and diagnostics as Markdown."""
    by_split = out.get("by_split") or {out["split"]: out["stages"]}
    lines = [f"# DREAM on {out['run']} ({', '.join(by_split)})", "",
             "| split | stage | subset | users | R@5 | N@5 | R@10 | N@10 | R@50 | N@50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for sp, stages in by_split.items():
        for st, res in stages.items():
            for sub in ("all", "warm", "cold"):
                m = res[sub]
                lines.append(f"| {sp} | {st} | {sub} | {m['n_users']} | " + " | ".join(
                    f"{m.get(f'{k}@{n}', float('nan')):.4f}" for n in (5, 10, 50) for k in ("recall", "ndcg")) + " |")
    d = out["diagnostics"]
    lines += ["", f"- cold items: {d['cold_items']} of {d['items']}",
              f"- CART: primary SID changed for {d['cart_primary_changed']:.1%} of cold items and "
              f"{d.get('cart_warm_changed', 0):.1%} of warm items; static SIDs outside CART's top "
              f"candidates: {d.get('static_outside_topn', {}).get('all', float('nan')):.1%}",
              f"- UC3: {d['uc3_switch_rate']:.1%} of cold items switch ({d['uc3_contexts']} contexts); kept "
              f"candidate 0 for too few contexts {d.get('uc3_fallback_support', 0):.1%}, a margin below the gate "
              f"{d.get('uc3_fallback_margin', 0):.1%}, winning the vote {d.get('uc3_kept_by_vote', 0):.1%}",
              f"- CPDE mean hypothesis weights (sorted): {', '.join(f'{x:.3f}' for x in d['cpde_mean_weights'])} "
              "(over training: cpde.png)",
              f"- wall time: {out['wall_s'] / 60:.1f} min"]
    return "\n".join(lines) + "\n"


def load_dream(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / DREAM_DIR / "dream.json"
    if not p.exists():
        raise SidrecError(f"{p} not found: run 'sidrec dream {run_dir}' first")
    return json.loads(p.read_text())


__all__ = ["STAGES", "evaluate_stage", "item_docs_and_families", "load_dream", "run_cart_bridge", "run_dream"]
