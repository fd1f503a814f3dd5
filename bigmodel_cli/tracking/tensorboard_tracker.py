"""TensorBoard behind the tracker interface: scalars per epoch in RUN_DIR/tensorboard, the recipe as text.

    tensorboard --logdir runs/digits-cnn/tensorboard
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError


class TensorBoardTracker:
    def __init__(self, run_dir: Path, recipe: dict[str, Any], tags: dict[str, str]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("report_to tensorboard needs the tensorboard package: "
                             "pip install 'bigmodel-cli[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("recipe", "```\n" + json.dumps(recipe, indent=2) + "\n```", 0)
        if tags:
            self.writer.add_text("tags", "\n".join(f"{k}: {v}" for k, v in sorted(tags.items())), 0)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def log_summary(self, summary: dict[str, Any]) -> None:
        best = summary.get("best_metrics") or {}
        for key, value in best.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"best/{key}", value, summary.get("best_epoch") or 0)
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()
