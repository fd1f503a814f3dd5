"""`bigmodel eval` on 100,000 tabular rows vs the hand-written equivalent, and 1,000,000 rows in bounded memory.

    make bench            # or: .venv/bin/python benchmarks/bench_eval.py [--rows N] [--memory-rows N] [--threads N]

Speed: a binary MLP checkpoint (20 features) is evaluated on a 100,000-row test split by
`evaluate()` (the engine of `bigmodel eval`, in-process: load the run, stream the split
through the model, every metric, the predictions CSV and the JSON report; plots timed
separately) and by a hand-written script: torch.load, the model, a batched torch loop and
one scikit-learn call per metric of the same report. Median of REPEAT runs each, side by side.

Memory: the engine evaluates a 1,000,000 x 20 split in a fresh process, whose peak RSS must
stay under 4 GiB. It is read from /proc/self/status (VmHWM): on Linux a child's ru_maxrss
starts from its parent's RSS at fork, which would report this process's memory instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPEAT = 5
FEATURES = 20
LIMIT_GIB = 4.0


def write_prepared(dest: Path, n_test: int, seed: int = 0) -> Path:
    """A prepared binary table (as `bigmodel prepare-data` writes it): 5,000 train, 2,000 val, n_test test rows."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=FEATURES)
    sizes = {"train": 5_000, "val": 2_000, "test": n_test}
    for split, n in sizes.items():
        (dest / split).mkdir(parents=True, exist_ok=True)
        x = np.lib.format.open_memmap(dest / split / "x.npy", mode="w+", dtype=np.float32, shape=(n, FEATURES))
        y = np.lib.format.open_memmap(dest / split / "y.npy", mode="w+", dtype=np.int64, shape=(n,))
        for start in range(0, n, 250_000):  # written in chunks: the 1M-row split never sits in memory at once
            rows = rng.normal(size=(min(250_000, n - start), FEATURES)).astype(np.float32) * 3 + 1
            x[start : start + len(rows)] = rows
            y[start : start + len(rows)] = ((rows - 1) @ weights + rng.normal(size=len(rows)) * 4 > 0)
        x.flush()
        y.flush()
    from bigmodel_cli.data import manifest as manifests

    manifest = {
        "format_version": manifests.FORMAT_VERSION, "name": "bench-eval", "task": "classification", "kind": "tabular",
        "source": "synthetic", "target": "y", "classes": ["negative", "positive"],
        "features": [f"f{i}" for i in range(FEATURES)], "input_shape": [FEATURES], "input_dtype": "float32",
        "splits": sizes, "seed": seed,
        "preprocessing": {"normalize": {"scale": 1.0, "mean": [1.0] * FEATURES, "std": [3.0] * FEATURES,
                                        "per": "feature", "method": "standard"}},
    }
    manifest["fingerprint"] = manifests.fingerprint(dest, manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def train_run(prepared: Path, run_dir: Path) -> Path:
    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.training.loop import fit

    console.quiet(True)
    recipe = resolve("breast-cancer-mlp", {"data.prepared": str(prepared)},
                     ["train.epochs=2", "train.loss=cross_entropy", "eval.fail_under={}", "train.batch_size=256"])
    fit(recipe, run_dir)
    return run_dir


def model_name(run_dir: Path) -> str:
    """The measured model as every benchmark names it: 'mlp (hidden [64, 32], dropout 0.1; 3,458 parameters)'."""
    import torch
    import yaml

    from bigmodel_cli.export.metadata import describe_model

    model = yaml.safe_load((run_dir / "recipe.yaml").read_text())["model"]
    state = torch.load(run_dir / "checkpoints/best.pt", map_location="cpu", weights_only=True)["model"]
    return describe_model({**model, "parameters": sum(t.numel() for t in state.values())})


def hand_written(run_dir: Path, prepared: Path) -> dict[str, float]:
    """What a user writes without the tool: load the checkpoint, a torch loop, one sklearn call per metric."""
    import torch
    from sklearn import metrics as skm

    from bigmodel_cli.models.mlp import mlp

    state = torch.load(run_dir / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    model = mlp(2, [FEATURES], hidden=[64, 32], dropout=0.1)
    model.load_state_dict(state["networks"]["model"])
    model.eval()
    x = np.load(prepared / "test/x.npy", mmap_mode="r")
    y = np.load(prepared / "test/y.npy", mmap_mode="r")
    logits = []
    with torch.inference_mode():
        for start in range(0, len(x), 512):
            batch = (torch.from_numpy(np.array(x[start : start + 512])) - 1.0) / 3.0
            logits.append(model(batch))
    proba = torch.softmax(torch.cat(logits), dim=1).numpy()
    pred = proba.argmax(axis=1)
    out = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred)}
    for avg, suffix in (("macro", ""), ("micro", "_micro"), ("weighted", "_weighted")):
        out["precision" + suffix] = skm.precision_score(y, pred, average=avg, zero_division=0)
        out["recall" + suffix] = skm.recall_score(y, pred, average=avg, zero_division=0)
        out["f1" + suffix] = skm.f1_score(y, pred, average=avg, zero_division=0)
    out["roc_auc"] = skm.roc_auc_score(y, proba[:, 1])
    out["average_precision"] = skm.average_precision_score(y, proba[:, 1])
    out["log_loss"] = skm.log_loss(y, proba)
    out["confusion_matrix"] = skm.confusion_matrix(y, pred).tolist()
    out["per_class"] = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    return out


def ours(run_dir: Path, plots: bool) -> dict:
    from bigmodel_cli.evaluation.evaluate import Options, evaluate

    return evaluate(run_dir, Options(plots=plots))


def interleaved(cases: dict[str, Callable[[], object]]) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run every case once per round, REPEAT rounds after a warm-up: a busy spell slows all cases alike."""
    results = {name: fn() for name, fn in cases.items()}  # warm-up: imports, page cache
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(REPEAT):
        for name, fn in cases.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, results


PEAK_RSS = """
import resource, sys
from pathlib import Path
from bigmodel_cli import console
from bigmodel_cli.evaluation.evaluate import Options, evaluate
console.quiet(True)
report = evaluate(sys.argv[1], Options(plots=True))
status = Path("/proc/self/status")
lines = status.read_text().splitlines() if status.exists() else []
hwm = [line.split()[1] for line in lines if line.startswith("VmHWM")]  # KiB, this process only
print(report["n"], report["metrics"]["accuracy"], hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_gib(run_dir: Path) -> tuple[int, float, float]:
    """(rows, peak RSS in GiB, seconds) of `evaluate()` with plots, in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(run_dir)], capture_output=True, text=True, check=True)
    n, _, kib = proc.stdout.split()
    return int(n), int(kib) / 2**20, time.perf_counter() - start


def peak_memory(rows: int, root: Path, small_run: Path) -> None:
    prepared = write_prepared(root / "data-big", rows, seed=1)
    run_dir = train_run(prepared, root / "run-big")
    print(f"\nmemory: peak RSS of evaluate() with plots in a fresh process (inputs float32 x {FEATURES} features)")
    gib = 0.0
    for run in (small_run, run_dir):
        n, gib, seconds = peak_rss_gib(run)
        print(f"{n:>12,} rows ({n * FEATURES * 4 / 2**30:.2f} GiB of inputs): peak RSS {gib:.2f} GiB, {seconds:.1f} s")
    print(f"goal: {rows:,} rows under {LIMIT_GIB:.0f} GiB -> {'met' if gib < LIMIT_GIB else 'NOT met'} ({gib:.2f} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = write_prepared(root / "data", args.rows)
        run_dir = train_run(prepared, root / "run")
        cases = {"hand-written: torch loop + one sklearn call per metric": lambda: hand_written(run_dir, prepared),
                 "bigmodel evaluate(): metrics + predictions CSV + JSON": lambda: ours(run_dir, False),
                 "bigmodel evaluate() with the 4 PNG plots": lambda: ours(run_dir, True)}
        times, results = interleaved(cases)
        base_name, ours_name, _ = cases
        base, report = results[base_name], results[ours_name]
        for name in ("accuracy", "f1", "roc_auc", "log_loss"):
            assert abs(report["metrics"][name] - base[name]) < 1e-4, (name, report["metrics"][name], base[name])
        print(f"eval of a checkpoint of {model_name(run_dir)} on {args.rows:,} rows x {FEATURES} features (binary), "
              f"{REPEAT} interleaved rounds, torch threads {torch.get_num_threads()}")
        print(f"{'':<56} {'median s':>9} {'best s':>8} {'hand-written / this':>20}")
        for name, seconds in times.items():
            ratios = [b / t for b, t in zip(times[base_name], seconds, strict=True)]
            print(f"{name:<56} {statistics.median(seconds):>9.3f} {min(seconds):>8.3f} "
                  f"{statistics.median(ratios):>19.2f}x")
        ratio = statistics.median([b / t for b, t in zip(times[base_name], times[ours_name], strict=True)])
        print(f"goal: evaluate() at least as fast as hand-written -> {'met' if ratio >= 1 else 'NOT met'} "
              f"({ratio:.2f}x, median of per-round ratios; the shared metrics agree to 1e-4)")
        if args.memory_rows:
            peak_memory(args.memory_rows, root, run_dir)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"(this benchmark process itself peaked at {own:.2f} GiB)")


if __name__ == "__main__":
    main()
