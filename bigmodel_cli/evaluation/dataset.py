"""The split an evaluation reads: the run's own prepared data, another one (`--data DIR`), or raw rows.

    x, y, manifest = load_eval_split(run, "test")                        # data/<name>/test
    x, y, manifest = load_eval_split(run, "test", Path("data/2026-11"))  # a fresh month, same schema
    x, y, manifest = load_eval_split(run, "test", Path("new.csv"))       # raw rows with their labels

A raw table file (CSV, Parquet, JSONL) of a tabular or text run goes through the preprocessing the
run fitted on its train split (`preprocess.apply`: imputation, encoding, bins, tokenizer); every row
is evaluated and needs the target column, with labels the run knows.

Another prepared dataset must have the schema the run was trained on: same task, kind,
target, features in the same order, input shape and dtype. Its classes may be a subset of
the run's (a class absent this month); labels are then mapped onto the run's class indices.
Anything else is an exit-2 error naming the column. The run's own fitted normalisation is
what the model applies, whatever the other dataset's manifest says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.errors import UsageError


def load_eval_split(run, split: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Memory-mapped x, labels as the run's class indices (or float targets), and the data's manifest."""
    if split not in manifests.SPLITS:
        raise UsageError(f"--split {split}: expected one of {', '.join(manifests.SPLITS)}")
    if data_dir is not None and data_dir.is_file():
        return *raw_rows(run, data_dir), run.manifest
    folder = data_dir or Path(run.recipe.prepared_dir)
    if data_dir is None:  # the run's own prepared data: only while it is still what the run trained on
        from bigmodel_cli.run import prepared_split

        manifest, remap = run.manifest, None
        x, y = prepared_split(run, split)
    else:
        manifest = manifests.read(data_dir)
        remap = check_schema(run.manifest, manifest, data_dir)
        x, y = manifests.load_split(folder, split)
    if len(y) == 0:
        raise UsageError(f"split '{split}' of {folder} is empty; nothing to evaluate")
    if run.manifest["task"] == "classification":
        y = _class_indices(y, manifest, folder / split / "y.npy", remap)
    return x, y, manifest


def raw_rows(run, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets of a raw table file, through the run's fitted preprocessing."""
    from bigmodel_cli.data import preprocess
    from bigmodel_cli.data.sources import TABLE_SUFFIXES, read_source

    manifest, where = run.manifest, f"--data {path}"
    if manifest["kind"] not in ("tabular", "text") or path.suffix.lower() not in TABLE_SUFFIXES:
        raise UsageError(f"{where}: give a folder written by prepare-data, or (tabular and text runs) a raw "
                         f"{'/'.join(TABLE_SUFFIXES)} file; this run is {manifest['kind']}")
    table = read_source(str(path), run.recipe.data).table
    target = manifest["target"]
    if target not in table.column_names:
        raise UsageError(f"{where}: no target column '{target}' (columns: {', '.join(table.column_names[:20])})")
    if table.num_rows == 0:
        raise UsageError(f"{where}: no rows; nothing to evaluate")
    try:
        x = preprocess.apply(manifest, table)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    values = table[target].to_pylist()
    if manifest["task"] != "classification":
        y = np.array([np.nan if v is None or isinstance(v, str) and not _is_number(v) else float(v) for v in values])
        bad = np.flatnonzero(~np.isfinite(y))
        if len(bad):
            raise UsageError(f"{where}: row {bad[0] + 1}: target '{target}' is {values[bad[0]]!r}, not a number")
        return x, y.astype(np.float32)
    known = {name: i for i, name in enumerate(manifest["classes"])}
    y = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        label = _label(value)
        if label not in known:
            raise UsageError(f"{where}: row {row + 1}: target '{target}' is {value!r}, not a class the run knows "
                             f"({', '.join(manifest['classes'][:20])})")
        y[row] = known[label]
    return x, y


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label(value) -> str | None:
    """A raw label as prepare-data names classes: strings as they are, booleans as true/false, numbers by
    `prepared.number_label`."""
    from bigmodel_cli.data.prepared import number_label

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return number_label(value)


def check_schema(trained: dict[str, Any], other: dict[str, Any], data_dir: Path) -> np.ndarray | None:
    """Raise naming the first difference; returns the map data class index -> run class index, if any."""
    where = f"--data {data_dir}"
    for key in ("task", "kind", "target"):
        if other.get(key) != trained.get(key):
            raise UsageError(f"{where}: {key} is {other.get(key)!r}, the run was trained with {trained.get(key)!r}")
    _check_features(trained.get("features") or [], other.get("features") or [], where)
    for key in ("input_shape", "input_dtype"):
        if other.get(key) != trained.get(key):
            raise UsageError(f"{where}: {key} is {other.get(key)}, the run was trained with {trained.get(key)}")
    if trained["task"] != "classification":
        return None
    known = {name: i for i, name in enumerate(trained["classes"])}
    for name in other["classes"]:
        if name not in known:
            raise UsageError(f"{where}: class '{name}' of column '{other.get('target')}' is not one the run knows "
                             f"({', '.join(trained['classes'])})")
    if other["classes"] == trained["classes"]:
        return None
    return np.array([known[name] for name in other["classes"]], dtype=np.int64)


def _check_features(trained: list[str], other: list[str], where: str) -> None:
    missing = [f for f in trained if f not in other]
    if missing:
        raise UsageError(f"{where}: feature column '{missing[0]}' the run was trained on is missing")
    extra = [f for f in other if f not in trained]
    if extra:
        raise UsageError(f"{where}: feature column '{extra[0]}' is not one the run was trained on")
    for i, (want, got) in enumerate(zip(trained, other, strict=True)):
        if want != got:
            raise UsageError(f"{where}: feature column '{got}' is at position {i}, where the run expects '{want}'")


def _class_indices(y: np.ndarray, manifest: dict[str, Any], path: Path, remap: np.ndarray | None) -> np.ndarray:
    """Labels as int64 run class indices; a label outside the manifest's classes names its row."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{path}: class labels must be integers, found {y.dtype}")
    n_classes = len(manifest["classes"])
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if len(bad):
        raise UsageError(f"{path}: row {bad[0]} has class index {y[bad[0]]}, expected 0..{n_classes - 1}")
    y = y.astype(np.int64, copy=False)
    return remap[y] if remap is not None else y
