"""Tiny image data in the real MNIST / CIFAR-10 formats whose class shows in the pixels, so that a few
training steps learn it and the recipe tests can assert learning (the unit tests' writers use random pixels).

    root = write_mnist(tmp_path / "datasets", n_train=200, n_test=50)     # class = where a bar is
    root = write_cifar10(tmp_path / "datasets", per_batch=24, n_test=40)  # class = the image's colour
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

# ten colours far apart in RGB: the CIFAR-10 stand-in's classes (position-free, so flips and crops keep them)
PALETTE = np.array([(230, 25, 25), (25, 200, 25), (25, 25, 230), (230, 230, 25), (230, 25, 230),
                    (25, 230, 230), (240, 140, 20), (120, 20, 200), (245, 245, 245), (15, 15, 15)], dtype=np.float32)


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)  # every class equally often


def mnist_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 grey: a bright 4x8 bar in one of 10 places (2 rows x 5 columns) on dim noise, moved by up to 1 px."""
    images = rng.integers(0, 60, (len(labels), 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 5)
        top, left = 3 + 13 * row + int(rng.integers(-1, 2)), 1 + 5 * col + int(rng.integers(0, 2))
        image[top:top + 8, left:left + 4] = 255
    return images


def write_mnist(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """MNIST's idx files (big-endian header, then uint8 pixels or labels) under ROOT/MNIST/raw, gzipped."""
    import gzip

    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(n, rng)
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x0803, n, 28, 28)
                 + mnist_images(labels, rng).tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x0801, n) + labels.tobytes()}
        for name, data in files.items():
            with gzip.open(raw / f"{name}.gz", "wb") as f:
                f.write(data)
    return root


def cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """32x32 RGB in CIFAR's row layout ([N, 3072], channel-major): the class's colour plus noise."""
    pixels = PALETTE[labels][:, :, None, None] + rng.normal(0, 25, (len(labels), 3, 32, 32))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10(root: Path, per_batch: int = 24, n_test: int = 40, seed: int = 0) -> Path:
    """CIFAR-10's python batches (pickled dicts) under ROOT/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = _labels(n_test if name == "test_batch" else per_batch, rng)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": cifar_images(labels, rng), "labels": [int(v) for v in labels],
                         "batch_label": name}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root
