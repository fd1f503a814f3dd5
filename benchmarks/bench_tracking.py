"""What MLflow tracking adds to a training run: `bigmodel train` with and without `--report-to mlflow`.

    .venv/bin/python benchmarks/bench_tracking.py [--epochs 20] [--repeats 3]

Recipe digits-cnn (sklearn digits, cnn_small width 32, batch 64, CPU), 20 epochs with early stopping off,
run as the real command in a subprocess; the two variants alternate so machine load hits both alike, after one
warm-up pair (the first tracked run also creates the SQLite store, runs/mlflow.db). Reports the median wall time
of the whole command and of the training loop (the summary's wall_time_s), and the time `import mlflow` takes in a
fresh interpreter (why MLflow lives in a worker process). Goal (issue 18): tracking adds at most 2 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def import_time() -> float:
    code = "import time; t = time.perf_counter(); import mlflow; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def train(cwd: Path, run: str, epochs: int, tracked: bool) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "bigmodel_cli", "train", "-r", "digits-cnn", "--run-dir", f"runs/{run}", "--json",
           "--set", f"train.epochs={epochs}", "--set", "train.early_stopping.patience=null"]
    cmd += ["--report-to", "mlflow"] if tracked else []
    env = {**os.environ, "CI": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    return wall, json.loads(proc.stdout)["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"import mlflow in a fresh interpreter: {import_time():.2f} s (load {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        subprocess.run([sys.executable, "-m", "bigmodel_cli", "prepare-data", "-r", "digits-cnn"], cwd=cwd,
                       check=True, capture_output=True, env={**os.environ, "CI": "1"})
        train(cwd, "warm-off", args.epochs, False)
        train(cwd, "warm-on", args.epochs, True)
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for i in range(args.repeats):
            for tracked in ((False, True) if i % 2 == 0 else (True, False)):
                results[tracked].append(train(cwd, f"{'on' if tracked else 'off'}-{i}", args.epochs, tracked))
        loads = os.getloadavg()
    print(f"digits-cnn, {args.epochs} epochs, {args.repeats} repeats each, medians (load {loads[0]:.1f}):")
    off_wall = statistics.median(w for w, _ in results[False])
    on_wall = statistics.median(w for w, _ in results[True])
    off_loop = statistics.median(t for _, t in results[False])
    on_loop = statistics.median(t for _, t in results[True])
    print(f"  command wall time  without {off_wall:7.2f} s   with mlflow {on_wall:7.2f} s   "
          f"overhead {100 * (on_wall / off_wall - 1):+.1f} %")
    print(f"  training loop      without {off_loop:7.2f} s   with mlflow {on_loop:7.2f} s   "
          f"overhead {100 * (on_loop / off_loop - 1):+.1f} %")
    print("  each run: " + ", ".join(f"{'on' if k else 'off'} {w:.1f}" for k in (False, True) for w, _ in results[k]))
    print(f"goal: <= 2 % -> {'met' if on_wall / off_wall - 1 <= 0.02 else 'NOT met'} (command wall time)")


if __name__ == "__main__":
    main()
