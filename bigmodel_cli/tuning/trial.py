"""One trial: a real `bigmodel train` subprocess in its own run directory, watched through its metrics.jsonl.

Each epoch row is reported to Optuna; when the pruner says so the subprocess gets SIGTERM, saves a checkpoint and
exits 130. The trial's value is the best value of the objective over its epochs. An interrupted trial (tune was
stopped) is queued again with the same parameters and `--resume`s its run directory when it runs next.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tuning.space import Space, set_arg

POLL_S = 0.2


@dataclass
class Setup:
    """What every trial of one `bigmodel tune` shares."""

    recipe_ref: str
    sets: list[str]
    space: Space
    objective: str
    direction: str  # maximize | minimize
    out: Path
    study_name: str
    env: dict[str, str]
    stop: threading.Event  # set when tune is interrupted


@dataclass
class Outcome:
    state: str  # COMPLETE | PRUNED | FAIL | INTERRUPTED
    value: float | None = None
    epochs: int = 0
    error: str | None = None
    usage_error: bool = False
    missing_objective: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as written so far (it is replaced atomically each epoch)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def best_value(rows: list[dict[str, Any]], objective: str, direction: str) -> float | None:
    values = [float(r[objective]) for r in rows if _number(r.get(objective))]
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "last.pt").is_file() or (run_dir / "checkpoints" / "last").is_dir()


def prepare_dir(setup: Setup, trial, values: dict[str, Any]) -> tuple[Path, bool]:
    """The trial's run directory, and whether it resumes an interrupted trial's checkpoint."""
    resume_dir = trial.user_attrs.get("resume_dir")
    run_dir = Path(resume_dir) if resume_dir else setup.out / f"trial_{trial.number:03d}"
    marker = run_dir / "tune.json"
    if not resume_dir and run_dir.exists() and any(run_dir.iterdir()):
        try:
            owner = json.loads(marker.read_text())
        except (OSError, ValueError):
            owner = {}
        raise UsageError(f"{run_dir} already holds a run (study '{owner.get('study', '?')}', trial "
                         f"{owner.get('trial', '?')}); tune into another folder (--out) or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(marker, {"study": setup.study_name, "trial": trial.number, "params": values,
                               "resumes": trial.user_attrs.get("resumes")})
    return run_dir, bool(resume_dir) and has_checkpoint(run_dir)


def command(setup: Setup, run_dir: Path, values: dict[str, Any], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "bigmodel_cli", "train", "-r", setup.recipe_ref, "--run-dir", str(run_dir)]
    for item in [*setup.sets, *(set_arg(k, v) for k, v in values.items())]:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def run(setup: Setup, trial, run_dir: Path, values: dict[str, Any], resume: bool) -> Outcome:
    """Train, report each epoch, prune or finish; never raises for a failed training (the Outcome says so)."""
    metrics = run_dir / "metrics.jsonl"
    started = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        log.write(f"$ {' '.join(command(setup, run_dir, values, resume))}\n")
        log.flush()
        proc = subprocess.Popen(command(setup, run_dir, values, resume), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=setup.env,
                                start_new_session=True)  # Ctrl-C reaches tune alone, which stops each trial once
    reported, outcome = 0, None
    try:
        while True:
            finished = proc.poll() is not None
            rows = read_rows(metrics)
            for row in rows[reported:]:
                reported += 1
                if setup.objective not in row:
                    logged = [k for k in row if k not in ("epoch", "step")]
                    outcome = Outcome("FAIL", epochs=reported, missing_objective=logged,
                                      error=f"objective '{setup.objective}' is not logged")
                    break
                if _number(row[setup.objective]):
                    trial.report(float(row[setup.objective]), int(row["epoch"]))
                    if not finished and trial.should_prune():
                        outcome = Outcome("PRUNED", value=float(row[setup.objective]), epochs=reported)
                        break
            if outcome is not None or finished:
                break
            if setup.stop.is_set():
                outcome = Outcome("INTERRUPTED", epochs=reported)
                break
            time.sleep(POLL_S)
        if proc.poll() is None:  # prune, stop, or a missing objective: SIGTERM saves a checkpoint, exit 130
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    rows = read_rows(metrics)
    duration = time.perf_counter() - started
    if outcome is not None:
        outcome.extra["duration_s"] = duration
        return outcome
    code = proc.returncode
    if code == 0:
        value = best_value(rows, setup.objective, setup.direction)
        if value is None:
            return Outcome("FAIL", epochs=len(rows), error=f"'{setup.objective}' was never defined in any epoch",
                           extra={"duration_s": duration})
        return Outcome("COMPLETE", value=value, epochs=len(rows), extra={"duration_s": duration})
    if code == 130:  # stopped from outside (SIGTERM to the trial): resumable
        return Outcome("INTERRUPTED", epochs=len(rows), extra={"duration_s": duration})
    return Outcome("FAIL", epochs=len(rows), error=_error_line(run_dir / "train.log") or f"exit {code}",
                   usage_error=code == 2, extra={"duration_s": duration, "exit_code": code})


def _error_line(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None
