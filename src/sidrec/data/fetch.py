"""``sidrec data fetch NAME``: download a public benchmark and convert it into the folder the benchmark configs read.

Why a registry of sources (:data:`DATASETS`): a user's first hour should not start with hunting for the right
files of the right release. Each entry names the McAuley-lab 2014 files (5-core reviews + metadata), the folder
layout of the benchmark copies (``../shared/data/amazon14_*``, the S3-Rec/P5 files TIGER, P5 and S3-Rec report
on) and the user / item / interaction counts those papers report.

Why counts instead of checksums: no checksum of the original files is published, and none can be fetched from
here (no network), so a checksum written into this file would be unverified. The counts of the converted dataset
are published (TIGER, P5, S3-Rec) and checked against the benchmark copies; a wrong, truncated or re-packed file
cannot give all three. Each download is also checked against the size the server announces and read to its end
as gzip (its CRC and length trailer), so a cut or damaged file is refused before it is converted.

Downloads go to ``<cache>/downloads/amazon14/`` (``$SIDREC_CACHE``). A transfer cut short resumes with an HTTP
``Range`` request, within the command and, when the server honours ranges, on the next run (``*.part``). A file
that is complete but damaged (gzip error, more bytes than announced, wrong counts) is deleted, as is anything the
conversion wrote: nothing half-done is left to be mistaken for data.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError

MIRROR_ENV = "SIDREC_AMAZON14_MIRROR"
# The McAuley lab's 2014 release ("Image-based recommendations on styles and substitutes", SIGIR 2015; "Ups and
# downs", WWW 2016), as linked from https://jmcauley.ucsd.edu/data/amazon/ (per-category files).
DEFAULT_MIRROR = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
FETCH_MARKER = "fetch.json"  # written into the dataset folder: what was fetched from where, and its sizes
CHUNK = 1 << 16
RETRIES = 3  # resumed attempts within one command after a transfer stops short
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Source:
    """One downloadable benchmark: its files, the folder layout it is converted to, and the counts to check."""

    name: str
    title: str
    category: str  # the file-name form: reviews_{category}_5.json.gz, meta_{category}.json.gz
    root: str  # the top-level category every path starts with; dropped from ``categories`` like the copies do
    folder: str  # default output folder (the benchmark copies' folder name)
    sequence_file: str
    users: int
    items: int
    interactions: int

    @property
    def files(self) -> tuple[str, str]:
        return f"reviews_{self.category}_5.json.gz", f"meta_{self.category}.json.gz"


DATASETS: dict[str, Source] = {
    "beauty": Source("beauty", "Amazon 2014 Beauty, 5-core", "Beauty", "Beauty", "amazon14_beauty", "Beauty.txt",
                     22_363, 12_101, 198_502),
    "sports": Source("sports", "Amazon 2014 Sports and Outdoors, 5-core", "Sports_and_Outdoors", "Sports & Outdoors",
                     "amazon14_sports", "Sports_and_Outdoors.txt", 35_598, 18_357, 296_337),
    "toys": Source("toys", "Amazon 2014 Toys and Games, 5-core", "Toys_and_Games", "Toys & Games", "amazon14_toys",
                   "Toys_and_Games.txt", 19_412, 11_924, 167_597),
}


def names_help() -> str:
    """'beauty (Amazon 2014 Beauty, 5-core), ...' for the command's help."""
    return ", ".join(f"{n} ({s.title})" for n, s in DATASETS.items())


def source(name: str) -> Source:
    if name.lower() not in DATASETS:
        raise SidrecError(f"unknown dataset '{name}' for 'sidrec data fetch' (known: {', '.join(DATASETS)})")
    return DATASETS[name.lower()]


def mirror_url(mirror: str | None) -> str:
    """``--mirror``, else ``$SIDREC_AMAZON14_MIRROR``, else the lab's own server; always ending in '/'."""
    url = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    if "://" not in url:
        where = "--mirror" if mirror else f"${MIRROR_ENV}"
        raise SidrecError(f"{where} '{url}' is not a URL (expected e.g. https://host/path/ or file:///folder/)")
    return url if url.endswith("/") else url + "/"


def downloads_dir() -> Path:
    from sidrec.io import cache_root

    return cache_root() / "downloads" / "amazon14"


# ----------------------------------------------------------------------------------------------- download
class _Stopped(Exception):
    """The transfer ended before the announced size (connection dropped, server closed early)."""


def _say(message: str) -> None:
    print(f"sidrec: {message}", file=sys.stderr, flush=True)


def _total_from(resp: Any, start: int) -> int | None:
    """The file's full size from a 206's ``Content-Range: bytes a-b/TOTAL`` or a 200's ``Content-Length``."""
    cr = resp.headers.get("Content-Range") if start else None
    if cr and "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
        return int(cr.rsplit("/", 1)[1])
    cl = resp.headers.get("Content-Length")
    if cl is not None and cl.strip().isdigit():
        return int(cl) + (start if cr else 0)
    return None


def download(url: str, dest: Path, on_progress: Callable[[int, int | None], None] | None = None) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range; verify size and gzip.

    ``on_progress(bytes_so_far, total)`` is called as bytes arrive. A damaged file is deleted and reported; a
    transfer that keeps stopping short is reported with the ``.part`` kept only when the server honours ranges
    (then the next run resumes it; otherwise it is useless and deleted).
    """
    part = dest.with_name(dest.name + ".part")
    total: int | None = None
    ranged = False
    tries = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "sidrec-data-fetch", "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            resp = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)  # noqa: S310 - http(s)/file URLs only
        except HTTPError as exc:
            if exc.code == 416 and start:  # the .part already holds the whole file (or more): check it below
                break
            raise SidrecError(f"{url}: HTTP {exc.code} {exc.reason} (is the mirror right? --mirror or "
                              f"${MIRROR_ENV})") from None
        except (URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise SidrecError(f"{url}: cannot connect ({reason}); check the network, or use --mirror / "
                              f"${MIRROR_ENV}" + (f" (the partial download {part} is kept and resumes)" if start and
                                                  ranged else "")) from None
        with resp:
            status = getattr(resp, "status", None) or 200
            resumed = bool(start) and status == 206
            ranged = ranged or resumed
            if not resumed:
                start = 0  # the server sent the whole file: start over
            total = _total_from(resp, start if resumed else 0)
            try:
                with open(part, "ab" if resumed else "wb") as fh:
                    done = start
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        fh.write(chunk)
                        done += len(chunk)
                        if on_progress is not None:
                            on_progress(done, total)
            except (http.client.HTTPException, ConnectionError, TimeoutError, URLError):
                pass  # the size check below decides: resume or report
        size = part.stat().st_size
        if total is None or size >= total:
            break
        tries += 1
        if tries > RETRIES:
            if not ranged:
                part.unlink(missing_ok=True)
            kept = f"; {part} is kept: run the command again to resume" if ranged else (
                "; the server does not resume (no HTTP Range), so nothing was kept")
            raise SidrecError(f"{url}: the download stopped at {size:,} of {total:,} bytes {RETRIES + 1} times{kept}")
        _say(f"{dest.name}: transfer stopped at {size:,} of {total:,} bytes; resuming")
    problem = _damage(part, total)
    if problem:
        part.unlink(missing_ok=True)
        raise SidrecError(f"{url}: the downloaded file is damaged ({problem}); it was deleted and nothing was kept "
                          "(try again, or another --mirror)")
    os.replace(part, dest)


def _damage(path: Path, total: int | None) -> str:
    """'' for a complete gzip file of the announced size; else what is wrong with it."""
    size = path.stat().st_size if path.exists() else 0
    if total is not None and size != total:
        return f"{size:,} bytes, the server announced {total:,}"
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except EOFError:
        return "truncated: the gzip stream ends early"
    except (OSError, zlib.error) as exc:
        return f"not a valid gzip file: {exc}"
    return ""


def _fetch_files(src: Source, base: str, folder: Path, progress: bool) -> list[dict[str, Any]]:
    """Download the source's files into ``folder`` (kept ones are not fetched again); what was fetched."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from sidrec.progress import console

    folder.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, Any]] = []
    interactive = progress and console.is_terminal
    for fname in src.files:
        dest, url = folder / fname, base + fname
        if dest.exists() and not _damage(dest, None):
            _say(f"{fname}: already downloaded ({dest})")
        else:
            dest.unlink(missing_ok=True)
            if not interactive:
                _say(f"downloading {url}")
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=console, transient=True, disable=not interactive) as bar:
                task = bar.add_task(fname, total=None)
                download(url, dest, lambda n, t, task=task: bar.update(task, completed=n, total=t))
        done.append({"file": fname, "url": url, "bytes": dest.stat().st_size})
    return done


# --------------------------------------------------------------------------------------------- conversion
def _user_order(reviews: Path) -> list[str]:
    """Reviewer ids in the order they first occur in the reviews file.

    Why: S3-Rec (and P5, which copied its files) numbered users in this order and items in the order they first
    occur when the users' time-ordered histories are read in user order; the Beauty and Sports copies follow that
    rule exactly (checked against their ``datamaps.json``), so following it reproduces their ids.
    """
    from sidrec.data.formats.amazon import _records

    seen: dict[str, None] = {}
    for _, rec in _records(reviews, "review"):
        seen.setdefault(str(rec.get("reviewerID") or rec.get("user_id")), None)
    return list(seen)


def _categories(value: Any, root: str) -> list[str] | None:
    cats = [c for c in (value or []) if c != root]
    return cats or None


def convert(src: Source, raw: Path, dest: Path, fetched: list[dict[str, Any]] | None = None) -> Dataset:
    """Read the downloaded files with the Amazon reader and write the S3-Rec/P5 folder of the benchmark copies.

    Written: ``<sequence_file>`` (``user item item ...``, 1-based, time order), ``datamaps.json`` (ids <-> ASINs
    and reviewer ids), ``items.jsonl`` (``item_id``, ``asin``, ``title``, ``brand``, ``categories`` without the
    top-level category; the fields the benchmark text template reads, so text features are built the same way).
    The folder appears only once its counts are checked; returns the dataset as read back from it.
    """
    from sidrec.data.formats import amazon, s3rec
    from sidrec.io import atomic_path

    reviews = raw / src.files[0]
    ds = amazon.read(reviews, name=src.name)
    got = (ds.n_users, ds.n_items, ds.n_interactions)
    want = (src.users, src.items, src.interactions)
    if got != want:
        raise SidrecError(f"{src.name}: the downloaded files give {got[0]:,} users / {got[1]:,} items / {got[2]:,} "
                          f"interactions, the 2014 5-core release has {want[0]:,} / {want[1]:,} / {want[2]:,}: not the "
                          "files the benchmark uses (a different release or a damaged mirror)")
    index = {u: k for k, u in enumerate(ds.user_ids)}
    item_no: dict[int, int] = {}
    lines, users = [], []
    for n, user in enumerate(_user_order(reviews), 1):
        ids = [item_no.setdefault(int(i), len(item_no) + 1) for i in ds.sequence(index[user])]
        lines.append(f"{n} {' '.join(map(str, ids))}\n")
        users.append(user)
    asin = {no: ds.item_ids[i] for i, no in item_no.items()}
    col = {f: ds.items.get(f, [None] * ds.n_items) for f in ("title", "brand", "categories")}
    records = [{"item_id": no, "asin": ds.item_ids[i], "title": col["title"][i], "brand": col["brand"][i],
                "categories": _categories(col["categories"][i], src.root)}
               for i, no in sorted(item_no.items(), key=lambda x: x[1])]
    maps = {"user2id": {u: str(k) for k, u in enumerate(users, 1)}, "item2id": {a: str(k) for k, a in asin.items()},
            "id2user": {str(k): u for k, u in enumerate(users, 1)}, "id2item": {str(k): a for k, a in asin.items()}}
    with atomic_path(dest, is_dir=True) as tmp:
        (tmp / src.sequence_file).write_text("".join(lines), encoding="utf-8")
        (tmp / "datamaps.json").write_text(json.dumps(maps) + "\n", encoding="utf-8")
        (tmp / "items.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                         encoding="utf-8")
        back = s3rec.read(tmp, name=src.name)
        if (back.n_users, back.n_items, back.n_interactions) != want:  # pragma: no cover - a bug in this function
            raise SidrecError(f"{dest}: the converted folder reads back with other counts than the download")
        (tmp / FETCH_MARKER).write_text(json.dumps({"dataset": src.name, "title": src.title, "users": src.users,
                                                    "items": src.items, "interactions": src.interactions,
                                                    "files": fetched or []}, indent=2) + "\n", encoding="utf-8")
    back.source = str(dest / src.sequence_file)
    return back


def check_destination(dest: Path) -> None:
    """Refuse an output folder that holds anything but an earlier fetch (the conversion replaces it whole)."""
    from sidrec.io import check_writable

    check_writable(dest, "dataset folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / FETCH_MARKER).exists():
        raise SidrecError(f"{dest} exists and was not written by 'sidrec data fetch' (no {FETCH_MARKER}); converting "
                          "would replace its files: choose another --out")


def fetch(name: str, dest: Path | None = None, mirror: str | None = None, keep_downloads: bool = True,
          progress: bool = True) -> tuple[Dataset, Path]:
    """Download dataset ``name``, convert it into ``dest`` (default ``data/<benchmark folder>``) and check it.

    Any failure after the download started removes the downloaded files (unless a resumable ``.part``) and the
    half-built folder, so a rerun starts clean; returns the dataset read back from ``dest`` and ``dest``.
    """
    src = source(name)
    base = mirror_url(mirror)
    dest = dest if dest is not None else Path("data") / src.folder
    check_destination(dest)
    raw = downloads_dir()
    try:
        fetched = _fetch_files(src, base, raw, progress)
        _say(f"converting {', '.join(src.files)} (reading the metadata takes a while)")
        ds = convert(src, raw, dest, fetched)
    except SidrecError:  # a damaged, missing or wrong file: the set is no use to a rerun (a resumable .part stays)
        for f in src.files:
            (raw / f).unlink(missing_ok=True)
        raise
    if not keep_downloads:
        for f in src.files:
            (raw / f).unlink(missing_ok=True)
    return ds, dest
