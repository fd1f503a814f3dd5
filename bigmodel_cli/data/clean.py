"""Cleaning rows before the split: missing values in the target or in `drop` columns, and exact duplicates.

    keep = first_occurrences([table[c] for c in features], y)     # sorted indices of the rows kept
    keep = first_image_rows(x, y)                                  # the same for uint8 image arrays

No statistic is fitted here (nothing depends on which rows end up in train), so running
these on all rows before splitting cannot leak val/test information into training.
"""

from __future__ import annotations

import numpy as np

from bigmodel_cli.data import preprocess
from bigmodel_cli.errors import UsageError


def absent(column) -> np.ndarray:
    """True where a value is missing: null, or NaN/inf in a numeric column."""
    import pyarrow.compute as pc

    if preprocess.column_kind(column, "") == "numeric":
        return np.isnan(preprocess.numbers(column, ""))
    nulls = pc.is_null(column)
    return np.asarray(nulls.to_numpy() if hasattr(nulls, "num_chunks") else nulls.to_numpy(zero_copy_only=False))


def first_occurrences(columns: list, y: np.ndarray) -> np.ndarray:
    """Sorted indices of the first of each set of equal rows (every feature column and the target).

    Each row gets a 128-bit hash (two independent 64-bit mixes of every column's values: the
    float64 bits of numbers, with all missing values equal, or the dictionary code of
    categories), computed column by column in numpy: no Python object per row. Two different
    rows share a hash with probability about n^2 / 2^129 (1e-27 for a million rows).
    """
    n = len(y)
    low = np.full(n, 0x243F6A8885A308D3, dtype=np.uint64)
    high = np.full(n, 0x13198A2E03707344, dtype=np.uint64)
    for key in [*(_column_key(c) for c in columns), y.astype(np.float64).view(np.uint64)]:
        low = _mix(low ^ key, 0x9E3779B97F4A7C15)
        high = _mix(high ^ key, 0xC2B2AE3D27D4EB4F)
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    group = np.cumsum(new_group) - 1
    first = np.full(int(group[-1]) + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, group, order)
    return np.sort(first)


def _column_key(column) -> np.ndarray:
    """uint64 per row, equal exactly when the values are equal (missing values all equal)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if preprocess.column_kind(column, "") == "numeric":
        values = preprocess.numbers(column, "") + 0.0  # -0.0 == 0.0
        values[np.isnan(values)] = np.inf  # numbers() maps inf to NaN: inf is free to stand for missing
        return values.view(np.uint64)
    chunk = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(preprocess.strings(chunk), null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.uint64)


def _mix(h: np.ndarray, constant: int) -> np.ndarray:
    """A 64-bit finaliser (splitmix64-style): every input bit changes about half of the output bits."""
    with np.errstate(over="ignore"):
        h = h * np.uint64(constant)
        h ^= h >> np.uint64(31)
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return h


def drop_rows_missing(table, rows, y, features: list[str], data):
    """Rows with a missing value in a column whose imputation is `drop` (before the split: cleaning, not fitting)."""
    dropped: dict[str, int] = {}
    keep = np.ones(table.num_rows, dtype=bool)
    for name in features:
        kind = preprocess.column_kind(table[name], name)
        strategy = data.impute.columns.get(name) or (data.impute.numeric if kind == "numeric" else
                                                     data.impute.categorical)
        if strategy == "drop":
            missing = absent(table[name])
            dropped[name] = int((missing & keep).sum())
            keep &= ~missing
    if keep.all():
        return table, rows, y, dropped
    if not keep.any():
        raise UsageError(f"every row has a missing value in a column whose data.impute is 'drop' "
                         f"({', '.join(k for k, v in dropped.items() if v)})")
    return table.filter(keep), rows[keep], y[keep], dropped


def first_image_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import hashlib

    seen: set[bytes] = set()
    keep = []
    flat = x.reshape(len(x), -1)
    for i in range(len(x)):
        key = hashlib.blake2b(flat[i].tobytes(), digest_size=16).digest() + int(y[i]).to_bytes(8, "little")
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)
