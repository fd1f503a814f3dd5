"""Training throughput: `bigmodel train` against a minimal hand-written loop and Lightning's Trainer.

    make bench        # or: .venv/bin/python benchmarks/bench_train.py [--rows 8192] [--epochs 3]

Same prepared data (random uint8 3x32x32 images in the prepared-data format, 10 classes), same
model (`cnn_small`, width 32), batch 128, AdamW, CPU. Samples/s are for the training phase of each
epoch (validation excluded for all three), epoch 1 is warm-up, the best later epoch is reported.
Goals (issue 4): >= 0.98x the hand-written loop, >= 1.0x Lightning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

BATCH = 128
WIDTH = 32  # cnn_small's first-stage channels: 584k parameters, compute-bound (the registry default is 8)
LR = 1e-3


def write_prepared(root: Path, rows: int, val_rows: int) -> Path:
    """Random images in the layout prepare-data writes (manifest.json + split arrays)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", rows), ("val", val_rows), ("test", 16)):
        (root / split).mkdir(parents=True)
        np.save(root / split / "x.npy", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        np.save(root / split / "y.npy", rng.integers(0, 10, n).astype(np.int64))
    from bigmodel_cli.data import manifest as manifests

    manifest = {
        "format_version": manifests.FORMAT_VERSION, "name": "bench", "task": "classification", "kind": "image",
        "source": "generated",
        "source_sha256": "0" * 64, "target": "label", "classes": [str(i) for i in range(10)], "features": ["pixels"],
        "input_shape": [3, 32, 32], "input_dtype": "uint8", "splits": {"train": rows, "val": val_rows, "test": 16},
        "seed": 0, "report": {},
        "preprocessing": {"normalize": {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.29] * 3, "per": "channel"}},
    }
    manifest["fingerprint"] = manifests.fingerprint(root, manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def bigmodel(prepared: Path, epochs: int) -> list[float]:
    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import validate
    from bigmodel_cli.training.trainer import fit

    console.quiet(True)
    recipe = validate({"name": "bench", "data": {"prepared": str(prepared)},
                       "model": {"name": "cnn_small", "args": {"width": WIDTH}},
                       "train": {"epochs": epochs, "batch_size": BATCH, "optimizer": {"name": "adamw", "lr": LR}}},
                      "bench")
    with tempfile.TemporaryDirectory() as run:
        fit(recipe, Path(run) / "run")
        rows = [json.loads(line) for line in (Path(run) / "run/metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in rows]


def hand_written(prepared: Path, epochs: int) -> list[float]:
    """What a careful engineer writes by hand: tensors in memory, a shuffled index per epoch."""
    from bigmodel_cli.data.manifest import read
    from bigmodel_cli.data.transform import normalizer
    from bigmodel_cli.models import create_model

    torch.manual_seed(0)
    norm = normalizer(read(prepared))
    x = torch.from_numpy(np.load(prepared / "train/x.npy"))
    y = torch.from_numpy(np.load(prepared / "train/y.npy"))
    model = create_model("cnn_small", num_classes=10, input_shape=[3, 32, 32], width=WIDTH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    speeds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = loss_fn(model(norm(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        speeds.append(len(x) / (time.perf_counter() - start))
    return speeds


def lightning(prepared: Path, epochs: int) -> list[float]:
    """Lightning's Trainer with its defaults (progress bar, checkpointing, model summary)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from bigmodel_cli.data.manifest import read
    from bigmodel_cli.data.transform import normalizer
    from bigmodel_cli.models import create_model

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.norm = normalizer(read(prepared))
            self.model = create_model("cnn_small", num_classes=10, input_shape=[3, 32, 32], width=WIDTH)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(self.norm(x)), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.model(self.norm(x)), y))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR)

    class Timer(L.Callback):
        """Training-phase time of each epoch: first batch start to last batch end (validation excluded)."""

        def __init__(self):
            self.speeds, self.start = [], 0.0

        def on_train_epoch_start(self, *_):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *_):
            self.last = time.perf_counter()

        def on_train_epoch_end(self, trainer, *_):
            self.speeds.append(n / (self.last - self.start))

    def loader(split: str, shuffle: bool) -> DataLoader:
        x = torch.from_numpy(np.load(prepared / split / "x.npy"))
        y = torch.from_numpy(np.load(prepared / split / "y.npy"))
        return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=shuffle)

    n = len(np.load(prepared / "train/y.npy", mmap_mode="r"))
    torch.manual_seed(0)
    timer = Timer()
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_epochs=epochs, default_root_dir=root, callbacks=[timer], accelerator="cpu",
                            enable_progress_bar=False, logger=False)
        trainer.fit(Module(), loader("train", True), loader("val", False))
    return timer.speeds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("CI", "1")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = write_prepared(Path(tmp) / "data", args.rows, 1024)
        results = {}
        for name, fn in (("hand-written loop", hand_written), ("bigmodel train", bigmodel), ("lightning", lightning)):
            speeds = fn(prepared, args.epochs)
            results[name] = max(speeds[1:]) if len(speeds) > 1 else speeds[0]
    print(f"cnn_small on 3x32x32, batch {BATCH}, {args.rows} rows, CPU threads {torch.get_num_threads()}")
    print(f"{'trainer':<20} {'samples/s':>10}")
    for name, sps in results.items():
        print(f"{name:<20} {sps:>10.0f}")
    ours = results["bigmodel train"]
    print(f"bigmodel / hand-written loop: {ours / results['hand-written loop']:.3f}x (goal >= 0.98)")
    print(f"bigmodel / lightning:         {ours / results['lightning']:.3f}x (goal >= 1.0)")


if __name__ == "__main__":
    main()
