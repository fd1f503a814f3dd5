"""What every epoch leaves behind, on rank 0: metrics.jsonl, TensorBoard scalars, and curves.png at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.training.progress import plot_curves
from bigmodel_cli.training.runtime import TensorBoard


class Callbacks:
    def __init__(self, recipe, run_dir: Path, is_main: bool, monitor: str):
        self.run_dir, self.is_main, self.monitor = run_dir, is_main, monitor
        self.tensorboard = TensorBoard(recipe.train.tensorboard and is_main, run_dir)

    def epoch_end(self, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
        if self.is_main:
            atomic.write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        self.tensorboard.log(row)

    def close(self, history: list[dict[str, Any]]) -> None:
        self.tensorboard.close()
        if history and self.is_main:
            plot_curves(history, self.monitor, self.run_dir / "curves.png")
