"""The Python API: train a run, load it, ask it for recommendations (``import sidrec``).

Why a layer over :mod:`sidrec.pipeline`: a notebook user wants three verbs -- train, load, recommend -- in the
dataset's own item ids, not the internals (a config object, a split, a task). Everything here calls the same jobs
as the command line, so a run trained from Python is a normal run folder, and ``sidrec evaluate RUN`` reads it.

    import sidrec
    run = sidrec.train("configs/sasrec-small.yaml", data__path="synthetic", train__epochs=3)
    rec = sidrec.load(run.path)
    rec.recommend(history=["I0001", "I0042"], k=5)      # [(item id, score), ...]
    rec.recommend(user=rec.users[0], k=5)
    rec.evaluate("test")["all"]["ndcg@10"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidrec.config import Config, load_config
from sidrec.errors import SidrecError


def _overrides(settings: dict[str, Any]) -> list[str]:
    """``train__lr=3e-4`` (or ``**{"train.lr": 3e-4}``) as the override ``train.lr=0.0003``."""
    import json

    out = []
    for key, value in settings.items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)
        out.append(f"{key.replace('__', '.')}={text}")
    return out


@dataclass
class Run:
    """A finished training run: its folder and its metrics (``metrics.json``)."""

    path: Path
    metrics: dict[str, Any]

    def load(self) -> Recommender:
        return Recommender(self.path)


def train(config: str | Path | Sequence[str | Path] | Config | None = None, overrides: Sequence[str] = (),
          *, resume: bool = False, overwrite: bool = False, **settings: Any) -> Run:
    """Train a run, as ``sidrec train -c CONFIG ... OVERRIDES`` does; returns the run folder and its metrics.

    ``config``: YAML file(s) applied in order (or a :class:`~sidrec.config.Config`); ``overrides``: dotted
    settings as on the command line (``"train.lr=3e-4"``); ``settings``: the same as keyword arguments, ``__`` for
    the dot (``train__lr=3e-4``). Without ``run_dir`` the run goes to ``runs/<dataset>-<method>-<time>``.
    """
    from sidrec.pipeline import train as run_train

    if isinstance(config, Config):
        if overrides or settings:
            raise SidrecError("give overrides with a config file, or change the Config object itself")
        cfg = config
    else:
        files = [config] if isinstance(config, str | Path) else list(config or [])
        cfg = load_config([Path(f) for f in files] or None, list(overrides) + _overrides(settings))
    if not cfg.run_dir:
        from sidrec.runs import default_run_dir

        cfg.run_dir = str(default_run_dir(cfg, Path(cfg.data.path).name if cfg.data.path != "synthetic"
                                          else "synthetic"))
    metrics = run_train(cfg, resume=resume, overwrite=overwrite)
    return Run(Path(cfg.run_dir), metrics)


def load(run_dir: str | Path, weights: str | Path | None = None) -> Recommender:
    """A finished run, ready to recommend (its best weights, or ``weights``)."""
    return Recommender(run_dir, weights)


class Recommender:
    """A loaded run: recommendations for users of its dataset or for any history, evaluation, item SIDs."""

    def __init__(self, run_dir: str | Path, weights: str | Path | None = None) -> None:
        from sidrec.pipeline import load_run

        self.path = Path(run_dir)
        self.cfg, self.dataset, self.split, self.task = load_run(run_dir, weights)

    @property
    def method(self) -> str:
        return self.cfg.method

    @property
    def items(self) -> list[str]:
        """The catalogue's original item ids."""
        return list(self.dataset.item_ids)

    @property
    def users(self) -> list[str]:
        """The dataset's original user ids."""
        return list(self.dataset.user_ids)

    def recommend(self, history: Sequence[str] | Sequence[Sequence[str]] | None = None,
                  user: str | Sequence[str] | None = None, k: int = 10, exclude: bool | Sequence[str] = True,
                  skip_unknown: bool = False) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Top-``k`` (item id, score) after a history (a list of item ids, oldest first) or for a user of the
        dataset (their whole history); a list of histories or users gives one list each, in one batched pass.

        ``exclude``: True leaves out the history's own items, False keeps them, a list of item ids leaves out
        those (and not the history). Unknown item ids are an error unless ``skip_unknown``.
        """
        from sidrec.pipeline import item_indices, recommend_histories, user_indices

        if (history is None) == (user is None):
            raise SidrecError("recommend needs history=[item ids] or user=id (one of them)")
        single = isinstance(user, str) if user is not None else (
            len(history) == 0 or isinstance(history[0], str | int))  # type: ignore[index, arg-type]
        if user is not None:
            users = user_indices(self.dataset, [user] if isinstance(user, str) else list(user))
            hists = [self.dataset.sequence(int(u)) for u in users]
        else:
            raw = [history] if single else list(history)  # type: ignore[list-item, arg-type]
            hists = item_indices(self.dataset, [[str(x) for x in h] for h in raw], skip_unknown)
            users = None
        drop: set[str] = set()
        if not isinstance(exclude, bool):
            drop = {str(x) for x in exclude}
        extra = len(drop)
        lists = recommend_histories(self.task, self.cfg, hists, self.dataset.item_ids, k + extra,
                                    exclude is True, users)
        lists = [[(i, s) for i, s in row if i not in drop][:k] for row in lists]
        return lists[0] if single else lists

    def evaluate(self, split: str = "test") -> dict[str, dict[str, Any]]:
        """Metrics of ``split`` ('valid' or 'test') per subset (all / warm / cold / buckets), as ``sidrec evaluate``."""
        if split not in ("valid", "test"):
            raise SidrecError(f"split must be 'valid' or 'test', got '{split}'")
        return self.task.evaluate(self.task.model, split)

    def item_sids(self, item_ids: Sequence[str]) -> dict[str, list[int]]:
        """The semantic ID each item is read as (SID-based runs: TIGER, DIGER, ACERec, DREAM's stages)."""
        from sidrec.pipeline import item_indices

        table = self.task.item_codes()
        if table is None:
            raise SidrecError(f"method '{self.method}' has no semantic IDs")
        idx = item_indices(self.dataset, [[str(i) for i in item_ids]])[0]
        codes = table[idx].cpu().tolist()
        return {str(i): c for i, c in zip(item_ids, codes, strict=True)}


__all__ = ["Recommender", "Run", "load", "train"]
