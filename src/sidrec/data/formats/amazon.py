"""Raw Amazon review dumps (McAuley lab), exactly as users download them.

* 2014: ``reviews_CATEGORY_5.json.gz`` (reviewerID / asin / unixReviewTime) with ``meta_CATEGORY.json.gz``
  whose lines are Python dict literals (single quotes), not JSON, so they go through ``ast.literal_eval``.
* 2018: ``CATEGORY_5.json.gz`` or ``CATEGORY.json.gz`` (same review fields, strict JSON lines) with
  ``meta_CATEGORY.json.gz`` (``category``, ``feature``, list-valued ``description``, ``price`` as text).
* 2023: ``CATEGORY.jsonl.gz`` (user_id / parent_asin / timestamp in milliseconds) with
  ``meta_CATEGORY.jsonl.gz`` keyed by ``parent_asin`` (``store`` is the brand).

Files may be gzipped or plain. Each review line may be JSON or a Python literal (JSON is tried first).
Exact duplicate reviews (same user, item and timestamp; the 2018 dumps contain such copies) are kept
once, since a duplicated row would otherwise appear as a repeated purchase. k-core filtering is left to
:meth:`Dataset.from_interactions` with the caller's ``kcore``.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError, input_error

EXTENSIONS = (".json.gz", ".jsonl.gz", ".json", ".jsonl")
# Files of other JSON formats that may share a folder with review dumps; never reviews.
NOT_REVIEWS = (".inter.json", ".item.json", ".index.json")
PEEK_LIMIT = 1 << 20  # a review line is a few KB; anything longer is not a review file
_ID_RE = re.compile(r"""["'](?:parent_asin|asin)["']\s*:\s*["']([^"'\\]+)["']""")


class _BadLine(Exception):
    """A line that is neither JSON nor a Python literal."""


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise _BadLine from None


def _records(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-empty line; unreadable files and lines name file and line."""
    lineno = 0
    try:
        with _open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = _parse(line)
                except _BadLine:
                    raise input_error(path, f"expected one {what} per line as a JSON object or Python dict "
                                      f"literal, got {line.strip()[:60]!r}", lineno) from None
                if not isinstance(rec, dict):
                    raise input_error(path, f"expected one {what} per line as an object, got "
                                      f"{type(rec).__name__}", lineno)
                yield lineno, rec
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise input_error(path, f"cannot read the file ({exc}); is it a complete (gzipped) text file?",
                          lineno + 1 if lineno else None) from None


# ------------------------------------------------------------------------------------------ detection
def _candidate_name(name: str) -> bool:
    return (name.endswith(EXTENSIONS) and not name.startswith("meta_")
            and not name.endswith(NOT_REVIEWS))


def _looks_like_reviews(path: Path) -> bool:
    """By name for 2014 ``reviews_*``; otherwise the first line must carry review fields."""
    if not path.is_file() or not _candidate_name(path.name):
        return False
    if path.name.startswith("reviews_"):
        return True
    try:
        with _open(path) as fh:
            line = ""
            for _ in range(5):  # skip leading blank lines, but only a few
                line = fh.readline(PEEK_LIMIT)
                if line.strip() or not line:
                    break
    except (OSError, EOFError, UnicodeDecodeError):
        return False
    if len(line) >= PEEK_LIMIT or not line.strip():
        return False
    try:
        rec = _parse(line)
    except _BadLine:
        return False
    if not isinstance(rec, dict):
        return False
    old_release = "reviewerID" in rec and "asin" in rec
    release_2023 = "user_id" in rec and ("parent_asin" in rec or "asin" in rec)
    return old_release or release_2023


def _reviews_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _looks_like_reviews(p))


def detect(path: Path) -> bool:
    """A reviews file (or a folder holding one) by its Amazon name or first line; meta files alone are not."""
    if path.is_dir():
        return any(_looks_like_reviews(p) for p in path.iterdir())
    return _looks_like_reviews(path)


def _category(reviews: Path) -> str:
    name = reviews.name
    for ext in EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    name = name.removeprefix("reviews_")
    return name.removesuffix("_5")


def _meta_file(reviews: Path) -> Path | None:
    """``meta_CATEGORY.*`` next to the reviews; a lone ``meta_*`` file is used when the names differ."""
    cat = _category(reviews)
    for ext in EXTENSIONS:
        p = reviews.with_name(f"meta_{cat}{ext}")
        if p.is_file():
            return p
    metas = sorted(p for p in reviews.parent.glob("meta_*") if p.is_file() and p.name.endswith(EXTENSIONS))
    return metas[0] if len(metas) == 1 else None


# ---------------------------------------------------------------------------------------------- read
def read(path: Path, name: str, kcore: int = 0) -> Dataset:
    """Read reviews (+ meta) into time-ordered sequences; ties keep file order."""
    if path.is_dir():
        found = _reviews_files(path)
        if not found:
            raise SidrecError(f"{path}: no Amazon reviews file (reviews_*.json.gz, CATEGORY_5.json.gz or "
                              "CATEGORY.jsonl.gz)")
        if len(found) > 1:
            raise SidrecError(f"{path}: several Amazon reviews files ({', '.join(p.name for p in found)}); "
                              "pass the one to use as the path")
        reviews = found[0]
    else:
        reviews = path
    users, items, times = _read_reviews(reviews)
    meta = _meta_file(reviews)
    table = _read_meta(meta, set(items)) if meta is not None else {}
    return Dataset.from_interactions(name, users, items, times, table, kcore=kcore, source=str(reviews))


def _read_reviews(path: Path) -> tuple[list[str], list[str], list[float]]:
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    seen: set[tuple[str, str, float]] = set()
    fields: tuple[str, str, str] | None = None
    for lineno, rec in _records(path, "review"):
        if fields is None:  # the first review decides the release; all lines must then agree
            fields = ("user_id", "parent_asin", "timestamp") if "user_id" in rec else (
                "reviewerID", "asin", "unixReviewTime")
        u, i, t = rec.get(fields[0]), rec.get(fields[1]), rec.get(fields[2])
        if i is None and fields[0] == "user_id":
            i = rec.get("asin")  # some 2023 extracts carry only asin
        if u in (None, "") or i in (None, "") or t is None:
            missing = [f for f, v in zip(fields, (u, i, t), strict=True) if v in (None, "")]
            raise input_error(path, f"expected a review with fields {', '.join(fields)}; "
                              f"missing {', '.join(missing)}", lineno)
        try:
            ts = float(t)
        except (TypeError, ValueError):
            raise input_error(path, f"expected a numeric {fields[2]}, got {t!r}", lineno) from None
        key = (str(u), str(i), ts)
        if key in seen:
            continue
        seen.add(key)
        users.append(key[0])
        items.append(key[1])
        times.append(ts)
    if not users:
        raise input_error(path, "the file has no reviews")
    return users, items, times


def _read_meta(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Item fields for the reviewed items only; other lines are skipped before the (slow) literal parse."""
    table: dict[str, dict[str, Any]] = {}
    for lineno, rec in _meta_records(path, wanted):
        iid = rec.get("parent_asin") or rec.get("asin")
        if not iid:
            raise input_error(path, "expected an item with an 'asin' (or 2023 'parent_asin') field", lineno)
        if str(iid) in wanted:
            table.setdefault(str(iid), {}).update(_item_fields(rec))
    return table


def _meta_records(path: Path, wanted: set[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    lineno = 0
    try:
        with _open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                ids = _ID_RE.findall(line)
                if ids and not any(i in wanted for i in ids):
                    continue  # an item nobody reviewed: skip without parsing
                try:
                    rec = _parse(line)
                except _BadLine:
                    raise input_error(path, "expected one item per line as a JSON object or Python dict "
                                      f"literal, got {line.strip()[:60]!r}", lineno) from None
                if not isinstance(rec, dict):
                    raise input_error(path, f"expected an object per line, got {type(rec).__name__}", lineno)
                yield lineno, rec
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise input_error(path, f"cannot read the file ({exc}); is it a complete (gzipped) text file?",
                          lineno + 1 if lineno else None) from None


def _text(value: Any) -> str | None:
    """Readable text: HTML entities decoded, whitespace collapsed, lists joined; empty -> ``None``."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        parts = [t for t in (_text(v) for v in value) if t]
        return " ".join(parts) or None
    text = " ".join(html.unescape(str(value)).split())
    return text or None


def _unique_flat(value: Any) -> list[str]:
    """Flatten (2014 nests category paths) and drop repeats, keeping first-seen order."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, list | tuple):
            for x in v:
                walk(x)
        elif v is not None:
            t = _text(v)
            if t and t not in out:
                out.append(t)

    walk(value)
    return out


_PRICE_RE = re.compile(r"^\$?\s*\d[\d,]*(\.\d+)?(\s*-\s*\$?\s*\d[\d,]*(\.\d+)?)?$")


def _price(value: Any) -> str | None:
    """Prices as text without the dollar sign; 2018 sometimes has HTML or ratings here, which are dropped."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return f"{float(value):g}"
    text = str(value).strip()
    if not _PRICE_RE.match(text):
        return None
    return text.replace("$", "").strip()


def _item_fields(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    title = _text(rec.get("title"))
    if title:
        out["title"] = title
    brand = _text(rec.get("brand")) or _text(rec.get("store"))
    if brand:
        out["brand"] = brand
    cats = _unique_flat(rec.get("categories") if rec.get("categories") is not None else rec.get("category"))
    if cats:
        out["categories"] = cats
    description = _text(rec.get("description"))
    if description:
        out["description"] = description
    features = _unique_flat(rec.get("features") if rec.get("features") is not None else rec.get("feature"))
    if features:
        out["features"] = features
    price = _price(rec.get("price"))
    if price:
        out["price"] = price
    return out
