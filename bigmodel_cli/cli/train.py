"""`bigmodel train`: train the recipe's task on its prepared data (bigmodel_cli.training.loop).

    bigmodel train -r digits-cnn
    bigmodel train -r digits-cnn --set train.epochs=3 --run-dir runs/quick --json
    bigmodel train -r digits-cnn --resume
    bigmodel train -r breast-cancer-mlp --folds 5      # cross-validation: fold_1..5/ and cv.json
    bigmodel train -r wine-mlp --teacher runs/big     # knowledge distillation from a trained run
    bigmodel train -r digits-cnn --devices 2           # 2 processes (GPUs, or CPU with gloo) via torch.distributed.run
    bigmodel train -r R --devices 8 --nnodes 2 --node-rank 0 --master-addr node0   # and node-rank 1 on node1
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, RECIPE, SET, finish, start


def train(
    recipe: str = RECIPE,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Where checkpoints and logs go (default runs/<name>)."),
    devices: str | None = typer.Option(None, "--devices", help="auto | cpu | cuda | N processes (sets train.devices)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines taking part (with --devices N per machine)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's rank, 0..nnodes-1."),
    master_addr: str | None = typer.Option(None, "--master-addr", help="Address of the node-rank-0 machine."),
    master_port: int | None = typer.Option(None, "--master-port", help="Its port [default: 29500, or free locally]."),
    rdzv_endpoint: str | None = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of a c10d rendezvous instead."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.pt."),
    report_to: str | None = typer.Option(None, "--report-to", help="mlflow,tensorboard (sets train.report_to)."),
    folds: int | None = typer.Option(None, "--folds", help="K-fold cross-validation over train+val (cv.json)."),
    teacher: str | None = typer.Option(None, "--teacher", help="Distill from this trained run (train.distill)."),
    sets: list[str] | None = SET,
    as_json: bool = JSON,
) -> None:
    """Train with validation every epoch; best/last checkpoints, metrics.jsonl, resolved recipe in RUN_DIR."""
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.errors import Interrupted, UsageError

    start(as_json)
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank {node_rank} with --nnodes {nnodes}: node ranks are 0..{max(nnodes, 1) - 1}")
    from bigmodel_cli.tracking import parse_names

    flags = {"train.devices": devices, "train.report_to": parse_names(report_to) if report_to is not None else None,
             "train.distill.teacher": teacher}
    resolved = resolve(recipe, flags, sets)
    run_dir = run_dir or Path("runs") / resolved.name
    rank = os.environ.get("RANK")
    if "mlflow" in resolved.train.report_to and folds is None and (
            rank == "0" or (rank is None and resolved.train.processes <= 1 and nnodes == 1)):
        from bigmodel_cli.tracking.mlflow_tracker import prestart
        from bigmodel_cli.tracking.run_info import recipe_dict

        prestart(run_dir, recipe_dict(resolved), resume)  # MLflow's start-up beside torch's, not the first epochs
    from bigmodel_cli.training import distributed  # imports torch

    if resume and (run_dir / "recipe.yaml").is_file():  # continue with the run's own recipe
        from bigmodel_cli.training import resume as resuming

        resolved, changed = resuming.resume_recipe(run_dir, flags, sets)
        if changed and not distributed.launched():
            resuming.record(run_dir, changed)
    if folds is not None:
        from bigmodel_cli.training.cross_validation import cross_validate

        if resume or resolved.train.processes > 1:
            raise UsageError("--folds runs in one process, without --resume or --devices N")
        finish(cross_validate(resolved, run_dir, folds, recipe_ref=recipe), as_json)
        return
    if (resolved.train.processes > 1 or nnodes > 1) and not distributed.launched():
        worker = ["train", "-r", recipe, "--run-dir", str(run_dir), "--devices", str(resolved.train.processes)]
        worker += [a for s in sets or [] for a in ("--set", s)] + (["--resume"] if resume else [])
        worker += ["--json"] if as_json else []
        worker += ["--report-to", ",".join(resolved.train.report_to) or "none"]
        worker += ["--teacher", str(resolved.train.distill.teacher)] if teacher else []
        distributed.launch(worker, resolved.train.processes, nnodes, node_rank, master_addr, master_port,
                           rdzv_endpoint)
        return
    from bigmodel_cli.training.loop import fit

    try:
        summary = fit(resolved, run_dir, resume=resume, recipe_ref=recipe)
    except BaseException as e:
        from bigmodel_cli.tracking.mlflow_tracker import abandon  # a run opened ahead that training never took

        abandon("KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "FAILED")
        raise
    if os.environ.get("RANK", "0") == "0":
        finish(summary, as_json)
