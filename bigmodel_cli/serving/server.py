"""`bigmodel serve`: an onnxruntime model behind the KServe / Triton V2 protocol, on uvicorn, until SIGTERM.

    bigmodel serve runs/digits-cnn --port 8000
    curl localhost:8000/v2/models/digits-cnn
    curl -d '{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [...]}]}' \\
        localhost:8000/v2/models/digits-cnn/infer

The pieces, each in its module of `bigmodel_cli.serving`:

- `model.LoadedModel`: the onnxruntime session, its tensor specs and the export's metadata; warmed up at load.
- `protocol`: request body <-> numpy, JSON tensors and Triton's binary tensor data extension.
- `batcher.DynamicBatcher`: concurrent requests merged into one session.run, each caller given its rows.
- `metrics.ServerMetrics`: Prometheus counters and histograms for `GET /metrics`.
- `stats.ModelStats`: Triton's statistics extension (`GET /v2/models/{m}/stats`).
- `monitor.Monitor`: predicted classes, confidence, feature summaries and drift against the export's reference
  profile (`profile.json` beside the model), on `/metrics`.
- `payloads.PayloadLog`: a sample of the requests and answers as JSON lines (`--log-payloads 0.01`).
- `app.create_app`: the Starlette routes, errors as `{"error": ...}`, API key, body limit, access log.

This module opens the model, binds the socket and runs uvicorn; SIGTERM/SIGINT stop accepting, let
in-flight requests finish (at most `grace_seconds`) and return, so the command exits 0. A request whose
body is still awaited then is answered 503 when its own `request_timeout_s` runs out (or when the grace
period does, whichever comes first), so a stalled upload holds the exit no longer than its own timeout.
The connection guards (head size and timeouts, idle connections, half-closed clients) are `transport`'s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from bigmodel_cli.console import info
from bigmodel_cli.errors import UsageError
from bigmodel_cli.serving.app import create_app
from bigmodel_cli.serving.model import LoadedModel, check_name
from bigmodel_cli.serving.transport import serving_protocol


@dataclass(frozen=True)
class ServeOptions:
    """Everything `bigmodel serve` can be told (flags > the run's recipe `serve` section > defaults)."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue: int = 1024
    grace_seconds: float = 30.0
    max_body_mb: float = 64.0
    threads: int = 0
    access_log: bool = True
    device: str = "auto"
    api_key_env: str | None = None
    request_timeout_s: float = 30.0
    max_inflight_mb: float = 256.0
    monitoring: bool = True
    drift_threshold: float = 0.2
    log_payloads: float = 0.0
    payload_log: str = "-"

    def check(self) -> None:
        """UsageError naming the flag of the first value out of range."""
        limits = [("--port", self.port, 0 <= self.port <= 65535, "between 0 and 65535"),
                  ("--max-batch-size", self.max_batch_size, self.max_batch_size >= 1, "at least 1"),
                  ("--max-queue-delay-ms", self.max_queue_delay_ms, self.max_queue_delay_ms >= 0, "not negative"),
                  ("--max-queue", self.max_queue, self.max_queue >= 1, "at least 1"),
                  ("--grace-seconds", self.grace_seconds, self.grace_seconds >= 0, "not negative"),
                  ("--max-body-mb", self.max_body_mb, self.max_body_mb > 0, "more than 0"),
                  ("--request-timeout-s", self.request_timeout_s, self.request_timeout_s > 0, "more than 0"),
                  ("--max-inflight-mb", self.max_inflight_mb, self.max_inflight_mb > 0, "more than 0"),
                  ("--threads", self.threads, self.threads >= 0, "0 (one per core) or more"),
                  ("--drift-threshold", self.drift_threshold, self.drift_threshold > 0, "more than 0"),
                  ("--log-payloads", self.log_payloads, 0 <= self.log_payloads <= 1, "a share between 0 and 1")]
        for flag, value, ok, rule in limits:
            if not ok:
                raise UsageError(f"{flag} {value}: must be {rule}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {self.device}: expected auto, cpu or cuda")
        if self.model_name is not None:
            check_name(self.model_name)


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
    if model.suffix.lower() != ".onnx":
        raise UsageError(f"{model}: serve needs an .onnx file or a run directory (`bigmodel export RUN_DIR` "
                         f"writes RUN_DIR/model.onnx from a checkpoint)")
    return model


def _api_key_from_env(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var, "")
    if not key:
        raise UsageError(f"--api-key-env {var}: environment variable {var} is unset or empty")
    return key


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so, and
    # with Nagle on, a response written as header + body waits for the client's delayed ACK (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


class StoppingServer(uvicorn.Server):
    """uvicorn's server that tells the app (`stopping`) when it begins to shut down."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping.set()
        await super().shutdown(sockets)


def run_server(model: Path, options: ServeOptions) -> None:
    """Load `model`, serve it with uvicorn until SIGINT/SIGTERM, then return (exit 0)."""
    options.check()
    path = resolve_model_path(model)
    api_key = _api_key_from_env(options.api_key_env)
    sock = _bind(options.host, options.port)  # before loading: a taken port fails at once, not after the model
    try:
        loaded = LoadedModel.load(path, name=options.model_name, device=options.device,
                                  max_batch_size=options.max_batch_size, threads=options.threads)
        profile = _profile(path) if options.monitoring else None
        payloads = None
        if options.log_payloads > 0:
            from bigmodel_cli.serving.payloads import PayloadLog

            payloads = PayloadLog(options.log_payloads, options.payload_log, model=loaded.name,
                                  version=loaded.version)
    except BaseException:
        sock.close()
        raise
    stopping = threading.Event()
    app = create_app(loaded, api_key=api_key, max_body_bytes=int(options.max_body_mb * 1024 * 1024),
                     max_queue_delay_ms=options.max_queue_delay_ms, max_queue=options.max_queue,
                     access_log=options.access_log, request_timeout_s=options.request_timeout_s,
                     max_inflight_bytes=int(options.max_inflight_mb * 1024 * 1024), stopping=stopping,
                     monitoring=options.monitoring, profile=profile, drift_threshold=options.drift_threshold,
                     payloads=payloads)
    bound_port = sock.getsockname()[1]
    # uvicorn's httptools protocol, each response written in one send(), with the connection guards
    config = uvicorn.Config(app, host=options.host, port=bound_port, log_level="warning", lifespan="on",
                            access_log=False, timeout_graceful_shutdown=options.grace_seconds,
                            timeout_keep_alive=min(5.0, options.request_timeout_s),  # type: ignore[arg-type]
                            http=serving_protocol(options.request_timeout_s))
    server = StoppingServer(config, stopping)
    with _stop_on_signals(server):
        _say(_banner(loaded, options, bound_port, guarded=api_key is not None))
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    _say("server stopped")


def _profile(path: Path) -> dict[str, Any] | None:
    """The reference profile beside the model (None, and a note, when there is none)."""
    from bigmodel_cli.export import profile as reference

    found = reference.read(reference.profile_path(path))
    if found is None:
        _say(f"no reference profile {reference.profile_path(path).name} beside {path}: drift is not monitored "
             f"(bigmodel export writes one)")
    return found


def _banner(loaded: LoadedModel, options: ServeOptions, port: int, *, guarded: bool) -> str:
    host = f"[{options.host}]" if ":" in options.host else options.host
    shapes = "; ".join(json.dumps(list(s.shape), separators=(",", ":")) for s in loaded.inputs)
    where = "cuda" if "CUDAExecutionProvider" in loaded.providers else "cpu"
    batching = (f"batching up to {options.max_batch_size} rows, {options.max_queue_delay_ms:g} ms"
                if loaded.batchable else "no batching (model is not row-wise)")
    key = ", API key required" if guarded else ""
    return (f"serving {loaded.name} ({loaded.task}, input {shapes}, {where}, {batching}{key}) on "
            f"http://{host}:{port}  (V2 protocol: /v2/models/{loaded.name}/infer, metrics: /metrics)")


def _say(message: str) -> None:
    from rich.markup import escape

    info(escape(message))
