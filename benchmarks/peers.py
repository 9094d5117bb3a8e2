"""A peer's shipped checkpoints, ranked by the peer's own evaluation code and by sidrec's evaluator (issue 57, 1a).

The peer is TV-Rec (Shin et al., NeurIPS 2025; github.com/yehjin-shin/TV-Rec), which ships its training logs
(``output/TVRec_<Data>_best.log``) and, where the file is small enough to be had, the checkpoint
(``output/TVRec_<Data>_best.pt``). For each dataset this script writes to ``benchmarks/results/peers.json``:

- ``tvrec (their log)``: the test HR/NDCG@5/10/20 their committed log reports (HR = Recall with one target), with the
  training settings and epochs the log names;
- ``tvrec (their code)``: their checkpoint evaluated on CPU by *their* code (their data loader, their ``Trainer.test``:
  history scores set to 0, top-20 by ``argpartition``, their ``recall_at_k`` / ``ndcg_k``);
- ``tvrec (sidrec evaluator)``: the same model's full-catalogue scores for sidrec's leave-one-out test users (their
  item ids mapped to sidrec's item indices, one-to-one checked), ranked by ``Evaluator.evaluate_scores(...,
  exclude_history=True)`` (``eval.protocol: exclude``); per subset (all / warm / cold), plus a row whose mask covers
  the whole history instead of the last ``data.max_len`` items; the ``agreement`` field compares the two rankings
  user by user (their top-20 lists against sidrec's exact ranks).

A checkpoint the peer's snapshot lacks gives the log row only, with a ``checkpoint`` field saying so.

The peer's code is never copied into this project: ``--peer-repo`` names a scratch checkout of their repository
(``git clone`` of the mirror, outside /work/main) and their modules (``model``, ``dataset``, ``trainers``, ``utils``)
are imported from there at run time through ``sys.path``. Their checkpoint is a state dict, loaded with
``torch.load(weights_only=True, map_location="cpu")``; only this benchmark loads it, never sidrec.

Usage: cd benchmarks && python3 peers.py --peer-repo /work/scratch/TV-Rec [beauty sports] [--threads 1]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from sidrec.config import load_config
from sidrec.data.protocol import EvalSet, LeaveOneOut, left_pad
from sidrec.eval.evaluator import Evaluator
from sidrec.pipeline import dataset_from_config

from _common import REPO, record, save

PEER_DATA = {"beauty": "Beauty", "sports": "Sports"}  # sidrec dataset name -> TV-Rec's data_name
PEER_MODULES = ("utils", "dataset", "metrics", "model", "trainers")
TOP = 20  # their evaluation keeps each user's top 20 only
KS = [5, 10, 20]  # the cut-offs their evaluation reports
SETTINGS = ("lr", "batch_size", "epochs", "patience", "seed", "max_seq_length", "hidden_size", "num_hidden_layers",
            "hidden_dropout_prob", "M", "reg_weight")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def their_metrics(d: dict[str, Any]) -> dict[str, float]:
    """Their ``{'HR@10': '0.1017', 'NDCG@10': '0.0608', ...}`` as sidrec's lower-case names (HR = Recall, one target)."""
    return {f"{'recall' if k.startswith('HR') else 'ndcg'}@{k.split('@')[1]}": float(v)
            for k, v in d.items() if "@" in k}


def parse_log(path: Path) -> dict[str, Any]:
    """Training settings (their argparse Namespace), epochs run, best validation epoch and the test line of a log."""
    settings: dict[str, Any] = {}
    test: dict[str, Any] = {}
    epochs, best, last_valid, after_test = 0, -1, -1, False
    for line in path.read_text().splitlines():
        msg = line.split(" - ", 1)[1] if " - " in line else line
        if msg.startswith("Namespace(") and not settings:
            call = ast.parse(msg, mode="eval").body
            assert isinstance(call, ast.Call)
            settings = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        elif msg.startswith("{'epoch':"):
            epochs = int(ast.literal_eval(msg)["epoch"]) + 1
        elif msg.startswith("{'Epoch':"):
            d = ast.literal_eval(msg)
            if after_test:
                test = d
            else:
                last_valid = int(d["Epoch"])
        elif msg.startswith("Validation score increased"):
            best = last_valid
        elif "Test Score" in msg:
            after_test = True
    if not settings or not test:
        raise SystemExit(f"{path}: no Namespace line or no test line")
    return {"settings": settings, "test": their_metrics(test), "epochs": epochs, "best_epoch": best}


def import_peer(repo: Path) -> dict[str, ModuleType]:
    """Their modules, imported from the scratch checkout (each one checked to come from there)."""
    sys.path.insert(0, str(repo))
    mods = {name: importlib.import_module(name) for name in PEER_MODULES}
    for name, mod in mods.items():
        where = Path(getattr(mod, "__file__", "") or "").resolve()
        if repo.resolve() not in where.parents:
            raise SystemExit(f"module {name!r} came from {where}, not from {repo}: a name clash on sys.path")
    return mods


def peer_args(mods: dict[str, ModuleType], logged: dict[str, Any], repo: Path, data_name: str) -> argparse.Namespace:
    """Their ``parse_args()`` defaults, overridden by the settings their log trained with, set for CPU evaluation."""
    argv = sys.argv
    sys.argv = ["main.py"]
    try:
        args: argparse.Namespace = mods["utils"].parse_args()
    finally:
        sys.argv = argv
    skip = {"data_dir", "output_dir", "data_file", "checkpoint_path", "device", "no_cuda", "num_workers", "gpu_id",
            "item_size", "num_users", "do_eval", "load_model"}
    for k, v in logged.items():
        if k not in skip:
            setattr(args, k, v)
    args.data_name = data_name
    args.data_dir = str(repo / "data") + "/"
    args.output_dir = str(repo / "output") + "/"
    args.no_cuda, args.device, args.num_workers, args.do_eval = True, "cpu", 0, True
    return args


def their_evaluation(mods: dict[str, ModuleType], args: argparse.Namespace, state: dict[str, torch.Tensor],
                     logger: logging.Logger) -> dict[str, Any]:
    """main.py's ``--do_eval`` path on CPU: their data loaders, model, ``Trainer.test``. Their ``Trainer.load`` maps
    the file to ``cuda:0``; the state dict is loaded here on CPU instead, merged over the fresh model's as theirs is
    (the file has no ``position_embeddings``: TVRec's forward sets that module to None, so it is unused and was not
    saved). Each user's top-20 list is captured on its way into their metric functions, for the per-user comparison."""
    ds = mods["dataset"]
    seq_dic, max_item, num_users = ds.get_seq_dic(args)
    args.item_size, args.num_users = max_item + 1, num_users + 1
    train_dl, eval_dl, test_dl = ds.get_dataloder(args, seq_dic)
    model = mods["model"].MODEL_DICT[args.model_type.lower()](args=args)
    own = model.state_dict()
    if not set(state) <= set(own):
        raise SystemExit(f"checkpoint keys unknown to their model: {sorted(set(state) - set(own))}")
    model.load_state_dict({**own, **state})  # their Trainer.load: the file's tensors over the fresh model's
    trainer = mods["trainers"].Trainer(model, train_dl, eval_dl, test_dl, args, logger)
    args.valid_rating_matrix, args.test_rating_matrix = ds.get_rating_matrix(args.data_name, seq_dic, max_item)
    captured: dict[str, np.ndarray] = {}
    score = trainer.get_full_sort_score

    def capture(epoch: int, answers: np.ndarray, pred_list: np.ndarray) -> Any:
        captured["answers"], captured["top"] = np.asarray(answers), np.asarray(pred_list)
        return score(epoch, answers, pred_list)

    trainer.get_full_sort_score = capture
    t0 = time.time()
    scores, _ = trainer.test(0)
    wall = time.time() - t0
    names = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"]
    return {"metrics": dict(zip(names, map(float, scores), strict=True)), "wall_s": wall, "model": model,
            "user_seq": seq_dic["user_seq"], **captured}


def tvrec_scores(model: torch.nn.Module, es: EvalSet, peer_id: np.ndarray, max_len: int) -> Any:
    """``score_fn(rows) -> (B, n_items)`` for sidrec's evaluator: their model's full-catalogue scores (their
    ``predict`` + ``predict_full``: last position's output times the item table) in sidrec's item order."""
    cols = torch.from_numpy(peer_id)
    ids = torch.from_numpy(np.concatenate([[0], peer_id]))  # sidrec index + 1 -> their id; sidrec pad -1 -> their 0

    def score(rows: np.ndarray) -> torch.Tensor:
        hist = left_pad([es.histories[r] for r in rows], pad=-1, length=max_len)  # the most recent max_len items
        out = model.predict(ids[hist + 1], None)[:, -1, :]
        return (out @ model.item_embeddings.weight.T)[:, cols]

    return score


def their_ranks(top: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """1-based rank of each answer in their top-20 lists; ``TOP + 1`` when not in the list."""
    hit = top == answers.reshape(-1, 1)
    return np.where(hit.any(1), hit.argmax(1) + 1, TOP + 1)


def agreement(ours: np.ndarray, theirs: np.ndarray, top: np.ndarray, user_seq: list[list[int]],
              max_len: int) -> dict[str, Any]:
    """Per user: does sidrec's exact rank (capped at 21 = "not in the top 20") equal their list's rank? And how
    often their top-20 holds something sidrec never ranks: item 0 (their padding id, a candidate in their code) or
    a history item (their mask sets it to score 0, not -inf, so it still outranks every negative score)."""
    capped = np.minimum(ours, TOP + 1)
    diff = np.flatnonzero(capped != theirs)
    hist_in_top = np.array([len(set(top[u].tolist()) & set(user_seq[u][:-1])) > 0 for u in range(len(top))])
    long_hist = np.array([len(s) - 1 > max_len for s in user_seq])
    return {"users": len(ours), "same_rank_top20": int(len(ours) - len(diff)), "differ": int(len(diff)),
            "differ_users": [int(u) for u in diff[:20]],
            "differ_hit@10": int(((capped <= 10) != (theirs <= 10)).sum()),
            "their_top20_with_item0": int((top == 0).any(1).sum()),
            "their_top20_with_history_item": int(hist_in_top.sum()),
            f"users_history_over_{max_len}": int(long_hist.sum()),
            f"differ_among_history_over_{max_len}": int(long_hist[diff].sum())}


def peer_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_dataset(name: str, repo: Path, mods: dict[str, ModuleType], threads: int) -> list[dict[str, Any]]:
    data_name = PEER_DATA[name]
    ckpt = repo / "output" / f"TVRec_{data_name}_best.pt"
    log = parse_log(repo / "output" / f"TVRec_{data_name}_best.log")
    commit = peer_commit(repo)
    src = f"yehjin-shin/TV-Rec@{commit}"
    variant = ckpt.name
    common = {"protocol": "exclude", "seed": None, "threads": threads, "peer": src}
    cfg = load_config([REPO / "configs" / "data" / f"{name}.yaml"])
    ds = dataset_from_config(cfg)
    same_data = sha256(Path(ds.source)) == sha256(repo / "data" / f"{data_name}.txt")
    settings = {k: log["settings"].get(k) for k in SETTINGS}
    recs = [record(name, "tvrec (their log)", variant, "test", "all", log["test"], 0.0,
                   log=f"output/TVRec_{data_name}_best.log", settings=settings,
                   epochs=log["epochs"], best_epoch=log["best_epoch"], data_identical=same_data,
                   checkpoint=("shipped" if ckpt.exists() else "absent from the peer's snapshot (a file of 4 MiB or "
                               "more), so only the log is recorded"), **common)]
    print(f"{name}: their log test R@10 {log['test']['recall@10']:.4f} N@10 {log['test']['ndcg@10']:.4f} "
          f"({log['epochs']} epochs, best {log['best_epoch']}); data file identical to sidrec's: {same_data}", flush=True)
    if not ckpt.exists():
        print(f"{name}: {ckpt} absent; log row only", flush=True)
        return recs

    # (a) their code
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    logger = logging.getLogger(f"peers.tvrec.{name}")
    args = peer_args(mods, log["settings"], repo, data_name)
    theirs = their_evaluation(mods, args, state, logger)
    loaded = {"checkpoint_sha256": sha256(ckpt), "loaded_with": "torch.load(weights_only=True, map_location='cpu')"}
    recs.append(record(name, "tvrec (their code)", variant, "test", "all", theirs["metrics"], theirs["wall_s"],
                       evaluation="their main.py --do_eval path (Trainer.test) on CPU", **loaded, **common))

    # (b) sidrec's evaluator on the same model
    model: torch.nn.Module = theirs["model"]
    model.eval()
    for block in model.item_encoder.blocks:  # the fixed inference filter, as their Trainer.test computes it
        block.layer.calculate_func_H()
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    peer_id = np.array([int(x) for x in ds.item_ids], dtype=np.int64)  # sidrec item index -> their item id
    n_peer = model.item_embeddings.weight.shape[0]
    if len(set(peer_id.tolist())) != ds.n_items or set(peer_id.tolist()) != set(range(1, n_peer)):
        raise SystemExit(f"{name}: item ids are not a one-to-one map onto their ids 1..{n_peer - 1}")
    seqs = ds.sequences()
    if len(seqs) != len(theirs["user_seq"]) or any(peer_id[s].tolist() != t for s, t in zip(seqs, theirs["user_seq"],
                                                                                            strict=True)):
        raise SystemExit(f"{name}: sidrec's user sequences, mapped to their ids, differ from theirs")
    es = split.test
    if not np.array_equal(es.users, np.arange(len(seqs))):
        raise SystemExit(f"{name}: a user has fewer than 3 items; test rows no longer line up with theirs")
    max_len = int(args.max_seq_length)
    if max_len != cfg.data.max_len:
        raise SystemExit(f"{name}: their max_seq_length {max_len} != data.max_len {cfg.data.max_len}")
    mapping = {"item_map": f"their id = sidrec index + 1 (= int(item_ids[i])), one-to-one over {ds.n_items} items; "
                           "their id 0 is padding, not ranked by sidrec",
               "users": "same sequences, same order (checked)"}
    full = EvalSet("test", es.users, [s[:-1] for s in seqs], es.targets)  # the mask over the whole history
    their_rank = their_ranks(theirs["top"], theirs["answers"])
    for eset, tag, subsets in ((es, "", ("all", "warm", "cold")), (full, ", mask over full history", ("all",))):
        ev = Evaluator(eset, split.item_freq, KS + [50], cfg.data.cold_threshold, cfg.eval.buckets)
        t0 = time.time()
        with torch.no_grad():
            metrics, ranks = ev.evaluate_scores(tvrec_scores(model, eset, peer_id, max_len), cfg.eval.batch_size,
                                                exclude_history=True)
        wall = time.time() - t0
        agree = agreement(ranks, their_rank, theirs["top"], theirs["user_seq"], max_len)
        for sub in subsets:
            recs.append(record(name, "tvrec (sidrec evaluator)", variant + tag, "test", sub, metrics[sub], wall,
                               agreement=agree, **mapping, **loaded, **common))
        m = metrics["all"]
        print(f"{name}{tag}: sidrec evaluator R@10 {m['recall@10']:.4f} N@10 {m['ndcg@10']:.4f} "
              f"(tied@10 {m['tied@10']:.4f}); their code R@10 {theirs['metrics']['recall@10']:.4f} "
              f"N@10 {theirs['metrics']['ndcg@10']:.4f}; per-user top-20 ranks differ for {agree['differ']} of "
              f"{agree['users']} users", flush=True)
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=list(PEER_DATA), choices=list(PEER_DATA))
    ap.add_argument("--peer-repo", type=Path, required=True, help="scratch checkout of yehjin-shin/TV-Rec (outside the "
                                                                  "project; their code is imported from it, never copied)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repo = args.peer_repo.resolve()
    if REPO.resolve() in (repo, *repo.parents):
        raise SystemExit(f"--peer-repo {repo} is inside the project; check the peer out in a scratch folder")
    logging.basicConfig(level=logging.INFO, format="their code: %(message)s")
    mods = import_peer(repo)
    recs: list[dict[str, Any]] = []
    for name in args.datasets:
        recs += run_dataset(name, repo, mods, args.threads)
    print(f"wrote {save('peers', recs)}", flush=True)


if __name__ == "__main__":
    main()
