"""`bigmodel serve`: an onnxruntime server speaking the KServe/Triton V2 protocol.

    bigmodel serve runs/digits-cnn --port 8000
    curl localhost:8000/v2/health/ready
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    model: Path = typer.Argument(..., help="MODEL.onnx, or a run directory holding model.onnx."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port)."),
    model_name: str | None = typer.Option(None, "--model-name", help="Name in /v2/models/{name} (default: recipe)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Most rows one inference may carry."),
    max_queue_delay_ms: float = typer.Option(2.0, "--max-queue-delay-ms", help="Batching wait (ms)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Require 'Authorization: Bearer $VAR'."),
) -> None:
    """Serve an exported model over HTTP (V2 inference protocol) until SIGTERM/SIGINT."""
    from bigmodel_cli.serving.server import run_server

    run_server(model, host=host, port=port, model_name=model_name, max_batch_size=max_batch_size,
               max_queue_delay_ms=max_queue_delay_ms, device=device, api_key_env=api_key_env)
