"""The V2 HTTP app: Starlette routes, JSON errors, bearer API key, body limit, metrics, access log.

    app = create_app(LoadedModel.load(path), api_key=None, max_body_bytes=64 << 20)
    uvicorn.run(app)                           # `bigmodel serve` does this with graceful shutdown

Routes (each model route also under `/versions/{version}`):
`GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`, `GET /v2/models/{m}`, `GET /v2/models/{m}/ready`,
`GET /v2/models/{m}/config`, `POST /v2/models/{m}/infer`, `GET /metrics`.
Inference goes through the `DynamicBatcher` (onnxruntime in a worker thread, never on the event loop);
anything a client sends that is wrong is a 4xx `{"error": ...}`, never a 500.

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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bigmodel_cli import __version__
from bigmodel_cli.console import debug_enabled, warn
from bigmodel_cli.serving.batcher import DynamicBatcher
from bigmodel_cli.serving.metrics import ServerMetrics
from bigmodel_cli.serving.model import LoadedModel
from bigmodel_cli.serving.protocol import InferRequest, RequestError, decode_infer_request, encode_infer_response

SERVER_NAME = "bigmodel"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]  # only what is implemented
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no API key needed (load balancer probes)
HEADER_LENGTH = "inference-header-content-length"
_INLINE_JSON_BYTES = 64 * 1024  # smaller JSON is parsed on the event loop, larger in a worker thread
_INLINE_OUTPUT_VALUES = 4096  # JSON outputs with more values are encoded in a worker thread
_MODELS = "/v2/models/"


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _failure(method: str, path: str, e: Exception) -> tuple[int, str]:
    """The status and message a failed request gets: a RequestError's own; anything unexpected is a 400
    (logged, with a traceback under --debug), never a 500 for what a client sent."""
    if isinstance(e, RequestError):
        if e.status_code >= 500 and e.status_code != 503:
            warn(f"{method} {path}: {e.message}")
        return e.status_code, e.message
    warn(f"{method} {path}: unexpected {type(e).__name__}: {_one_line(e)}")
    if debug_enabled():
        import traceback

        traceback.print_exc()
    return 400, f"bad request: {type(e).__name__}: {_one_line(e)}"


def _endpoint(handler: Endpoint) -> Endpoint:
    """RequestError -> its status; anything unexpected -> 400 (logged), never a 500 for client input."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:
            return _error(*_failure(request.method, request.url.path, e))

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
    if not (request.app.state.model.ready and request.app.state.accepting):
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
async def _metrics(request: Request) -> Response:
    metrics: ServerMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)


class InferEndpoint:
    """ASGI handler of `POST /v2/models/{m}[/versions/{v}]/infer`: read, decode, batch, encode, answer.

    Counted and timed in the metrics; a `RequestError` becomes its status, anything unexpected a 400 (logged).
    """

    def __init__(self, state: Any) -> None:
        self.state = state  # the Starlette app's state: model, metrics, batcher, max_body_bytes, accepting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: ServerMetrics = self.state.metrics
        started = time.perf_counter()
        metrics.inflight.inc()
        try:
            status, content, headers = await self._answer(scope, receive)
        finally:
            metrics.inflight.dec()
        metrics.count(status)
        metrics.request_duration.observe(time.perf_counter() - started)
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            return await self._infer(scope, receive)
        except Exception as e:
            return _error_body(*_failure(scope["method"], scope["path"], e))

    async def _infer(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
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
        batcher: DynamicBatcher = state.batcher
        with batcher.expecting():
            body = await _receive_body(receive, declared, state.max_body_bytes)
            json_size = int(header_length) if header_length and header_length.isdigit() else len(body)
            if json_size > _INLINE_JSON_BYTES:
                infer_request = await run_in_threadpool(decode_infer_request, body, model.signature, header_length)
            else:
                infer_request = decode_infer_request(body, model.signature, header_length)
        results = model.with_label(await batcher.infer(infer_request.inputs), infer_request.outputs)
        if _json_values(infer_request, results) > _INLINE_OUTPUT_VALUES:
            content, json_length = await run_in_threadpool(encode_infer_response, model.name, model.version,
                                                           infer_request, results)
        else:
            content, json_length = encode_infer_response(model.name, model.version, infer_request, results)
        if json_length is None:
            return 200, content, [(b"content-type", b"application/json")]
        return 200, content, [(b"content-type", b"application/octet-stream"),
                              (HEADER_LENGTH.encode(), str(json_length).encode())]


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


async def _receive_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole request body from the ASGI `receive`; RequestError(413) past `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared.decode()} bytes is over the limit of {limit} bytes "
                                f"(--max-body-mb)")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before the end of the request body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error_body(status_code: int, message: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """`{"error": message}` as JSONResponse would write it."""
    content = json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()
    return status_code, content, [(b"content-type", b"application/json")]


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
               log_stream: TextIO | None = None) -> ASGIApp:
    """The V2 HTTP app serving `model`; `api_key` guards all but the health endpoints."""
    metrics = ServerMetrics(model.name, model.max_batch_size)
    batcher = DynamicBatcher(model, metrics, max_batch_size=model.max_batch_size,
                             max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.accepting = True
        yield
        app.state.accepting = False  # readiness probes fail from here on: the load balancer stops sending
        await batcher.stop()

    routes = Starlette(exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    infer = InferEndpoint(routes.state)
    for route in _routes(infer):
        routes.router.routes.append(route)
    routes.state.model = model
    routes.state.metrics = metrics
    routes.state.batcher = batcher
    routes.state.max_body_bytes = max_body_bytes
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
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, _model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", _model_ready, methods=["GET"]),
            Route(f"{prefix}/config", _model_config, methods=["GET"]),
        ]
    return routes


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
