"""`train --resume` continues with the run's own resolved recipe, not with whatever the recipe file says now.

    bigmodel train -r digits-cnn --set train.epochs=40      # the run records epochs: 40
    bigmodel train -r digits-cnn --resume                   # continues to epoch 40
    bigmodel train -r digits-cnn --resume --set train.epochs=60   # more epochs: applied and recorded
    bigmodel train -r digits-cnn --resume --set train.optimizer.lr=0.1   # exit 2: would change the run

Overrides given with `--resume` that only change how the rest of the run is carried out (more
epochs, checkpoint frequency, processes, loader workers, TensorBoard) are applied and recorded in
`recipe.yaml` and `resumes.jsonl`; any other difference is refused, listing every one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic, console
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tracking.run_info import flatten

SAFE = ("train.epochs", "train.checkpoint_every_steps", "train.devices", "train.loader_workers", "train.tensorboard")
STEP_SCHEDULES = ("cosine", "linear", "onecycle")  # schedules whose shape depends on the total number of steps


def resume_recipe(run_dir: Path, flags: dict[str, Any], sets: list[str] | None) -> tuple[Any, dict[str, Any]]:
    """The run's recipe with the resume command's safe overrides applied, and what they changed (key: [old, new]);
    exit 2 listing any other difference."""
    from bigmodel_cli.config.recipe import resolve

    own_file = run_dir / "recipe.yaml"
    own = resolve(own_file)
    wanted = resolve(own_file, flags, sets)
    before, after = flatten(own.model_dump(mode="json")), flatten(wanted.model_dump(mode="json"))
    keys = sorted(set(before) | set(after))
    changed = {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}
    refused = [k for k in changed if k not in SAFE]
    if refused:
        listing = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise UsageError(f"--resume continues {run_dir} with its own recipe ({own_file}); these overrides would "
                         f"change the run: {listing}. Start a new run (another --run-dir) to change them")
    if not changed:
        return own, {}
    if "train.epochs" in changed and own.train.scheduler.name in STEP_SCHEDULES:
        console.warn(f"train.epochs {changed['train.epochs'][0]} -> {changed['train.epochs'][1]}: the "
                     f"{own.train.scheduler.name} schedule is stretched over the new number of steps from here on")
    console.info("resuming with " + ", ".join(f"{k}={v[1]!r} (was {v[0]!r})" for k, v in changed.items()))
    return wanted, {k: list(v) for k, v in changed.items()}


def record(run_dir: Path, changed: dict[str, Any]) -> None:
    """Rank 0: the overrides a resume applied, one JSON line each time."""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changed})
    path = run_dir / "resumes.jsonl"
    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic.write_text(path, previous + line + "\n")
