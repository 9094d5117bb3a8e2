"""Generic CSV / Parquet interactions, the format of last resort for a user's own data.

An interactions table with ``user`` (or ``user_id``), ``item`` (or ``item_id``) and an optional
``timestamp`` column (numbers, or dates/times pyarrow can parse); an optional items table with an
``item``/``item_id`` column and any text fields. ``path`` is the interactions file or a folder holding
``interactions.csv`` / ``interactions.parquet`` (and optionally ``items.csv`` / ``items.parquet``).

Ids are read as strings (``007`` stays ``007``) so the interactions and items tables always join.
Without a timestamp, the file order is the time order.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError, check_utf8, input_error

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
USER_COLS = ("user", "user_id")
ITEM_COLS = ("item", "item_id")
TIME_COLS = ("timestamp",)
# the longest CSV row read: pyarrow parses in blocks and a row longer than one fails with "straddling object
# straddles two block boundaries"; 16 MiB holds any product description, and the error names the row and the limit
CSV_ROW_LIMIT = 16 << 20


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _columns(path: Path) -> list[str]:
    """Column names from the CSV header line or the Parquet footer, without reading any data."""
    try:
        if _is_parquet(path):
            return list(pq.read_schema(path).names)
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        # the header line alone is decoded: a bad byte further down is the reader's to report, with its offset
        with opener(path, "rb") as fh:
            raw = fh.readline(65536)
        # utf-8-sig: a spreadsheet's CSV export starts with a byte-order mark, which must not join the first name
        header = raw.decode("utf-8-sig")
        return [c.strip() for c in next(csv.reader([header]), [])]
    except (OSError, EOFError, UnicodeDecodeError, pa.ArrowException, StopIteration):
        return []


def _pick(names: list[str], options: tuple[str, ...]) -> str | None:
    return next((c for c in options if c in names), None)


def _interactions_file(path: Path) -> Path | None:
    if path.is_dir():
        return _find(path, "interactions")
    return path if path.is_file() and (_is_csv(path) or _is_parquet(path)) else None


def detect(path: Path) -> bool:
    """A CSV/Parquet file (or ``interactions.*`` in a folder) whose header has user and item columns."""
    f = _interactions_file(path)
    if f is None:
        return False
    names = _columns(f)
    return _pick(names, USER_COLS) is not None and _pick(names, ITEM_COLS) is not None


def _read_table(path: Path, id_cols: tuple[str, ...]) -> pa.Table:
    """Read the whole table; id columns are forced to strings; parse errors name the offending line."""
    try:
        if _is_parquet(path):
            return pq.read_table(path)
        opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in id_cols})
        table = pacsv.read_csv(path, convert_options=opts, read_options=pacsv.ReadOptions(block_size=CSV_ROW_LIMIT))
        if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
            check_utf8(path)  # pyarrow reads a text column with a non-UTF-8 byte as binary, silently: name the byte
        return table
    except pa.ArrowInvalid as exc:
        if _is_csv(path) and "utf8" in str(exc).lower().replace("-", ""):
            check_utf8(path)
        if _is_csv(path) and "straddl" in str(exc):
            _refuse_long_row(path)
        if _is_csv(path):
            lineno = _bad_csv_line(path)
            if lineno is not None:
                raise input_error(path, f"expected the same number of comma-separated fields as the header "
                                  f"({', '.join(_columns(path))})", lineno) from None
        raise input_error(path, f"cannot parse the table ({exc})") from None
    except (OSError, pa.ArrowException) as exc:
        raise input_error(path, f"cannot read the table ({exc})") from None


def _refuse_long_row(path: Path) -> None:
    """Name the first line longer than :data:`CSV_ROW_LIMIT` (pyarrow says only that an object straddles blocks)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if len(line) > CSV_ROW_LIMIT:
                raise input_error(path, f"a row of {len(line):,} bytes; a CSV row may hold at most {CSV_ROW_LIMIT:,} "
                                  "bytes (16 MiB): shorten its longest field, or save the table as Parquet, which has "
                                  "no such limit", lineno)


def _bad_csv_line(path: Path) -> int | None:
    """Line of the first row whose field count differs from the header (pyarrow does not report it)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            for row in reader:
                if row and len(row) != len(header):
                    return reader.line_num
    except (OSError, EOFError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _where(path: Path, row: int) -> tuple[str, int | None]:
    """How to point at data row ``row`` (0-based): a line number in a CSV, a row number in Parquet."""
    if _is_csv(path):
        return "", row + 2  # line 1 is the header (quoted multi-line fields would shift this)
    return f"row {row + 1}: ", None


def _require(path: Path, names: list[str], options: tuple[str, ...], what: str) -> str:
    col = _pick(names, options)
    if col is None:
        raise input_error(path, f"no {what} column (expected one of {', '.join(options)}; "
                          f"found: {', '.join(names) or 'none'})")
    return col


def _ids(path: Path, table: pa.Table, col: str) -> list[str]:
    values = table.column(col).to_pylist()
    out = []
    for k, v in enumerate(values):
        s = "" if v is None else str(v).strip()
        if not s:
            prefix, line = _where(path, k)
            raise input_error(path, f"{prefix}empty '{col}' (expected an id)", line)
        out.append(s)
    return out


def _timestamps(path: Path, table: pa.Table, col: str) -> np.ndarray:
    """Timestamps as floats: numbers as given, dates/times as epoch seconds (only the order matters).

    pyarrow converts whole columns fast; when it cannot (or leaves nulls), a row-by-row pass either
    converts what Python can parse or names the first row that is neither a number nor a date.
    """
    arr = table.column(col)
    typ = arr.type
    num: pa.ChunkedArray | None = None
    try:
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
            num = arr.cast(pa.float64())
        elif pa.types.is_timestamp(typ) or pa.types.is_date(typ):
            num = arr.cast(pa.timestamp("us")).cast(pa.int64())
            num = pc.divide(num.cast(pa.float64()), 1e6)
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
            num = _parse_time_strings(arr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        num = None
    if num is not None and num.null_count == 0:
        return np.asarray(num.to_numpy(zero_copy_only=False), dtype=np.float64)
    out = np.empty(len(arr), dtype=np.float64)
    for k, v in enumerate(arr.to_pylist()):
        t = _time_value(v)
        if t is None:
            prefix, line = _where(path, k)
            raise input_error(path, f"{prefix}expected a number or date in '{col}', got {v!r}", line)
        out[k] = t
    return out


def _parse_time_strings(arr: pa.ChunkedArray) -> pa.ChunkedArray | None:
    try:
        return arr.cast(pa.float64())
    except pa.ArrowInvalid:
        pass
    try:
        ts = pc.cast(arr, pa.timestamp("us")).cast(pa.int64())
        return pc.divide(ts.cast(pa.float64()), 1e6)
    except pa.ArrowInvalid:
        return None


def _time_value(v: Any) -> float | None:
    """One value as a float, or ``None`` when it is neither a number nor an ISO date/time."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        v = dt.datetime(v.year, v.month, v.day)
    if not isinstance(v, dt.datetime):
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
        try:
            v = dt.datetime.fromisoformat(str(v).strip())
        except ValueError:
            return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.UTC)
    return v.timestamp()


def read(path: Path, name: str, kcore: int = 0) -> Dataset:
    """Read the interactions table (+ items table) with pyarrow; rows are ordered by timestamp, stably."""
    inter = _interactions_file(path)
    if inter is None:
        raise SidrecError(f"{path}: no interactions table (a .csv/.parquet file, or interactions.csv/"
                          "interactions.parquet in the folder)")
    table = _read_table(inter, USER_COLS + ITEM_COLS)
    names = list(table.column_names)
    ucol = _require(inter, names, USER_COLS, "user")
    icol = _require(inter, names, ITEM_COLS, "item")
    tcol = _pick(names, TIME_COLS)
    if table.num_rows == 0:
        raise input_error(inter, "the table has no rows")
    users = _ids(inter, table, ucol)
    items = _ids(inter, table, icol)
    times = _timestamps(inter, table, tcol) if tcol else np.arange(table.num_rows, dtype=np.float64)
    items_file = _find(inter.parent, "items")
    item_table = _read_items(items_file) if items_file is not None and items_file != inter else {}
    ds = Dataset.from_interactions(name, users, items, times, item_table, kcore=kcore, source=str(inter))
    if item_table:  # interactions naming items the items table lacks: counted, reported by the command line
        ds.unmatched_items = [i for i in ds.item_ids if i not in item_table]
        ds.item_file = str(items_file)
    return ds


_BLANK = re.compile(r"^\s*$")


def _read_items(path: Path) -> dict[str, dict[str, Any]]:
    """``{item_id: {field: value}}`` from every non-id column; nulls and blank strings are missing."""
    table = _read_table(path, ITEM_COLS)
    names = list(table.column_names)
    icol = _require(path, names, ITEM_COLS, "item")
    ids = _ids(path, table, icol)
    columns = {c: table.column(c).to_pylist() for c in names if c != icol}
    out: dict[str, dict[str, Any]] = {}
    for k, iid in enumerate(ids):
        rec = out.setdefault(iid, {})
        for c, values in columns.items():
            v = values[k]
            if v is None or (isinstance(v, str) and _BLANK.match(v)) or (isinstance(v, list) and not v):
                continue
            rec[c] = v
    return out

