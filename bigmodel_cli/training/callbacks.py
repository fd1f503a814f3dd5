"""What every epoch leaves behind, on rank 0: metrics.jsonl, the trackers (MLflow, TensorBoard), and curves.png.

    callbacks = Callbacks(recipe, run_dir, is_main, monitor, data, resume)   # opens the trackers (exit 2 if a
    callbacks.epoch_end(history, row)                                          # store cannot be written)
    callbacks.close(history, summary=summary)      # or close(history, error=e)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.errors import Interrupted
from bigmodel_cli.training.progress import plot_curves


def tracker_names(cfg) -> list[str]:
    """`train.report_to`, with the older `train.tensorboard: true` meaning report_to tensorboard too."""
    names = list(cfg.report_to)
    return names + ["tensorboard"] if cfg.tensorboard and "tensorboard" not in names else names


class Callbacks:
    def __init__(self, recipe, run_dir: Path, is_main: bool, monitor: str, data: dict[str, Any], resume: bool):
        from bigmodel_cli.tracking import Trackers, data_tags, open_trackers

        self.run_dir, self.is_main, self.monitor = run_dir, is_main, monitor
        names = tracker_names(recipe.train)
        self.trackers = (open_trackers(names, run_dir, recipe, tags=data_tags(data), resume=resume)
                         if is_main and names else Trackers([]))

    def epoch_end(self, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
        if self.is_main:
            atomic.write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        self.trackers.log_epoch(row)

    def close(self, history: list[dict[str, Any]], summary: dict[str, Any] | None = None,
              error: BaseException | None = None) -> None:
        if history and self.is_main:
            plot_curves(history, self.monitor, self.run_dir / "curves.png")
        if error is not None:
            self.trackers.close("KILLED" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "FAILED")
            return
        if summary is not None:
            self.trackers.log_summary(summary)
        self.trackers.close("FINISHED")
