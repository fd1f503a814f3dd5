"""`bigmodel prepare-data`: raw source -> split arrays + manifest + data report (bigmodel_cli.data.prepare).

    bigmodel prepare-data -r digits-cnn
    bigmodel prepare-data -r breast-cancer-mlp --out /tmp/bc --json | jq .manifest.report
    bigmodel prepare-data -r my.yaml --source churn.csv --set data.target=churned --set data.drop=[id]
    bigmodel prepare-data -r my.yaml --source other.csv --force   # replace data/<name> prepared from another source
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, RECIPE, SET, finish, start


def prepare_data(
    recipe: str = RECIPE,
    source: str | None = typer.Option(
        None, "--source", help="Override data.source: a .csv/.parquet/.jsonl file, an image folder (one sub-folder "
        "per class), torchvision:mnist|cifar10:ROOT or sklearn:NAME."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default data/<name>); sets data.prepared."),
    sets: list[str] | None = SET,
    force: bool = typer.Option(False, "--force", help="Replace the output folder even when it holds another recipe's "
                               "data, or data prepared from another source."),
    as_json: bool = JSON,
) -> None:
    """Clean, encode and split the recipe's data, fit its preprocessing on train; write arrays, manifest, report."""
    from bigmodel_cli.config.recipe import resolve

    start(as_json)
    resolved = resolve(recipe, {"data.source": source, "data.prepared": str(out) if out else None}, sets)
    from bigmodel_cli.data.prepare import prepare
    manifest = prepare(resolved, force=force)
    finish({"prepared": resolved.prepared_dir, "manifest": manifest}, as_json)
