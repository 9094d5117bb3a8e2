"""``sidrec serve RUN``: a finished run behind an HTTP API (FastAPI on uvicorn).

Why FastAPI + uvicorn: a maintained ASGI stack whose request bodies are parsed and type-checked by pydantic (a
wrong type is refused at the door, naming the field), and whose server drains in-flight requests on SIGTERM. The
run is loaded once through the Python API (:class:`sidrec.api.Recommender`): every answer is the one
``Recommender.recommend`` gives, with the run's fusion, its history rule (``eval.protocol``) and its item ids.

Concurrency: requests are parsed and checked on the event loop; the model runs in **one** worker thread, fed by
a queue. Why one thread and not a pool: torch already spreads one call over ``threads`` cores, two calls at once
on a 2-core machine only fight for them, and some tasks change state for the length of a call (a beam-search
model widens its beam to k), so two calls at once could see each other's setting. With one model thread nothing
is shared between two requests while they are ranked, and a request's answer never depends on what else arrived.

Micro-batching (``max_batch`` > 1, off by default): while the model thread is busy, waiting requests are ranked
together in one call. On a 12k-item catalogue one SASRec call streams the item tables (~20 MB) whatever its batch
size, so batching multiplies throughput under load; the price is that a batched score may differ from the same
request alone in the last float bits (matrix products of another shape), so it is off unless asked for.
When the thread frees up and fewer requests wait than the largest of its last 8 calls ranked, it waits for the
rest, at most half as long as its last call took. Why: without the wait, 8 closed-loop clients split into calls of
1 and 7 (the first request back finds the thread idle and goes alone), two table streams per 8 requests; with it,
one call of 8 (model CPU per request -35% on Beauty). A lone client (every recent call of 1) never waits. See
docs/serve.md for the measurements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from sidrec.errors import SidrecError
from sidrec.fusion import content_thread

log = logging.getLogger("sidrec.serve")

# micro-batching (max_batch > 1): when fewer requests wait than the largest of the last BATCH_MEMORY calls ranked,
# the model thread waits for the rest at most BATCH_WAIT_SHARE of its last call's time (and BATCH_WAIT_MAX_S)
BATCH_MEMORY = 8
BATCH_WAIT_SHARE = 0.5
BATCH_WAIT_MAX_S = 0.05


@dataclass
class ServeSettings:
    """Limits and behaviour of one server (the ``sidrec serve`` options)."""

    max_k: int = 100  # largest k a request may ask for (a beam-search model's beam widens to k)
    max_history: int = 1000  # item ids in one history (the model reads the last data.max_len of them)
    max_batch_histories: int = 256  # histories in one /recommend/batch request
    max_body_bytes: int = 1 << 20  # request bodies above this are refused (413) before they are read whole
    skip_unknown: bool = False  # unknown item ids in a history: refused (422) or left out
    max_batch: int = 1  # requests ranked together by the model thread (1: each alone, bit-exact)
    threads: int = 1  # torch intra-op threads of the model thread
    # a dense model's content similarity on a second thread while the model scores (one torch thread each, same
    # numbers): a SASRec + content call's two catalogue products overlap on two cores (Beauty, c 8, batch 8: p99
    # 17.9-21.3 ms vs 23.3-29.4, +25-35% requests/s on an idle 2-core machine; it helped under load too; docs/serve.md)
    content_thread: bool = True

    def check(self) -> None:
        for name in ("max_k", "max_history", "max_batch_histories", "max_body_bytes", "max_batch", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SidrecError(f"serve: setting '{name}' must be a positive integer, got {v!r}")


class RequestError(Exception):
    """A request refused with ``status`` and a one-line message naming the field."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


# ------------------------------------------------------------------------------------------------ the model thread
class ModelWorker:
    """The one thread that ranks: a queue of (query, future) drained in batches of up to ``max_batch`` requests
    (with the bounded wait of the module docstring when fewer are waiting than recent calls ranked)."""

    def __init__(self, rec: Any, settings: ServeSettings) -> None:
        self.rec, self.settings = rec, settings
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidrec-model")
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.recent: deque[int] = deque([1], maxlen=BATCH_MEMORY)  # the sizes of the last calls
        self.last_call_s = 0.0  # how long the last call took (the model thread's, queue hand-overs included)
        self.pool.submit(self._bound_threads, settings.threads).result()
        self.side: ThreadPoolExecutor | None = None
        if settings.content_thread:
            self.side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidrec-content",
                                           initializer=self._bound_threads, initargs=(1,))

    @staticmethod
    def _bound_threads(n: int) -> None:
        """torch's and faiss's (the content ranker's search) CPU threads: ``n`` each, whatever the machine has."""
        torch.set_num_threads(n)
        try:
            import faiss

            faiss.omp_set_num_threads(n)
        except (ImportError, AttributeError):
            pass

    def warm_up(self) -> None:
        """One call before the first request: lazy parts (the content grounding, a faiss index) are built now,
        in the model thread, not by two racing requests."""
        self.pool.submit(self._rank, [self.rec.query(history=[self.rec.dataset.item_ids[0]], k=1)]).result()

    def _rank(self, queries: list[Any]) -> list[Any]:
        with torch.inference_mode(), content_thread(self.side):
            return self.rec.rank(queries)

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """Any other read of the run (item SIDs), in the model thread."""
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def rank(self, query: Any) -> list[list[tuple[str, float]]]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._drain())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((query, fut))
        return await fut

    async def _batch(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        """The next call's requests: those waiting, and -- when fewer wait than the largest of the last few calls
        ranked -- those that arrive within half the last call's time (the module docstring says why)."""
        assert self.queue is not None
        jobs = [await self.queue.get()]
        n = len(jobs[0][0].histories)
        target = min(max(self.recent), self.settings.max_batch)
        deadline = time.perf_counter() + min(BATCH_WAIT_SHARE * self.last_call_s, BATCH_WAIT_MAX_S)
        while len(jobs) < self.settings.max_batch and n < self.settings.max_batch_histories:
            if self.queue.empty():
                left = deadline - time.perf_counter()
                if len(jobs) >= target or left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    # the clients of the last calls did not all come back (fewer clients now): the next call does
                    # not wait for them again, only for as many as a later call ranks
                    self.recent.clear()
                    break
            else:
                jobs.append(self.queue.get_nowait())
            n += len(jobs[-1][0].histories)
        self.recent.append(len(jobs))
        return jobs

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._batch()
            jobs = [(q, f) for q, f in jobs if not f.cancelled()]  # a client that left is not ranked
            if not jobs:
                continue
            try:
                t = time.perf_counter()
                results = await loop.run_in_executor(self.pool, self._rank, [q for q, _ in jobs])
                self.last_call_s = time.perf_counter() - t
            except Exception as exc:  # noqa: BLE001 - the loop goes on whatever one call raised
                if len(jobs) == 1:
                    if not jobs[0][1].done():
                        jobs[0][1].set_exception(exc)
                    continue
                results = [None] * len(jobs)  # ranked alone: only the request that fails gets the error
                for n, (q, f) in enumerate(jobs):
                    try:
                        results[n] = (await loop.run_in_executor(self.pool, self._rank, [q]))[0]
                    except Exception as one:  # noqa: BLE001
                        if not f.done():
                            f.set_exception(one)
            for (_, f), r in zip(jobs, results, strict=True):
                if not f.done():
                    f.set_result(r)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=True)
        if self.side is not None:
            self.side.shutdown(wait=True)


# ------------------------------------------------------------------------------------------------ request bodies
# Strict bodies: ``"5"`` is not a k, ``true`` is not an item id; unknown keys are refused, so a misspelt
# ``hisotry`` is an error instead of an ignored field. Item and user ids: strings, or integers (ids that are numbers).
Id = StrictStr | StrictInt


class RecommendBody(BaseModel):
    """``POST /recommend``: one history (item ids, oldest first) or one user of the dataset."""

    model_config = ConfigDict(extra="forbid", strict=True)
    history: list[Id] | None = None
    user: Id | None = None
    k: StrictInt = 10
    exclude: StrictBool | list[Id] | None = None  # None: the run's eval.protocol


class BatchBody(BaseModel):
    """``POST /recommend/batch``: several histories, ranked in one model call."""

    model_config = ConfigDict(extra="forbid", strict=True)
    histories: list[list[Id]]
    k: StrictInt = 10
    exclude: StrictBool | list[Id] | None = None


def _field(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the field a client wrote: ('body', 'history', 3) -> 'history[3]'."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


_EXPECTED = {"int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
             "list_type": "a list", "model_type": "a JSON object", "dict_type": "a JSON object",
             "model_attributes_type": "a JSON object", "missing": "present", "extra_forbidden": "absent (unknown field)",
             "int_from_float": "an integer"}


def validation_error(errors: list[dict[str, Any]]) -> RequestError:
    """pydantic's list of errors as one line: the first error, its field, what it must be."""
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        pos = (first.get("ctx") or {}).get("error", "")
        return RequestError(400, None, f"malformed JSON body ({pos})" if pos else "malformed JSON body")
    # a union (an id: string or integer) reports once per member: name the field, not the members
    loc = tuple(p for p in first.get("loc", ()) if p not in ("str", "int", "bool", "list[union[str,int]]"))
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("list[", "union[", "function-"))))
    field = _field(loc)
    expected = _EXPECTED.get(kind)
    if field.startswith(("history", "histories", "user", "exclude")) and kind in ("int_type", "string_type"):
        expected = "an item id (a string or an integer)" if not field.startswith("user") else "a user id"
    if field.startswith("exclude") and "[" not in field and kind in ("bool_type", "list_type"):
        expected = "true, false or a list of item ids"
    got = first.get("input")
    shown = json.dumps(got)[:60] if kind != "missing" and _jsonable(got) else None
    msg = f"field '{field}' must be {expected}" if expected else f"field '{field}': {first.get('msg', 'invalid')}"
    if shown is not None and kind not in ("extra_forbidden",):
        msg += f", got {shown}"
    return RequestError(422, field, msg)


def _jsonable(x: Any) -> bool:
    try:
        json.dumps(x)
    except (TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------------------------ the app
def create_app(rec: Any, settings: ServeSettings | None = None) -> Any:
    """The FastAPI application serving ``rec`` (a :class:`sidrec.api.Recommender`), its model thread started and
    warmed up."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import ValidationError
    from pydantic_core import to_json
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    settings.check()
    worker = ModelWorker(rec, settings)
    worker.warm_up()
    n_items = len(rec.dataset.item_ids)
    max_k = min(settings.max_k, n_items)
    exclude_default = rec.cfg.eval.protocol == "exclude"
    titles = rec.dataset.items.get("title")
    text_fields = [f for f in rec.dataset.text_fields() if f in ("title", "brand", "categories", "description")]
    has_sids = rec.task.item_codes() is not None

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202 - the ASGI lifespan protocol
        yield
        worker.close()  # after uvicorn drained the requests in flight

    app = FastAPI(title="sidrec", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.settings = worker, settings

    def error(status: int, field: str | None, message: str) -> JSONResponse:
        body: dict[str, Any] = {"error": message.replace("\n", " ")}
        if field:
            body["field"] = field
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.field, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        e = validation_error(list(exc.errors()))
        return error(e.status, e.field, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        what = {404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, None, what)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("sidrec serve: internal error on %s", request.url.path)  # the traceback goes to the log only
        return error(500, None, f"internal error ({type(exc).__name__}); the server goes on serving")

    def check_k(k: int) -> None:
        if not 1 <= k <= max_k:
            raise RequestError(422, "k", f"field 'k' must be between 1 and {max_k}, got {k}")

    def check_history(h: list[Any], field: str) -> None:
        if len(h) > settings.max_history:
            raise RequestError(422, field, f"field '{field}' holds {len(h)} item ids; at most {settings.max_history}")

    def query(field: str, **kw: Any) -> Any:
        """The Python API's own argument check; its error names the argument, answered as that field."""
        try:
            return rec.query(skip_unknown=settings.skip_unknown, **kw)
        except SidrecError as exc:
            text = str(exc)
            bad = field
            for f in ("history", "user", "exclude", "k"):
                if f"argument '{f}'" in text:
                    bad = f if f != "history" or field == "history" else field
                    break
            status = 404 if bad == "user" and "unknown user" in text else 422
            text = text.replace("recommend(): ", "").replace(f"argument '{bad if bad != 'histories' else 'history'}'",
                                                             f"field '{bad}'")
            raise RequestError(status, bad, text) from None

    async def ranked(q: Any) -> list[list[tuple[str, float]]]:
        """The model thread's answer; a failure there is a one-line 500 answered here (an exception left to
        Starlette's last-resort handler is answered too, but then re-raised, and uvicorn drops the connection)."""
        try:
            return await worker.rank(q)
        except Exception as exc:  # noqa: BLE001
            log.exception("sidrec serve: the model call failed")  # the traceback goes to the log only
            raise RequestError(500, None, f"internal error ({type(exc).__name__}); the server goes on serving") from None

    def listing(rows: list[tuple[str, float]]) -> list[dict[str, Any]]:
        out = []
        for item, score in rows:
            d: dict[str, Any] = {"item": item, "score": score}
            if titles is not None:
                t = titles[rec._item_index[item]]
                d["title"] = t if isinstance(t, str) else None
            out.append(d)
        return out

    def exclusion(exclude: Any) -> Any:
        if exclude is None:
            return exclude_default
        if isinstance(exclude, list):
            check_history(exclude, "exclude")
        return exclude

    @app.get("/health")
    async def health() -> dict[str, Any]:
        f = getattr(rec.task, "fusion", None)
        fusion = None if f is None or f.off else f.record()  # every setting the ranking uses (fusion.json's)
        return {"status": "ok", "run": str(rec.path), "method": rec.method, "dataset": rec.dataset.name,
                "items": n_items, "users": len(rec.dataset.user_ids), "protocol": rec.cfg.eval.protocol,
                "fusion": fusion, "max_k": max_k, "max_batch": settings.max_batch,
                "unknown_items": "skip" if settings.skip_unknown else "refuse"}

    def answer(body: dict[str, Any]) -> Response:
        # serialised here by pydantic-core, not by FastAPI's encoder nor json.dumps: the answer is plain JSON already,
        # and the encoder's walk over it cost more than the rest of the HTTP layer on a 10-item list (json.dumps:
        # ~0.1 ms a request, a sixth of the event loop's time per request; docs/serve.md)
        return Response(to_json(body), media_type="application/json")

    async def parsed(request: Request, model: type[BaseModel]) -> Any:
        """The request body read by pydantic-core straight from its bytes (JSON and types in one pass); an error
        is the same one-line answer as FastAPI's own validation gives (:func:`validation_error`). Why not FastAPI's
        parameter: it decodes with ``json.loads`` and then validates the Python objects, twice the work, plus its
        dependency machinery, on the event loop that every request shares."""
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(list(exc.errors())) from None

    async def recommend(request: Request) -> Response:
        b: RecommendBody = await parsed(request, RecommendBody)
        check_k(b.k)
        if (b.history is None) == (b.user is None):
            raise RequestError(422, "history", "give field 'history' (item ids, oldest first) or field 'user', "
                                               "exactly one of them")
        if b.history is not None:
            check_history(b.history, "history")
            q = query("history", history=[str(x) for x in b.history], k=b.k, exclude=exclusion(b.exclude))
        else:
            q = query("user", user=str(b.user), k=b.k, exclude=exclusion(b.exclude))
        rows = await ranked(q)
        return answer({"items": listing(rows[0])})

    async def recommend_batch(request: Request) -> Response:
        b: BatchBody = await parsed(request, BatchBody)
        check_k(b.k)
        if not 1 <= len(b.histories) <= settings.max_batch_histories:
            raise RequestError(422, "histories", f"field 'histories' must hold 1 to {settings.max_batch_histories} "
                                                 f"histories, got {len(b.histories)}")
        for n, h in enumerate(b.histories):
            check_history(h, f"histories[{n}]")
        hists = [[str(x) for x in h] for h in b.histories]
        q = query("histories", history=hists, k=b.k, exclude=exclusion(b.exclude))
        rows = await ranked(q)
        return answer({"results": [{"items": listing(r)} for r in rows]})

    # plain Starlette routes: the body is parsed by `parsed`, FastAPI's parameter machinery has nothing to do
    app.router.add_route("/recommend", recommend, methods=["POST"])
    app.router.add_route("/recommend/batch", recommend_batch, methods=["POST"])

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, Any]:
        idx = rec._item_index.get(item_id)
        if idx is None:
            raise RequestError(404, "item_id", f"unknown item id '{item_id[:60]}' (not in dataset "
                                               f"'{rec.dataset.name}')")
        out: dict[str, Any] = {"item": item_id}
        for f in text_fields:
            v = rec.dataset.items[f][idx]
            out[f] = v if isinstance(v, str | int | float | list) and not (isinstance(v, float) and math.isnan(v)) else None
        out["interactions"] = int(rec.split.item_freq[idx]) if hasattr(rec.split, "item_freq") else None
        if has_sids:
            out["sid"] = (await worker.run_sync(rec.item_sids, [item_id]))[item_id]
        return out

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


class BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes is answered 413 before it is read whole (by its
    Content-Length, or counted as it streams in when the client sends it in chunks)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send, int(value))
                    return
        seen = 0
        refused = False

        async def limited() -> dict[str, Any]:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    raise _TooBig()
            return message

        started = False

        async def guarded_send(message: dict[str, Any]) -> None:
            # the app may turn the failed read into an answer of its own (a 400): the client gets the 413 instead
            nonlocal started
            if refused:
                if not started:
                    started = True
                    await self._refuse(send, seen)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not refused:
                raise
            if not started:
                await self._refuse(send, seen)

    async def _refuse(self, send: Any, size: int) -> None:
        body = json.dumps({"error": f"request body of {size} bytes or more; at most {self.limit}",
                           "field": "body"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooBig(Exception):
    pass


# ------------------------------------------------------------------------------------------------ running it
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one; its number is ``sock.getsockname()[1]``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it the body of a response waits for the client's delayed ACK of
    # its headers (Nagle), 40 ms on Linux -- every request on a kept-alive connection took 44 ms, /health included
    if family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SidrecError(f"serve: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)
    return sock


def server(app: Any, access_log: bool = False) -> Any:
    """A uvicorn server for ``app`` (``server.run(sockets=[sock])``; ``server.should_exit = True`` stops it after
    the requests in flight)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=30, server_header=False)
    return uvicorn.Server(config)


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          weights: str | Path | None = None, access_log: bool = False, announce: Callable[[str], None] = print) -> None:
    """Load ``run`` once and serve it until SIGTERM / Ctrl-C, which drain the requests in flight and return."""
    import signal
    import sys

    import sidrec

    settings = settings or ServeSettings()
    settings.check()
    torch.set_num_threads(settings.threads)
    rec = sidrec.load(run, weights)
    sock = bind(host, port)
    app = create_app(rec, settings)
    srv = server(app, access_log)
    shown = f"[{host}]" if ":" in host else host
    announce(f"sidrec serve: {rec.method} run {run} ({len(rec.items)} items, protocol {rec.cfg.eval.protocol}) on "
             f"http://{shown}:{sock.getsockname()[1]}")
    # uvicorn re-raises the signal it drained on; a handler that exits 0 makes that a clean exit, not a kill
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv.run(sockets=[sock])
