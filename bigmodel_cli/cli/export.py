"""`bigmodel export`: a verified ONNX model, optionally fp16/int8, or TorchScript (bigmodel_cli.export).

    bigmodel export runs/digits-cnn                  # -> runs/digits-cnn/model.onnx + export.json
    bigmodel export runs/digits-cnn --quantize int8  # -> model.int8.onnx + export.int8.json (model.onnx untouched)
    bigmodel export runs/digits-cnn --out /tmp/digits.onnx --opset 18 --json   # + /tmp/digits.export.json
    bigmodel export runs/digits-cnn --format torchscript   # -> model.torchscript.pt + export.torchscript.json
    bigmodel export runs/text-bert-finetune --optimize     # onnxruntime's transformer fusions (hf models)
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `bigmodel train`."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | PATH."),
    out: Path | None = typer.Option(None, "--out", help="Where to write the model (default RUN_DIR/model.onnx, "
                                    "model.int8.onnx, model.fp16.onnx or model.torchscript.pt); its report is "
                                    "written beside it."),
    quantize: str | None = typer.Option(None, "--quantize", help="none | fp16 | int8 (default: export.quantize)."),
    fmt: str | None = typer.Option(None, "--format", help="onnx | torchscript (default: export.format)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the recipe's export.opset)."),
    optimize: bool | None = typer.Option(None, "--optimize/--no-optimize",
                                         help="Fuse the graph with onnxruntime's transformer optimiser (attention, "
                                              "LayerNorm, GELU), pre-trained transformers only (default: "
                                              "export.optimize)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the comparison with PyTorch."),
    verify_samples: int | None = typer.Option(None, "--verify-samples",
                                              help="Validation rows compared (default: export.verify.samples)."),
    as_json: bool = JSON,
) -> None:
    """Export the trained model (ONNX or TorchScript), check it and compare it with PyTorch before keeping it."""
    from bigmodel_cli.export.onnx_export import export_run, report_path

    start(as_json)
    report = export_run(run_dir, checkpoint=checkpoint, out=out, quantize=quantize, opset=opset,
                        verify_model=not no_verify, fmt=fmt, verify_samples=verify_samples,
                        optimize=optimize)
    from bigmodel_cli.tracking import log_artifacts

    log_artifacts(run_dir, [report["model"], report_path(report["model"])])  # into the run's MLflow run, if any
    finish(report, as_json)


