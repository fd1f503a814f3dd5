"""Training throughput: `bigmodel train` on memory-mapped data against a hand-written loop over the same
arrays held in memory, and Lightning's Trainer.

    make bench        # or: .venv/bin/python benchmarks/bench_train.py [--rows 8192] [--epochs 3] [--models ...]

Same prepared data (random uint8 3x32x32 images in the prepared-data format, 10 classes), batch
128, AdamW, CPU. Models: `cnn_small` at width 32 (584k parameters) and cifar10-resnet18's model
(torchvision ResNet-18 with the 3x3 stem at 32x32, 11.2M parameters; fewer rows, it is ~40x the
compute). `bigmodel train` reads the splits memory-mapped through its prefetching loader; the
hand-written loop holds them in memory as tensors and gathers each batch with `index_select`, as
the engine's loader does. Samples/s are for the training phase of each epoch (validation
excluded for all), epoch 1 is warm-up, the best later epoch is reported.
Goals: >= 0.95x the hand-written loop (issue 14; 0.98x in issue 4), >= 1.0x Lightning (cnn_small).

On a GPU (`--device cuda --precision bf16-mixed`, as `make gpu-check` runs it) all three train on
the GPU under the same autocast; the hand-written loop gathers each batch from pinned host memory
and copies it with `non_blocking=True`, which is what the engine's loader does with memory-mapped
splits.
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
LR = 1e-3
DEVICE = "cpu"  # --device
PRECISION = "32"  # --precision: 32 | bf16-mixed
MODELS = {  # name -> (model.args, rows scale): cnn_small at the width the shipped recipes use
    "cnn_small": ({"width": 32}, 1.0),
    "resnet18": ({}, 0.125),
}


def write_prepared(root: Path, rows: int, val_rows: int) -> Path:
    """Random images in the layout prepare-data writes (manifest.json + split arrays)."""
    from bigmodel_cli.data.manifest import FORMAT_VERSION, fingerprint

    rng = np.random.default_rng(0)
    for split, n in (("train", rows), ("val", val_rows), ("test", 16)):
        (root / split).mkdir(parents=True)
        np.save(root / split / "x.npy", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        np.save(root / split / "y.npy", rng.integers(0, 10, n).astype(np.int64))
    manifest = {
        "format_version": FORMAT_VERSION, "name": "bench", "task": "classification", "kind": "image",
        "source": "generated", "source_sha256": "0" * 64, "target": "label",
        "classes": [str(i) for i in range(10)], "features": ["pixels"],
        "input_shape": [3, 32, 32], "input_dtype": "uint8", "splits": {"train": rows, "val": val_rows, "test": 16},
        "seed": 0, "report": {},
        "preprocessing": {"normalize": {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.29] * 3, "per": "channel"}},
    }
    manifest["fingerprint"] = fingerprint(root, manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def bigmodel(prepared: Path, epochs: int, model: str) -> list[float]:
    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import validate
    from bigmodel_cli.training.loop import fit

    console.quiet(True)
    recipe = validate({"name": "bench", "data": {"prepared": str(prepared)},
                       "model": {"name": model, "args": MODELS[model][0]},
                       "train": {"epochs": epochs, "batch_size": BATCH, "optimizer": {"name": "adamw", "lr": LR},
                                 "devices": DEVICE, "precision": PRECISION}},
                      "bench")
    with tempfile.TemporaryDirectory() as run:
        fit(recipe, Path(run) / "run")
        rows = [json.loads(line) for line in (Path(run) / "run/metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in rows]


def hand_written(prepared: Path, epochs: int, model_name: str) -> list[float]:
    """What a careful engineer writes by hand: tensors in memory, a shuffled index per epoch, index_select."""
    from bigmodel_cli.data.manifest import read
    from bigmodel_cli.data.transform import normalizer
    from bigmodel_cli.models import create_model

    torch.manual_seed(0)
    device = torch.device(DEVICE)
    norm = normalizer(read(prepared)).to(device)
    x = torch.from_numpy(np.load(prepared / "train/x.npy"))
    y = torch.from_numpy(np.load(prepared / "train/y.npy"))
    gpu = device.type == "cuda"
    model = create_model(model_name, num_classes=10, input_shape=[3, 32, 32], **MODELS[model_name][0]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    speeds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if gpu:
                xb, yb = xb.pin_memory().to(device, non_blocking=True), yb.pin_memory().to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=PRECISION == "bf16-mixed"):
                loss = loss_fn(model(norm(xb)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if gpu:
            torch.cuda.synchronize()
        speeds.append(len(x) / (time.perf_counter() - start))
    return speeds


def lightning(prepared: Path, epochs: int, model_name: str) -> list[float]:
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
            self.model = create_model(model_name, num_classes=10, input_shape=[3, 32, 32], **MODELS[model_name][0])

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
            if DEVICE == "cuda":  # the last batch's kernels done
                torch.cuda.synchronize()
                self.last = time.perf_counter()
            self.speeds.append(n / (self.last - self.start))

    def loader(split: str, shuffle: bool) -> DataLoader:
        x = torch.from_numpy(np.load(prepared / split / "x.npy"))
        y = torch.from_numpy(np.load(prepared / split / "y.npy"))
        return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=shuffle)

    n = len(np.load(prepared / "train/y.npy", mmap_mode="r"))
    torch.manual_seed(0)
    timer = Timer()
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_epochs=epochs, default_root_dir=root, callbacks=[timer],
                            accelerator="gpu" if DEVICE == "cuda" else "cpu", precision=PRECISION,
                            enable_progress_bar=False, logger=False)
        trainer.fit(Module(), loader("train", True), loader("val", False))
    return timer.speeds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192, help="training rows for cnn_small (resnet18: 1/8)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default="cnn_small,resnet18")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    args = parser.parse_args()
    global DEVICE, PRECISION
    DEVICE, PRECISION = args.device, args.precision
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("CI", "1")
    for model in args.models.split(","):
        rows = int(args.rows * MODELS[model][1])
        trainers = [("hand-written loop", hand_written), ("bigmodel train", bigmodel)]
        trainers += [("lightning", lightning)] if model == "cnn_small" else []
        with tempfile.TemporaryDirectory() as tmp:
            prepared = write_prepared(Path(tmp) / "data", rows, 256)
            results = {}
            for name, fn in trainers:
                speeds = fn(prepared, args.epochs, model)
                results[name] = max(speeds[1:]) if len(speeds) > 1 else speeds[0]
        where = torch.cuda.get_device_name(0) if DEVICE == "cuda" else f"CPU threads {torch.get_num_threads()}"
        print(f"{model} {MODELS[model][0]} on 3x32x32, batch {BATCH}, {rows} rows, precision {PRECISION}, {where}")
        print(f"{'trainer':<20} {'samples/s':>10}")
        for name, sps in results.items():
            print(f"{name:<20} {sps:>10.1f}")
        ours = results["bigmodel train"]
        print(f"bigmodel (memory-mapped) / hand-written loop (in memory): {ours / results['hand-written loop']:.3f}x "
              "(goal >= 0.95)")
        if "lightning" in results:
            print(f"bigmodel / lightning: {ours / results['lightning']:.3f}x (goal >= 1.0)")


if __name__ == "__main__":
    main()
