"""Cleaning rows before the split: missing values in the target, and exact duplicates.

    keys = RowKeys(n, new_array)                      # two 64-bit hashes per row
    keys.add_numbers(start, numbers_of_a_chunk)       # column by column, chunk by chunk
    drop = keys.duplicates(kept, new_array)           # sorted rows equal to an earlier kept row
    keys = image_keys(x, y)                           # the same for uint8 images and their labels

No statistic is fitted here (nothing depends on which rows end up in train), so running
these on all rows before splitting cannot leak val/test information into training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from bigmodel_cli.data import preprocess
from bigmodel_cli.data.arrays import chunks, fill_rows

STEP = 1 << 20  # rows per chunk


def absent(column) -> np.ndarray:
    """True where a value is missing: null, or NaN/inf in a numeric column."""
    import pyarrow.compute as pc

    if preprocess.column_kind(column, "") == "numeric":
        return np.isnan(preprocess.numbers(column, ""))
    nulls = pc.is_null(column)
    return np.asarray(nulls.to_numpy() if hasattr(nulls, "num_chunks") else nulls.to_numpy(zero_copy_only=False))


class RowKeys:
    """Two independent 64-bit hashes per row, mixed column after column, to find exact duplicate rows.

    Each column gives a 64-bit key per row, equal exactly when the values are equal: the
    float64 bits of numbers (all missing values equal), a code per distinct category, or
    (for long texts, where a table of every distinct value would grow with the rows) two
    halves of the value's BLAKE2b digest. Two different rows share both hashes with
    probability about n^2 / 2^129 (1e-27 for a million rows).
    """

    def __init__(self, n: int, new_array: Callable[..., np.ndarray]):
        self.low = new_array("key-low", np.uint64, n, fill=0x243F6A8885A308D3)
        self.high = new_array("key-high", np.uint64, n, fill=0x13198A2E03707344)

    def add(self, start: int, key: np.ndarray, key_high: np.ndarray | None = None) -> None:
        stop = start + len(key)
        self.low[start:stop] = _mix(self.low[start:stop] ^ key, 0x9E3779B97F4A7C15)
        self.high[start:stop] = _mix(self.high[start:stop] ^ (key if key_high is None else key_high),
                                     0xC2B2AE3D27D4EB4F)

    def add_numbers(self, start: int, values: np.ndarray) -> None:
        """float64 values with NaN for missing."""
        values = values + 0.0  # -0.0 == 0.0
        values[np.isnan(values)] = np.inf  # numbers() maps inf to NaN: inf is free to stand for missing
        self.add(start, values.view(np.uint64))

    def add_texts(self, start: int, texts: list[str | None]) -> None:
        digests = b"".join(b"\0" * 16 if t is None else hashlib.blake2b(t.encode("utf-8", "surrogatepass"),
                                                                         digest_size=16, person=b"text").digest()
                           for t in texts)
        pairs = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2) if texts else np.zeros((0, 2), np.uint64)
        self.add(start, pairs[:, 0], pairs[:, 1])

    def duplicates(self, kept: np.ndarray | None, new_array: Callable[..., np.ndarray]) -> np.ndarray:
        """Sorted rows (kept ones only) equal to an earlier kept row: everything but the first of each set."""
        return duplicate_rows(self.low, self.high, kept, new_array)


class CategoryCodes:
    """A code per distinct value of a categorical column, the same in every chunk (nulls have one too)."""

    def __init__(self) -> None:
        self.codes: dict = {}

    def __call__(self, chunk) -> np.ndarray:
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(preprocess.strings(chunk), null_encoding="encode")
        table = np.fromiter((self.codes.setdefault(v, len(self.codes)) for v in encoded.dictionary.to_pylist()),
                            dtype=np.uint64, count=len(encoded.dictionary))
        return table[encoded.indices.to_numpy(zero_copy_only=False)]


def duplicate_rows(low: np.ndarray, high: np.ndarray, kept: np.ndarray | None,
                   new_array: Callable[..., np.ndarray]) -> np.ndarray:
    """Rows whose (low, high) equals that of an earlier kept row, sorted; only kept rows are considered.

    The `low` hashes of the kept rows are copied and sorted in place (file-backed when
    `new_array` makes such arrays), values seen twice are collected, and only the rows
    holding one of those values are compared on both hashes: work arrays in private memory
    are as large as the number of candidate duplicates, not the number of rows.
    """
    n = len(low)
    count = n if kept is None else sum(int(np.count_nonzero(kept[a:b])) for a, b in chunks(n, STEP))
    ordered = new_array("sorted-keys", np.uint64, count)
    filled = 0
    for a, b in chunks(n, STEP):
        part = low[a:b] if kept is None else low[a:b][kept[a:b]]
        ordered[filled:filled + len(part)] = part
        filled += len(part)
    ordered.sort()
    repeated = [ordered[a:b][ordered[a:b] == ordered[a + 1:b + 1]] for a, b in chunks(max(count - 1, 0), STEP)]
    values = np.unique(np.concatenate(repeated)) if repeated else np.zeros(0, np.uint64)
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    rows, lows, highs = [], [], []
    for a, b in chunks(n, STEP):
        mask = np.isin(low[a:b], values)
        if kept is not None:
            mask &= kept[a:b]
        found = np.flatnonzero(mask)
        rows.append(found + a)
        lows.append(low[a:b][found])
        highs.append(high[a:b][found])
    rows_c, lows_c, highs_c = np.concatenate(rows), np.concatenate(lows), np.concatenate(highs)
    order = np.lexsort((rows_c, highs_c, lows_c))
    lows_c, highs_c = lows_c[order], highs_c[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (lows_c[1:] != lows_c[:-1]) | (highs_c[1:] != highs_c[:-1])
    return np.sort(rows_c[order][~first])


def image_keys(x: np.ndarray, y: np.ndarray, new_array: Callable[..., np.ndarray] | None = None) -> RowKeys:
    """Keys of uint8 images and their labels: BLAKE2b of each image's bytes and its label."""
    new_array = new_array or _in_memory
    keys = RowKeys(len(x), new_array)
    flat = x.reshape(len(x), -1)
    for a, b in chunks(len(x), 1024):
        digests = b"".join(hashlib.blake2b(flat[i].tobytes() + int(y[i]).to_bytes(8, "little"),
                                           digest_size=16).digest() for i in range(a, b))
        pairs = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)
        keys.low[a:b], keys.high[a:b] = pairs[:, 0], pairs[:, 1]
    return keys


def _in_memory(name: str, dtype, size: int, fill=None) -> np.ndarray:
    out = np.empty(size, dtype=dtype)
    if fill is not None:
        fill_rows(out, fill)
    return out


def _mix(h: np.ndarray, constant: int) -> np.ndarray:
    """A 64-bit finaliser (splitmix64-style): every input bit changes about half of the output bits."""
    with np.errstate(over="ignore"):
        h = h * np.uint64(constant)
        h ^= h >> np.uint64(31)
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return h
