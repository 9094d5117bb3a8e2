"""RecBole atomic files, in the two layouts papers ship them.

1. ``NAME.inter``: tab-separated with a typed header (``user_id:token\\titem_id:token\\ttimestamp:float``,
   columns in any order, timestamp optional), plus an optional ``NAME.item`` (``item_id:token`` and text
   fields such as ``title:token_seq``). Rows are ordered by timestamp with a stable tie-break; without a
   timestamp column the file order is the time order.
2. Pre-split (UniSRec, VQ-Rec, and the many repositories built on them): ``NAME.train.inter``,
   ``NAME.valid.inter`` and ``NAME.test.inter`` whose rows are ``user_id``, ``item_id_list`` (the
   history, space-separated) and ``item_id`` (the next item), plus optional ``NAME.text``
   (``item_id\\ttext``), ``NAME.item2index`` (``item_token\\tindex``, no header) and ``NAME.user2index``. The
   maps give the original ids back: a dataset read with them speaks the original user and item ids.

The pre-split layout stores no sequence, only (history, next item) rows, so the sequence is rebuilt: the
test row's history plus its target, extended to the left with training rows where histories were
truncated to a fixed length. The rebuilt sequence is then checked against *every* row, so leave-one-out
on it reproduces the files' validation and test targets, or the reader says which row disagrees.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError, check_utf8, input_error

TYPES = {"token", "token_seq", "float", "float_seq"}
SPLITS = ("train", "valid", "test")
USER, ITEM, TIME, HISTORY = "user_id", "item_id", "timestamp", "item_id_list"


# ---------------------------------------------------------------------------------------------- files
def _typed_header(line: str) -> list[str] | None:
    """Field names of a RecBole header (``name:type`` columns), or ``None`` if ``line`` is not one."""
    cols = line.rstrip("\r\n").split("\t")
    names = []
    for col in cols:
        fname, sep, ftype = col.partition(":")
        if not sep or not fname or ftype not in TYPES:
            return None
        names.append(fname)
    return names


def _first_line(path: Path) -> str:
    """The header line, decoded alone: a bad byte further down is the reader's to report (with its offset)."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(65536).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _split_name(path: Path) -> tuple[str, str | None]:
    """``Beauty.train.inter`` -> (``Beauty``, ``train``); ``Beauty.inter`` -> (``Beauty``, ``None``)."""
    stem = path.name[: -len(".inter")]
    for s in SPLITS:
        if stem.endswith(f".{s}"):
            return stem[: -len(s) - 1], s
    return stem, None


def _locate(path: Path) -> tuple[Path, str, bool]:
    """(folder, dataset name, pre-split?) for a directory or any of its ``.inter`` files."""
    if path.is_file():
        if path.suffix != ".inter":
            raise SidrecError(f"{path}: not a RecBole .inter file")
        stem, split = _split_name(path)
        return path.parent, stem, split is not None
    inters = sorted(p for p in path.glob("*.inter") if p.is_file())
    plain = sorted({_split_name(p)[0] for p in inters if _split_name(p)[1] is None})
    split = sorted({_split_name(p)[0] for p in inters if _split_name(p)[1] is not None})
    candidates = [(n, False) for n in plain] + [(n, True) for n in split]
    if not candidates:
        raise SidrecError(f"{path}: no RecBole .inter file")
    if len(candidates) > 1:
        names = ", ".join(f"{n}.inter" if not s else f"{n}.{{train,valid,test}}.inter" for n, s in candidates)
        raise SidrecError(f"{path}: several RecBole datasets ({names}); pass the .inter file to use")
    stem, is_split = candidates[0]
    return path, stem, is_split


def detect(path: Path) -> bool:
    """A ``*.inter`` file whose first line is a typed RecBole header (``user_id:token\\t...``)."""
    if path.is_file():
        files = [path] if path.suffix == ".inter" else []
    elif path.is_dir():
        files = sorted(p for p in path.glob("*.inter") if p.is_file())
    else:
        return False
    return any(_typed_header(_first_line(f)) is not None for f in files)


@dataclass
class _Table:
    """A typed tab-separated RecBole file: column names and ``(line number, fields)`` rows."""

    path: Path
    names: list[str]

    def column(self, name: str, required: bool = True) -> int | None:
        if name in self.names:
            return self.names.index(name)
        if required:
            raise input_error(self.path, f"no '{name}' column (the header has: {', '.join(self.names)})", 1)
        return None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        with open(self.path, encoding="utf-8") as fh:
            fh.readline()
            for lineno, line in enumerate(fh, 2):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != len(self.names):
                    raise input_error(self.path, f"expected {len(self.names)} tab-separated fields "
                                      f"({', '.join(self.names)}), got {len(fields)}", lineno)
                yield lineno, fields


def _open_table(path: Path) -> _Table:
    if not path.exists():
        raise SidrecError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.readline()
    except UnicodeDecodeError:
        check_utf8(path)  # names the byte and the line
        raise input_error(path, "expected UTF-8 text") from None
    names = _typed_header(head)
    if names is None:
        raise input_error(path, "expected a typed RecBole header such as 'user_id:token<TAB>"
                          f"item_id:token<TAB>timestamp:float', got {head.strip()[:80]!r}", 1)
    return _Table(path, names)


def read(path: Path, name: str, kcore: int = 0) -> Dataset:
    """Read either RecBole layout; see the module docstring for how each becomes time-ordered sequences."""
    folder, stem, is_split = _locate(path)
    try:
        if is_split:
            return _read_split(folder, stem, name, kcore)
        return _read_atomic(folder / f"{stem}.inter", name, kcore)
    except UnicodeDecodeError as exc:
        for f in sorted(folder.glob(f"{stem}.*")):  # which file, at which byte and line
            if f.is_file():
                check_utf8(f)
        raise SidrecError(f"{folder / stem}.*: a file is not UTF-8 text ({exc.reason})") from None


# ------------------------------------------------------------------------------------- atomic layout
def _read_atomic(inter: Path, name: str, kcore: int) -> Dataset:
    table = _open_table(inter)
    if HISTORY in table.names:
        raise input_error(inter, f"has an '{HISTORY}' column: that is the pre-split layout, which must come "
                          "as NAME.train.inter, NAME.valid.inter and NAME.test.inter", 1)
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    _append_interactions(table, users, items, times, 0)
    if not users:
        raise input_error(inter, "the file has no interactions")
    item_table = _read_item_file(inter.with_suffix(".item"))
    return Dataset.from_interactions(name, users, items, times, item_table, kcore=kcore, source=str(inter))


def _append_interactions(table: _Table, users: list[str], items: list[str], times: list[float],
                         start: int) -> None:
    """Append one file's (user, item, time); without a timestamp column the row position is the time."""
    cu, ci = table.column(USER), table.column(ITEM)
    ct = table.column(TIME, required=False)
    assert cu is not None and ci is not None
    for k, (lineno, f) in enumerate(table.rows()):
        u, i = f[cu].strip(), f[ci].strip()
        if not u or not i:
            raise input_error(table.path, f"empty {USER if not u else ITEM}", lineno)
        if ct is None:
            t = float(start + k)
        else:
            try:
                t = float(f[ct])
            except ValueError:
                raise input_error(table.path, f"expected a number in '{TIME}', got {f[ct]!r}",
                                  lineno) from None
        users.append(u)
        items.append(i)
        times.append(t)


def _read_item_file(path: Path) -> dict[str, dict[str, Any]]:
    """``NAME.item``: every column but ``item_id`` becomes an item field (empty values are missing)."""
    if not path.exists():
        return {}
    table = _open_table(path)
    ci = table.column(ITEM)
    assert ci is not None
    out: dict[str, dict[str, Any]] = {}
    for _, f in table.rows():
        rec = {n: v.strip() for k, (n, v) in enumerate(zip(table.names, f, strict=True))
               if k != ci and v.strip()}
        out.setdefault(f[ci].strip(), {}).update(rec)
    return out


# ---------------------------------------------------------------------------------- pre-split layout
@dataclass
class _Row:
    """One (history, next item) row; file and line are kept to point at the row that disagrees."""

    path: Path
    lineno: int
    history: list[str]
    target: str


def _read_split(folder: Path, stem: str, name: str, kcore: int) -> Dataset:
    paths = {s: folder / f"{stem}.{s}.inter" for s in SPLITS}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise SidrecError(f"{folder}: pre-split RecBole dataset '{stem}' lacks {', '.join(missing)}")
    tables = {s: _open_table(p) for s, p in paths.items()}
    if all(HISTORY not in t.names for t in tables.values()):
        # Plain atomic rows split into three files: concatenate, train rows before valid before test.
        users: list[str] = []
        items: list[str] = []
        times: list[float] = []
        for s in SPLITS:
            _append_interactions(tables[s], users, items, times, len(users))
        source = str(folder / f"{stem}.{{train,valid,test}}.inter")
        users, items, table = _original_ids(folder, stem, users, items, _split_items(folder, stem, items))
        return Dataset.from_interactions(name, users, items, times, table, kcore=kcore, source=source)

    rows: dict[str, dict[str, list[_Row]]] = defaultdict(lambda: {s: [] for s in SPLITS})
    max_hist = 0
    for s in SPLITS:
        t = tables[s]
        cu, ch, ci = t.column(USER), t.column(HISTORY), t.column(ITEM)
        assert cu is not None and ch is not None and ci is not None
        for lineno, f in t.rows():
            u, target = f[cu].strip(), f[ci].strip()
            if not u or not target:
                raise input_error(t.path, f"empty {USER if not u else ITEM}", lineno)
            hist = f[ch].split()
            max_hist = max(max_hist, len(hist))
            rows[u][s].append(_Row(t.path, lineno, hist, target))

    users, items, times = [], [], []
    for u, by_split in rows.items():
        seq = _rebuild(u, by_split, max_hist)
        users.extend([u] * len(seq))
        items.extend(seq)
        times.extend(float(k) for k in range(len(seq)))
    source = str(folder / f"{stem}.{{train,valid,test}}.inter")
    users, items, table = _original_ids(folder, stem, users, items, _split_items(folder, stem, items))
    return Dataset.from_interactions(name, users, items, times, table, kcore=kcore, source=source)


def _disagree(user: str, row: _Row, what: str, seq: list[str]) -> SidrecError:
    shown = " ".join(seq if len(seq) <= 12 else seq[:5] + ["..."] + seq[-5:])
    return input_error(row.path, f"user {user}: {what} (history '{' '.join(row.history)}', "
                       f"target {row.target}) does not fit the sequence rebuilt from the test/valid rows "
                       f"[{shown}]; the train/valid/test files disagree", row.lineno)


def _rebuild(user: str, by_split: dict[str, list[_Row]], max_hist: int) -> list[str]:
    """One user's full time-ordered sequence from their rows; raises if the rows contradict each other.

    Anchor on the test row (history + target), merge the validation row one step earlier, then prepend
    items from training rows whose history has the maximum length (the only ones that can be truncated)
    and whose window lines up with the current start. Finally every training row must be found in the
    rebuilt sequence: an untruncated history must be a prefix, a full-length one may sit anywhere before
    the validation target.
    """
    for s in ("valid", "test"):
        if len(by_split[s]) > 1:
            first, second = by_split[s][0], by_split[s][1]
            raise input_error(second.path, f"user {user} has a second {s} row (the first is on line "
                              f"{first.lineno}); expected at most one per user", second.lineno)
    test = by_split["test"][0] if by_split["test"] else None
    valid = by_split["valid"][0] if by_split["valid"] else None
    train = by_split["train"]

    if test is not None:
        seq = test.history + [test.target]
    elif valid is not None:
        seq = valid.history + [valid.target]
    else:
        longest = max(train, key=lambda r: len(r.history))
        seq = longest.history + [longest.target]
    if test is not None and valid is not None:
        window, body = valid.history + [valid.target], seq[:-1]
        if len(window) <= len(body):
            if body[len(body) - len(window):] != window:
                raise _disagree(user, valid, "the validation row", seq)
        elif window[len(window) - len(body):] == body:
            seq = window + [test.target]  # the test history was truncated; validation reaches further back
        else:
            raise _disagree(user, valid, "the validation row", seq)
    tail = (test is not None) + (valid is not None)  # trailing items that are evaluation targets

    if max_hist > 0 and len(seq) >= max_hist + tail:
        by_key: dict[tuple[str, ...], list[_Row]] = defaultdict(list)
        for r in train:
            if len(r.history) == max_hist:
                by_key[tuple(r.history[1:] + [r.target])].append(r)
        prefix: list[str] = []
        key = tuple(seq[:max_hist])
        while by_key.get(key):
            first = by_key[key].pop().history[0]
            prefix.append(first)
            key = (first,) + key[:-1]
        if prefix:
            seq = prefix[::-1] + seq

    positions: dict[str, list[int]] = defaultdict(list)
    for p, item in enumerate(seq):
        positions[item].append(p)
    end = len(seq) - tail  # training targets sit before the evaluation targets
    for r in train:
        h = len(r.history)
        if h < max_hist:
            ok = h < end and seq[h] == r.target and seq[:h] == r.history
        else:
            ok = any(h <= p < end and seq[p - h : p] == r.history for p in positions.get(r.target, ()))
        if not ok:
            raise _disagree(user, r, "the training row", seq)
    return seq


def _index_map(path: Path) -> dict[str, str]:
    """``NAME.item2index`` / ``NAME.user2index``: original token -> the index the ``.inter`` files use."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                if lineno == 1 and len(parts) == 2:
                    continue  # a header line
                raise input_error(path, f"expected 'token<TAB>index', got {line[:80]!r}", lineno)
            out[parts[0].strip()] = parts[1].strip()
    return out


def _original_ids(folder: Path, stem: str, users: list[str], items: list[str], table: dict[str, dict[str, Any]]
                  ) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """Users, items and item fields in the original ids of ``NAME.user2index`` / ``NAME.item2index``.

    Why: the pre-split files hold RecBole's integer indices; the maps give the real ids (e.g. Amazon ASINs), and
    a recommender must take and give those ("original ids in, original ids out"). A map is used only when it
    names every index the interactions use (a partial map would mix two kinds of id); otherwise the indices stay.
    """
    for kind, ids in (("user", users), ("item", items)):
        to_token = {index: token for token, index in _index_map(folder / f"{stem}.{kind}2index").items()}
        if to_token and all(i in to_token for i in set(ids)):
            if kind == "item":
                table = {to_token.get(k, k): v for k, v in table.items()}
            ids[:] = [to_token[i] for i in ids]
    return users, items, table


def _split_items(folder: Path, stem: str, used: list[str]) -> dict[str, dict[str, Any]]:
    """Item fields for the pre-split layout: ``.item`` if present, ``item_token`` from ``.item2index``
    and ``text`` from ``.text``.

    The ``.inter`` files hold indices while ``.text`` is usually keyed by the original token, so keys of
    ``.text`` are matched directly first and through ``.item2index`` otherwise.
    """
    used_set = set(used)
    table = _read_item_file(folder / f"{stem}.item")
    token_to_index = _index_map(folder / f"{stem}.item2index")
    for token, index in token_to_index.items():
        if index in used_set:
            table.setdefault(index, {})["item_token"] = token
    text_file = folder / f"{stem}.text"
    if text_file.exists():
        with open(text_file, encoding="utf-8") as fh:
            fh.readline()  # header, e.g. 'item_id:token\ttext:token_seq'
            for lineno, line in enumerate(fh, 2):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                key, sep, text = line.partition("\t")
                if not sep:
                    raise input_error(text_file, f"expected 'item_id<TAB>text', got {line[:80]!r}", lineno)
                key = key.strip()
                iid = key if key in used_set else token_to_index.get(key, key)
                if text.strip():
                    table.setdefault(iid, {})["text"] = text.strip()
    return table
