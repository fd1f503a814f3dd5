"""Tiny real-format data sources for the data tests: CSV tables, image folders, MNIST idx files, CIFAR-10 batches."""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest


def write_recipe(folder: Path, name: str = "t", **data) -> Path:
    """A recipe YAML with the given `data` section keys (and a small MLP, which prepare-data ignores)."""
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "data": data, "model": {"name": "mlp"}}))
    return path


def people_rows(n: int = 240, seed: int = 0, missing: bool = True) -> list[dict]:
    """Rows with numeric, string and bool columns, some missing, and a 3-class label that depends on them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = int(rng.integers(18, 80))
        city = str(rng.choice(["Oslo", "Paris", "Rome"]))
        label = "high" if age > 60 else ("mid" if city == "Paris" else "low")
        rows.append({"id": i, "age": None if missing and i % 11 == 0 else age,
                     "income": round(float(rng.normal(50, 10)), 3),
                     "city": None if missing and i % 13 == 0 else city, "member": bool(rng.integers(0, 2)),
                     "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v)
                             for k, v in row.items()})
    return path


@pytest.fixture
def people_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "people.csv", people_rows())


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 12, seed: int = 0) -> Path:
    """PNG and JPEG images of different sizes and modes (RGB, L, RGBA, P), one folder per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    modes = ("RGB", "L", "RGBA", "P")
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c % 3] = 255  # the class shows in one channel
            image = Image.fromarray(pixels).convert(modes[i % len(modes)])
            suffix = ".jpg" if i % 5 == 4 and image.mode in ("RGB", "L") else ".png"
            image.save(folder / f"{i:03d}{suffix}")
    return root


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, gz: bool = False, seed: int = 0) -> Path:
    """MNIST's idx files (magic 0x0803 images, 0x0801 labels, big-endian sizes) under ROOT/MNIST/raw."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x0801, n) + labels.tobytes()}
        for name, data in files.items():
            if gz:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (raw / name).write_bytes(data)
    return root


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """CIFAR-10's python batches (pickled dicts of uint8 [N, 3072] and labels) under ROOT/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(batches):
        n = n_test if name == "test_batch" else per_batch
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in (np.arange(n) + i) % 10], "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root
