"""Training input speed: prepared uint8 arrays against decoding the same PNGs every epoch (ImageFolder, 2 workers).

    make bench            # or: .venv/bin/python benchmarks/bench_input_pipeline.py [--images 6000]

A folder of 32x32 RGB PNGs in 10 class folders is generated in a temporary folder (deleted
afterwards) and prepared with `bigmodel prepare-data`. Both sides deliver the same batches
to a model: shuffled batches of 128 as normalised float32 [B, 3, 32, 32] tensors with
labels. (a) the trainer's way: index the uint8 array loaded from x.npy, then the manifest's
Normalize, with one torch thread like a DataLoader worker (torch's intra-op threads make
these small copies slower, not faster, on a busy 2-core machine: printed too);
(b) torchvision.datasets.ImageFolder with ToImage/ToDtype/Normalize in a DataLoader with 2
workers (timed on its second epoch, workers already started). Goal: (a) at least 10x (b).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 128


def make_folder(root: Path, images: int, seed: int = 0) -> None:
    """Smooth random images (gradients plus noise, like photos compress) so PNG decoding cost is realistic."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 32)[None, :, None]
    for i in range(images):
        label = i % 10
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.random((1, 1, 3)) * 255 * grid + rng.normal(0, 12, (32, 32, 3)) + label * 8
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def arrays_samples_per_s(prepared: Path, epochs: int, threads: int) -> float:
    import torch

    from bigmodel_cli.data import manifest as manifests
    from bigmodel_cli.data.transform import normalizer

    manifest = manifests.read(prepared)
    norm = normalizer(manifest)
    x_np, y_np = manifests.load_split(prepared, "train")
    x, y = torch.from_numpy(np.array(x_np)), torch.from_numpy(np.array(y_np))
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            rows = order[i:i + BATCH]
            _xb, yb = norm(x[rows]), y[rows]
            seen += len(yb)
    elapsed = time.perf_counter() - start
    torch.set_num_threads(default_threads)
    return seen / elapsed


def imagefolder_samples_per_s(root: Path, manifest: dict) -> float:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    spec = manifest["preprocessing"]["normalize"]
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(spec["mean"], spec["std"])])
    loader = DataLoader(datasets.ImageFolder(str(root), transform=transform), batch_size=BATCH, shuffle=True,
                        num_workers=2, persistent_workers=True)
    for _ in loader:  # first epoch: start the workers
        pass
    seen = 0
    start = time.perf_counter()
    for _xb, yb in loader:
        seen += len(yb)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    import yaml

    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench-input-"))
    try:
        make_folder(tmp / "images", args.images)
        (tmp / "r.yaml").write_text(yaml.safe_dump({"name": "bench", "data": {
            "source": str(tmp / "images"), "split": {"val": 0.0, "test": 0.0}}, "model": {"name": "cnn_small"}}))
        console.quiet(True)
        start = time.perf_counter()
        manifest = prepare(resolve(str(tmp / "r.yaml"), {"data.prepared": str(tmp / "prepared")}))
        print(f"{args.images} PNGs 32x32 prepared once in {time.perf_counter() - start:.1f} s")
        import torch

        fast = arrays_samples_per_s(tmp / "prepared", epochs=5, threads=1)
        default = arrays_samples_per_s(tmp / "prepared", epochs=5, threads=torch.get_num_threads())
        slow = imagefolder_samples_per_s(tmp / "images", manifest)
        print(f"{'input pipeline':<48} {'samples/s':>10}")
        print(f"{'prepared uint8 arrays + Normalize, 1 torch thread':<48} {fast:>10.0f}")
        print(f"{f'same, {torch.get_num_threads()} torch threads (contended when busy)':<48} {default:>10.0f}")
        print(f"{'ImageFolder PNG decoding, 2 workers':<48} {slow:>10.0f}")
        print(f"prepared arrays vs ImageFolder: {fast / slow:.1f}x (goal: at least 10x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
