"""The V2 HTTP app: Starlette routes, JSON errors, bearer API key, body limit, metrics, access log.

    app = create_app(LoadedModel.load(path), api_key=None, max_body_bytes=64 << 20)
    uvicorn.run(app)                           # `bigmodel serve` does this with graceful shutdown

Routes (each model route also under `/versions/{version}`):
`GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`, `GET /v2/models/{m}`, `GET /v2/models/{m}/ready`,
`GET /v2/models/{m}/config`, `POST /v2/models/{m}/infer`, `GET /v2/models/{m}/stats` (and `GET /v2/models/stats`:
Triton's statistics extension, `stats.py`), `GET /metrics` (with the prediction and drift metrics of `monitor.py`).
Inference goes through the `DynamicBatcher` (onnxruntime in a worker thread, never on the event loop);
anything a client sends that is wrong is a 4xx `{"error": ...}`. A 500 is a server bug (or a failing
device): logged once with its traceback, counted in `bigmodel_server_errors_total`.

Limits (besides the connection guards of `transport.py`): a body over `max_body_bytes` is a 413; one not
received within `request_timeout_s` a 408 (a 503 once the server is stopping); the bytes held by requests
in flight (bodies as they arrive, what parsing a JSON body over 64 KiB may allocate, binary tensors' copies
in the model's dtype) stay under `max_inflight_bytes`: a request that would pass it is a 503 (a 413 when it
could never fit). Smaller JSON is parsed on the event loop, one request at a time.

`POST .../infer` is the hot path: `InferEndpoint`, a plain ASGI handler, answers it without Starlette's
request/response objects and middleware stack in between (they took a third or more of the event loop's
CPU per request); the other routes are Starlette's. The access log is written once per event-loop step, not per line.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bigmodel_cli import __version__
from bigmodel_cli.console import console, warn
from bigmodel_cli.errors import named_line
from bigmodel_cli.serving.batcher import DynamicBatcher
from bigmodel_cli.serving.generator import IMAGE_OUTPUT
from bigmodel_cli.serving.metrics import ServerMetrics
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.payloads import PayloadLog
from bigmodel_cli.serving.protocol import (
    COUNTED_JSON_BYTES,
    PNG_OUTPUT,
    InferRequest,
    ModelSignature,
    RequestError,
    check_json_values,
    decode_infer_request,
    encode_infer_response,
    header_size,
    json_marks,
)
from bigmodel_cli.serving.stats import ModelStats, RequestTiming

SERVER_NAME = "bigmodel"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]  # only what is implemented
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 30.0
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no API key needed (load balancer probes)
HEADER_LENGTH = "inference-header-content-length"
_INLINE_JSON_BYTES = COUNTED_JSON_BYTES  # smaller JSON is parsed on the event loop, larger in a worker thread
_INLINE_OUTPUT_VALUES = 4096  # JSON outputs with more values are encoded in a worker thread
# decode/encode threads: concurrent.futures' workers drop a call's arguments and result once it is done (anyio's,
# which Starlette's run_in_threadpool uses, keep them until their next call: a 63 MB body outlived its request)
CODEC_THREADS = 4
_MODELS = "/v2/models/"


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _failure(method: str, path: str, e: Exception, metrics: ServerMetrics) -> tuple[int, str]:
    """The status and message a failed request gets: a RequestError's own (what the client sent is checked
    there, so it keeps its specific 4xx); anything else is a server bug: a 500, logged once with its traceback
    and counted in `bigmodel_server_errors_total`."""
    if isinstance(e, RequestError):
        if e.status_code >= 500 and e.status_code != 503:
            warn(f"{method} {path}: {e.message}")
            metrics.server_errors.inc()
        return e.status_code, e.message
    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
    console.print(f"error: {method} {path}: server error {named_line(e)}\n{trace}",
                  markup=False, highlight=False)
    metrics.server_errors.inc()
    return 500, f"internal server error ({type(e).__name__}), logged by the server"


def _endpoint(handler: Endpoint) -> Endpoint:
    """RequestError -> its status; anything unexpected -> 500, logged and counted (a server bug)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:
            return _error(*_failure(request.method, request.url.path, e, request.app.state.metrics))

    return wrapped


def _model(request: Request) -> LoadedModel:
    """The served model named by the path (404 for another name or version)."""
    model: LoadedModel = request.app.state.model
    _check_target(model, request.path_params["model"], request.path_params.get("version"))
    return model


def _ready_model(request: Request) -> LoadedModel:
    model = _model(request)
    if not (model.ready and request.app.state.accepting):
        raise RequestError(503, f"model '{model.name}' is not ready")
    return model


@_endpoint
async def _live(request: Request) -> Response:
    return JSONResponse({"live": True})


@_endpoint
async def _server_ready(request: Request) -> Response:
    state = request.app.state
    if not (state.model.ready and state.accepting) or state.stopping.is_set():
        raise RequestError(503, "not ready")
    return JSONResponse({"ready": True})


@_endpoint
async def _server_metadata(request: Request) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


@_endpoint
async def _model_metadata(request: Request) -> Response:
    return JSONResponse(_model(request).metadata_json())


@_endpoint
async def _model_ready(request: Request) -> Response:
    model = _ready_model(request)
    return JSONResponse({"name": model.name, "ready": True})


@_endpoint
async def _model_config(request: Request) -> Response:
    return JSONResponse(_model(request).config_json())


@_endpoint
async def _model_stats(request: Request) -> Response:
    """Triton's statistics extension: this model's counts and cumulative durations (`stats.ModelStats`)."""
    stats: ModelStats = request.app.state.stats
    if "model" in request.path_params:
        _model(request)  # 404 for another model or version
    return JSONResponse({"model_stats": [stats.json()]})


@_endpoint
async def _metrics(request: Request) -> Response:
    metrics: ServerMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)


class InflightBytes:
    """Bytes held by the infer requests in flight, at most `limit` in all (`--max-inflight-mb`).

    Taken from the event loop and from decode worker threads (hence the lock); a request gives back what it
    took once its answer is written.
    """

    def __init__(self, limit: int, gauge: Any) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        gauge.set_function(lambda: self.used)  # read when /metrics is scraped, not set per request

    def take(self, n: int, held: int) -> None:
        """Reserve `n` more bytes for a request already holding `held`; RequestError 413 (never fits) or 503."""
        if held + n > self.limit:
            raise RequestError(413, f"request needs {_mib(held + n)} of memory to receive and decode, over "
                                    f"--max-inflight-mb {_mib(self.limit)}")
        with self._lock:
            if self.used + n > self.limit:
                raise RequestError(503, f"server busy: requests in flight hold {_mib(self.used)} of "
                                        f"--max-inflight-mb {_mib(self.limit)}; retry later")
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class _Held:
    """What one request holds of the `InflightBytes`."""

    __slots__ = ("budget", "bytes", "receiving")

    def __init__(self, budget: InflightBytes) -> None:
        self.budget = budget
        self.bytes = 0
        self.receiving = False  # refused while its body was being read: the rest is not read, the connection closes

    def take(self, n: int) -> None:
        self.budget.take(n, self.bytes)
        self.bytes += n


class InferEndpoint:
    """ASGI handler of `POST /v2/models/{m}[/versions/{v}]/infer`: read, decode, batch, encode, answer.

    Counted and timed in the metrics; a `RequestError` becomes its status, anything unexpected a 500 (logged).
    """

    def __init__(self, state: Any) -> None:
        self.state = state  # the Starlette app's state: model, metrics, batcher, limits, accepting, stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        metrics: ServerMetrics = state.metrics
        started = time.perf_counter()
        metrics.inflight.inc()
        held = _Held(state.inflight)
        timing = RequestTiming()
        try:
            status, content, headers = await self._answer(scope, receive, held, timing)
            metrics.count(status)
            elapsed = time.perf_counter() - started
            metrics.request_duration.observe(elapsed)
            if status == 200:
                state.stats.request(elapsed, timing)
            elif status != 404:  # a request for another model is not this one's failure
                state.stats.failed(elapsed)
            headers.append((b"content-length", str(len(content)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            metrics.inflight.dec()
            if held.bytes:
                state.inflight.give(held.bytes)

    async def _answer(self, scope: Scope, receive: Receive, held: _Held,
                      timing: RequestTiming) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            return await self._infer(scope, receive, held, timing)
        except asyncio.CancelledError:  # the server stopped waiting for this request (grace period over)
            return _error_body(503, "server is shutting down", close=True)
        except Exception as e:
            status, message = _failure(scope["method"], scope["path"], e, self.state.metrics)
            # refused while its body was arriving: timed out, too large, overloaded or cut off, the connection
            # closes; too many JSON values, it stays open and the server discards the rest (the client gets the 400)
            return _error_body(status, message, close=held.receiving and status != 400)

    async def _infer(self, scope: Scope, receive: Receive, held: _Held,
                     timing: RequestTiming) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        state = self.state
        model: LoadedModel = state.model
        name, version = infer_target(scope["path"]) or (None, None)
        _check_target(model, name, version)
        if not (model.ready and state.accepting):
            raise RequestError(503, f"model '{model.name}' is not ready")
        declared, header_length = None, None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
        json_size = header_size(header_length)  # a malformed one is a 400 before the body is read
        held.receiving = True
        body = await _receive_body(receive, declared, state, held, json_size)
        held.receiving = False
        json_size = len(body) if json_size is None else json_size
        batcher: DynamicBatcher = state.batcher
        decoding = time.perf_counter()
        with batcher.expecting():  # from here on it may join the next batch (a stalled upload never delays one)
            if json_size > _INLINE_JSON_BYTES:
                infer_request = await asyncio.get_running_loop().run_in_executor(
                    state.codec, decode_infer_request, body, model.signature, header_length, held.take)
            else:
                infer_request = decode_infer_request(body, model.signature, header_length, held.take)
        del body
        timing.decode_s = time.perf_counter() - decoding
        if model.prompt is not None:  # text generation: token by token in its own thread, never batched
            outputs = await _generate(state, model, infer_request, timing)
        else:
            outputs = await batcher.infer(infer_request.inputs, timing, infer_request.table)
        encoding = time.perf_counter()
        if PNG_OUTPUT in infer_request.outputs and outputs[IMAGE_OUTPUT].size > _INLINE_OUTPUT_VALUES:
            results = await asyncio.get_running_loop().run_in_executor(
                state.codec, model.with_extras, outputs, infer_request.outputs)
        else:
            results = model.with_extras(outputs, infer_request.outputs)
        if _json_values(infer_request, results) > _INLINE_OUTPUT_VALUES:
            content, json_length = await asyncio.get_running_loop().run_in_executor(
                state.codec, encode_infer_response, model.name, model.version, infer_request, results)
        else:
            content, json_length = encode_infer_response(model.name, model.version, infer_request, results)
        timing.encode_s = time.perf_counter() - encoding
        payloads: PayloadLog | None = state.payloads
        if payloads is not None and payloads.sampled():
            table = infer_request.table  # raw rows: logged as the columns the client sent
            payloads.log(infer_request.id, infer_request.parameters,
                         infer_request.inputs if table is None else table.columns,
                         {name: results[name] for name in infer_request.outputs})
        if json_length is None:
            return 200, content, [(b"content-type", b"application/json")]
        return 200, content, [(b"content-type", b"application/octet-stream"),
                              (HEADER_LENGTH.encode(), str(json_length).encode())]


async def _generate(state: Any, model: LoadedModel, request: InferRequest, timing: RequestTiming) -> dict[str, Any]:
    """A language model's request on the generation thread (one request at a time: each uses every core); 503 when
    `--max-queue` requests already wait for it."""
    if state.generating >= state.batcher.max_queue:
        raise RequestError(503, f"server overloaded: {state.generating} generation requests already queued "
                                f"(--max-queue {state.batcher.max_queue}); retry later")
    state.generating += 1
    started = time.perf_counter()
    try:
        return await asyncio.get_running_loop().run_in_executor(state.generation, model.generate, request)
    finally:
        state.generating -= 1
        timing.infer_s = time.perf_counter() - started


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) of an infer path `/v2/models/{m}/infer` or `.../versions/{v}/infer`."""
    if not (path.startswith(_MODELS) and path.endswith("/infer")):
        return None
    parts = path[len(_MODELS):-len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _check_target(model: LoadedModel, name: str | None, version: str | None) -> None:
    """RequestError(404) unless `name` (and `version`, when given) is the served model."""
    if name != model.name:
        raise RequestError(404, f"unknown model '{name}' (this server serves '{model.name}')")
    if version is not None and version != model.version:
        raise RequestError(404, f"unknown version '{version}' of model '{name}' (versions: {model.version})")


class _JsonCounter:
    """Counts the JSON values of a body as it arrives (its first `json_size` bytes, all without a binary part),
    from its first 64 KiB on (smaller JSON is not counted): RequestError(400) as soon as they are more than the
    model can take, long before a huge body is all in."""

    __slots__ = ("signature", "json_size", "marks", "seen")

    def __init__(self, signature: ModelSignature, json_size: int | None) -> None:
        self.signature = signature
        self.json_size = json_size
        self.marks = 0
        self.seen = 0

    def add(self, chunk: bytes) -> None:
        json_left = len(chunk) if self.json_size is None else self.json_size - self.seen
        self.seen += len(chunk)
        if json_left > 0 and self.seen > COUNTED_JSON_BYTES and self.signature.max_values is not None:
            self.marks += json_marks(chunk, json_left)
            check_json_values(1 + self.marks, self.signature)


async def _receive_body(receive: Receive, declared: bytes | None, state: Any, held: _Held,
                        json_size: int | None) -> bytes | bytearray:
    """The whole request body from the ASGI `receive`, its bytes taken from the in-flight budget as they come
    (all at once when Content-Length says how many). RequestError 413 past `--max-body-mb`; 408 when it has
    not all arrived after `--request-timeout-s` (503 when the server is stopping meanwhile); 400 as soon as a
    body in several messages holds more JSON values than the model takes (one message is checked when it is
    decoded)."""
    limit, timeout_s = state.max_body_bytes, state.request_timeout_s
    size = int(declared) if declared is not None and declared.isdigit() else None
    if size is not None:
        if size > limit:
            raise RequestError(413, f"request body of {size} bytes is over the limit of {limit} bytes "
                                    f"(--max-body-mb)")
        held.take(size)
    task = asyncio.current_task()
    deadlines: BodyDeadlines = state.body_deadlines
    deadlines.enter(task)
    try:
        first = await receive()
        if first["type"] == "http.request" and not first.get("more_body", False):  # all of it in one message
            body = first.get("body", b"")
            if len(body) > limit:
                raise RequestError(413, f"request body is over the limit of {limit} bytes (--max-body-mb)")
            if size is None:
                held.take(len(body))
            return body
        counter = _JsonCounter(state.model.signature, json_size)
        return await _receive_rest(receive, first, size, limit, held, counter)
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        if sys.version_info >= (3, 11):
            task.uncancel()  # type: ignore[union-attr]
        if state.stopping.is_set():
            raise RequestError(503, "server is shutting down; the request body did not arrive in time") from None
        raise RequestError(408, f"request body not received within {timeout_s:g} s (--request-timeout-s)") from None
    finally:
        deadlines.leave(task)


class BodyDeadlines:
    """The requests waiting for their body, each until `timeout_s` after it began to: one timer for them all,
    every quarter of the timeout (at most a second), cancels those past their time (a timer per request cost
    more than the rest of the bookkeeping of a small request)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tick = min(timeout_s / 4, 1.0)
        self._waiting: dict[Any, float] = {}
        self._expired: set[Any] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, task: Any) -> None:
        loop = task.get_loop()
        self._waiting[task] = loop.time() + self.timeout_s
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._check)

    def leave(self, task: Any) -> None:
        self._waiting.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: Any) -> bool:
        return task in self._expired

    def _check(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for task, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()
        self._timer = self._loop.call_later(self.tick, self._check) if self._waiting else None


async def _receive_rest(receive: Receive, message: Message, size: int | None, limit: int, held: _Held,
                        counter: _JsonCounter) -> bytearray:
    """The body that comes in several messages, gathered into one buffer as it arrives."""
    body = bytearray()
    while True:
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before the end of the request body")
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes (--max-body-mb)")
        if size is None:
            held.take(len(chunk))
        counter.add(chunk)
        body += chunk
        if not message.get("more_body", False):
            return body
        message = await receive()


def _error_body(status_code: int, message: str, *,
                close: bool = False) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """`{"error": message}` as JSONResponse would write it; `close`: the connection closes after it."""
    content = json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json")]
    if close:
        headers.append((b"connection", b"close"))
    return status_code, content, headers


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class InferFirst:
    """ASGI dispatch: `POST` to an infer path goes straight to `infer`, everything else to `app` (Starlette)."""

    def __init__(self, app: ASGIApp, infer: ASGIApp) -> None:
        self.app = app
        self.infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and infer_target(scope["path"]) is not None:
            await self.infer(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _json_values(request: InferRequest, results: dict[str, Any]) -> int:
    return sum(results[n].size for n in request.outputs if n not in request.binary_outputs)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), as JSON."""
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, headers=exc.headers)


class BearerAuth:
    """ASGI middleware: 401 unless `Authorization: Bearer <api_key>` (constant-time), except on `open_paths`."""

    def __init__(self, app: ASGIApp, api_key: str, metrics: ServerMetrics | None = None,
                 open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.metrics = metrics
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.expected):
                response = _error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                  headers={"WWW-Authenticate": "Bearer"})
                if self.metrics is not None and scope["path"].endswith("/infer"):
                    self.metrics.count(401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AccessLog:
    """ASGI middleware: one JSON line per request on `stream` (stderr), for every route and status.

    {"ts": "2026-11-22T06:00:00.123Z", "client": "10.0.0.7:51234", "method": "POST",
     "path": "/v2/models/digits-cnn/infer", "status": 200, "ms": 1.92, "bytes_in": 12345, "bytes_out": 321}

    Lines are formatted when the answer has been sent and written together at the end of the event-loop
    step (one write for all the requests a batch answered, instead of one per line); the rest is written
    when the server shuts down.
    """

    def __init__(self, app: ASGIApp, stream: TextIO | None = None) -> None:
        self.app = app
        self.stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            try:
                await self.app(scope, receive, send)
            finally:
                self.flush()  # the lifespan ends: nothing is left in the buffer
            return
        started = time.perf_counter()
        status, sent = 0, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self._add(scope, status, sent, started)

    def _add(self, scope: Scope, status: int, sent: int, started: float) -> None:
        """Format the line (as `json.dumps(..., separators=(", ", ": "))` would) and buffer it."""
        client = scope.get("client")
        received = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = (f'{{"ts": "{self._stamp}.{int((now - second) * 1000):03d}Z", '
                f'"client": {json.dumps(f"{client[0]}:{client[1]}") if client else "null"}, '
                f'"method": {json.dumps(scope["method"])}, "path": {json.dumps(scope["path"])}, '
                f'"status": {status}, "ms": {round((time.perf_counter() - started) * 1000, 3)}, '
                f'"bytes_in": {int(received) if received.isdigit() else "null"}, "bytes_out": {sent}}}\n')
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop (a direct call): written at once
                self._lines.append(line)
                self.flush()
                return
        self._lines.append(line)

    def flush(self) -> None:
        """Write the buffered lines (one write)."""
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            stream = self.stream or sys.stderr
            stream.write(text)
            stream.flush()


def create_app(model: LoadedModel, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, *,
               max_queue_delay_ms: float = 2.0, max_queue: int = 1024, access_log: bool = False,
               log_stream: TextIO | None = None, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
               max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
               stopping: threading.Event | None = None, monitoring: bool = True, profile: dict[str, Any] | None = None,
               drift_threshold: float = 0.2, payloads: PayloadLog | None = None) -> ASGIApp:
    """The V2 HTTP app serving `model`; `api_key` guards all but the health endpoints.

    `stopping` is set by the server when it begins to shut down: readiness fails, and a body still awaited
    is answered 503 instead of 408 when its time is up. `monitoring`: prediction metrics, and drift against
    `profile` (the export's reference profile) with warnings past `drift_threshold`; `payloads` logs a sample
    of the requests (closed when the app shuts down).
    """
    from bigmodel_cli.serving import monitor as monitors

    metrics = ServerMetrics(model.name, model.max_batch_size)
    stats = ModelStats(model.name, model.version)
    monitor = monitors.for_model(model, profile, drift_threshold) if monitoring else None
    if monitor is not None:
        metrics.registry.register(monitor)
    batcher = DynamicBatcher(model, metrics, max_batch_size=model.max_batch_size,
                             max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue, stats=stats, monitor=monitor)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.accepting = True
        yield
        app.state.accepting = False  # readiness probes fail from here on: the load balancer stops sending
        await batcher.stop()
        codec.shutdown(wait=False)
        generation.shutdown(wait=False, cancel_futures=True)
        if payloads is not None:
            payloads.close()

    routes = Starlette(exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    infer = InferEndpoint(routes.state)
    for route in _routes(infer):
        routes.router.routes.append(route)
    routes.state.model = model
    routes.state.metrics = metrics
    routes.state.stats = stats
    routes.state.monitor = monitor
    routes.state.payloads = payloads
    routes.state.batcher = batcher
    routes.state.max_body_bytes = max_body_bytes
    routes.state.request_timeout_s = request_timeout_s
    routes.state.body_deadlines = BodyDeadlines(request_timeout_s)
    routes.state.inflight = InflightBytes(max_inflight_bytes, metrics.inflight_bytes)
    routes.state.stopping = stopping or threading.Event()
    routes.state.codec = codec = ThreadPoolExecutor(CODEC_THREADS, thread_name_prefix="bigmodel-codec")
    routes.state.generation = generation = ThreadPoolExecutor(1, thread_name_prefix="bigmodel-generate")
    routes.state.generating = 0  # language models: requests on or waiting for the generation thread
    routes.state.accepting = True
    app: ASGIApp = InferFirst(routes, infer)
    if api_key:
        app = BearerAuth(app, api_key=api_key, metrics=metrics)
    if access_log:
        app = AccessLog(app, stream=log_stream)
    return app


def _routes(infer: ASGIApp) -> list[Route]:
    """Starlette's routes; `InferFirst` sends POSTs to infer before routing, the infer routes give 405s."""
    routes = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes.append(Route(f"{prefix}/infer", infer, methods=["POST"]))
    routes += [
        Route("/v2/health/live", _live, methods=["GET"]),
        Route("/v2/health/ready", _server_ready, methods=["GET"]),
        Route("/v2", _server_metadata, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/v2/models/stats", _model_stats, methods=["GET"]),  # before /v2/models/{model}: all models' stats
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, _model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", _model_ready, methods=["GET"]),
            Route(f"{prefix}/config", _model_config, methods=["GET"]),
            Route(f"{prefix}/stats", _model_stats, methods=["GET"]),
        ]
    return routes
