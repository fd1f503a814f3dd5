"""`bigmodel tune`: search recipe hyper-parameters with Optuna, each trial a real `bigmodel train` run
(bigmodel_cli.tuning.study).

    bigmodel tune -r digits-cnn --space space.yaml --trials 30                 # -> runs/digits-cnn-tune/
    bigmodel tune -r digits-cnn --space space.yaml --trials 30 --parallel 2    # two trials at a time
    bigmodel tune -r wine-mlp --space space.yaml --trials 20 --objective val_loss --direction min --json
    bigmodel tune -r digits-cnn --space space.yaml --trials 100 --study digits \\
        --storage postgresql://user:pw@db:5432/optuna                          # on each machine: one shared study

Running the same command again resumes a stopped study (its journal is runs/<study>-tune/study.journal).
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, RECIPE, SET, finish, start


def tune(
    recipe: str = RECIPE,
    space: Path = typer.Option(..., "--space", help="YAML of dotted recipe keys to search, e.g. "
                               "train.optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}."),
    trials: int = typer.Option(..., "--trials", min=1, help="Trials in the study in all (complete, pruned or failed; "
                               "counted across every worker sharing it)."),
    storage: str | None = typer.Option(None, "--storage", help="A journal file or a database URL (postgresql://...) "
                                       "shared by workers [default: runs/<study>-tune/study.journal]."),
    study: str | None = typer.Option(None, "--study", help="Study name [default: the recipe's name]."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Trials run at once by this process."),
    prune: str = typer.Option("median", "--prune", help="median | hyperband | none: stop unpromising trials early."),
    objective: str | None = typer.Option(None, "--objective", help="A logged metric [default: the recipe's "
                                         "train.early_stopping.monitor]."),
    direction: str | None = typer.Option(None, "--direction", help="max | min [default: from the monitor's mode, "
                                         "or min for losses and errors]."),
    out: Path | None = typer.Option(None, "--out", help="Folder of the trials, best.yaml, trials.csv and plots "
                                    "[default: runs/<study>-tune]."),
    seed: int | None = typer.Option(None, "--seed", help="Seed the sampler (one worker: the same trials again)."),
    sets: list[str] | None = SET,
    as_json: bool = JSON,
) -> None:
    """Tune a recipe: trials of `bigmodel train`, pruned from their per-epoch metrics; best.yaml is the winner."""
    from bigmodel_cli.tuning.study import tune as run_study

    start(as_json)
    result = run_study(recipe, space, trials, storage=storage, study_name=study, parallel=parallel, prune=prune,
                       objective=objective, direction=direction, sets=sets, out=out, seed=seed)
    finish(result, as_json)
