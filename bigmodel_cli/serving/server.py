"""An onnxruntime model behind the KServe / Triton V2 ("Open Inference Protocol") over HTTP.

    bigmodel serve runs/digits-cnn --port 8000
    curl localhost:8000/v2/models/digits-cnn
    curl -d '{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [...]}]}' \\
        localhost:8000/v2/models/digits-cnn/infer

Three layers, so that later work slots in without rewrites:

- `LoadedModel`: the onnxruntime session, its tensor specs and the export's metadata; warmed up at load.
- `decode_infer_request` / `encode_infer_response`: JSON body <-> numpy, with every check a client can
  fail turned into a `RequestError` (400) before onnxruntime sees the data. (Triton's binary tensor
  extension belongs here.)
- `create_app`: the Starlette routes, errors as `{"error": ...}`, the optional bearer API key, the body
  size limit. Inference runs in the thread pool, off the event loop.

Requests are run one per `session.run` for now: `max_batch_size` bounds the rows of one request and
`max_queue_delay_ms` is stored for the dynamic batcher to come, nothing merges requests yet.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bigmodel_cli import __version__
from bigmodel_cli.console import debug_enabled, info, warn
from bigmodel_cli.errors import UsageError

MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "bigmodel"
EXTENSIONS = ["model_configuration"]  # only what is implemented: GET .../config
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no API key needed (load balancer probes)

# V2 datatype <-> numpy; a request may send any numeric one, it is converted to the model's input dtype
_V2_NUMPY: dict[str, np.dtype] = {
    name: np.dtype(t)
    for name, t in {
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    }.items()
}
_NUMPY_V2 = {dtype: name for name, dtype in _V2_NUMPY.items()} | {np.dtype(np.bool_): "BOOL"}
_ORT_V2 = {
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}
_UNSUPPORTED_INPUT_TYPES = {"BYTES", "BOOL"}


class RequestError(Exception):
    """A request the server refuses: becomes `{"error": message}` with `status_code`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; `shape` has -1 for dynamic dims, the first one is the batch."""

    name: str
    datatype: str  # V2 name: FP32, INT64, ...
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self) -> dict[str, Any]:
        data_type = "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"
        return {"name": self.name, "data_type": data_type, "dims": list(self.shape[1:])}


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, _ORT_V2.get(node.type, node.type), shape)


@dataclass
class InferRequest:
    """A decoded, validated inference request: numpy inputs in the model's dtype."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


class LoadedModel:
    """An onnxruntime session with its name, version "1", export metadata and tensor specs.

    `ready` turns true once a warm-up inference (zeros, batch 1) has run.
    """

    def __init__(self, session: Any, *, name: str, path: Path | None = None, max_batch_size: int = 32,
                 max_queue_delay_ms: float = 2.0) -> None:
        self.session = session
        self.name = name
        self.version = MODEL_VERSION
        self.path = path
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms  # for the dynamic batcher (not yet: one request per run)
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self.inputs = [_spec(node) for node in session.get_inputs()]
        self.outputs = [_spec(node) for node in session.get_outputs()]
        self.input_dtypes = {spec.name: _V2_NUMPY[spec.datatype] for spec in self.inputs
                             if spec.datatype in ("FP16", "FP32", "FP64")}
        self.providers: list[str] = list(session.get_providers())
        self.ready = False

    @classmethod
    def load(cls, path: Path, *, name: str | None = None, device: str = "auto", max_batch_size: int = 32,
             max_queue_delay_ms: float = 2.0) -> LoadedModel:
        """Open `path` with onnxruntime and warm it up; UsageError when it cannot be loaded or run."""
        import onnxruntime as ort

        from bigmodel_cli.devices import ort_providers

        if max_batch_size < 1:
            raise UsageError(f"--max-batch-size {max_batch_size}: must be at least 1")
        if max_queue_delay_ms < 0:
            raise UsageError(f"--max-queue-delay-ms {max_queue_delay_ms}: must not be negative")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on stderr
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=ort_providers(device))
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"{path}: onnxruntime cannot load this model: {_one_line(e)}") from e
        meta = session.get_modelmeta().custom_metadata_map
        model = cls(session, name=name or meta.get("recipe") or Path(path).stem, path=Path(path),
                    max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms)
        _check_name(model.name)
        unsupported = [f"{s.name} ({s.datatype})" for s in model.inputs if s.name not in model.input_dtypes]
        if unsupported or not model.inputs:
            raise UsageError(f"{path}: serving needs floating-point inputs, this model has {unsupported or 'none'}")
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """One inference on zeros (dynamic dims as 1) so the first request does not pay for allocation."""
        feeds = {s.name: np.zeros([1 if d < 0 else d for d in s.shape], self.input_dtypes[s.name])
                 for s in self.inputs}
        try:
            self.session.run(None, feeds)
        except Exception as e:
            raise UsageError(f"{self.path or self.name}: warm-up inference failed: {_one_line(e)}") from e
        self.ready = True

    @property
    def task(self) -> str:
        if self.metadata.get("task"):
            return self.metadata["task"]
        names = {s.name for s in self.outputs}
        return "classification" if "probabilities" in names else "regression" if "prediction" in names else "unknown"

    @property
    def class_names(self) -> list[str] | None:
        value = _json_or_none(self.metadata.get("class_names"))
        return [str(c) for c in value] if isinstance(value, list) else None

    def metadata_json(self) -> dict[str, Any]:
        """The V2 model metadata document."""
        parameters: dict[str, Any] = {"task": self.task, "class_names": self.class_names}
        for key in ("recipe", "bigmodel_version"):
            if key in self.metadata:
                parameters[key] = self.metadata[key]
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
            "parameters": parameters,
        }

    def config_json(self) -> dict[str, Any]:
        """A Triton-style model configuration (dims without the batch dimension)."""
        return {
            "name": self.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": self.max_batch_size,
            "input": [s.config() for s in self.inputs],
            "output": [s.config() for s in self.outputs],
        }

    def run(self, request: InferRequest) -> dict[str, np.ndarray]:
        """One `session.run` for one validated request (blocking: call it from a worker thread)."""
        try:
            values = self.session.run(request.outputs, request.inputs)
        except Exception as e:  # validated input: what is left is on our side (memory, device)
            raise RequestError(500, f"inference failed: {_one_line(e)}") from e
        return dict(zip(request.outputs, values, strict=True))


# ---------------------------------------------------------------------------------------------- codec


def decode_infer_request(body: bytes, model: LoadedModel) -> InferRequest:
    """Parse and validate a JSON V2 infer request; RequestError(400) for anything wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too deeply nested
        raise RequestError(400, f"request body is not valid JSON: {_one_line(e)}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "request body must be a JSON object with 'inputs'")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, "'id' must be a string")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, "'parameters' must be an object")

    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise RequestError(400, "request needs 'inputs': a non-empty list of tensors")
    expected = {s.name: s for s in model.inputs}
    inputs: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(400, "each input must be an object with a string 'name'")
        name = tensor["name"]
        if name not in expected:
            raise RequestError(400, f"unknown input '{name}' (model inputs: {', '.join(expected)})")
        if name in inputs:
            raise RequestError(400, f"input '{name}' given twice")
        inputs[name] = _decode_tensor(tensor, expected[name], model)
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise RequestError(400, f"missing input(s): {', '.join(missing)}")
    batches = {a.shape[0] for a in inputs.values()}
    if len(batches) > 1:
        raise RequestError(400, f"inputs disagree on the batch size: {sorted(batches)}")

    return InferRequest(inputs=inputs, outputs=_requested_outputs(doc.get("outputs"), model), id=request_id,
                        parameters=parameters)


def _decode_tensor(tensor: dict[str, Any], spec: TensorSpec, model: LoadedModel) -> np.ndarray:
    name = spec.name
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise RequestError(400, f"input '{name}': 'datatype' must be a string such as \"FP32\"")
    if datatype in _UNSUPPORTED_INPUT_TYPES:
        raise RequestError(400, f"input '{name}': datatype {datatype} is not supported (send numbers, e.g. FP32)")
    if datatype not in _V2_NUMPY:
        raise RequestError(400, f"input '{name}': unknown datatype {datatype!r} (expected one of "
                                f"{', '.join(_V2_NUMPY)})")
    params = tensor.get("parameters")
    if isinstance(params, dict) and "binary_data_size" in params:
        raise RequestError(400, f"input '{name}': binary tensor data is not supported yet, send JSON 'data'")

    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(400, f"input '{name}': 'shape' must be a list of non-negative integers")
    if not shape or len(shape) != len(spec.shape) or any(want not in (-1, got)
                                                         for want, got in zip(spec.shape, shape, strict=True)):
        raise RequestError(400, f"input '{name}': shape {shape} does not match the model's {list(spec.shape)}")
    batch = shape[0]
    if batch < 1:
        raise RequestError(400, f"input '{name}': the batch dimension must be at least 1")
    if batch > model.max_batch_size:
        raise RequestError(400, f"input '{name}': batch of {batch} is over max_batch_size {model.max_batch_size}")

    if "data" not in tensor:
        raise RequestError(400, f"input '{name}': no 'data'")
    data = tensor["data"]
    if not isinstance(data, list):
        raise RequestError(400, f"input '{name}': 'data' must be a list of numbers (flat or nested)")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise RequestError(400, f"input '{name}': 'data' must be a list of numbers, nested lists must be "
                                f"rectangular") from None
    if array.size and array.dtype.kind not in "iuf":  # bool, str, None, objects; [] is float64
        raise RequestError(400, f"input '{name}': 'data' must hold only numbers")
    expected_count = math.prod(shape)
    if array.size != expected_count:
        raise RequestError(400, f"input '{name}': 'data' has {array.size} elements, shape {shape} needs "
                                f"{expected_count}")

    declared = _V2_NUMPY[datatype]
    if declared.kind in "iu":
        if array.dtype.kind == "f":
            raise RequestError(400, f"input '{name}': datatype {datatype} needs integers in 'data'")
        limits = np.iinfo(declared)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise RequestError(400, f"input '{name}': values out of range for {datatype}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = array.astype(declared).astype(model.input_dtypes[name]).reshape(shape)
    if not np.isfinite(array).all():
        raise RequestError(400, f"input '{name}': values must be finite (no NaN or infinity, within the "
                                f"range of {datatype} and of the model's {spec.datatype})")
    return array


def _requested_outputs(requested: Any, model: LoadedModel) -> list[str]:
    known = [s.name for s in model.outputs]
    if requested is None:
        return known
    if not isinstance(requested, list):
        raise RequestError(400, "'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(400, "each requested output must be an object with a string 'name'")
        if item["name"] not in known:
            raise RequestError(400, f"unknown output '{item['name']}' (model outputs: {', '.join(known)})")
        if item["name"] in names:
            raise RequestError(400, f"output '{item['name']}' requested twice")
        names.append(item["name"])
    return names or known


def encode_infer_response(model: LoadedModel, request: InferRequest, results: dict[str, np.ndarray]) -> bytes:
    """The V2 JSON response: every output flattened row-major. RequestError(400) for NaN/inf outputs."""
    outputs = []
    for name in request.outputs:
        value = np.asarray(results[name])
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RequestError(400, f"the model produced NaN or infinite values in '{name}' for this input "
                                    f"(are the inputs scaled as the model expects?)")
        datatype = _NUMPY_V2.get(value.dtype)
        if datatype is None:  # e.g. float types onnxruntime returns that V2 cannot name: send as FP32
            value, datatype = value.astype(np.float32), "FP32"
        outputs.append({"name": name, "datatype": datatype, "shape": list(value.shape),
                        "data": value.ravel().tolist()})
    doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = outputs
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def infer_json(model: LoadedModel, body: bytes) -> bytes:
    """Decode, run and encode one request (blocking)."""
    request = decode_infer_request(body, model)
    return encode_infer_response(model, request, model.run(request))


# ---------------------------------------------------------------------------------------------- app


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
            if e.status_code >= 500:
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
    if not model.ready:
        raise RequestError(503, f"model '{model.name}' is not ready")
    return model


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@_endpoint
async def _live(request: Request) -> Response:
    return JSONResponse({"live": True})


@_endpoint
async def _server_ready(request: Request) -> Response:
    if not request.app.state.model.ready:
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
async def _infer(request: Request) -> Response:
    model = _ready_model(request)
    if "inference-header-content-length" in request.headers:
        raise RequestError(400, "binary tensor data (Inference-Header-Content-Length) is not supported yet; "
                                "send tensors as JSON 'data'")
    body = await _read_body(request, request.app.state.max_body_bytes)
    content = await run_in_threadpool(infer_json, model, body)
    return Response(content, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), as JSON."""
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, headers=exc.headers)


class BearerAuth:
    """ASGI middleware: 401 unless `Authorization: Bearer <api_key>`, except on `open_paths`."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.expected):
                response = _error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                  headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model: LoadedModel, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The V2 HTTP app serving `model`; `api_key` guards all but the health endpoints."""
    routes = [
        Route("/v2/health/live", _live, methods=["GET"]),
        Route("/v2/health/ready", _server_ready, methods=["GET"]),
        Route("/v2", _server_metadata, methods=["GET"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, _model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", _model_ready, methods=["GET"]),
            Route(f"{prefix}/config", _model_config, methods=["GET"]),
            Route(f"{prefix}/infer", _infer, methods=["POST"]),
        ]
    middleware = [Middleware(BearerAuth, api_key=api_key)] if api_key else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error})
    app.state.model = model
    app.state.max_body_bytes = max_body_bytes
    return app


# ---------------------------------------------------------------------------------------------- CLI


def resolve_model_path(model: Path) -> Path:
    """MODEL.onnx, or a run directory holding model.onnx; UsageError naming what is missing."""
    model = Path(model)
    if model.is_dir():
        candidate = model / "model.onnx"
        if not candidate.is_file():
            raise UsageError(f"{model} has no model.onnx: run `bigmodel export {model}` first")
        return candidate
    if not model.is_file():
        raise UsageError(f"model not found: {model} (give MODEL.onnx or a run directory; "
                         f"`bigmodel export DIR` writes DIR/model.onnx)")
    return model


def _api_key_from_env(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var, "")
    if not key:
        raise UsageError(f"--api-key-env {var}: environment variable {var} is unset or empty")
    return key


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 0 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        reason = "address already in use" if e.errno in (98, 48, 10048) else (e.strerror or str(e))
        raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


@contextmanager
def _stop_on_signals(server: Any) -> Iterator[None]:
    """SIGINT/SIGTERM end the server and then the command with exit 0.

    uvicorn catches the signals while it runs (stop accepting, finish in-flight requests) and re-raises
    them once it is done; this handler takes that re-raise (and any signal before uvicorn starts).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(model: Path, host: str, port: int, model_name: str | None, max_batch_size: int,
               max_queue_delay_ms: float, device: str, api_key_env: str | None) -> None:
    """Load `model`, serve it with uvicorn until SIGINT/SIGTERM, then return (exit 0).

    Requests run one per `session.run` for now; `max_queue_delay_ms` is kept for dynamic batching.
    """
    import uvicorn

    path = resolve_model_path(model)
    api_key = _api_key_from_env(api_key_env)
    if model_name is not None:
        _check_name(model_name)
    loaded = LoadedModel.load(path, name=model_name, device=device, max_batch_size=max_batch_size,
                              max_queue_delay_ms=max_queue_delay_ms)
    app = create_app(loaded, api_key=api_key)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=bound_port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    url_host = f"[{host}]" if ":" in host else host
    shapes = "; ".join(json.dumps(list(s.shape), separators=(",", ":")) for s in loaded.inputs)
    where = "cuda" if "CUDAExecutionProvider" in loaded.providers else "cpu"
    guarded = ", API key required" if api_key else ""
    with _stop_on_signals(server):
        _say(f"serving {loaded.name} ({loaded.task}, input {shapes}, {where}{guarded}) on "
             f"http://{url_host}:{bound_port}  (V2 protocol: /v2/models/{loaded.name}/infer)")
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    _say("server stopped")


def _say(message: str) -> None:
    from rich.markup import escape

    info(escape(message))


def _check_name(name: str) -> None:
    if not name or "/" in name or name.strip() != name:
        raise UsageError(f"model name {name!r}: must be non-empty, without '/' or surrounding spaces")


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
