"""``sidrec serve``: a real HTTP server on a localhost port, asked with a real HTTP client (docs/serve.md).

One tiny synthetic SASRec run (content fusion on) is trained once for the module; the server runs in a thread of
this process (uvicorn on a socket bound to port 0), except for the SIGTERM test, which needs a process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import sidrec  # noqa: E402
from sidrec.serve import ServeSettings, bind, create_app, server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["size=none", "data.path=synthetic", "data.synthetic_users=300", "data.synthetic_items=100", "data.max_len=10",
        "features.kind=attributes", "eval.ks=[5,10]", "train.batch_size=32", "train.progress=false",
        "train.threads=1", "train.epochs=2", "method=sasrec", "sasrec.d_model=16", "sasrec.n_layers=1",
        "sasrec.n_heads=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return sidrec.train(None, TINY, run_dir=str(tmp_path_factory.mktemp("serve") / "run")).path


@pytest.fixture(scope="module")
def rec(run):
    return sidrec.load(run)


class Served:
    """A server in a thread of this process, and a client of it."""

    def __init__(self, rec, settings: ServeSettings) -> None:
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = server(create_app(rec, settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        # no wait for the start-up: the socket already listens, so a first request queues in its backlog until the
        # server accepts it (the client's timeout bounds a server that never comes up)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(rec):
    s = Served(rec, ServeSettings())
    yield s
    s.stop()


def pairs(answer: dict) -> list[tuple[str, float]]:
    return [(x["item"], x["score"]) for x in answer["items"]]


def test_answers_are_the_python_apis(rec, served):
    c = served.client
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["method"] == "sasrec" and h["items"] == 100 and h["protocol"] == "exclude"
    assert h["fusion"] is not None  # the run's chosen content fusion is what is served
    session = [rec.items[3], rec.items[7], rec.items[11]]
    got = c.post("/recommend", json={"history": session, "k": 5}).json()
    assert pairs(got) == rec.recommend(history=session, k=5)  # bit-exact: the same code path, one request alone
    assert all(isinstance(x["title"], str) for x in got["items"])  # synthetic items have titles
    assert pairs(c.post("/recommend", json={"history": session, "k": 7, "exclude": False}).json()) == \
        rec.recommend(history=session, k=7, exclude=False)
    assert pairs(c.post("/recommend", json={"history": session, "exclude": [rec.items[0]]}).json()) == \
        rec.recommend(history=session, exclude=[rec.items[0]])
    user = rec.users[5]
    assert pairs(c.post("/recommend", json={"user": user, "k": 3}).json()) == rec.recommend(user=user, k=3)
    batch = [session, session[:1], [rec.items[50]]]
    res = c.post("/recommend/batch", json={"histories": batch, "k": 4}).json()["results"]
    assert [pairs(r) for r in res] == rec.recommend(history=batch, k=4)
    item = c.get(f"/items/{rec.items[3]}").json()
    assert item["item"] == rec.items[3] and item["title"] == rec.dataset.items["title"][3]


def test_concurrent_clients_get_the_sequential_answers(rec, served):
    """8 clients x 50 requests at once: every one answered, each exactly as when asked alone (the Python API's
    answer, which test_answers_are_the_python_apis shows the server gives one request at a time)."""
    n_items = len(rec.items)
    reqs = [{"history": [rec.items[(7 * i + j) % n_items] for j in range(1 + i % 6)], "k": 1 + i % 10}
            if i % 5 else {"user": rec.users[i % len(rec.users)], "k": 5} for i in range(400)]
    sequential = [{"items": [{"item": i, "score": x, "title": rec.dataset.items["title"][rec.items.index(i)]}
                             for i, x in rec.recommend(history=r.get("history"), user=r.get("user"), k=r["k"])]}
                  for r in reqs]

    def client(part: int) -> list[dict]:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            return [c.post("/recommend", json=r).json() for r in reqs[part::8]]

    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(client, range(8)))
    concurrent = [None] * len(reqs)
    for part, answers in enumerate(parts):
        concurrent[part::8] = answers
    assert concurrent == sequential
    assert all(len(a["items"]) == r["k"] for a, r in zip(sequential, reqs, strict=True))


def test_micro_batching_keeps_the_lists(rec):
    """--max-batch 8: requests that arrive together are ranked in one call; the lists are those of each alone,
    the scores equal up to float rounding (a batch is a matrix product of another shape; relative to the score,
    since a fused score with a large chosen lambda is in the hundreds)."""
    s = Served(rec, ServeSettings(max_batch=8))
    try:
        reqs = [{"history": [rec.items[(11 * i + j) % len(rec.items)] for j in range(1 + i % 4)], "k": 5}
                for i in range(64)]

        def ask(r: dict) -> dict:
            with httpx.Client(base_url=s.url, timeout=60) as c:
                return c.post("/recommend", json=r).json()

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, reqs))
        for r, a in zip(reqs, got, strict=True):
            alone = rec.recommend(history=r["history"], k=5)
            assert [i for i, _ in pairs(a)] == [i for i, _ in alone]
            assert [x for _, x in pairs(a)] == pytest.approx([x for _, x in alone], rel=1e-6, abs=1e-4)
    finally:
        s.stop()


BAD = [  # (body as sent, status, field named)
    ('{"history": ["I00001"', 400, None),  # malformed JSON
    ("[1, 2]", 422, "body"),
    ('{"history": ["I00001"], "k": 0}', 422, "k"),
    ('{"history": ["I00001"], "k": 100000}', 422, "k"),
    ('{"history": ["I00001"], "k": "5"}', 422, "k"),
    ('{"history": ["I00001"], "k": 2.5}', 422, "k"),
    ('{"history": "I00001"}', 422, "history"),
    ('{"history": [1.5]}', 422, "history[0]"),
    ('{"history": [true]}', 422, "history[0]"),
    ('{"history": ["no-such-item"]}', 422, "history"),
    ('{"user": "no-such-user"}', 404, "user"),
    ('{"user": "u", "history": ["I00001"]}', 422, "history"),
    ("{}", 422, "history"),
    ('{"hisotry": ["I00001"]}', 422, "hisotry"),
    ('{"history": ["I00001"], "exclude": "I00002"}', 422, "exclude"),
    (json.dumps({"history": ["I00001"] * 1001}), 422, "history"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD)
def test_bad_requests_are_one_line_4xx_and_the_server_goes_on(rec, served, body, status, field):
    r = served.client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert "\n" not in err["error"] and "Traceback" not in err["error"]
    assert err.get("field") == field
    if field:
        assert field.split("[")[0] in err["error"]
    ok = served.client.post("/recommend", json={"history": [rec.items[1]], "k": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


def test_other_bad_requests(rec, served):
    c = served.client
    for path, body, status, field in [
        ("/recommend/batch", {"histories": []}, 422, "histories"),
        ("/recommend/batch", {"histories": [[rec.items[0]], 3]}, 422, "histories[1]"),
        ("/recommend/batch", {"histories": [[rec.items[0]]] * 257}, 422, "histories"),
        ("/recommend/batch", {"histories": [[rec.items[0]], ["no-such-item"]]}, 422, "histories"),
    ]:
        r = c.post(path, json=body)
        assert (r.status_code, r.json().get("field")) == (status, field), r.text
        assert f"'{field}'" in r.json()["error"]
    r = c.get("/items/no-such-item")
    assert r.status_code == 404 and r.json()["field"] == "item_id"
    assert c.get("/no-such-endpoint").status_code == 404
    assert c.get("/recommend").status_code == 405
    # an oversized body is refused by its Content-Length, before it is read
    with socket.create_connection(("127.0.0.1", int(served.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50000000\r\n\r\n{\"history\": [")
        head = b""
        while b'"body"}' not in head and (chunk := sock.recv(4096)):
            head += chunk
        head = head.decode()
    assert head.startswith("HTTP/1.1 413") and '"field": "body"' in head
    assert c.post("/recommend", json={"history": [rec.items[1]]}).status_code == 200


def test_an_internal_failure_is_a_one_line_500_and_the_server_goes_on(rec, served, monkeypatch):
    def broken(queries):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(rec, "rank", broken)
    r = served.client.post("/recommend", json={"history": [rec.items[1]]})
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); the server goes on serving"}
    monkeypatch.undo()
    assert served.client.post("/recommend", json={"history": [rec.items[1]]}).status_code == 200


def test_unknown_items_skipped_when_the_server_says_so(rec):
    s = Served(rec, ServeSettings(skip_unknown=True))
    try:
        got = s.client.post("/recommend", json={"history": ["no-such-item", rec.items[4]], "k": 3}).json()
        assert pairs(got) == rec.recommend(history=[rec.items[4]], k=3)
        assert s.client.get("/health").json()["unknown_items"] == "skip"
    finally:
        s.stop()


def test_settings_are_checked(rec):
    with pytest.raises(sidrec.errors.SidrecError, match="'max_batch' must be a positive integer"):
        create_app(rec, ServeSettings(max_batch=0))


def test_sigterm_drains_and_exits_cleanly(run, rec):
    """The command as a user starts it; SIGTERM while requests are in flight: they are answered, exit code 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", "from sidrec.cli import main; main()", "serve", str(run),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "sidrec serve:" in line, line + proc.stderr.read()
        url = line.strip().rsplit(" ", 1)[1]
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/health").status_code == 200

        # 8 requests sent whole on connections of their own, then SIGTERM while they are ranked (the model thread
        # takes them one at a time): each is answered in full before the process exits
        body = json.dumps({"histories": [[rec.items[i % 100], rec.items[(3 * i) % 100]] for i in range(256)],
                           "k": 50}).encode()
        port = int(url.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(8)]
        for sock in socks:
            sock.sendall(b"POST /recommend/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

        def answer(sock: socket.socket) -> dict:
            with sock:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), data[:200]
                length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
                while len(rest) < length and (chunk := sock.recv(65536)):
                    rest += chunk
                return json.loads(rest)

        # once the first is answered the server has read them all (uvicorn closes a connection whose request it has
        # not begun to read: that one was never in flight); the other seven are then waiting or being ranked
        assert len(answer(socks[0])["results"]) == 256
        proc.send_signal(signal.SIGTERM)
        for sock in socks[1:]:
            assert len(answer(sock)["results"]) == 256
        assert proc.wait(60) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stable_top_k_is_the_stable_sorts_head():
    """The served top-k (fusion.stable_top_k) is exactly the head of the full stable sort, ties and -inf included."""
    import torch

    from sidrec.fusion import stable_top_k

    g = torch.Generator().manual_seed(0)
    for n, k in [(50, 5), (50, 50), (50, 60), (200, 10), (1000, 100)]:
        s = torch.randint(0, 6, (16, n), generator=g).float()  # many ties
        s[0] = float("-inf")
        s[1, : n - 2] = float("-inf")  # fewer finite items than k
        s[2] = 1.0
        v, i = s.sort(dim=1, descending=True, stable=True)
        tv, ti = stable_top_k(s, k)
        assert torch.equal(tv, v[:, :k]) and torch.equal(ti, i[:, :k])


def test_batches_wait_for_the_clients_of_recent_calls_and_no_longer():
    """max_batch > 1: a call takes the requests waiting; when fewer wait than the largest of the last calls ranked,
    it waits for the rest, at most half the last call's time; a lone client's request never waits."""
    import asyncio
    import time

    from sidrec.serve import ModelWorker

    class Q:  # a checked query as the worker sees it: one history
        histories = [[0]]

    async def batch(recent: list[int], last_call_s: float, arrivals: list[float]) -> tuple[int, float]:
        w = ModelWorker(None, ServeSettings(max_batch=8))
        try:
            w.queue = asyncio.Queue()
            w.recent.extend(recent)
            w.last_call_s = last_call_s
            loop = asyncio.get_running_loop()
            for delay in arrivals:
                loop.call_later(delay, w.queue.put_nowait, (Q(), loop.create_future()))
            t = time.perf_counter()
            jobs = await w._batch()
            return len(jobs), time.perf_counter() - t
        finally:
            w.close()

    # 8 clients lately: the first request waits for the 7 that come back 20 ms after it (a call took 1 s)
    n, _ = asyncio.run(batch([8], 1.0, [0.0] + [0.02] * 7))
    assert n == 8
    # a lone client lately: its request goes at once, even if another comes soon after
    n, waited = asyncio.run(batch([1], 1.0, [0.0, 0.3]))
    assert n == 1 and waited < 0.25
    # the wait is bounded by half the last call: 8 lately, a call of 40 ms, nobody else comes -> ~20 ms
    n, waited = asyncio.run(batch([8], 0.04, [0.0]))
    assert n == 1 and waited < 0.25

    async def after_a_timeout() -> int:  # the clients that did not come back are not waited for again
        w = ModelWorker(None, ServeSettings(max_batch=8))
        try:
            w.queue = asyncio.Queue()
            w.recent.extend([8])
            w.last_call_s = 0.02
            loop = asyncio.get_running_loop()
            w.queue.put_nowait((Q(), loop.create_future()))
            await w._batch()  # times out after ~10 ms
            w.last_call_s = 1.0
            w.queue.put_nowait((Q(), loop.create_future()))
            loop.call_later(0.3, w.queue.put_nowait, (Q(), loop.create_future()))
            return len(await w._batch())
        finally:
            w.close()

    assert asyncio.run(after_a_timeout()) == 1


def test_the_content_thread_gives_the_same_answers(run, monkeypatch):
    """``content_thread`` computes a fused dense model's content similarity on a second thread while the model
    scores: the answers equal the Python API's (no second thread) bit for bit, and the API's own calls are not
    switched to the thread (the setting is the model thread's only)."""
    from sidrec import fusion

    rec = sidrec.load(run)
    rec.task.fusion = fusion.Fusion(2.0, 2.0)  # a fused run whatever the tiny training chose
    assert "cosine" in rec.score_name
    hists = [[rec.items[(5 * i + j) % len(rec.items)] for j in range(1 + i % 4)] for i in range(40)]
    alone = [rec.recommend(history=h, k=10) for h in hists]
    threads: list[str] = []
    similarity = fusion.ContentIndex.similarity

    def spy(self, hist):
        threads.append(threading.current_thread().name)
        return similarity(self, hist)

    monkeypatch.setattr(fusion.ContentIndex, "similarity", spy)
    for side in (True, False):
        threads.clear()
        s = Served(rec, ServeSettings(content_thread=side))
        try:
            got = [pairs(s.client.post("/recommend", json={"history": h, "k": 10}).json()) for h in hists]
        finally:
            s.stop()
        assert got == [[(i, x) for i, x in a] for a in alone]
        on_side = [t for t in threads if t.startswith("sidrec-content")]
        assert (len(on_side) >= len(hists)) if side else not on_side, threads
    assert getattr(fusion._side, "executor", None) is None
