"""The V2 HTTP app: Starlette routes, JSON errors, bearer API key, body limit, metrics, access log.

    app = create_app(LoadedModel.load(path), api_key=None, max_body_bytes=64 << 20)
    uvicorn.run(app)                           # `bigmodel serve` does this with graceful shutdown

Routes (each model route also under `/versions/{version}`):
`GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`, `GET /v2/models/{m}`, `GET /v2/models/{m}/ready`,
`GET /v2/models/{m}/config`, `POST /v2/models/{m}/infer`, `GET /metrics`.
Inference goes through the `DynamicBatcher` (onnxruntime in a worker thread, never on the event loop);
anything a client sends that is wrong is a 4xx `{"error": ...}`, never a 500.
"""

from __future__ import annotations

import functools
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
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


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(handler: Endpoint) -> Endpoint:
    """RequestError -> its status; anything unexpected -> 400 (logged), never a 500 for client input."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as e:
            if e.status_code >= 500 and e.status_code != 503:
                warn(f"{request.method} {request.url.path}: {e.message}")
            return _error(e.status_code, e.message)
        except Exception as e:
            warn(f"{request.method} {request.url.path}: unexpected {type(e).__name__}: {_one_line(e)}")
            if debug_enabled():
                import traceback

                traceback.print_exc()
            return _error(400, f"bad request: {type(e).__name__}: {_one_line(e)}")

    return wrapped


def _model(request: Request) -> LoadedModel:
    """The served model named by the path (404 for another name or version)."""
    model: LoadedModel = request.app.state.model
    name = request.path_params["model"]
    if name != model.name:
        raise RequestError(404, f"unknown model '{name}' (this server serves '{model.name}')")
    version = request.path_params.get("version")
    if version is not None and version != model.version:
        raise RequestError(404, f"unknown version '{version}' of model '{name}' (versions: {model.version})")
    return model


def _ready_model(request: Request) -> LoadedModel:
    model = _model(request)
    if not (model.ready and request.app.state.accepting):
        raise RequestError(503, f"model '{model.name}' is not ready")
    return model


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes is over the limit of {limit} bytes "
                                f"(--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


async def _infer(request: Request) -> Response:
    """Count, time and answer one infer request (the handler is `_answer_infer`)."""
    metrics: ServerMetrics = request.app.state.metrics
    started = time.perf_counter()
    metrics.inflight.inc()
    try:
        response = await _answer_infer(request)
    finally:
        metrics.inflight.dec()
    metrics.count(response.status_code)
    metrics.request_duration.observe(time.perf_counter() - started)
    return response


@_endpoint
async def _answer_infer(request: Request) -> Response:
    model = _ready_model(request)
    batcher: DynamicBatcher = request.app.state.batcher
    header_length = request.headers.get(HEADER_LENGTH)
    with batcher.expecting():
        body = await _read_body(request, request.app.state.max_body_bytes)
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
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})


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
    """ASGI middleware: one JSON line per request on `stream` (stderr), written when the answer is sent.

    {"ts": "2026-11-22T06:00:00.123Z", "client": "10.0.0.7:51234", "method": "POST",
     "path": "/v2/models/digits-cnn/infer", "status": 200, "ms": 1.92, "bytes_in": 12345, "bytes_out": 321}
    """

    def __init__(self, app: ASGIApp, stream: TextIO | None = None) -> None:
        self.app = app
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 0, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self._write(scope, status, sent, started)

    def _write(self, scope: Scope, status: int, sent: int, started: float) -> None:
        client = scope.get("client")
        received = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        line = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 3),
            "bytes_in": int(received) if received.isdigit() else None,
            "bytes_out": sent,
        }
        stream = self.stream or sys.stderr
        stream.write(json.dumps(line, separators=(", ", ": ")) + "\n")


def create_app(model: LoadedModel, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, *,
               max_queue_delay_ms: float = 2.0, max_queue: int = 1024, access_log: bool = False,
               log_stream: TextIO | None = None) -> Starlette:
    """The V2 HTTP app serving `model`; `api_key` guards all but the health endpoints."""
    metrics = ServerMetrics(model.name, model.max_batch_size)
    batcher = DynamicBatcher(model, metrics, max_batch_size=model.max_batch_size,
                             max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue)
    middleware = [Middleware(AccessLog, stream=log_stream)] if access_log else []
    if api_key:
        middleware.append(Middleware(BearerAuth, api_key=api_key, metrics=metrics))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.accepting = True
        yield
        app.state.accepting = False  # readiness probes fail from here on: the load balancer stops sending
        await batcher.stop()

    app = Starlette(routes=_routes(), middleware=middleware, exception_handlers={HTTPException: _http_error},
                    lifespan=lifespan)
    app.state.model = model
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.max_body_bytes = max_body_bytes
    app.state.accepting = True
    return app


def _routes() -> list[Route]:
    routes = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):  # infer first: the hot path
        routes.append(Route(f"{prefix}/infer", _infer, methods=["POST"]))
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
