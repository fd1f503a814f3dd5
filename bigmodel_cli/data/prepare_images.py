"""prepare-data for images: a folder decoded into a file-backed array, sklearn's digits, torchvision's files.

    prepared = prepare_images(raw, recipe, report, scratch)   # raw.x: uint8 [N, C, H, W], file-backed for folders

Duplicates are found from a digest of each image and its label, the split is made on the
labels alone (a few bytes per image), and each split's images are copied from the decoded
array into its x.npy a chunk at a time. The per-channel normalisation is fitted from exact
integer pixel histograms while the train split is written: the same numbers as sums in
float64 over the whole train array (every partial sum of uint8 pixels is an exact integer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from bigmodel_cli.data import split
from bigmodel_cli.data.arrays import Scratch, chunks, rows_per_chunk
from bigmodel_cli.data.clean import image_keys
from bigmodel_cli.data.prepared import Prepared
from bigmodel_cli.data.sources import RawImages
from bigmodel_cli.errors import UsageError


class PixelMoments:
    """Per-channel mean and std of uint8 images, from counts of each pixel value (exact, any chunking)."""

    def __init__(self, channels: int):
        self.counts = np.zeros((channels, 256), dtype=np.int64)

    def add(self, images: np.ndarray) -> None:
        step = max(1, (1 << 18) // max(1, images[0, 0].size))  # bincount makes an int64 copy: keep it small
        for start in range(0, len(images), step):
            part = images[start:start + step]
            for c in range(part.shape[1]):
                self.counts[c] += np.bincount(part[:, c].reshape(-1), minlength=256)

    def normalize(self) -> dict[str, Any]:
        values = np.arange(256, dtype=np.int64)
        count = int(self.counts[0].sum())
        total = (self.counts * values).sum(axis=1).astype(np.float64)
        squares = (self.counts * values**2).sum(axis=1).astype(np.float64)
        mean = total / max(count, 1)
        std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
        mean, std = mean / 255.0, std / 255.0
        return {"scale": 1.0 / 255.0, "mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist(),
                "per": "channel", "method": "standard"}


def prepare_images(raw: RawImages, recipe, report: dict[str, Any], scratch: Scratch) -> Prepared:
    data = recipe.data
    report["rows_read"] = int(len(raw.x) + len(raw.bad_files))
    report["bad_files"] = raw.bad_files
    report["warnings"].extend(raw.notes)
    if recipe.task == "classification" and len(raw.classes) < 2:
        raise UsageError(f"data.source '{data.source}': one class ({raw.classes[0]!r}); a classification task needs "
                         f"at least two classes (one sub-folder per class)")
    x, y = _resize_arrays(raw.x, data.image.size, data.image.channels, scratch), raw.y
    report["missing_target_dropped"] = 0
    if data.dedupe:
        keep = np.ones(len(y), dtype=bool)
        keep[image_keys(x, y, scratch.array).duplicates(None, scratch.array)] = False
        kept = np.flatnonzero(keep)
    else:
        kept = np.arange(len(y))
    report["duplicates_dropped"] = int(len(y) - len(kept))
    position = np.full(len(y), -1, dtype=np.int64)
    position[kept] = np.arange(len(kept))
    y = y[kept]
    index = _split(raw, position, y, recipe, report)
    shape = tuple(int(d) for d in x.shape[1:])
    moments = PixelMoments(shape[0])
    step = rows_per_chunk(int(np.prod(shape)))

    def x_chunks(name: str) -> Iterator[np.ndarray]:
        rows = kept[index[name]]
        buffer = np.empty((min(step, len(rows)), *shape), dtype=np.uint8)  # one gather buffer, reused
        for a, b in chunks(len(rows), step):
            yield np.take(x, rows[a:b], axis=0, out=buffer[:b - a])

    def y_chunks(name: str) -> Iterator[np.ndarray]:
        yield y[index[name]]

    def observe(name: str, images: np.ndarray) -> None:
        if name == "train":
            moments.add(images)

    spec = {"size": [shape[1], shape[2]], "channels": shape[0]}
    return Prepared("image", ["pixels"], raw.classes, raw.target, {"image": spec}, shape, np.uint8, np.int64,
                    {s: len(index[s]) for s in split.CODES}, x_chunks, y_chunks, observe=observe,
                    normalize=moments.normalize)


def _split(raw: RawImages, position: np.ndarray, y: np.ndarray, recipe, report) -> dict[str, np.ndarray]:
    """Rows (positions among the kept images) per split: the source's own split, or seeded and stratified."""
    cfg = recipe.data.split
    if raw.predefined is not None and cfg.predefined:
        own = {s: position[rows][position[rows] >= 0] for s, rows in raw.predefined.items()}
        if "val" in own:
            report["split_method"] = f"{raw.predefined_by} train/val/test"
            return {"train": own["train"], "val": own["val"], "test": own["test"]}
        train, val = split.carve_val(own["train"], y, cfg.val, recipe.seed, cfg.stratify, raw.classes)
        report["split_method"] = f"{raw.predefined_by} train/test; val cut from train (seed {recipe.seed})"
        return {"train": train, "val": val, "test": own["test"]}
    report["split_method"] = f"{'stratified' if cfg.stratify else 'random'}, seed {recipe.seed}"
    return split.split_rows(len(y), y, cfg.val, cfg.test, recipe.seed, cfg.stratify, raw.classes)


def _resize_arrays(x: np.ndarray, size: int | None, channels: int | None, scratch: Scratch) -> np.ndarray:
    """Arrays from sklearn/torchvision brought to data.image.size/channels (a no-op when they already match)."""
    from bigmodel_cli.data.images import to_array

    c, h, w = x.shape[1:]
    if (size is None or (h, w) == (size, size)) and (channels is None or channels == c):
        return x
    size_hw = (size, size) if size else (w, h)
    out = scratch.array("resized", np.uint8, (len(x), channels or c, size_hw[1], size_hw[0]))
    for i, image in enumerate(x):
        out[i] = to_array(image[0] if c == 1 else image.transpose(1, 2, 0), size_hw, channels or c)
    return out
