"""Data-parallel scaling on this machine: `bigmodel train` with 1 process against `--devices 2` (DDP, gloo).

    .venv/bin/python benchmarks/bench_distributed.py [--rows 8192] [--epochs 3]

Same prepared data and model as bench_train.py (cnn_small at width 32, random 3x32x32, global batch 128).
1 process uses all cores; 2 processes get half the cores each (OMP_NUM_THREADS), so on a CPU
this shows the cost of the gradient all-reduce rather than a speed-up; on N GPUs the same
command measures GPU scaling. Samples/s are global, for the training phase, best epoch after
the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import MODELS, write_prepared  # noqa: E402


def train(root: Path, processes: int, epochs: int, global_batch: int) -> float:
    recipe = root / "bench.yaml"
    recipe.write_text(json.dumps({"name": "bench", "data": {"prepared": str(root / "data")},
                                  "model": {"name": "cnn_small", "args": MODELS["cnn_small"][0]},
                                  "train": {"epochs": epochs, "batch_size": global_batch // processes}}))
    run = root / f"run{processes}"
    env = {**os.environ, "CI": "1"}
    if processes == 1:
        env.pop("OMP_NUM_THREADS", None)
    subprocess.run([sys.executable, "-m", "bigmodel_cli", "train", "-r", str(recipe), "--run-dir", str(run),
                    "--devices", str(processes)], env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["samples_per_s"] for r in rows[1:]) if len(rows) > 1 else rows[0]["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_prepared(root / "data", args.rows, 1024)
        one = train(root, 1, args.epochs, 128)
        two = train(root, 2, args.epochs, 128)
    print(f"cnn_small width 32, 3x32x32, global batch 128, {os.cpu_count()} CPU cores, gloo")
    print(f"1 process  : {one:8.0f} samples/s")
    print(f"2 processes: {two:8.0f} samples/s  ({two / one:.2f}x of 1 process)")


if __name__ == "__main__":
    main()
