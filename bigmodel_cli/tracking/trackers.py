"""Open the trackers a run reports to, behind one small interface the training loop calls on rank 0.

    tracker = open_trackers("mlflow,tensorboard", run_dir, recipe, tags)
    for row in rows: tracker.log_epoch(row)
    tracker.log_summary(summary); tracker.close("FINISHED")

A tracker that fails after training has started warns once and stops; it never stops the training.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from bigmodel_cli.errors import UsageError

NAMES = ("mlflow", "tensorboard")
STATUSES = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED", "interrupted": "KILLED"}


class Tracker(Protocol):
    def log_epoch(self, row: dict[str, Any]) -> None: ...
    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


def parse_names(names: str | Iterable[str] | None) -> list[str]:
    """`"mlflow, tensorboard"` or a list -> ["mlflow", "tensorboard"]; "none" or empty -> []."""
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else [n for item in names for n in str(item).split(",")]
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if name in ("", "none"):
            continue
        if name not in NAMES:
            import difflib

            near = difflib.get_close_matches(name, NAMES, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UsageError(f"report_to: '{raw.strip()}' is not a tracker (choose from {', '.join(NAMES)}){hint}")
        if name not in out:
            out.append(name)
    return out


def status_name(status: str) -> str:
    return STATUSES.get(status.lower(), status.upper())


class Trackers:
    """Every tracker of a run; the loop calls these, each forwards to all (none: does nothing)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_epoch(row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_summary(summary)

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status_name(status))

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from bigmodel_cli.errors import Interrupted

        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, (Interrupted, KeyboardInterrupt)):
            self.close("KILLED")
        else:
            self.close("FAILED")


def open_trackers(names: str | Iterable[str] | None, run_dir: str | Path, recipe: Any,
                  tags: dict[str, str] | None = None, resume: bool = False) -> Trackers:
    """Start each named tracker for `run_dir`; a store that cannot be written is a UsageError (exit 2) here,
    before training starts. `recipe` is the resolved recipe (a `schema.Recipe` or its dict); `resume` continues
    the run's MLflow run (its id is in RUN_DIR/tracking.json)."""
    from bigmodel_cli.tracking.run_info import recipe_dict

    chosen = parse_names(names)
    run_dir = Path(run_dir)
    data = recipe_dict(recipe)
    opened: list[Tracker] = []
    try:
        for name in chosen:
            if name == "mlflow":
                from bigmodel_cli.tracking.mlflow_tracker import MlflowTracker

                opened.append(MlflowTracker(run_dir, data, tags or {}, resume=resume))
            else:
                from bigmodel_cli.tracking.tensorboard_tracker import TensorBoardTracker

                opened.append(TensorBoardTracker(run_dir, data, tags or {}))
    except BaseException:
        for t in opened:
            t.close("FAILED")
        raise
    return Trackers(opened)
