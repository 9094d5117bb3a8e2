"""``sidrec data fetch`` offline: a local HTTP server on 127.0.0.1 serves small files in the 2014 format (gzipped
JSON-lines reviews, Python-literal metadata) written by the test; fetch -> prepare -> one epoch of a tiny model; a
transfer cut short resumes with HTTP Range; a truncated, damaged or wrong file is one line, exit code 2, and
nothing is left behind (no dataset folder, no download, no temporary file)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sidrec.data import fetch as F
from test_bad_inputs import cli
from test_own_dataset import TINY

N_USERS, N_ITEMS = 30, 16


@pytest.fixture
def stub_encoder(monkeypatch) -> list[str]:
    """The sentence encoder replaced by random unit vectors; records the texts it was given."""
    seen: list[str] = []

    def encode(texts, model="", batch_size=0, progress=True):
        seen.extend(texts)
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr("sidrec.features.core.encode_texts", encode)
    return seen


def write_release(folder: Path) -> dict[str, object]:
    """Reviews and metadata of a tiny 'Beauty' in the 2014 format; returns what the conversion must produce.

    The reviews are sorted by item (as the 2014 files are), timestamps have ties (file order breaks them), and the
    metadata holds items nobody reviewed."""
    rng = np.random.default_rng(5)
    users = [f"A{k:02d}REVIEWER" for k in range(N_USERS)]
    items = [f"B00{k:04d}X" for k in range(N_ITEMS)]
    rows = []
    for u in users:
        for i in rng.permutation(N_ITEMS)[: 5 + int(rng.integers(0, 3))]:
            rows.append({"reviewerID": u, "asin": items[i], "overall": 5.0, "unixReviewTime": int(rng.integers(0, 6))})
    rows.sort(key=lambda r: r["asin"])
    # the expected numbering: users by first occurrence in the file, items by first occurrence in those histories
    order = list(dict.fromkeys(r["reviewerID"] for r in rows))
    hist = {u: [r["asin"] for r in sorted((r for r in rows if r["reviewerID"] == u), key=lambda r: r["unixReviewTime"])]
            for u in order}
    item_no: dict[str, int] = {}
    lines = [f"{n} " + " ".join(str(item_no.setdefault(a, len(item_no) + 1)) for a in hist[u]) + "\n"
             for n, u in enumerate(order, 1)]
    meta = [str({"asin": a, "title": f"Lipstick &amp; gloss no. {k}", "brand": "Acme",
                 "categories": [["Beauty", "Makeup", "Lips"], ["Beauty", "Gifts"]], "price": 3.5})
            for k, a in enumerate(items + ["B0UNSEEN01", "B0UNSEEN02"])]
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("reviews_Beauty_5.json.gz", [json.dumps(r) for r in rows]), ("meta_Beauty.json.gz", meta)):
        with gzip.open(folder / name, "wt") as fh:
            fh.write("".join(line + "\n" for line in body))
    return {"sequences": "".join(lines), "item_no": item_no, "counts": (N_USERS, len(item_no), len(rows))}


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.root``; honours ``Range`` unless ``server.no_range``; ``server.cut`` "first" / "always" stops
    the first / every transfer of a file after half its bytes (announcing the full length, as a dropped connection
    does)."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        srv = self.server
        path = srv.root / self.path.lstrip("/")
        srv.log.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.no_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.cut == "always" or (srv.cut == "first" and path.name not in srv.cut_done):
            srv.cut_done.add(path.name)
            body = body[: len(body) // 2]
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.log, srv.no_range, srv.cut, srv.cut_done = tmp_path / "mirror", [], False, "never", set()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def release(server, monkeypatch, tmp_path: Path) -> dict[str, object]:
    """The tiny release on the server, the registry's Beauty counts set to it, and a cache and working dir of the
    test's own."""
    exp = write_release(server.root)
    u, i, n = exp["counts"]
    monkeypatch.setitem(F.DATASETS, "beauty", F.Source("beauty", "tiny Beauty", "Beauty", "Beauty", "amazon14_beauty",
                                                      "Beauty.txt", u, i, n))
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    return exp


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fetch_prepare_train(server, release, tmp_path, capsys, stub_encoder):
    assert cli("data", "fetch", "beauty", "--mirror", server.url, "--out", "work/beauty") == 0, capsys.readouterr().err
    dest = tmp_path / "work" / "beauty"
    assert (dest / "Beauty.txt").read_text() == release["sequences"]
    maps = json.loads((dest / "datamaps.json").read_text())
    assert {int(k): v for k, v in maps["id2item"].items()} == {v: k for k, v in release["item_no"].items()}
    items = [json.loads(x) for x in (dest / "items.jsonl").read_text().splitlines()]
    assert len(items) == len(release["item_no"]) and [r["item_id"] for r in items] == list(range(1, len(items) + 1))
    # text as the benchmark copies have it: HTML entities decoded, top-level category dropped
    assert items[0]["title"].startswith("Lipstick & gloss") and items[0]["categories"] == ["Makeup", "Lips", "Gifts"]
    marker = json.loads((dest / "fetch.json").read_text())
    assert [f["file"] for f in marker["files"]] == ["reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"]
    assert "saved beauty" in capsys.readouterr().out
    # the S3-Rec reader reads it; the benchmark config composes with it; one epoch trains
    assert cli("data", "prepare", "work/beauty", "--out", "work/prepared") == 0
    repo = Path(__file__).resolve().parents[1]
    assert cli("train", "-c", str(repo / "configs" / "data" / "beauty.yaml"), "data.path=work/prepared",
               "method=sasrec", *TINY, "--run-dir", "runs/fetched") == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "fetched" / "metrics.json").exists()
    assert any("Lipstick & gloss" in t for t in stub_encoder)
    # a second fetch reuses the downloads (no request) and replaces the folder it wrote
    n = len(server.log)
    assert cli("data", "fetch", "beauty", "--mirror", server.url, "--out", "work/beauty", "--delete-downloads") == 0
    assert len(server.log) == n and not _files(tmp_path / "cache" / "downloads")


def test_mirror_from_the_environment_and_resume(server, release, tmp_path, monkeypatch, capsys):
    server.cut = "first"
    monkeypatch.setenv(F.MIRROR_ENV, server.url)
    assert cli("data", "fetch", "beauty") == 0, capsys.readouterr().err
    assert (tmp_path / "data" / "amazon14_beauty" / "Beauty.txt").read_text() == release["sequences"]
    ranges = [r for _, r in server.log if r]
    assert len(ranges) == 2 and all(r.startswith("bytes=") and r != "bytes=0-" for r in ranges), server.log
    assert "resuming" in capsys.readouterr().err


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sidrec: error")]
    assert len(err) == 1, err
    return err[0]


def _nothing_left(tmp_path: Path) -> None:
    assert not _files(tmp_path / "cache") and not (tmp_path / "data").exists(), _files(tmp_path)
    assert not list((tmp_path / "work").iterdir())


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "html"])
def test_a_damaged_download_leaves_nothing(server, release, tmp_path, capsys, damage):
    f = server.root / "meta_Beauty.json.gz"
    data = f.read_bytes()
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "corrupt":
        data = data[:40] + bytes(b ^ 0x5A for b in data[40:60]) + data[60:]
    else:
        data = b"<html>mirror moved</html>\n"
    f.write_bytes(data)
    assert cli("data", "fetch", "beauty", "--mirror", server.url) == 2
    line = _one_error(capsys)
    assert "meta_Beauty.json.gz" in line and "damaged" in line and "nothing was kept" in line, line
    _nothing_left(tmp_path)


def test_a_transfer_that_keeps_stopping_without_range_leaves_nothing(server, release, tmp_path, capsys):
    server.no_range, server.cut = True, "always"
    assert cli("data", "fetch", "beauty", "--mirror", server.url) == 2
    line = _one_error(capsys)
    assert "stopped at" in line and "nothing was kept" in line, line
    _nothing_left(tmp_path)


def test_wrong_counts_leave_nothing(server, release, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(F.DATASETS, "beauty", F.Source("beauty", "Beauty", "Beauty", "Beauty", "amazon14_beauty",
                                                      "Beauty.txt", 22_363, 12_101, 198_502))
    assert cli("data", "fetch", "beauty", "--mirror", server.url) == 2
    line = _one_error(capsys)
    assert "22,363" in line and f"{N_USERS:,} users" in line, line
    _nothing_left(tmp_path)


def test_missing_file_unknown_name_and_help(server, release, tmp_path, capsys):
    (server.root / "reviews_Beauty_5.json.gz").unlink()
    assert cli("data", "fetch", "beauty", "--mirror", server.url) == 2
    assert "HTTP 404" in _one_error(capsys)
    _nothing_left(tmp_path)
    assert cli("data", "fetch", "books") == 2
    assert "known: beauty, sports, toys" in _one_error(capsys)
    assert cli("data", "fetch", "beauty", "--mirror", "nowhere") == 2
    assert "not a URL" in _one_error(capsys)
    (tmp_path / "work" / "mine.txt").write_text("keep me\n")
    assert cli("data", "fetch", "beauty", "--mirror", server.url, "--out", "work") == 2
    assert "fetch.json" in _one_error(capsys) and (tmp_path / "work" / "mine.txt").exists()
    assert cli("data", "fetch", "--help") == 0
    shown = capsys.readouterr().out
    assert all(n in shown for n in ("beauty", "sports", "toys"))


def test_the_registry_matches_the_benchmark_copies():
    """Counts and file names against ../shared/data (its README's table); skipped when the copies are absent."""
    from conftest import shared_data
    from sidrec.data.formats import load_dataset

    for name, src in F.DATASETS.items():
        ds = load_dataset(shared_data(src.folder), "s3rec", name)
        assert (ds.n_users, ds.n_items, ds.n_interactions) == (src.users, src.items, src.interactions), name
        assert src.files[0] == f"reviews_{src.category}_5.json.gz"


def test_the_conversion_reproduces_the_beauty_copy(tmp_path):
    """Reviews rebuilt from the Beauty copy (sorted by item, as the 2014 files are) convert into its exact
    ``Beauty.txt`` and ids: the S3-Rec numbering rule the fetch follows is the one the copy was made with."""
    from conftest import shared_data

    folder = shared_data("amazon14_beauty")
    maps = json.loads((folder / "datamaps.json").read_text())
    seqs = [line.split() for line in (folder / "Beauty.txt").read_text().splitlines()]
    rows = sorted((maps["id2item"][i], int(s[0]), t) for s in seqs for t, i in enumerate(s[1:]))
    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(raw / "reviews_Beauty_5.json.gz", "wt", compresslevel=1) as fh:
        fh.writelines(f'{{"reviewerID": "{maps["id2user"][str(u)]}", "asin": "{a}", "unixReviewTime": {t}}}\n'
                      for a, u, t in rows)
    with gzip.open(raw / "meta_Beauty.json.gz", "wt", compresslevel=1) as fh:
        fh.writelines(str({"asin": a, "title": f"item {a}"}) + "\n" for a in maps["item2id"])
    F.convert(F.DATASETS["beauty"], raw, tmp_path / "out")
    assert (tmp_path / "out" / "Beauty.txt").read_bytes() == (folder / "Beauty.txt").read_bytes()
    got = json.loads((tmp_path / "out" / "datamaps.json").read_text())
    assert got["id2item"] == maps["id2item"] and got["id2user"] == maps["id2user"]
