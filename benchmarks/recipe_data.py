"""Generated data in the real format for the recipes whose real dataset is not on this machine
(the figures in their headers were measured on these; no downloads are possible here).

    .venv/bin/python benchmarks/recipe_data.py churn data/churn.csv --rows 5000
    .venv/bin/python benchmarks/recipe_data.py mnist data/raw --rows 6000 --test-rows 1000
    .venv/bin/python benchmarks/recipe_data.py cifar10 data/raw --rows 100 --test-rows 500   # rows per batch
    .venv/bin/python benchmarks/recipe_data.py folder data/images --rows 80 --classes 5     # rows per class
    bigmodel prepare-data -r tabular-csv --source data/churn.csv --set data.target=churned --set data.drop=[customer_id]

- `churn`: a customer table with numbers, strings, booleans, missing values and an id column; the
  label depends on several columns through a noisy logistic rule, so no model reaches accuracy 1.0.
- `mnist`: MNIST's idx files (ROOT/MNIST/raw) of digits drawn with PIL's bitmap font, randomly
  scaled, shifted, rotated and noised.
- `cifar10`: CIFAR-10's pickled python batches (ROOT/cifar-10-batches-py) of 32x32 colour shapes:
  the class is one of 5 shapes x 2 colour families on a random noisy background.
- `folder`: an image folder (ROOT/class<k>/*.png) of the same shapes at 48-160 px.
- The text recipe's reviews: `write_reviews` in tests/e2e/test_recipe_text.py.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RNG = np.random.default_rng(0)


def churn(path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    plans = np.array(["basic", "plus", "pro"])
    regions = np.array(["north", "south", "east", "west"])
    tenure = rng.integers(1, 72, rows)
    charges = rng.normal(60, 20, rows).clip(10, 150)
    plan = plans[rng.integers(0, 3, rows)]
    region = regions[rng.integers(0, 4, rows)]
    support_calls = rng.poisson(1.5, rows)
    paperless = rng.random(rows) < 0.6
    logit = (-0.05 * tenure + 0.03 * (charges - 60) + 0.5 * support_calls - 0.8 * (plan == "pro")
             + 0.4 * (region == "south") + 0.3 * paperless + rng.normal(0, 1.0, rows))
    churned = np.where(logit > 0, "yes", "no")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "tenure_months", "monthly_charges", "plan", "region", "support_calls",
                         "paperless", "churned"])
        for i in range(rows):
            writer.writerow([f"C{i:06d}", "" if i % 17 == 0 else int(tenure[i]), round(float(charges[i]), 2),
                             "" if i % 23 == 0 else plan[i], region[i], int(support_calls[i]),
                             str(bool(paperless[i])).lower(), churned[i]])
    return path


def digit(c: int) -> np.ndarray:
    """A digit drawn with PIL's bitmap font, scaled, shifted, rotated and noised into 28x28 grey."""
    im = Image.new("L", (12, 14), 0)
    ImageDraw.Draw(im).text((3, 1), str(c), fill=255, font=ImageFont.load_default())
    s = int(RNG.integers(14, 22))
    im = im.resize((int(s * 12 / 14), s), Image.Resampling.BILINEAR).rotate(float(RNG.uniform(-15, 15)))
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(im, (int(RNG.integers(0, 28 - im.size[0])), int(RNG.integers(0, 28 - im.size[1]))))
    x = np.asarray(canvas, dtype=np.float32) + RNG.normal(0, 20, (28, 28))
    return np.clip(x, 0, 255).astype(np.uint8)


def shape_image(c: int, size: int) -> np.ndarray:
    """Class c: one of 5 shapes in one of 2 colour families on a random background, with noise (RGB HxWx3)."""
    bg = tuple(int(v) for v in RNG.integers(0, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    hue = (220, 60, 60) if c % 2 == 0 else (60, 80, 220)
    color = tuple(int(np.clip(h + RNG.integers(-40, 40), 0, 255)) for h in hue)
    r = size * RNG.uniform(0.2, 0.35)
    cx, cy = RNG.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    kind = (c // 2) % 5
    if kind == 0:
        draw.ellipse(box, fill=color)
    elif kind == 1:
        draw.rectangle(box, fill=color)
    elif kind == 2:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif kind == 3:
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=color, width=max(2, size // 10))
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=color, width=max(2, size // 10))
    else:
        draw.ellipse(box, outline=color, width=max(2, size // 12))
    x = np.asarray(im, dtype=np.float32) + RNG.normal(0, 12, (size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def mnist(root: Path, n_train: int, n_test: int) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = RNG.integers(0, 10, n).astype(np.uint8)
        images = np.stack([digit(int(c)) for c in labels])
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())


def cifar10(root: Path, per_batch: int, n_test: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        labels = RNG.integers(0, 10, n)
        data = np.stack([shape_image(int(c), 32).transpose(2, 0, 1).reshape(-1) for c in labels])
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(v) for v in labels], "batch_label": name}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)


def folder(root: Path, per_class: int, classes: int) -> None:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = int(RNG.integers(48, 160))
            Image.fromarray(shape_image(c, size)).save(root / f"class{c}" / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["churn", "mnist", "cifar10", "folder"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=5000, help="churn: rows; mnist: train images; cifar10: "
                        "images per train batch; folder: images per class")
    parser.add_argument("--test-rows", type=int, default=1000, help="mnist, cifar10: test images")
    parser.add_argument("--classes", type=int, default=5, help="folder: classes")
    args = parser.parse_args()
    if args.kind == "churn":
        churn(args.out, args.rows)
    elif args.kind == "mnist":
        mnist(args.out, args.rows, args.test_rows)
    elif args.kind == "cifar10":
        cifar10(args.out, args.rows, args.test_rows)
    else:
        folder(args.out, args.rows, args.classes)
    print(args.out)


if __name__ == "__main__":
    main()
