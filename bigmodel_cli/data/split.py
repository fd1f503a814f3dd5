"""Splitting rows into train/val/test: seeded, stratified by class, or predefined by the data.

    index = split_rows(len(y), y, val=0.15, test=0.15, seed=0, stratify=True, classes=["a", "b"])
    index["train"]   # sorted row indices; the three sets are disjoint and cover every row

The same seed gives the same split on any machine (numpy's PCG64 generator), and class
proportions are kept in every split, so that a rare class is present in val and test.
"""

from __future__ import annotations

import numpy as np

from bigmodel_cli.errors import UsageError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def split_rows(n: int, y: np.ndarray | None, val: float, test: float, seed: int, stratify: bool,
               classes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Row indices per split; `y` holds class indices to stratify by (None for regression: a plain shuffle)."""
    fractions = {"test": test, "val": val}
    if stratify and y is not None and classes:
        _check_class_sizes(y, fractions, classes)
        groups = [np.flatnonzero(y == c) for c in range(len(classes))]
    else:
        groups = [np.arange(n)]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for rows in groups:
        rows = rows[rng.permutation(len(rows))]
        start = 0
        for split, fraction in fractions.items():
            count = _count(len(rows), fraction)
            parts[split].append(rows[start:start + count])
            start += count
        parts["train"].append(rows[start:])
    index = {s: np.sort(np.concatenate(p)) if p else np.arange(0) for s, p in parts.items()}
    if len(index["train"]) == 0:
        raise UsageError(f"data.split leaves no training rows out of {n}; lower data.split.val/test")
    return {s: index[s].astype(np.int64) for s in ("train", "val", "test")}


def _count(n: int, fraction: float) -> int:
    """Rows of a group that go to a split: rounded, but at least one when the fraction is positive."""
    if fraction <= 0 or n == 0:
        return 0
    return max(1, int(round(n * fraction)))


def _check_class_sizes(y: np.ndarray, fractions: dict[str, float], classes: list[str]) -> None:
    needed = 1 + sum(1 for f in fractions.values() if f > 0)
    counts = np.bincount(y, minlength=len(classes))
    for c in np.argsort(counts, kind="stable"):
        if 0 < counts[c] < needed:
            raise UsageError(f"class '{classes[c]}' has only {counts[c]} row(s); a stratified train/val/test split "
                             f"needs at least {needed} per class: add rows, remove the class, or set "
                             f"data.split.stratify=false")


def split_by_column(values: list, column: str, row_numbers: np.ndarray) -> dict[str, np.ndarray]:
    """Rows per split from a column holding train|val|test (validation/valid/dev accepted for val)."""
    labels = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        name = SPLIT_NAMES.get(str(value).strip().lower()) if value is not None else None
        if name is None:
            raise UsageError(f"data.split.column '{column}': row {row_numbers[i] + 1} has {value!r}; "
                             f"expected train, val or test")
        labels[i] = name
    index = {s: np.flatnonzero(labels == s).astype(np.int64) for s in ("train", "val", "test")}
    if len(index["train"]) == 0:
        raise UsageError(f"data.split.column '{column}': no row is marked train")
    return index


def carve_val(train: np.ndarray, y: np.ndarray, val: float, seed: int, stratify: bool,
              classes: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """A validation set cut from a predefined train split (the dataset's own test stays as it is)."""
    inner = split_rows(len(train), y[train] if y is not None else None, val=val, test=0.0, seed=seed,
                       stratify=stratify, classes=classes)
    return train[inner["train"]], train[inner["val"]]
