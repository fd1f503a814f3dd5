"""MLflow for a training run: the resolved recipe as parameters, each epoch's row as metrics (step = epoch), the
data fingerprint and git commit as tags; eval and export add their files to the same run.

    MLFLOW_TRACKING_URI=http://mlflow:5000 bigmodel train -r digits-cnn --report-to mlflow
    bigmodel train -r digits-cnn --report-to mlflow      # store: sqlite:///<abs>/runs/mlflow.db beside the runs

The store is MLFLOW_TRACKING_URI when set, else a SQLite file beside the run directories (never MLflow's deprecated
file store); the experiment is MLFLOW_EXPERIMENT_NAME, else the recipe's name; the run is named after its directory.
MLflow calls happen in a worker process (bigmodel_cli.tracking.mlflow_worker) so training never waits on them;
`bigmodel train` starts it ahead (`prestart`), so that MLflow's start-up overlaps torch's import. A
local SQLite store is checked here in milliseconds (a file that cannot be written: exit 2 before training); any
other store is opened before training starts (a store that cannot be reached: exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bigmodel_cli import __version__, console
from bigmodel_cli.errors import UsageError, named_line
from bigmodel_cli.tracking.run_info import flatten, git_commit, param_value

OPEN_TIMEOUT_S = float(os.environ.get("BIGMODEL_MLFLOW_OPEN_TIMEOUT", "120"))
CLOSE_TIMEOUT_S = 120.0


def tracking_uri(run_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI, else `sqlite:///<absolute parent of the run directory>/mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{(Path(run_dir).resolve().parent / 'mlflow.db').as_posix()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for another scheme)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///") or rest == "///" or rest.startswith("///:memory:"):
        raise UsageError(f"MLflow store {uri}: an in-memory SQLite store keeps nothing; give a file, "
                         "e.g. sqlite:///runs/mlflow.db")
    return Path(rest[3:].split("?", 1)[0])


def check_sqlite(uri: str) -> None:
    """Can this process create and write the SQLite file? One line naming it when not (exit 2)."""
    import sqlite3

    path = sqlite_path(uri)
    hint = "; set MLFLOW_TRACKING_URI to a store you can write"
    blocking = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"MLflow store {uri}: {blocking} is a file, not a folder{hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"MLflow store {uri}: cannot create {path.parent} ({e.strerror}){hint}") from None
    try:
        db = sqlite3.connect(str(path), timeout=10)
        try:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock and reads the header: not a database, read-only...
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.Error as e:
        raise UsageError(f"MLflow store {uri}: cannot write {path} ({e}){hint}") from None


def artifact_location(uri: str) -> str | None:
    """New experiments in a SQLite store keep their artifacts beside the database (`mlartifacts/`)."""
    path = sqlite_path(uri)
    return (path.resolve().parent / "mlartifacts").as_uri() if path is not None else None


def read_tracking(run_dir: str | Path) -> dict[str, Any]:
    """RUN_DIR/tracking.json (empty when the run was not tracked)."""
    try:
        data = json.loads((Path(run_dir) / "tracking.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Ahead:
    """A worker started by `prestart`, not yet taken by a tracker: its process and whether it opened the run."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, opened: bool):
        self.proc, self.run_dir, self.opened = proc, run_dir, opened


_AHEAD: dict[str, _Ahead] = {}  # store URI -> the worker started ahead for it


def _spawn() -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
           "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")}
    return subprocess.Popen([sys.executable, "-m", "bigmodel_cli.tracking.mlflow_worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)


def _open_message(uri: str, run_dir: Path, recipe: dict[str, Any], tags: dict[str, str],
                  resume_id: str | None) -> dict[str, Any]:
    """What the worker needs to create the run (or reopen `resume_id`): store, experiment, parameters, tags."""
    all_tags = {"mlflow.source.name": "bigmodel train", "mlflow.source.type": "LOCAL",
                "bigmodel.version": __version__, "bigmodel.recipe": str(recipe.get("name")),
                "bigmodel.run_dir": str(run_dir.resolve()), **tags}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    return {"op": "open", "uri": uri, "run_dir": str(run_dir),
            "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME") or str(recipe.get("name")),
            "artifact_location": artifact_location(uri), "run_id": resume_id, "run_name": run_dir.resolve().name,
            "params": {} if resume_id else {k: param_value(v) for k, v in flatten(recipe).items()},
            "tags": all_tags}


def _check_store(uri: str) -> None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UsageError("report_to mlflow needs MLflow: pip install 'bigmodel-cli[ops]'")
    if sqlite_path(uri) is not None:
        check_sqlite(uri)


def prestart(run_dir: str | Path, recipe: dict[str, Any], resume: bool = False) -> None:
    """Start the MLflow worker for `run_dir` now, before the trainer imports torch and loads its data, and have it
    open the run (a new one; on --resume only the store): the tracker then takes it over.

    Importing MLflow, opening its store and creating the run cost the worker about 2 s of CPU.
    Started when the tracker opens, that ran beside the first epochs and took a core from them
    (+17 % on a 20-epoch digits-cnn run); started here, it runs beside the trainer's start-up,
    which uses one core. The store is checked here as the tracker would (exit 2). A run that
    fails before its tracker takes the worker over is ended by `abandon`.
    """
    run_dir = Path(run_dir)
    uri = tracking_uri(run_dir)
    if uri in _AHEAD:
        return
    _check_store(uri)
    first = {"op": "connect", "uri": uri} if resume else _open_message(uri, run_dir, recipe, {}, None)
    proc = _spawn()
    try:
        proc.stdin.write(json.dumps(first, allow_nan=False, default=str) + "\n")
        proc.stdin.flush()
    except OSError:
        return
    _AHEAD[uri] = _Ahead(proc, run_dir, opened=not resume)


def abandon(status: str = "FAILED") -> None:
    """End the runs of workers no tracker took (the command failed before training): FAILED, or KILLED."""
    while _AHEAD:
        _end(_AHEAD.popitem()[1].proc, status)


def _end(proc: subprocess.Popen, status: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.write(json.dumps({"op": "close", "status": status}) + "\n")
    _finish(proc)


def _finish(proc: subprocess.Popen) -> bool:
    """Close the worker's stdin and wait for it to end, killing it past CLOSE_TIMEOUT_S (then True)."""
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    try:
        proc.wait(timeout=CLOSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    return False


class MlflowTracker:
    """Parent side of the worker: sends rows down a pipe, never waits for MLflow except at open (remote stores)
    and at close."""

    def __init__(self, run_dir: Path, recipe: dict[str, Any], tags: dict[str, str], resume: bool = False):
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri(run_dir)
        ahead = _AHEAD.pop(self.uri, None)
        if ahead is not None and ahead.run_dir.resolve() != self.run_dir.resolve():  # started for another run
            _end(ahead.proc, "KILLED")
            ahead = None
        if ahead is None:
            _check_store(self.uri)
        previous = read_tracking(run_dir).get("mlflow") if resume else None
        resume_id = previous["run_id"] if previous and previous.get("tracking_uri") == self.uri else None
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.error: str | None = None
        self.warned = False
        self.run_id: str | None = None
        self.proc = ahead.proc if ahead is not None else _spawn()
        self.reader = threading.Thread(target=self._read, name="mlflow-events", daemon=True)
        self.reader.start()
        if ahead is not None and ahead.opened:  # the run is open (or opening): add the data's tags
            if tags:
                self._send({"op": "tags", "tags": tags})
        else:
            self._send(_open_message(self.uri, self.run_dir, recipe, tags, resume_id))
        if sqlite_path(self.uri) is None:  # a remote store: know now whether it works, before any training
            event = self._wait({"open", "error"}, OPEN_TIMEOUT_S)
            if event is None or event["event"] == "error":
                reason = event["message"] if event else f"no answer in {OPEN_TIMEOUT_S:.0f} s"
                self._stop()
                raise UsageError(f"MLflow store {_redact(self.uri)}: cannot open a run ({reason}); check "
                                 "MLFLOW_TRACKING_URI")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "error" and self.error is None:
                self.error = event["message"]
            if event.get("event") == "open":
                self.run_id = event["run_id"]
            self.events.put(event)
        self.events.put({"event": "exited"})

    def _wait(self, wanted: set[str], timeout: float) -> dict[str, Any] | None:
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                return None
            if event["event"] in wanted or event["event"] == "exited":
                return event if event["event"] in wanted else None

    def _send(self, msg: dict[str, Any]) -> None:
        if self.proc.poll() is not None and self.error is None:
            self.error = f"the MLflow worker exited ({self.proc.returncode})"
        try:
            self.proc.stdin.write(json.dumps(msg, allow_nan=False, default=str) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.error = self.error or "the MLflow worker is gone"
        self._warn_once()

    def _warn_once(self) -> None:
        if self.error and not self.warned:
            self.warned = True
            console.warn(f"mlflow: {self.error}; tracking to {_redact(self.uri)} stopped (training goes on)")

    def log_epoch(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        self._send({"op": "metrics", "step": int(row["epoch"]), "values": _finite(values)})

    def log_summary(self, summary: dict[str, Any]) -> None:
        best = summary.get("best_metrics") or {}
        values = {f"best_{k}": v for k, v in best.items() if k not in ("epoch", "step")}
        values.update(best_epoch=summary.get("best_epoch"), epochs_run=summary.get("epochs_run"),
                      wall_time_s=summary.get("wall_time_s"))
        self._send({"op": "metrics", "step": int(summary.get("best_epoch") or 0), "values": _finite(values)})
        tags = {"bigmodel.monitor": summary.get("monitor"), "bigmodel.stopped_early": summary.get("stopped_early")}
        self._send({"op": "tags", "tags": {k: str(v) for k, v in tags.items() if v is not None}})

    def close(self, status: str = "FINISHED") -> None:
        self._send({"op": "close", "status": status})
        self._stop()
        self._warn_once()

    def _stop(self) -> None:
        if _finish(self.proc):
            self.error = self.error or f"the MLflow worker did not finish in {CLOSE_TIMEOUT_S:.0f} s"
        self.reader.join(timeout=5)


def _finite(values: dict[str, Any]) -> dict[str, float]:
    import math

    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _redact(uri: str) -> str:
    """A URI without its password (`postgresql://user:***@host/db`)."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)


def log_artifacts(run_dir: str | Path, files: list[str | Path], document: dict[str, Any] | None = None,
                  prefix: str | None = None) -> str | None:
    """Add `files` to the run's MLflow run (a file inside RUN_DIR keeps its folder: eval/test.json -> eval/), and
    the numbers of `document["metrics"]` as metrics `<prefix>_<name>` (eval: test_accuracy). Returns the MLflow
    run id; None, doing nothing, when the run was not tracked. A store that cannot be reached is a warning: the
    command's own results stand."""
    info = read_tracking(run_dir).get("mlflow")
    if not info or not info.get("run_id"):
        return None
    uri, run_id = info["tracking_uri"], info["run_id"]
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None and not db.is_file():
        console.warn(f"mlflow: the run's store {uri} is gone (was the run directory moved?); files not logged")
        return None
    run_root = Path(run_dir).resolve()
    try:
        from bigmodel_cli.tracking.mlflow_worker import connect, log_metrics

        client = connect(uri)
        for f in files:
            path = Path(f).resolve()
            if not path.is_file():
                continue
            try:
                folder = path.parent.relative_to(run_root).as_posix()
            except ValueError:
                folder = prefix or ""
            client.log_artifact(run_id, str(path), artifact_path=None if folder in ("", ".") else folder)
        metrics = (document or {}).get("metrics") or {}
        if metrics:
            log_metrics(client, run_id, {f"{prefix}_{k}" if prefix else k: v for k, v in metrics.items()}, 0)
    except Exception as e:
        console.warn(f"mlflow: could not add files to run {run_id} in {_redact(uri)} "
                     f"({named_line(e, 200)})")
        return None
    return run_id
