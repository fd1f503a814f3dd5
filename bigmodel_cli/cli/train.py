"""`bigmodel train`: train the recipe's model on its prepared data (bigmodel_cli.training.trainer).

    bigmodel train -r digits-cnn
    bigmodel train -r digits-cnn --set train.epochs=3 --run-dir runs/quick --json
    bigmodel train -r digits-cnn --resume
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, RECIPE, SET, finish, start


def train(
    recipe: str = RECIPE,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Where checkpoints and logs go (default runs/<name>)."),
    devices: str | None = typer.Option(None, "--devices", help="auto | cpu | cuda | 1 (sets train.devices)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.pt."),
    sets: list[str] | None = SET,
    as_json: bool = JSON,
) -> None:
    """Train with validation every epoch; best/last checkpoints, metrics.jsonl, resolved recipe in RUN_DIR."""
    from bigmodel_cli.config.recipe import resolve

    start(as_json)
    resolved = resolve(recipe, {"train.devices": devices}, sets)
    from bigmodel_cli.training.trainer import fit
    summary = fit(resolved, run_dir or Path("runs") / resolved.name, resume=resume, recipe_ref=recipe)
    finish(summary, as_json)
