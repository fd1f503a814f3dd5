"""Reading prepared data: `data/<name>/manifest.json` and the split arrays beside it.

    manifest = read("data/digits-cnn")
    x, y = load_split("data/digits-cnn", "train")     # numpy arrays, memory-mapped
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError

FORMAT_VERSION = 1
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
