"""`bigmodel export`: a verified ONNX model (bigmodel_cli.export.onnx_export).

    bigmodel export runs/digits-cnn                  # -> runs/digits-cnn/model.onnx + export.json
    bigmodel export runs/digits-cnn --out /tmp/digits.onnx --opset 18 --json
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `bigmodel train`."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | PATH."),
    out: Path | None = typer.Option(None, "--out", help="Where to write the model (default RUN_DIR/model.onnx)."),
    quantize: str | None = typer.Option(None, "--quantize", help="none (fp16 and int8 are not available yet)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the recipe's export.opset)."),
    as_json: bool = JSON,
) -> None:
    """Export the trained model to ONNX, check it with onnx.checker and compare it with PyTorch."""
    from bigmodel_cli.export.onnx_export import export_run

    start(as_json)
    report = export_run(run_dir, checkpoint=checkpoint, out=out, quantize=quantize, opset=opset)
    finish(report, as_json)
