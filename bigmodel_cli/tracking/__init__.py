"""Experiment tracking: what `bigmodel train --report-to mlflow,tensorboard` logs, and where eval/export add to it.

    tracker = open_trackers(["mlflow"], run_dir, recipe, tags=data_tags(manifest), resume=False)  # rank 0 only
    tracker.log_epoch(row)          # each metrics.jsonl row, as it is written
    tracker.log_summary(summary)    # the best checkpoint's metrics, at the end
    tracker.close("FINISHED")       # or "FAILED" / "KILLED" (interrupted)
    log_artifacts(run_dir, [run_dir / "eval/test.json", ...], document=report, prefix="test")   # eval, export

Importing this package is cheap: MLflow (about 1 s to import) is only imported by the worker process that
talks to the store, and by `log_artifacts` when the run has an MLflow run to add to.
"""

from bigmodel_cli.tracking.mlflow_tracker import log_artifacts, read_tracking, tracking_uri
from bigmodel_cli.tracking.run_info import data_tags, flatten, git_commit
from bigmodel_cli.tracking.trackers import NAMES, Trackers, open_trackers, parse_names

__all__ = ["NAMES", "Trackers", "data_tags", "flatten", "git_commit", "log_artifacts", "open_trackers",
           "parse_names", "read_tracking", "tracking_uri"]
