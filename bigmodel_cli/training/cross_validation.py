"""`bigmodel train --folds K`: K-fold cross-validation over train+val, one model per fold.

    bigmodel train -r breast-cancer-mlp --folds 5      # -> runs/<name>/fold_1..5/, cv.json

Folds are stratified for classification (KFold for regression) and seeded. Each fold is a
full run directory (checkpoints, metrics.jsonl), evaluated at its best epoch; `cv.json`
holds every fold's validation metrics and their mean and standard deviation. The input
normalisation is the one prepare-data fitted on the train split. Train and validation rows
are pooled into one memory-mapped copy in the run directory (written in chunks, removed at
the end), and each fold picks its rows by index.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import atomic, console
from bigmodel_cli.console import fmt
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tasks.base import Split
from bigmodel_cli.training.loop import TrainData, fit, load_data

CHUNK_ROWS = 65536


def _splits(recipe, y: np.ndarray, folds: int):
    from sklearn.model_selection import KFold, StratifiedKFold

    if recipe.task == "classification":
        counts = np.bincount(y)
        rare = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        if counts[rare] < folds:
            raise UsageError(f"--folds {folds}: class index {rare} has only {counts[rare]} rows in train+val; "
                             f"use at most {counts[rare]} folds")
        return StratifiedKFold(folds, shuffle=True, random_state=recipe.seed).split(np.zeros(len(y)), y)
    return KFold(folds, shuffle=True, random_state=recipe.seed).split(np.zeros(len(y)))


def cross_validate(recipe, run_dir: str | Path, folds: int, recipe_ref: str | None = None) -> dict[str, Any]:
    if folds < 2:
        raise UsageError(f"--folds {folds}: cross-validation needs at least 2 folds")
    run_dir = Path(run_dir)
    data = load_data(recipe, recipe_ref)
    with _pooled(data, run_dir) as (x, y):
        if len(y) < folds:
            raise UsageError(f"--folds {folds}: only {len(y)} rows in train+val")
        results = []
        for k, (train_idx, val_idx) in enumerate(_splits(recipe, np.asarray(y), folds), start=1):
            console.info(f"fold {k}/{folds}: {len(train_idx)} train rows, {len(val_idx)} validation rows")
            fold = TrainData(Split(x, y, np.sort(train_idx)), Split(x, y, np.sort(val_idx)), data.manifest)
            summary = fit(recipe, run_dir / f"fold_{k}", data=fold)
            best = summary["best_metrics"] or summary["last_metrics"]
            results.append({"fold": k, "train_rows": len(train_idx), "val_rows": len(val_idx),
                            "best_epoch": summary["best_epoch"], "run_dir": summary["run_dir"],
                            "metrics": {m: v for m, v in best.items() if m.startswith("val_")}})

    names = sorted({m for r in results for m in r["metrics"]})
    aggregate = {}
    for name in names:
        values = [r["metrics"].get(name) for r in results]
        defined = np.array([v for v in values if v is not None], dtype=np.float64)
        aggregate[name] = {"mean": float(defined.mean()) if len(defined) else None,
                           "std": float(defined.std(ddof=1)) if len(defined) > 1 else None,
                           "folds_defined": int(len(defined))}
    report = {"recipe": recipe.name, "folds": folds, "rows": int(len(y)),
              "monitor": recipe.train.early_stopping.monitor, "per_fold": results, "metrics": aggregate}
    atomic.write_json(run_dir / "cv.json", report)
    _print(report)
    return report


@contextlib.contextmanager
def _pooled(data: TrainData, run_dir: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Train then validation rows in one memory-mapped pair of arrays, copied chunk by chunk."""
    parts = [data.train, data.val]
    n = sum(len(p) for p in parts)
    folder = run_dir / ".cv_pool.tmp"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        first = parts[0]
        x = np.lib.format.open_memmap(folder / "x.npy", "w+", first.x.dtype, (n, *first.x.shape[1:]))
        y = np.lib.format.open_memmap(folder / "y.npy", "w+", first.y.dtype, (n,))
        at = 0
        for part in parts:
            for start in range(0, len(part), CHUNK_ROWS):
                xs, ys = part.take(np.arange(start, min(start + CHUNK_ROWS, len(part))))
                x[at:at + len(xs)], y[at:at + len(ys)] = xs, ys
                at += len(xs)
        x.flush()
        y.flush()
        yield np.load(folder / "x.npy", mmap_mode="r"), np.load(folder / "y.npy", mmap_mode="r")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _print(report: dict[str, Any]) -> None:
    if console.is_quiet():
        return
    from rich.table import Table

    names = list(report["metrics"])
    table = Table("fold", *names, box=None)
    for r in report["per_fold"]:
        table.add_row(str(r["fold"]), *[fmt(r["metrics"].get(n)) for n in names])
    table.add_row("mean ± std", *[f"{fmt(report['metrics'][n]['mean'])} ± {fmt(report['metrics'][n]['std'])}"
                                  for n in names])
    console.console.print(table)
