"""Reading prepared data: `data/<name>/manifest.json` and the split arrays beside it.

    manifest = read("data/digits-cnn")
    x, y = load_split("data/digits-cnn", "train")     # numpy arrays, memory-mapped
    fingerprint("data/digits-cnn", manifest) == manifest["fingerprint"]   # recomputed from the files

`manifest["fingerprint"]` identifies the prepared data a model is trained on: the SHA-256 of
the bytes of train/x.npy, train/y.npy, val/x.npy, val/y.npy, test/x.npy, test/y.npy (whole
files, in that order) followed by `preprocessing_json(manifest["preprocessing"])`.
prepare-data computes it while writing the files; `fingerprint` reads them again.
Format 2 added the fingerprint; data of format 1 is refused with "rerun prepare-data".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError

FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")


def read(prepared_dir: str | Path, recipe_ref: str | None = None) -> dict[str, Any]:
    """The manifest of a prepared dataset; a clear exit-2 error naming the fix when it is missing."""
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        how = f"bigmodel prepare-data -r {recipe_ref}" if recipe_ref else "bigmodel prepare-data -r RECIPE"
        raise UsageError(f"no prepared data in {prepared_dir} (missing manifest.json); run: {how}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e}); rerun prepare-data") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UsageError(f"{path}: format_version {version!r} is not {FORMAT_VERSION}; rerun prepare-data")
    return manifest


def load_split(prepared_dir: str | Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(prepared_dir) / split
    arrays = []
    for name in ("x.npy", "y.npy"):
        path = folder / name
        if not path.is_file():
            raise UsageError(f"missing {path}; rerun prepare-data")
        try:
            arrays.append(np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False))
        except ValueError as e:
            raise UsageError(f"{path}: not a readable .npy array ({e})") from None
    x, y = arrays
    if len(x) != len(y):
        raise UsageError(f"{folder}: x.npy has {len(x)} rows but y.npy has {len(y)}")
    return x, y


def num_outputs(manifest: dict[str, Any]) -> int:
    """Model outputs the data decides: number of classes, or 1 for regression."""
    return len(manifest["classes"]) if manifest["task"] == "classification" else 1


def input_shape(manifest: dict[str, Any]) -> list[int]:
    """One sample's shape without the batch: [F] for tables, [C, H, W] for images."""
    return list(manifest["input_shape"])


def preprocessing_json(preprocessing: dict[str, Any]) -> bytes:
    """The fitted preprocessing as the fingerprint hashes it: compact JSON with sorted keys, UTF-8."""
    return json.dumps(preprocessing, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      default=_json_default).encode("utf-8")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, as the manifest writer stores them
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def fingerprint(prepared_dir: str | Path, manifest: dict[str, Any]) -> str:
    """The fingerprint of the prepared data as it lies on disk now (compare with manifest["fingerprint"])."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for name in ("x.npy", "y.npy"):
            path = Path(prepared_dir) / split / name
            if not path.is_file():
                raise UsageError(f"missing {path}; rerun prepare-data")
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
    digest.update(preprocessing_json(manifest["preprocessing"]))
    return digest.hexdigest()
