"""A run directory as written by `bigmodel train`: its resolved recipe, data manifest and checkpoints.

    run = load_run("runs/digits-cnn")
    net, norm, path = load_network(run, "best")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError


@dataclass
class Run:
    path: Path
    recipe: Any  # schema.Recipe
    manifest: dict[str, Any]


def load_run(run_dir: str | Path) -> Run:
    from bigmodel_cli.config.recipe import load_yaml, validate
    from bigmodel_cli.data import manifest as manifests

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    recipe_file = path / "recipe.yaml"
    if not recipe_file.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no recipe.yaml); create one with bigmodel train -r RECIPE "
                         f"--run-dir {run_dir}")
    recipe = validate(load_yaml(recipe_file), str(recipe_file))
    return Run(path=path, recipe=recipe, manifest=manifests.read(recipe.prepared_dir, recipe.name))


def load_network(run: Run, which: str = "best"):
    """The trained network (eval mode, CPU), its input normaliser, and the checkpoint path."""
    from bigmodel_cli.data.transform import normalizer
    from bigmodel_cli.training import checkpoint
    from bigmodel_cli.training.trainer import build_network, model_meta

    path = checkpoint.resolve(run.path, which)
    state = checkpoint.load(path, expect=model_meta(run.recipe, run.manifest))
    net = build_network(run.recipe, run.manifest)
    checkpoint.load_weights(net, state, path)
    net.eval()
    return net, normalizer(run.manifest).eval(), path
