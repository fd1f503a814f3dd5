"""Arrays on disk: `.npy` files written chunk by chunk and hashed as they are written, and scratch arrays.

    scratch = Scratch(folder)                              # working arrays that grow with the data
    state = scratch.array("state", np.uint8, n_rows)       # file-backed: not the process's private memory
    out = NpyWriter(folder / "x.npy", np.float32, (n, f), digest)
    out.write(rows_0_to_999); out.write(rows_1000_to_1999); out.close()   # digest saw every byte in order

Every array whose size grows with the data lives in a file mapped into memory (numpy's
memmap, `open_memmap` for `.npy`): its pages belong to the page cache, shared and
reclaimable, and count neither as private memory (RssAnon) nor against `prlimit --data`.
Files are preallocated, so that a full disk is an OSError when the array is created, not a
SIGBUS in the middle of a write through the mapping.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

CHUNK_BYTES = 1 << 23  # rows per chunk are chosen so that one chunk of an array is about 8 MiB
SMALL_BYTES = 1 << 20  # scratch arrays smaller than this stay in memory (a few at a time: bounded)


def rows_per_chunk(row_bytes: int) -> int:
    """Rows of `row_bytes` each that make a chunk of about CHUNK_BYTES (at least one)."""
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive row ranges of at most `size` rows covering range(n)."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _preallocate(path: Path) -> None:
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "rb+") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(e.errno, f"{path}: no space left on the device for {size / 2**20:.0f} MiB") from None
            # EOPNOTSUPP and the like: this filesystem does not preallocate; writes work as usual


def create_npy(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new `.npy` file of that dtype and shape, mapped for writing (numpy's own header, readable by np.load)."""
    array = open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    _preallocate(path)
    return array


class NpyWriter:
    """One `.npy` file written from its first row to its last; every byte goes into `digest` in file order.

    The header is read back from the new file (a few hundred bytes) so that the digest is the
    SHA-256 of the file as it lies on disk, which `manifest.fingerprint` recomputes.
    """

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...], digest: Any):
        self.path, self.digest, self.rows = path, digest, 0
        self.array = create_npy(path, dtype, shape)
        with open(path, "rb") as f:
            digest.update(f.read(self.array.offset))

    def write(self, chunk: np.ndarray) -> np.ndarray:
        """Append rows; returns them as written (a view of the file), for statistics on the way."""
        end = self.rows + len(chunk)
        if end > len(self.array):
            raise ValueError(f"{self.path}: {end} rows written into an array of {len(self.array)}")
        out = self.array[self.rows:end]
        out[...] = chunk
        self.digest.update(memoryview(np.ascontiguousarray(out.view(np.ndarray))).cast("B"))
        self.rows = end
        return out.view(np.ndarray)

    def close(self) -> np.ndarray:
        """Check every row was written; returns the whole array (mapped, read-only use)."""
        if self.rows != len(self.array):
            raise ValueError(f"{self.path}: {self.rows} rows written of {len(self.array)}")
        return self.array.view(np.ndarray)


class Scratch:
    """A folder of working arrays, file-backed; `close()` removes it (the arrays must not be used after)."""

    def __init__(self, folder: Path):
        self.folder = folder  # made when the first file is needed: small data makes none
        self._count = 0

    def path(self, name: str) -> Path:
        """A new file name in the folder; `name` (a column's, say) only makes it readable."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        return self.folder / f"{self._count:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:40]}"

    def array(self, name: str, dtype: Any, shape: int | tuple[int, ...], fill: Any = None) -> np.ndarray:
        """A new array backed by a file in the folder; a plain in-memory one when it is under SMALL_BYTES."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = np.dtype(dtype)
        if int(np.prod(shape)) * dtype.itemsize < SMALL_BYTES:  # files cost more than they save
            out = np.empty(shape, dtype=dtype)
            if fill is not None:
                out[...] = fill
            return out
        path = self.path(name)
        mapped = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
        _preallocate(path)
        out = mapped.view(np.ndarray)
        if fill is not None:
            fill_rows(out, fill)
        return out

    def close(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


def fill_rows(array: np.ndarray, value: Any) -> None:
    """array[:] = value, a chunk at a time (a memmap is filled without a whole-size temporary)."""
    step = rows_per_chunk(array[:1].nbytes or 1)
    for start, stop in chunks(len(array), step):
        array[start:stop] = value


def arange_into(array: np.ndarray, offset: int = 0) -> np.ndarray:
    """array[i] = offset + i, a chunk at a time."""
    step = rows_per_chunk(array.itemsize)
    for start, stop in chunks(len(array), step):
        array[start:stop] = np.arange(offset + start, offset + stop, dtype=array.dtype)
    return array
