"""Splitting rows into train/val/test: seeded, stratified by class, or predefined by the data.

    index = split_rows(len(y), y, val=0.15, test=0.15, seed=0, stratify=True, classes=["a", "b"])
    index["train"]   # sorted row indices; the three sets are disjoint and cover every row
    label_rows(labels, keep, y, 0.15, 0.15, 0, True, classes, new_array=scratch.array)   # the same, streamed

The same seed gives the same split on any machine (numpy's PCG64 generator), and class
proportions are kept in every split, so that a rare class is present in val and test.
`label_rows` writes a split code per row (TRAIN, VAL, TEST; NONE for rows left out) into an
array that may be file-backed, working a chunk at a time: its result is the one of
`split_rows` (which calls it), with no per-row work array in private memory when
`new_array` makes file-backed arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bigmodel_cli.data.arrays import arange_into, chunks
from bigmodel_cli.errors import UsageError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
NONE, TRAIN, VAL, TEST = 0, 1, 2, 3
CODES = {"train": TRAIN, "val": VAL, "test": TEST}
STEP = 1 << 20  # rows per chunk


def split_rows(n: int, y: np.ndarray | None, val: float, test: float, seed: int, stratify: bool,
               classes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Row indices per split; `y` holds class indices to stratify by (None for regression: a plain shuffle)."""
    labels = np.zeros(n, dtype=np.uint8)
    label_rows(labels, None, y, val, test, seed, stratify, classes)
    return {s: np.flatnonzero(labels == code).astype(np.int64) for s, code in CODES.items()}


def label_rows(labels: np.ndarray, keep: np.ndarray | None, y: np.ndarray | None, val: float, test: float, seed: int,
               stratify: bool, classes: list[str] | None = None,
               new_array: Callable[..., np.ndarray] | None = None) -> dict[str, int]:
    """Write TRAIN/VAL/TEST into `labels` for the rows where `keep` is true (every row when None); split sizes.

    Rows are grouped by class (stratified) or taken together, each group shuffled with one
    `rng.permutation` in class order, and its first rows go to test, the next to val, the
    rest to train: exactly `split_rows`' split of the kept rows. `new_array(name, dtype, n)`
    makes the work arrays (row numbers, permutations); np.empty by default.
    """
    new_array = new_array or (lambda name, dtype, size: np.empty(size, dtype=dtype))
    fractions = {"test": test, "val": val}
    n = len(labels)
    if stratify and y is not None and classes:
        counts = class_counts(y, keep, len(classes))
        _check_class_sizes(counts, fractions, classes)
        groups = [(c, int(counts[c])) for c in range(len(classes))]
    else:
        groups = [(None, n if keep is None else int(_count_true(keep)))]
    rng = np.random.default_rng(seed)
    sizes = {"train": 0, "val": 0, "test": 0}
    for c, size in groups:
        rows = _rows_where(keep, y, c, size, new_array)
        order = arange_into(new_array("permutation", np.int64, size))
        if size:
            rng.shuffle(order)  # what rng.permutation(size) does, in place
        start = 0
        for split, fraction in fractions.items():
            count = _count(size, fraction)
            _assign(labels, rows, order[start:start + count], CODES[split])
            sizes[split] += count
            start += count
        _assign(labels, rows, order[start:], TRAIN)
        sizes["train"] += size - start
    if sizes["train"] == 0:
        raise UsageError(f"data.split leaves no training rows out of {sum(sizes.values())}; lower data.split.val/test")
    return sizes


def class_counts(y: np.ndarray, keep: np.ndarray | None, n_classes: int) -> np.ndarray:
    counts = np.zeros(n_classes, dtype=np.int64)
    for start, stop in chunks(len(y), STEP):
        part = y[start:stop] if keep is None else y[start:stop][keep[start:stop]]
        counts += np.bincount(part, minlength=n_classes)[:n_classes]
    return counts


def _count_true(mask: np.ndarray) -> int:
    return sum(int(np.count_nonzero(mask[start:stop])) for start, stop in chunks(len(mask), STEP))


def _rows_where(keep: np.ndarray | None, y: np.ndarray | None, c: int | None, size: int,
                new_array: Callable[..., np.ndarray]) -> np.ndarray:
    """The row numbers where keep (and y == c), in order, written into a new array of `size`."""
    if keep is None and c is None:
        return arange_into(new_array("rows", np.int64, size))
    rows = new_array("rows", np.int64, size)
    filled = 0
    for start, stop in chunks(len(keep if keep is not None else y), STEP):
        mask = keep[start:stop] if keep is not None else None
        if c is not None:
            match = y[start:stop] == c
            mask = match if mask is None else mask & match
        found = np.flatnonzero(mask) + start
        rows[filled:filled + len(found)] = found
        filled += len(found)
    return rows


def _assign(labels: np.ndarray, rows: np.ndarray, positions: np.ndarray, code: int) -> None:
    for start, stop in chunks(len(positions), STEP):
        labels[rows[positions[start:stop]]] = code


def _count(n: int, fraction: float) -> int:
    """Rows of a group that go to a split: rounded, but at least one when the fraction is positive."""
    if fraction <= 0 or n == 0:
        return 0
    return max(1, int(round(n * fraction)))


def rows_needed(val: float, test: float) -> int:
    """Rows a class needs for a stratified split: one in train and one in each split with a positive fraction."""
    return 1 + (val > 0) + (test > 0)


def smallest_class(counts: np.ndarray, val: float, test: float) -> tuple[int, int, int] | None:
    """(class, rows, needed) of the smallest class that is too small for a stratified split, or None."""
    needed = rows_needed(val, test)
    for c in np.argsort(counts, kind="stable"):
        if 0 < counts[c] < needed:
            return int(c), int(counts[c]), needed
    return None


def _check_class_sizes(counts: np.ndarray, fractions: dict[str, float], classes: list[str]) -> None:
    small = smallest_class(counts, fractions["val"], fractions["test"])
    if small:
        c, rows, needed = small
        raise UsageError(f"class '{classes[c]}' has only {rows} row(s); a stratified train/val/test split "
                         f"needs at least {needed} per class: add rows, remove the class, or set "
                         f"data.split.stratify=false")


def split_code(value: object) -> int | None:
    """TRAIN/VAL/TEST for a split column's value (train, val, test; validation/valid/dev for val), or None."""
    name = SPLIT_NAMES.get(str(value).strip().lower()) if value is not None else None
    return CODES[name] if name else None


def carve_val(train: np.ndarray, y: np.ndarray, val: float, seed: int, stratify: bool,
              classes: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """A validation set cut from a predefined train split (the dataset's own test stays as it is)."""
    inner = split_rows(len(train), y[train] if y is not None else None, val=val, test=0.0, seed=seed,
                       stratify=stratify, classes=classes)
    return train[inner["train"]], train[inner["val"]]
