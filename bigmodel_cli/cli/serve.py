"""`bigmodel serve`: an onnxruntime server speaking the KServe/Triton V2 protocol (bigmodel_cli.serving).

    bigmodel serve runs/digits-cnn --port 8000
    bigmodel serve model.onnx --host 0.0.0.0 --max-batch-size 64 --max-queue-delay-ms 5 --threads 4
    curl localhost:8000/v2/health/ready

Given a run directory, its recipe's `serve` section supplies the defaults (host, port, max_batch_size,
max_queue_delay_ms, max_queue, grace_seconds, max_body_mb, max_inflight_mb, request_timeout_s, threads, access_log,
drift_threshold, log_payloads); explicit flags win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _settings(model: Path, flags: dict[str, Any]) -> dict[str, Any]:
    """Built-in defaults < the run's recipe `serve` section < explicit flags."""
    from bigmodel_cli.config.schema import ServeSection

    settings = ServeSection().model_dump()
    recipe_file = model / "recipe.yaml"
    if model.is_dir() and recipe_file.is_file():
        from bigmodel_cli.config.recipe import load_yaml, validate

        settings = validate(load_yaml(recipe_file), str(recipe_file)).serve.model_dump()
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def serve(
    model: Path = typer.Argument(..., help="MODEL.onnx, or a run directory holding model.onnx."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on, 0 for any free one (default 8000)."),
    model_name: str | None = typer.Option(None, "--model-name", help="Name in /v2/models/{name} (default: recipe)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", help="Most rows one inference (and one "
                                              "request) may carry (default 32)."),
    max_queue_delay_ms: float | None = typer.Option(None, "--max-queue-delay-ms", help="Longest wait for more "
                                                    "rows before a batch runs (default 2)."),
    max_queue: int | None = typer.Option(None, "--max-queue", help="Requests waiting for a batch at most; more "
                                         "get 503 (default 1024)."),
    grace_seconds: float | None = typer.Option(None, "--grace-seconds", help="On SIGTERM, time to finish "
                                               "in-flight requests (default 30)."),
    max_body_mb: float | None = typer.Option(None, "--max-body-mb", help="Larger request bodies get 413 "
                                             "(default 64)."),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime intra-op threads, 0 = one per core "
                                       "(default 0)."),
    access_log: bool | None = typer.Option(None, "--access-log/--no-access-log", help="One JSON line per request "
                                           "on stderr (default on)."),
    request_timeout_s: float | None = typer.Option(None, "--request-timeout-s", help="A request's head, and its "
                                                   "body, must each arrive within this time: else 408 (default "
                                                   "30)."),
    max_inflight_mb: float | None = typer.Option(None, "--max-inflight-mb", help="Memory all requests in flight "
                                                 "may hold to receive and decode their bodies; past it, 503 "
                                                 "(default 256)."),
    drift_threshold: float | None = typer.Option(None, "--drift-threshold", help="Warn when the population "
                                                 "stability index of predictions or a feature against the "
                                                 "export's reference profile passes this (default 0.2)."),
    log_payloads: float | None = typer.Option(None, "--log-payloads", help="Share of infer requests logged with "
                                              "their answers as JSON lines, e.g. 0.01 (default 0: none)."),
    payload_log: str = typer.Option("-", "--payload-log", help="Where --log-payloads writes: a file (appended), "
                                    "or - for stdout."),
    monitoring: bool = typer.Option(True, "--monitoring/--no-monitoring", help="Prediction and drift metrics on "
                                    "/metrics (default on)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Require 'Authorization: Bearer $VAR'."),
) -> None:
    """Serve an exported model over HTTP (V2 inference protocol) until SIGTERM/SIGINT."""
    settings = _settings(model, {"host": host, "port": port, "max_batch_size": max_batch_size,
                                 "max_queue_delay_ms": max_queue_delay_ms, "max_queue": max_queue,
                                 "grace_seconds": grace_seconds, "max_body_mb": max_body_mb, "threads": threads,
                                 "access_log": access_log, "request_timeout_s": request_timeout_s,
                                 "max_inflight_mb": max_inflight_mb, "drift_threshold": drift_threshold,
                                 "log_payloads": log_payloads})
    from bigmodel_cli.serving.server import ServeOptions, run_server

    run_server(model, ServeOptions(**settings, model_name=model_name, device=device, api_key_env=api_key_env,
                                   payload_log=payload_log, monitoring=monitoring))
