"""The process that talks to MLflow for one training run, so that importing MLflow (about 1 s) and writing to its
store happen beside the training loop instead of inside it.

    python -m bigmodel_cli.tracking.mlflow_worker      # started by MlflowTracker, fed JSON lines on stdin

stdin, one JSON object a line:
    {"op": "connect", "uri"}     (optional, first: import MLflow and open the store ahead of "open")
    {"op": "open", "uri", "experiment", "artifact_location", "run_id" (resume) or null, "run_name", "run_dir",
     "params": {dotted key: str}, "tags": {...}}
    {"op": "metrics", "step": 3, "values": {"val_loss": 0.12, ...}}
    {"op": "tags", "tags": {...}}
    {"op": "close", "status": "FINISHED" | "FAILED" | "KILLED"}
stdout, one JSON object a line: {"event": "open", "run_id", "experiment_id"}, {"event": "error", "message"},
{"event": "closed"}. The end of stdin without "close" (the trainer died) ends the run as KILLED.
SIGINT and SIGTERM are ignored: Ctrl-C reaches the whole process group, and the trainer decides how the run ends.

The functions below are also used in-process by `log_artifacts` (eval, export).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def clean_key(key: str) -> str:
    """A name MLflow accepts (letters, digits, _ - . space /)."""
    return _BAD_KEY_CHARS.sub("_", key)


def quiet_logs() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(uri: str):
    from mlflow.tracking import MlflowClient

    quiet_logs()  # after the import: MLflow sets its loggers to INFO when imported
    return MlflowClient(tracking_uri=uri)


def open_run(client, msg: dict[str, Any]) -> tuple[str, str]:
    """Create the run (or reopen `msg["run_id"]` on resume); returns (run_id, experiment_id)."""
    from mlflow.entities import Param, RunTag

    if msg.get("run_id"):
        run = client.get_run(msg["run_id"])
        client.update_run(run.info.run_id, status="RUNNING")
        if msg.get("tags"):
            client.log_batch(run.info.run_id, tags=[RunTag(clean_key(k), str(v)) for k, v in msg["tags"].items()])
        return run.info.run_id, run.info.experiment_id
    experiment = client.get_experiment_by_name(msg["experiment"])
    if experiment is None:
        experiment_id = client.create_experiment(msg["experiment"], artifact_location=msg.get("artifact_location"))
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=msg.get("run_name"),
                            tags={clean_key(k): str(v) for k, v in (msg.get("tags") or {}).items()})
    params = [Param(clean_key(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in (msg.get("params") or {}).items()]
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    return run.info.run_id, experiment_id


def log_metrics(client, run_id: str, values: dict[str, Any], step: int) -> int:
    """Log the finite numbers of `values` at `step`; returns how many were logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(clean_key(k), float(v), now, int(step)) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    return len(metrics)


def write_tracking(run_dir: str | Path, uri: str, run_id: str, experiment_id: str) -> None:
    """RUN_DIR/tracking.json: where the run's MLflow run is, so eval and export add to it."""
    from bigmodel_cli import atomic

    path = Path(run_dir) / "tracking.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        document = {}
    document["mlflow"] = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}
    atomic.write_json(path, document)


def _say(event: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
    except OSError:  # the trainer is gone: nobody reads; let the exit's flush succeed quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    client = run_id = connected = None
    status = "KILLED"  # unless told otherwise
    failed = False
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "close":
            status = msg.get("status", "FINISHED")
            break
        if failed:
            continue  # the error was reported once; keep reading so the trainer never blocks on a full pipe
        try:
            if op == "connect":  # started ahead (mlflow_tracker.prestart): import MLflow, open the store, quietly
                try:
                    client, connected = connect(msg["uri"]), msg["uri"]
                except Exception:  # noqa: BLE001  ("open" connects again and reports what fails)
                    client = None
                continue
            if op == "open":
                if client is None or connected != msg["uri"]:
                    client = connect(msg["uri"])
                run_id, experiment_id = open_run(client, msg)
                write_tracking(msg["run_dir"], msg["uri"], run_id, experiment_id)
                _say({"event": "open", "run_id": run_id, "experiment_id": experiment_id})
            elif op == "metrics":
                log_metrics(client, run_id, msg["values"], msg["step"])
            elif op == "tags":
                from mlflow.entities import RunTag

                client.log_batch(run_id, tags=[RunTag(clean_key(k), str(v)) for k, v in msg["tags"].items()])
        except Exception as e:  # the store refused: report once, keep draining stdin
            failed = True
            _say({"event": "error", "message": _first_line(e)})
    if client is not None and run_id is not None and not failed:
        try:
            client.set_terminated(run_id, status=status)
        except Exception as e:
            _say({"event": "error", "message": _first_line(e)})
    _say({"event": "closed"})
    sys.stderr.flush()
    os._exit(0)  # every call above has returned; MLflow's and SQLAlchemy's teardown took the trainer 0.8 s to wait


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    main()
