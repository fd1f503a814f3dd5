"""`bigmodel eval`: metrics, predictions and plots for a trained run, and CI quality gates.

    bigmodel eval runs/digits-cnn
    bigmodel eval runs/digits-cnn --split val --fail-under accuracy=0.95 --json | jq .metrics.f1
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def eval_run(
    run_dir: Path = typer.Argument(..., help="A run directory written by `bigmodel train`."),
    split: str = typer.Option(None, "--split", help="test | val | train (default: the recipe's eval.split)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="best | last | PATH (default: eval.checkpoint)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="Evaluate this exported ONNX model instead."),
    fail_under: list[str] | None = typer.Option(None, "--fail-under", help="Gate METRIC=VALUE; exit 3 when below."),
    as_json: bool = JSON,
) -> None:
    """Evaluate a run on a split; exit 3 when a --fail-under gate (or the recipe's eval.fail_under) fails."""
    from bigmodel_cli.errors import GateFailed
    from bigmodel_cli.evaluation.evaluate import evaluate, parse_gates

    start(as_json)
    report = evaluate(run_dir, split=split, checkpoint=checkpoint, onnx_path=onnx,
                      fail_under=parse_gates(fail_under or []))
    finish(report, as_json)
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        raise GateFailed("; ".join(f"gate failed: {g['metric']} = {g['value']} is below {g['threshold']}"
                                   for g in failed))
