"""Median pruning against no pruning: does `bigmodel tune` find as good a digits-cnn configuration in half the time?

    .venv/bin/python benchmarks/bench_tune.py [--trials 30] [--pruned-trials 30] [--seed 0]

Recipe digits-cnn (sklearn digits, cnn_small, 15 epochs, early stopping patience 5, CPU), objective val_accuracy
(its early-stopping monitor), space below; each study runs one trial at a time with the same sampler seed, each
trial a real `bigmodel train` subprocess. The baseline is `--trials 30 --prune none`; the pruned study is
`--trials 30 --prune median`. The two studies run side by side (at the same time, so that machine load weighs on
both alike; `--sequential` runs one after the other). Training time is the sum of the trials' wall times
(subprocess start included).
Goal (issue 18): the pruned study's best is within 0.5 point of the unpruned best, in at most half its training time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """\
train.optimizer.lr: {float: [1.0e-4, 3.0e-2], log: true}
train.optimizer.name: {choice: [adamw, sgd]}
model.args.width: {int: [8, 48], step: 8}
"""


def start(cwd: Path, name: str, trials: int, prune: str, seed: int) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "bigmodel_cli", "tune", "-r", "digits-cnn", "--space", "space.yaml", "--trials",
           str(trials), "--prune", prune, "--study", name, "--seed", str(seed), "--json"]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "CI": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, time.perf_counter()


def finish(proc: subprocess.Popen, started: float) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"tune failed ({proc.returncode}): {err.strip().splitlines()[-1]}")
    doc = json.loads(out)
    doc["wall_s"] = time.perf_counter() - started
    doc["load"] = os.getloadavg()[0]
    return doc


def study(cwd: Path, name: str, trials: int, prune: str, seed: int) -> dict:
    return finish(*start(cwd, name, trials, prune, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="unpruned trials")
    parser.add_argument("--pruned-trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="also write both studies' JSON documents here")
    parser.add_argument("--sequential", action="store_true", help="run the studies one after the other")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "space.yaml").write_text(SPACE)
        subprocess.run([sys.executable, "-m", "bigmodel_cli", "prepare-data", "-r", "digits-cnn"], cwd=cwd,
                       check=True, capture_output=True, env={**os.environ, "CI": "1"})
        if args.sequential:
            full = study(cwd, "unpruned", args.trials, "none", args.seed)
            pruned = study(cwd, "pruned", args.pruned_trials, "median", args.seed)
        else:
            running = start(cwd, "unpruned", args.trials, "none", args.seed)
            pruned = study(cwd, "pruned", args.pruned_trials, "median", args.seed)
            full = finish(*running)
        if args.save:
            args.save.write_text(json.dumps({"unpruned": full, "pruned": pruned}))
    print("digits-cnn, objective val_accuracy (max), space:")
    print("".join(f"  {line}\n" for line in SPACE.splitlines()), end="")
    for label, doc in (("no pruning", full), ("median pruning", pruned)):
        c = doc["counts"]
        print(f"  {label:15s} {doc['trials_requested']} trials ({c['COMPLETE']} complete, {c['PRUNED']} pruned, "
              f"{c['FAIL']} failed): best {doc['best']['value']:.4f} (trial {doc['best']['trial']}), training "
              f"{doc['training_time_s']:.0f} s, study wall {doc['wall_s']:.0f} s, load {doc['load']:.1f}")
    gap = 100 * (full["best"]["value"] - pruned["best"]["value"])
    ratio = pruned["training_time_s"] / full["training_time_s"]
    epochs = [sum(t["epochs"] or 0 for t in doc["trials"]) for doc in (full, pruned)]
    print(f"  best gap {gap:+.2f} points (goal <= 0.5), training time ratio {ratio:.2f} (goal <= 0.50), "
          f"wall ratio {pruned['wall_s'] / full['wall_s']:.2f}, epochs trained {epochs[1]} / {epochs[0]} = "
          f"{epochs[1] / epochs[0]:.2f} (independent of machine load)")
    met = gap <= 0.5 and ratio <= 0.5
    print(f"goal: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
