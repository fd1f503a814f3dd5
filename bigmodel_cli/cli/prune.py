"""`bigmodel prune`: structured pruning of a trained run into a new run directory (bigmodel_cli.compression).

    bigmodel prune runs/cifar10-resnet18 --ratio 0.5 --finetune-epochs 10        # -> runs/cifar10-resnet18-pruned
    bigmodel prune runs/digits-cnn --ratio 0.5 --method taylor --steps 3 --finetune-epochs 2 --round-to 8
    bigmodel prune runs/digits-cnn --ratio 0.5 --finetune-epochs 3 --teacher runs/digits-cnn --out runs/small --json
    bigmodel prune runs/digits-cnn --ratio 0.3 --finetune-epochs 3 --set train.optimizer.lr=0.001
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, SET, finish, start


def prune(
    run_dir: Path = typer.Argument(..., help="A run directory written by `bigmodel train`."),
    ratio: float = typer.Option(..., "--ratio", help="Fraction of the channels of every prunable group to remove."),
    method: str = typer.Option("l2", "--method", help="l2 | taylor | bn-scale: how channels are ranked."),
    steps: int = typer.Option(1, "--steps", help="Prune in this many equal steps, fine-tuning after each."),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Training epochs after each step."),
    teacher: str | None = typer.Option(None, "--teacher", help="Distill the fine-tuning from this run (e.g. RUN_DIR)."),
    round_to: int | None = typer.Option(None, "--round-to", help="Keep channel counts multiples of this (8)."),
    out: Path | None = typer.Option(None, "--out", help="The new run directory (default RUN_DIR-pruned)."),
    sets: list[str] | None = SET,
    as_json: bool = JSON,
) -> None:
    """Remove whole channels/neurons (Torch-Pruning), fine-tune, and report size, MACs and accuracy."""
    from bigmodel_cli.compression.prune import prune_run

    start(as_json)
    report = prune_run(run_dir, ratio, method=method, steps=steps, finetune_epochs=finetune_epochs, teacher=teacher,
                       round_to=round_to, out=out, sets=sets)
    finish(report, as_json)
