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

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.config import Config, load_config
from sidrec.errors import SidrecError

# ------------------------------------------------------------------------------------------------ argument checks
# Why at the boundary: a wrong argument used to travel into numpy or torch and come back as a bare TypeError or
# KeyError naming neither the argument nor the call (``k="5"``: "can only concatenate str (not "int") to str"), or,
# worse, be read some other way (``exclude="I00009"`` iterated as the characters 'I', '0', ...). Every public entry
# point checks its arguments here first; a bad one is a SidrecError (a ValueError) that reads
# "recommend(): argument 'k' must be a positive integer, got '5' (str)".


def _show(value: Any) -> str:
    """A value as an error message shows it: a short repr and its type."""
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


def _bad_argument(func: str, name: str, expected: str, value: Any) -> SidrecError:
    return SidrecError(f"{func}(): argument '{name}' must be {expected}, got {_show(value)}")


def _is_id(x: Any) -> bool:
    """An item or user id: a string, or a whole number (ids such as LC-Rec's are numbers written as strings)."""
    return isinstance(x, str) or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def _is_list(x: Any) -> bool:
    """An ordered sequence of values (list, tuple, 1-d array, ...), not a string, a mapping or a set."""
    if isinstance(x, str | bytes | bytearray | dict | set | frozenset) or not hasattr(x, "__len__"):
        return False
    return isinstance(x, Sequence) or (hasattr(x, "ndim") and getattr(x, "ndim", 0) == 1)


def _one_or_many_ids(method: str, item_ids: Any) -> list[str]:
    """One item id or a list of them, as a list of ids; anything else names ``item_ids`` of ``method``."""
    if _is_id(item_ids):
        return [str(item_ids)]
    if _is_list(item_ids):
        return _ids(method, "item_ids", item_ids, "an item id")
    raise _bad_argument(method, "item_ids", "an item id or a list of them", item_ids)


def _ids(func: str, name: str, value: Any, what: str) -> list[str]:
    """A list of ids, as strings; any element that is not an id names its position."""
    out = []
    for n, x in enumerate(value):
        if not _is_id(x):
            raise SidrecError(f"{func}(): argument '{name}': element {n} must be {what} (a string), got {_show(x)}")
        out.append(str(x))
    return out


def _check_bool(func: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy's bool is accepted too
        raise _bad_argument(func, name, "True or False", value)
    return bool(value)


def _check_k(func: str, k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise _bad_argument(func, "k", "a positive integer (the number of items)", k)
    return int(k)


def _check_path(func: str, name: str, value: Any, optional: bool = False) -> Path | None:
    if value is None and optional:
        return None
    if not isinstance(value, str | os.PathLike) or not str(os.fspath(value)).strip():
        expected = "a path (str or pathlib.Path)" + (" or None" if optional else "")
        raise _bad_argument(func, name, expected, value)
    return Path(os.fspath(value))


def _histories(history: Any) -> tuple[list[list[str]], bool]:
    """``history=`` as lists of item ids and whether one history was given (else a list of them).

    One id (a string) is a history of that one item, never its characters; a list of ids is one history; a list of
    lists is several. Anything else (a mapping, a set, None, a number inside) is refused, naming what it is.
    """
    func, what = "recommend", "a list of item ids (oldest first) or a list of such lists"
    if _is_id(history):
        return [[str(history)]], True
    if not _is_list(history):
        raise _bad_argument(func, "history", what, history)
    if all(_is_id(x) for x in history):
        return [[str(x) for x in history]], True
    for n, x in enumerate(history):
        if not (_is_id(x) or _is_list(x)):
            raise SidrecError(f"{func}(): argument 'history': element {n} must be an item id (a string) or a list of "
                              f"them, got {_show(x)}")
    if not all(_is_list(h) for h in history):
        n = next(i for i, x in enumerate(history) if _is_list(x))
        raise SidrecError(f"{func}(): argument 'history' mixes item ids and lists (element {n} is a list); expected "
                          f"{what}")
    out = []
    for n, h in enumerate(history):
        for m, x in enumerate(h):
            if not _is_id(x):
                raise SidrecError(f"{func}(): argument 'history': history {n}, element {m} must be an item id (a "
                                  f"string), got {_show(x)}")
        out.append([str(x) for x in h])
    return out, False


def _users(user: Any) -> tuple[list[str], bool]:
    """``user=`` as a list of user ids and whether one user was given."""
    if _is_id(user):
        return [str(user)], True
    if not _is_list(user):
        raise _bad_argument("recommend", "user", "a user id (a string) or a list of them", user)
    if len(user) == 0:
        raise _bad_argument("recommend", "user", "a user id or a non-empty list of them", user)
    return _ids("recommend", "user", user, "a user id"), False


def _exclusions(exclude: Any) -> bool | set[str]:
    """``exclude=``: True / False, or the item ids to leave out (one id alone is that id, not its characters)."""
    if isinstance(exclude, bool) or type(exclude).__name__ == "bool_":
        return bool(exclude)
    if _is_id(exclude):
        return {str(exclude)}
    if not (_is_list(exclude) or isinstance(exclude, set | frozenset)):
        raise _bad_argument("recommend", "exclude", "True, False or a list of item ids", exclude)
    return set(_ids("recommend", "exclude", exclude, "an item id"))


def _config_files(config: Any) -> list[Path]:
    """``config=`` of :func:`train` as a list of YAML paths (a mapping or a number is refused, naming it)."""
    what = "a YAML path, a list of them or a sidrec.config.Config (settings go in overrides= or as keywords)"
    if config is None:
        return []
    if isinstance(config, str | os.PathLike):
        return [_check_path("train", "config", config)]  # type: ignore[list-item]
    if not _is_list(config):
        raise _bad_argument("train", "config", what, config)
    out = []
    for n, f in enumerate(config):
        if not isinstance(f, str | os.PathLike) or not str(os.fspath(f)).strip():
            raise SidrecError(f"train(): argument 'config': element {n} must be a YAML path, got {_show(f)}")
        out.append(Path(os.fspath(f)))
    return out


def _override_list(overrides: Any) -> list[str]:
    """``overrides=`` of :func:`train`: a list of ``key.sub=value`` strings (one string alone is refused: it used to
    be read one character at a time)."""
    what = "a list of 'key.sub=value' strings"
    if isinstance(overrides, str):
        raise SidrecError(f"train(): argument 'overrides' must be {what}, got one string {overrides[:60]!r}; "
                          f"write overrides=[{overrides[:60]!r}]")
    if not _is_list(overrides):
        raise _bad_argument("train", "overrides", what, overrides)
    for n, o in enumerate(overrides):
        if not isinstance(o, str) or "=" not in o or not o.split("=", 1)[0].strip():
            raise SidrecError(f"train(): argument 'overrides': element {n} must be a 'key.sub=value' string, got {_show(o)}")
    return list(overrides)


def _overrides(settings: dict[str, Any]) -> list[str]:
    """``train__lr=3e-4`` (or ``**{"train.lr": 3e-4}``) as the override ``train.lr=0.0003``."""
    import json

    out = []
    for key, value in settings.items():
        if not key.strip() or key.startswith(("_", ".")):
            raise SidrecError(f"train(): keyword argument {key!r} is not a setting (write train__lr=3e-4 for train.lr)")
        if isinstance(value, tuple):
            value = list(value)
        text = json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)
        out.append(f"{key.replace('__', '.')}={text}")
    return out


@dataclass
class Query:
    """One checked request of :meth:`Recommender.recommend`: histories as item indices, the users they belong to
    (None: histories of no known user), ``k``, the exclusion rule (True / False / item ids) and whether one
    history was asked for (the answer is then one list, not a list of lists)."""

    histories: list[np.ndarray]
    users: np.ndarray | None
    k: int
    exclude: bool | set[str]
    single: bool

    @property
    def depth(self) -> int:
        """How many items to rank so that ``k`` remain after the excluded ids are dropped."""
        return self.k + (len(self.exclude) if isinstance(self.exclude, set) else 0)


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

    Raises :class:`~sidrec.errors.SidrecError` (a ``ValueError``) naming the argument for a wrong one (a number as
    ``config``, one string as ``overrides``), and naming the file or key for a bad config.
    """
    from sidrec.env import check_environment
    from sidrec.pipeline import train as run_train

    resume = _check_bool("train", "resume", resume)
    overwrite = _check_bool("train", "overwrite", overwrite)
    ovs = _override_list(overrides)
    check_environment()
    if isinstance(config, Config):
        if ovs or settings:
            raise SidrecError("train(): arguments 'overrides' and keyword settings go with a config file; with a "
                              "sidrec.config.Config, change the object itself")
        cfg = config
    else:
        files = _config_files(config)
        cfg = load_config(files or None, ovs + _overrides(settings))  # type: ignore[arg-type]
    if not cfg.run_dir:
        from sidrec.runs import default_run_dir

        cfg.run_dir = str(default_run_dir(cfg, Path(cfg.data.path).name if cfg.data.path != "synthetic"
                                          else "synthetic"))
    metrics = run_train(cfg, resume=resume, overwrite=overwrite)
    return Run(Path(cfg.run_dir), metrics)


def load(run_dir: str | Path, weights: str | Path | None = None) -> Recommender:
    """A finished run, ready to recommend (its best weights, or ``weights``); a wrong argument or a folder that is
    not a finished run is a :class:`~sidrec.errors.SidrecError`."""
    return Recommender(run_dir, weights)


class Recommender:
    """A loaded run: recommendations for users of its dataset or for any history, evaluation, item SIDs.

    Every method checks its arguments first: a wrong one is a :class:`~sidrec.errors.SidrecError` (a ``ValueError``)
    whose message names the argument and what it must be, never an error from deep inside numpy or torch.
    """

    def __init__(self, run_dir: str | Path, weights: str | Path | None = None) -> None:
        from sidrec.env import check_environment
        from sidrec.pipeline import load_run

        path = _check_path("load", "run_dir", run_dir)
        weights_path = _check_path("load", "weights", weights, optional=True)
        check_environment()
        assert path is not None
        self.path = path
        self.cfg, self.dataset, self.split, self.task = load_run(path, weights_path)
        from sidrec.pipeline import id_index

        # built once: a dict of the catalogue per call cost more than SASRec's forward pass (5 ms on 12k items)
        self._item_index = id_index(self.dataset.item_ids)
        self._user_index = id_index(self.dataset.user_ids)

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

    def recommend(self, history: Sequence[str] | Sequence[Sequence[str]] | str | None = None,
                  user: str | Sequence[str] | None = None, k: int = 10, exclude: bool | str | Sequence[str] = True,
                  skip_unknown: bool = False) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Top-``k`` (item id, score) after a history (a list of item ids, oldest first) or for a user of the
        dataset (their whole history); a list of histories or users gives one list each, in one batched pass.

        ``exclude``: True leaves out the history's own items, False keeps them, item ids (a list, or one id) leave
        out those (and not the history). Unknown item ids are an error unless ``skip_unknown``. One id where a list
        is expected (``history="I1"``, ``exclude="I9"``) is that one id, never its characters.
        """
        q = self.query(history, user, k, exclude, skip_unknown)
        lists = self.rank([q])[0]
        return lists[0] if q.single else lists

    def query(self, history: Any = None, user: Any = None, k: Any = 10, exclude: Any = True,
              skip_unknown: Any = False) -> Query:
        """The arguments of :meth:`recommend`, checked and read as item / user indices (no model call).

        Why apart from :meth:`rank`: the server (``sidrec serve``) checks a request where it arrives and ranks
        in its one model thread, with the very same two steps as this API.
        """
        from sidrec.pipeline import item_indices, user_indices

        if (history is None) == (user is None):
            raise SidrecError("recommend(): give argument 'history' (item ids) or argument 'user' (a user id), "
                              "exactly one of them")
        k = _check_k("recommend", k)
        drop = _exclusions(exclude)
        skip_unknown = _check_bool("recommend", "skip_unknown", skip_unknown)
        users = None
        if user is not None:
            ids, single = _users(user)
            try:
                users = user_indices(self.dataset, ids, self._user_index)
            except SidrecError as exc:
                raise SidrecError(f"recommend(): argument 'user': {exc}") from None
            hists = [self.dataset.sequence(int(u)) for u in users]
        else:
            raw, single = _histories(history)
            try:
                hists = item_indices(self.dataset, raw, skip_unknown, index=self._item_index)
            except SidrecError as exc:
                raise SidrecError(f"recommend(): argument 'history': {exc}") from None
        return Query(hists, users, k, drop, single)

    def rank(self, queries: Sequence[Query]) -> list[list[list[tuple[str, float]]]]:
        """Each query's top-k lists (one per history), queries of the same history rule and depth in one batched
        model call.

        Why the depth too: a beam-search model's beam widens to k, so a query ranked at a larger k could differ
        from the same query alone; queries that differ there are ranked apart. Item ids to exclude (a set) are
        filtered out of k + (their number) items, as one query alone would.
        """
        from sidrec.pipeline import recommend_histories

        out: list[list[list[tuple[str, float]]]] = [[] for _ in queries]
        groups: dict[tuple[bool, int], list[int]] = {}
        for n, q in enumerate(queries):
            groups.setdefault((q.exclude is True, q.depth), []).append(n)
        for (exclude_history, depth), members in groups.items():
            hists = [h for n in members for h in queries[n].histories]
            known = [queries[n].users is not None for n in members]
            users = None
            if any(known):  # histories of no user (live sessions) read as user -1, as recommend_histories does
                users = np.concatenate([queries[n].users if queries[n].users is not None
                                        else np.full(len(queries[n].histories), -1, dtype=np.int64) for n in members])
            lists = recommend_histories(self.task, self.cfg, hists, self.dataset.item_ids, depth, exclude_history,
                                        users)
            start = 0
            for n in members:
                q = queries[n]
                rows, start = lists[start:start + len(q.histories)], start + len(q.histories)
                if isinstance(q.exclude, set):
                    rows = [[(i, s) for i, s in row if i not in q.exclude][:q.k] for row in rows]
                out[n] = rows
        return out

    @property
    def score_name(self) -> str:
        """What :meth:`recommend`'s scores are: 'cosine' (content), 'logit' (SASRec alone), 'log-probability'
        (TIGER, DIGER, ACERec alone) or 'log-probability + L x cosine' (with the content fusion the run chose)."""
        from sidrec.show import score_name

        return score_name(self.task)

    def item_text(self, item_ids: str | Sequence[str], field: str | None = None) -> dict[str, str]:
        """Item id -> its text in ``field`` (default: title, else the first text field the dataset has); '' for an
        item without one or an id the dataset does not know. One id alone is that item."""
        from sidrec.show import item_labels, label_field

        ids = _one_or_many_ids("item_text", item_ids)
        if field is not None and not isinstance(field, str):
            raise _bad_argument("item_text", "field", "an item field name (a string)", field)
        try:
            labels = item_labels(self.dataset, label_field(self.dataset, field))
        except SidrecError as exc:
            raise SidrecError(f"item_text(): argument 'field': {exc}") from None
        return {i: labels.get(i, "") for i in ids}

    def show(self, history: Sequence[str] | str | None = None, user: str | None = None, k: int = 10,
             field: str | None = None, console: Any = None) -> list[dict[str, Any]]:
        """Print one history (or a user's) and its top-``k``, each item with its title (or ``field``) and the score
        under its name, as ``sidrec recommend`` does; returns the recommendations as records
        ``{"rank", "item", "score", FIELD}`` (ids and scores as :meth:`recommend` gives them)."""
        from rich.console import Console

        from sidrec import show as S

        if user is not None and not _is_id(user):
            raise _bad_argument("show", "user", "one user id", user)
        if history is not None and _is_list(history) and any(_is_list(h) for h in history):
            raise _bad_argument("show", "history", "one history (a list of item ids)", history)
        recs = self.recommend(history=history, user=user, k=k)
        if user is not None:
            from sidrec.pipeline import user_indices

            seq = self.dataset.sequence(int(user_indices(self.dataset, [str(user)])[0]))
            hist, name = [self.dataset.item_ids[int(i)] for i in seq], f"user {user}"
        else:
            hist, name = ([str(history)] if _is_id(history) else [str(x) for x in history or []]), "the history"
        try:
            f = S.label_field(self.dataset, field)
        except SidrecError as exc:
            raise SidrecError(f"show(): argument 'field': {exc}") from None
        labels = S.item_labels(self.dataset, f)
        con = console or Console()
        con.print(S.history_table(name, hist, labels, f))
        con.print(S.recommendation_table(name, recs, labels, f, self.score_name))  # type: ignore[arg-type]
        return S.records(recs, labels, f)  # type: ignore[arg-type]

    def evaluate(self, split: str = "test") -> dict[str, dict[str, Any]]:
        """Metrics of ``split`` ('valid' or 'test') per subset (all / warm / cold / buckets), as ``sidrec evaluate``."""
        if not isinstance(split, str) or split not in ("valid", "test"):
            raise _bad_argument("evaluate", "split", "'valid' or 'test'", split)
        return self.task.evaluate(self.task.model, split)

    def item_sids(self, item_ids: str | Sequence[str]) -> dict[str, list[int]]:
        """The semantic ID each item is read as (SID-based runs: TIGER, DIGER, ACERec, DREAM's stages); one id
        alone is that item."""
        from sidrec.pipeline import item_indices

        ids = _one_or_many_ids("item_sids", item_ids)
        table = self.task.item_codes()
        if table is None:
            raise SidrecError(f"method '{self.method}' has no semantic IDs")
        try:
            idx = item_indices(self.dataset, [ids], index=self._item_index)[0]
        except SidrecError as exc:
            raise SidrecError(f"item_sids(): argument 'item_ids': {exc}") from None
        codes = table[idx].cpu().tolist()
        return dict(zip(ids, codes, strict=True))


__all__ = ["Query", "Recommender", "Run", "load", "train"]
