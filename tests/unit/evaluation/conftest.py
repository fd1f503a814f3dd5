"""Tiny trained runs for the evaluation tests: binary, multiclass, regression, imbalanced, a class absent.

Each is prepared and trained in-process for a couple of epochs (a few seconds) once per session;
tests copy a run before writing eval files into it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bigmodel_cli import console
from bigmodel_cli.data import manifest as manifests


def write_prepared(dest: Path, task: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                   classes: list[str] | None, features: list[str] | None = None) -> Path:
    """A prepared tabular dataset as `bigmodel prepare-data` writes it (manifest.json + split arrays)."""
    x_train = splits["train"][0]
    n_features = x_train.shape[1]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    for split, (x, y) in splits.items():
        (dest / split).mkdir(parents=True, exist_ok=True)
        np.save(dest / split / "x.npy", x.astype(np.float32))
        np.save(dest / split / "y.npy", y.astype(np.int64 if task == "classification" else np.float32))
    manifest = {
        "format_version": manifests.FORMAT_VERSION, "name": dest.name, "task": task, "kind": "tabular",
        "source": "synthetic", "target": "label", "classes": classes,
        "features": features or [f"f{i}" for i in range(n_features)],
        "input_shape": [n_features], "input_dtype": "float32", "splits": {s: len(y) for s, (_, y) in splits.items()},
        "seed": 0, "preprocessing": {"normalize": {"scale": 1.0, "mean": mean.tolist(),
                                                  "std": np.where(std > 0, std, 1).tolist(), "per": "feature",
                                                  "method": "standard"}},
    }
    manifest["fingerprint"] = manifests.fingerprint(dest, manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def train(prepared: Path, run_dir: Path, task: str = "classification", *sets: str) -> Path:
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.training.loop import fit

    recipe = resolve("breast-cancer-mlp", {"data.prepared": str(prepared), "task": task},
                     ["train.epochs=3", "train.early_stopping.patience=null", "eval.fail_under={}", *sets])
    fit(recipe, run_dir)
    return run_dir


def prepare_source(source: str, dest: Path, task: str = "classification") -> Path:
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    prepare(resolve("breast-cancer-mlp", {"data.prepared": str(dest), "data.source": source, "task": task}))
    return dest


def blobs(rng: np.random.Generator, counts: list[int], n_features: int = 6, spread: float = 1.5):
    """Gaussian blobs, one per class, `counts[c]` rows of class c (shuffled)."""
    centers = rng.normal(scale=spread, size=(len(counts), n_features))
    x = np.concatenate([rng.normal(size=(n, n_features)) + centers[c] for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """name -> trained run dir: binary, multiclass, regression, imbalanced, absent (class 2 not in test)."""
    root = tmp_path_factory.mktemp("eval-runs")
    rng = np.random.default_rng(0)
    was_quiet = console.is_quiet()
    console.quiet(True)
    try:
        out = {
            "binary": train(prepare_source("sklearn:breast_cancer", root / "bc"), root / "binary"),
            "multiclass": train(prepare_source("sklearn:wine", root / "wine"), root / "multiclass"),
            "regression": train(prepare_source("sklearn:diabetes", root / "diabetes", "regression"),
                                root / "regression", "regression"),
        }
        imbalanced = {s: blobs(rng, [n * 19, n], spread=0.6) for s, n in (("train", 20), ("val", 10), ("test", 10))}
        out["imbalanced"] = train(write_prepared(root / "imb", "classification", imbalanced, ["common", "rare"]),
                                  root / "imbalanced")
        absent = {s: blobs(np.random.default_rng(1), counts) for s, counts in
                  (("train", [60, 60, 60]), ("val", [15, 15, 15]), ("test", [20, 20, 0]))}
        out["absent"] = train(write_prepared(root / "absent", "classification", absent, ["a", "b", "c"]),
                              root / "absent")
    finally:
        console.quiet(was_quiet)
    return out


@pytest.fixture
def run_copy(runs, tmp_path):
    """A writable copy of one of the session's runs (eval writes into RUN_DIR/eval)."""
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(runs[name], dest)
        return dest
    return copy
